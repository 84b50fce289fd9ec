"""The verbs that act on running processes through their agents (SPEC §10).

TARGET is ``-p PID`` (repeatable), ``--app NAME`` (every process of that app) or
``--tree PID`` (a process and its descendants). With several processes an action is
all or nothing: upload and check on all, then apply on each; if one fails, those
already changed are put back, and a table shows each process's result.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..agent import protocol, store
from ..client import Client
from ..errors import LivepatchError
from ..payload import archive
from . import render


def add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-p", "--pid", type=int, action="append", default=[], help="a process (repeatable)"
    )
    p.add_argument("--app", help="every process started with `pylivepatch run --app NAME`")
    p.add_argument("--tree", type=int, metavar="PID", help="a process and its descendants")
    p.add_argument("--json", action="store_true", help="print JSON")


def discover() -> list[dict[str, Any]]:
    """Every process of this user with a live agent."""
    found = []
    directory = protocol.socket_dir()
    for path in sorted(directory.glob("*.sock")) if directory.is_dir() else []:
        try:
            pid = int(path.stem)
            found.append(Client(pid, timeout=5).ping())
        except (ValueError, LivepatchError):
            continue  # not a pid, or a process that is gone
    return found


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def select(args: argparse.Namespace) -> list[int]:
    if args.pid:
        return list(dict.fromkeys(args.pid))
    live = {info["pid"]: info for info in discover()}
    if args.app:
        pids = sorted(p for p, info in live.items() if info.get("app") == args.app)
        if not pids:
            raise LivepatchError(
                "not-found", f"no running process of app {args.app!r} has an agent"
            )
        return pids
    if args.tree:
        pids = sorted(p for p in _tree(args.tree) if p in live)
        if not pids:
            raise LivepatchError("not-found", f"no process in the tree of {args.tree} has an agent")
        return pids
    raise LivepatchError(
        "not-found", "name the target: -p PID, --app NAME or --tree PID (see `pylivepatch ps`)"
    )


def ps(args: argparse.Namespace) -> int:
    infos = discover()
    if args.json:
        print(json.dumps(infos, indent=2))
        return 0
    if not infos:
        print("no process with a pylivepatch agent (start one with `pylivepatch run -- CMD`)")
        return 0
    render.table(
        ["PID", "APP", "PYTHON", "APPLIED"],
        [[i["pid"], i["app"], i["python"], ", ".join(i["applied"])] for i in infos],
    )
    return 0


def _transition(s: dict[str, Any]) -> str:
    run = s.get("in_progress")
    if not run:
        return ""
    text = f"{run.get('action', '')} {run.get('transition', '')}".strip()
    if run.get("target"):
        text += f" -> {run['target']}"
    if "elapsed" in run:
        text += f" {float(run['elapsed']):.1f}s"
    blockers = run.get("blockers") or []
    return text + (f", {len(blockers)} blocked" if blockers else "")


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
            out[str(pid)] = client.log()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if args.verb == "list":
        rows = [
            [pid, s["name"], s["state"], s["rc"], s["build_id"][:16], (s["depends"] or "")[:16],
             s["version"], ", ".join(f"{k}={v}" for k, v in sorted(s["metadata"].items())),
             s.get("signature", ""), _transition(s)]
            for pid, payloads in out.items() for s in payloads
        ]  # fmt: skip
        if not rows:
            print("no payload uploaded in " + ", ".join(f"process {p}" for p in out))
            return 0
        render.table(
            ["PID", "NAME", "STATE", "RC", "BUILD ID", "DEPENDS", "VERSION", "METADATA",
             "SIGNATURE", "TRANSITION"],
            rows,
        )  # fmt: skip
    elif args.verb == "status":
        for key, s in out.items():
            error = f"  error {s['error']}: {s['message']}" if s["error"] else ""
            render.line(
                f"process {key}: {s['name']} {s['state']} rc={s['rc']} "
                f"build {s['build_id'][:16]} consistency {s['consistency']} "
                f"{s.get('signature', '')}{error}"
            )
            if _transition(s):
                render.line(f"  transition: {_transition(s)}")
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
    return 0


def act(args: argparse.Namespace) -> int:
    """upload/apply/revert/replace/unload/load on every selected process, all or nothing."""
    pids = select(args)
    options: dict[str, Any] = {}
    for key in ("nodeps", "timeout", "force"):
        if getattr(args, key, None):
            options[key] = getattr(args, key)
    results: dict[int, str] = {}
    done: list[int] = []
    name = getattr(args, "name", None)
    failure: LivepatchError | None = None
    data = b""
    uploaded: list[int] = []
    if args.verb in ("upload", "load"):
        data = _payload_bytes(args.file)
        manifest = archive.read(data).manifest
        name = manifest.name if args.verb == "load" else args.name
        encoded = base64.b64encode(data).decode()

        def upload_to(pid: int) -> tuple[str, LivepatchError | None]:
            try:
                Client(pid)._call("upload", name=name, data=encoded)
                return "uploaded", None
            except LivepatchError as exc:
                if exc.code == "exists" and _has(pid, name, manifest.build_id):
                    # the same payload is there already (installed, applied at start):
                    # not ours to unload if another process refuses
                    return "already uploaded", None
                return f"{exc.code}: {exc.message}", exc

        # Uploads only check and change nothing: they run side by side in every process.
        with (
            render.progress(f"upload {name}", len(pids)) as advance,
            ThreadPoolExecutor(max_workers=min(16, len(pids))) as pool,
        ):
            for pid, (text, exc) in zip(pids, pool.map(upload_to, pids), strict=True):
                results[pid] = text
                if text == "uploaded":
                    uploaded.append(pid)
                if exc is not None and failure is None:
                    failure = exc
                advance()
        if failure is not None or args.verb == "upload":
            if failure is not None:
                for pid in uploaded:
                    _quietly(Client(pid).unload, name)
                    results[pid] = "uploaded, then unloaded (another process refused)"
            return _report(args, name, pids, results, failure)
    assert name is not None
    verb = "apply" if args.verb == "load" else args.verb
    with render.progress(f"{verb} {name}", len(pids)) as advance:
        for pid in pids:
            try:
                result = getattr(Client(pid), verb)(name, **options)
                if not result.noop:  # a process that already was so is not put back
                    done.append(pid)
                results[pid] = result.message if result.noop else DONE[verb]
                if verb == "apply":
                    waiting = Client(pid).status(name).pending
                    if waiting:
                        results[pid] += f"; waits for the import of {', '.join(waiting)}"
            except LivepatchError as exc:
                results[pid], failure = f"{exc.code}: {exc.message}", exc
                break
            advance()
    if failure is not None and verb in ("apply", "replace"):
        for pid in done:  # all or nothing: put back what was applied
            _quietly(Client(pid).revert, name)
            results[pid] = f"{DONE[verb]}, then reverted (another process refused)"
        if args.verb == "load":
            for pid in uploaded:  # only what this action uploaded
                _quietly(Client(pid).unload, name)
    if failure is None and (args.app or args.tree) and verb in ("apply", "revert"):
        pids += _newcomers(args, pids, name, verb, data, results)
    return _report(args, name, pids, results, failure)


DONE = {"apply": "applied", "revert": "reverted", "replace": "replaced", "unload": "unloaded"}


def _newcomers(
    args: argparse.Namespace,
    seen: list[int],
    name: str,
    verb: str,
    data: bytes,
    results: dict[int, str],
) -> list[int]:
    """Processes of the target that appeared during the action (a worker respawned by
    its master): bring each to the same state as the others."""
    try:
        now = select(args)
    except LivepatchError:
        return []
    fresh = [p for p in now if p not in seen]
    for pid in fresh:
        client = Client(pid)
        try:
            applied = any(s.name == name and s.state == "APPLIED" for s in client.list())
            if verb == "apply" and not applied:
                if data:
                    client.load(data)
                else:
                    client.apply(name)
                results[pid] = "appeared during the action: applied"
            elif verb == "revert" and applied:
                client.revert(name)
                results[pid] = "appeared during the action: reverted"
            else:
                results[pid] = f"appeared during the action: already {DONE[verb]}"
        except LivepatchError as exc:
            results[pid] = f"appeared during the action: {exc.code}: {exc.message}"
    return fresh


def _payload_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise LivepatchError("not-found", f"payload file {path} does not exist") from None
    except OSError as exc:
        raise LivepatchError(
            "not-found", f"cannot read payload file {path}: {exc.strerror}"
        ) from None


def _has(pid: int, name: str, build_id: str) -> bool:
    try:
        return Client(pid).status(name).build_id == build_id
    except LivepatchError:
        return False


def _quietly(call: Any, *args: Any) -> None:
    try:
        call(*args)
    except LivepatchError:
        pass


def _report(
    args: argparse.Namespace,
    name: str,
    pids: list[int],
    results: dict[int, str],
    failure: LivepatchError | None,
) -> int:
    if args.json:
        doc: dict[str, Any] = {
            "ok": failure is None,
            "action": args.verb,
            "payload": name,
            "processes": {str(p): results.get(p, "not attempted") for p in pids},
        }
        if failure is not None:
            doc["error"] = {
                "code": failure.code,
                "errno": failure.errno,
                "message": failure.message,
            }
        print(json.dumps(doc))
    else:
        render.table(["PID", "RESULT"], [[p, results.get(p, "not attempted")] for p in pids])
    if failure is None:
        return 0
    if not args.json:
        print(f"pylivepatch: {failure.code}: {failure.message}", file=sys.stderr)
    return 2 if failure.retryable else 1


# --- installed payloads and the audit log --------------------------------------------


def install(args: argparse.Namespace) -> int:
    item = store.install(args.app, _payload_bytes(args.file))
    if args.json:
        print(json.dumps(item.to_dict()))
    else:
        print(
            f"installed {item.name} (build id {item.build_id[:16]}) for app {item.app} as number "
            f"{item.seq}: new processes of {item.app} apply it at start; running ones are not "
            f"changed (pylivepatch load {args.file} --app {item.app})"
        )
    return 0


def uninstall(args: argparse.Namespace) -> int:
    item = store.uninstall(args.app, args.name)
    if args.json:
        print(json.dumps(item.to_dict()))
    else:
        print(
            f"uninstalled {item.name} from app {item.app}: new processes no longer apply it; "
            f"running ones are not changed (pylivepatch revert {item.name} --app {item.app})"
        )
    return 0


def installed(args: argparse.Namespace) -> int:
    if args.pid or args.tree:
        raise LivepatchError(
            "invalid-payload", "list --installed takes --app NAME (or nothing for every app)"
        )
    items = [i for app in ([args.app] if args.app else store.apps()) for i in store.installed(app)]
    if args.json:
        print(json.dumps([i.to_dict() for i in items], indent=2))
        return 0
    if not items:
        print("nothing installed" + (f" for app {args.app}" if args.app else ""))
        return 0
    render.table(
        ["APP", "#", "NAME", "VERSION", "BUILD ID", "INSTALLED"],
        [[i.app, i.seq, i.name, i.version, i.build_id[:16],
          time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i.installed_at))] for i in items],
    )  # fmt: skip
    return 0


def audit_log(args: argparse.Namespace) -> int:
    """The audit records of the target (every app's when no target is named)."""
    if args.app:
        records = store.read_audit(store.check_app(args.app))
    else:
        records = [r for app in store.apps() for r in store.read_audit(_app_of(app))]
        if args.pid or args.tree:
            pids = set(args.pid) if args.pid else set(_tree(args.tree))
            records = [r for r in records if r.get("pid") in pids]
    records.sort(key=lambda r: float(r.get("time", 0)))
    if args.last:
        records = records[-args.last :]
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    if not records:
        print("no audit records")
        return 0
    render.table(
        ["TIME", "APP", "PID", "PEER", "ACTION", "PAYLOAD", "BUILD ID", "RESULT", "DURATION",
         "PAUSE"],
        [[r.get("at", ""), r.get("app", ""), r.get("pid", ""), _peer(r.get("peer") or {}),
          r.get("action", ""), r.get("payload", ""), str(r.get("build_id", ""))[:12],
          _result(r), f"{r['duration_ms']:.1f} ms" if "duration_ms" in r else "",
          f"{r['pause_us']:.0f} us" if r.get("pause_us") else ""] for r in records],
    )  # fmt: skip
    return 0


def _app_of(directory: str) -> str | None:
    return None if directory == store.NO_APP else directory


def _peer(peer: dict[str, Any]) -> str:
    via = str(peer.get("via", ""))
    if via == "socket":
        return f"uid {peer.get('uid')} pid {peer.get('pid')}"
    return via


def _result(r: dict[str, Any]) -> str:
    if r.get("event") == "forced":
        return "forced"
    if r.get("event") == "late-apply":
        return f"ok (module {r.get('module')} imported)"
    if r.get("event") == "reply-lost":
        return f"reply lost ({r.get('result', '')}: the client left; the action stands)"
    if r.get("event") == "refused" and r.get("module"):
        return f"{r.get('result', '')} (import of module {r.get('module')} refused)"
    return str(r.get("result", ""))


def _tree(root: int) -> list[int]:
    kids, todo, tree = _children(), [root], []
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(kids.get(pid, []))
    return tree


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
