"""The verbs that act on running processes through their agents (spec §10): a thin
shell over :mod:`pylivepatch.control` (which processes, and an action on all of them,
all or nothing) that reads the options and prints the results.

TARGET is ``-p PID``, ``--app NAME`` (every process of that app) and ``--tree PID``
(a process and its descendants), each repeatable and combinable: the processes any of
them names. With several processes an action is all or nothing, and a table shows each
process's result.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import asdict

from ..client import Client
from ..control import targets
from ..control.targets import Targets, discover
from ..control.together import transition_text
from ..errors import LivepatchError
from . import UsageError, exits, render
from .exits import EXIT_OK, EXIT_PARTIAL

TYPE_CHECKING = False  # not typing's: see pylivepatch/__init__.py
if TYPE_CHECKING:
    from typing import Any

__all__ = ["act", "discover", "install", "ps", "select", "show", "targeted", "uninstall"]

_audit_warned: set[int] = set()
_audit_lock = threading.Lock()


def _audit_warning(pid: int, text: str) -> None:
    """An agent ran the request but could not record it: say so once per process, on
    stderr, whatever the output format (the action's own result stays the truth)."""
    with _audit_lock:
        if pid in _audit_warned:
            return
        _audit_warned.add(pid)
    print(
        f"pylivepatch: warning: process {pid} could not write its audit log ({text}); "
        "what it did is not recorded there: free the disk or fix the log's permissions",
        file=sys.stderr,
    )


Client.on_audit_error = _audit_warning


def targeted(args: argparse.Namespace) -> bool:
    return bool(args.pid or args.app or args.tree)


def targets_of(args: argparse.Namespace) -> Targets:
    """The TARGET options (``-p``, ``--app``, ``--tree``) as the library takes them."""
    if not targeted(args):
        raise UsageError("name the target: -p PID, --app NAME or --tree PID (see `pylivepatch ps`)")
    return Targets(tuple(args.pid), tuple(args.app), tuple(args.tree))


def select(
    args: argparse.Namespace, live: list[dict[str, Any]] | None = None, complete: bool = False
) -> list[int]:
    """The processes every TARGET option names (:func:`pylivepatch.control.targets.select`)."""
    return targets.select(targets_of(args), live, complete)


def waiting_for(s: dict[str, Any]) -> list[str]:
    """Modules an applied payload still waits for (it patched nothing there yet)."""
    return list(s.get("pending") or []) if s.get("state") == "APPLIED" else []


def state_text(s: dict[str, Any]) -> str:
    """The state as an operator needs it: a payload applied only to modules not yet
    imported is WAITING, not APPLIED (nothing of it runs yet)."""
    waiting = waiting_for(s)
    if not waiting:
        return str(s["state"])
    modules = ", ".join(waiting)
    if s.get("funcs") or s.get("data"):
        return f"APPLIED, waiting for import of {modules}"
    return f"WAITING for import of {modules}"


def ps(args: argparse.Namespace) -> int:
    """Processes with an agent, by pid; with a TARGET only those it names."""
    infos = discover()
    if targeted(args):
        try:
            chosen = set(select(args, infos))
        except LivepatchError:
            chosen = set()
        infos = [i for i in infos if i["pid"] in chosen]
    for info in infos:  # payloads that wait for an import are shown waiting
        info["waiting"] = {}
        if info["applied"]:
            try:
                for s in Client(info["pid"], timeout=5).list():
                    modules = waiting_for(asdict(s))
                    if modules and not s.funcs and not s.data:
                        info["waiting"][s.name] = modules
            except LivepatchError:
                pass
    if args.json:
        print(json.dumps(infos, indent=2))
        return EXIT_OK
    if not infos:
        if targeted(args):
            print("no process of the target has a pylivepatch agent")
        else:
            print("no process with a pylivepatch agent (start one with `pylivepatch run -- CMD`)")
        return EXIT_OK

    def applied(info: dict[str, Any]) -> str:
        waiting = info["waiting"]
        return ", ".join(
            f"{n} (waiting for import of {', '.join(waiting[n])})" if n in waiting else n
            for n in info["applied"]
        )

    render.table(
        ["PID", "APP", "PYTHON", "APPLIED"],
        [[i["pid"], i["app"], i["python"], applied(i)] for i in infos],
    )
    return EXIT_OK


def show(args: argparse.Namespace) -> int:
    """``list``, ``status NAME`` and ``log --events`` for every selected process."""
    if args.verb == "list" and args.installed:
        return installed(args)
    if args.verb == "log" and not args.events:
        return audit_log(args)
    out: dict[str, Any] = {}
    for pid in select(args):
        client = Client(pid)
        if args.verb == "list":
            out[str(pid)] = [asdict(s) for s in client.list()]
        elif args.verb == "status":
            out[str(pid)] = asdict(client.status(args.name))
        else:
            events = client.log()
            out[str(pid)] = events[-args.last :] if args.last else events
    if args.json:
        print(json.dumps(out, indent=2))
        return EXIT_OK
    if args.verb == "list":
        rows = [
            [pid, s["name"], state_text(s), s["rc"], s["build_id"][:16], (s["depends"] or "")[:16],
             s["version"], ", ".join(f"{k}={v}" for k, v in sorted(s["metadata"].items())),
             s.get("signature", ""), transition_text(s)]
            for pid, payloads in out.items() for s in payloads
        ]  # fmt: skip
        if not rows:
            print("no payload uploaded in " + ", ".join(f"process {p}" for p in out))
            return EXIT_OK
        render.table(
            ["PID", "NAME", "STATE", "RC", "BUILD ID", "DEPENDS", "VERSION", "METADATA",
             "SIGNATURE", "TRANSITION"],
            rows,
        )  # fmt: skip
    elif args.verb == "status":
        for key, s in out.items():
            error = f"  error {s['error']}: {s['message']}" if s["error"] else ""
            render.line(
                f"process {key}: {s['name']} {state_text(s)} rc={s['rc']} "
                f"build {s['build_id'][:16]} consistency {s['consistency']} "
                f"{s.get('signature', '')}{error}"
            )
            if transition_text(s):
                render.line(f"  transition: {transition_text(s)}")
                for b in s["in_progress"].get("blockers") or []:
                    render.line(f"  blocked by {b}")
            render.table(
                ["FUNCTION", "MARKER", "ACTIVE", "STACK"],
                [[f["target"], "applied" if f["applied"] else "reverted",
                  "yes" if f["active"] else "no", " < ".join(f["stack"])] for f in s["funcs"]]
                + [[d, "data", "", ""] for d in s["data"]]
                + [[m, "waiting for import", "", ""] for m in s["pending"]],
            )  # fmt: skip
    else:
        render.table(
            ["PID", "SEQ", "ACTION", "PAYLOAD", "EVENT", "DETAIL"],
            [[pid, ev["seq"], ev["action"], ev["payload"], ev["event"],
              " ".join(f"{k}={v}" for k, v in ev.items()
                       if k not in ("seq", "time", "action", "payload", "event"))]
             for pid, events in out.items() for ev in events],
        )  # fmt: skip
    return EXIT_OK


def act(args: argparse.Namespace) -> int:
    """upload/apply/revert/replace/unload/load on every selected process, all or nothing
    (:func:`pylivepatch.control.together.act`).

    The report is the truth: a clean-up (revert, unload) that fails after a refusal is
    retried while the process is busy, and one that still fails leaves the process
    named in the table, with what it still has and the command that removes it (exit
    code 3, ``EXIT_PARTIAL``)."""
    from ..control.together import act as act_on

    if getattr(args, "attach", False):  # load --attach: agents first, where there are none
        from .attach import attach_for

        attach_for(args)
    outcome = act_on(
        args.verb, targets_of(args), name=getattr(args, "name", None),
        file=getattr(args, "file", None), nodeps=getattr(args, "nodeps", False),
        timeout=getattr(args, "timeout", None), force=getattr(args, "force", False),
        no_expect=getattr(args, "no_expect", False),
        no_object_check=getattr(args, "no_object_check", False), progress=render.progress,
    )  # fmt: skip
    return _report(args, outcome.name, outcome.pids, outcome.results, outcome.failure, outcome.left)


def _report(
    args: argparse.Namespace,
    name: str,
    pids: list[int],
    results: dict[int, str],
    failure: LivepatchError | None,
    left: dict[int, str] | None = None,
) -> int:
    """The table (or JSON) of every process's result, the same text in both, and the
    exit code: 0, 1 or 2 for the action (2: try again), 3 (``EXIT_PARTIAL``) when it
    could not be undone (or done) everywhere: ``left`` names each such process."""
    left = left or {}
    processes = {p: results.get(p, "not attempted") for p in pids}
    if args.json:
        doc: dict[str, Any] = {
            "ok": failure is None and not left,
            "action": args.verb,
            "payload": name,
            "processes": {str(p): text for p, text in processes.items()},
        }
        if failure is not None:
            doc["error"] = {
                "code": failure.code,
                "errno": failure.errno,
                "message": failure.message,
            }
        if left:
            doc["left"] = {str(p): text for p, text in left.items()}
        print(json.dumps(doc))
    else:
        render.table(["PID", "RESULT"], [[p, text] for p, text in processes.items()])
        if failure is not None:
            print(f"pylivepatch: {failure.code}: {failure.message}", file=sys.stderr)
        for pid, text in left.items():
            print(f"pylivepatch: left in process {pid}: {text}", file=sys.stderr)
    return EXIT_PARTIAL if left else exits.for_error(failure)


# --- installed payloads and the audit log --------------------------------------------


def install(args: argparse.Namespace) -> int:
    from ..agent import store
    from ..payload import archive

    item = store.install(args.app, archive.read_file(args.file))
    if args.json:
        print(json.dumps(item.to_dict()))
    else:
        print(
            f"installed {item.name} (build id {item.build_id[:16]}) for app {item.app} as number "
            f"{item.seq}: new processes of {item.app} apply it at start; running ones are not "
            f"changed (pylivepatch load {args.file} --app {item.app})"
        )
    return EXIT_OK


def uninstall(args: argparse.Namespace) -> int:
    from ..agent import store

    item = store.uninstall(args.app, args.name)
    if args.json:
        print(json.dumps(item.to_dict()))
    else:
        print(
            f"uninstalled {item.name} from app {item.app}: new processes no longer apply it; "
            f"running ones are not changed (pylivepatch revert {item.name} --app {item.app})"
        )
    return EXIT_OK


def installed(args: argparse.Namespace) -> int:
    from ..agent import store

    if args.pid or args.tree:
        raise UsageError("list --installed takes --app NAME (or nothing for every app)")
    items = [i for app in (args.app or store.apps()) for i in store.installed(app)]
    if args.json:
        print(json.dumps([i.to_dict() for i in items], indent=2))
        return EXIT_OK
    if not items:
        print("nothing installed" + (f" for app {', '.join(args.app)}" if args.app else ""))
        return EXIT_OK
    render.table(
        ["APP", "#", "NAME", "VERSION", "BUILD ID", "INSTALLED"],
        [[i.app, i.seq, i.name, i.version, i.build_id[:16],
          time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i.installed_at))] for i in items],
    )  # fmt: skip
    return EXIT_OK


def audit_log(args: argparse.Namespace) -> int:
    """The audit records of the target (every app's when no target is named): those of
    each ``--app``, and by pid from every app's log for ``-p``/``--tree`` (so processes
    that have exited are included)."""
    from ..agent import store

    pids = set(args.pid) | {p for root in args.tree for p in targets.tree(root)}
    if pids:
        apps = set(args.app)
        records = [
            r for app in store.apps() for r in store.read_audit(_app_of(app))
            if r.get("pid") in pids or (r.get("app") or "") in apps
        ]  # fmt: skip
    elif args.app:
        records = [r for app in args.app for r in store.read_audit(store.check_app(app))]
    else:
        records = [r for app in store.apps() for r in store.read_audit(_app_of(app))]
    records.sort(key=lambda r: float(r.get("time", 0)))
    if args.last:
        records = records[-args.last :]
    if args.json:
        print(json.dumps(records, indent=2))
        return EXIT_OK
    if not records:
        print("no audit records")
        return EXIT_OK
    render.table(
        ["TIME", "APP", "PID", "PEER", "ACTION", "PAYLOAD", "BUILD ID", "RESULT", "DURATION",
         "PAUSE"],
        [[r.get("at", ""), r.get("app", ""), r.get("pid", ""), _peer(r.get("peer") or {}),
          r.get("action", ""), r.get("payload", ""), str(r.get("build_id", ""))[:12],
          _result(r), f"{r['duration_ms']:.1f} ms" if "duration_ms" in r else "",
          f"{r['pause_us']:.0f} us" if r.get("pause_us") else ""] for r in records],
    )  # fmt: skip
    return EXIT_OK


def _app_of(directory: str) -> str | None:
    from ..agent import store

    return None if directory == store.NO_APP else directory


def _peer(peer: dict[str, Any]) -> str:
    via = str(peer.get("via", ""))
    if via == "socket":
        return f"uid {peer.get('uid')} pid {peer.get('pid')}"
    return via


def _result(r: dict[str, Any]) -> str:
    flags = r.get("flags")
    text = _outcome(r)
    return f"{text} ({', '.join(flags)})" if flags else text


def _outcome(r: dict[str, Any]) -> str:
    if r.get("event") == "forced":
        return "forced"
    if r.get("event") == "late-apply":
        return f"ok (module {r.get('module')} imported)"
    if r.get("event") == "reply-lost":
        return f"reply lost ({r.get('result', '')}: the client left; the action stands)"
    if r.get("event") == "refused" and r.get("module"):
        return f"{r.get('result', '')} (import of module {r.get('module')} refused)"
    return str(r.get("result", ""))
