"""The verbs that act on running processes through their agents (spec §10).

TARGET is ``-p PID``, ``--app NAME`` (every process of that app) and ``--tree PID``
(a process and its descendants), each repeatable and combinable: the processes any of
them names. With several processes an action is all or nothing: upload and check on
all, then apply on each; if one fails, those already changed are put back, and a
table shows each process's result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from ..agent import protocol
from ..client import Client
from ..errors import LivepatchError
from . import UsageError, render

TYPE_CHECKING = False  # not typing's: see pylivepatch/__init__.py
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

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


def discover(warn: bool = True) -> list[dict[str, Any]]:
    """Every process of this user with a live agent, by pid. The socket of a process
    that is gone (killed before it could remove it) is removed on the way. A socket
    whose listener is not the process it names (an impostor) is not listed (with
    ``warn``, a warning on stderr names it); a socket directory another user could
    write to is ``untrusted-socket`` (for root, each socket is checked on its own)."""
    found = []
    directory = protocol.socket_dir()
    if not directory.is_dir():
        return []
    if os.geteuid() != 0:
        protocol.check_dir(directory)
    paths = directory.glob("*.sock")
    for pid, path in sorted((int(p.stem), p) for p in paths if p.stem.isdigit()):
        try:
            info = Client(pid, timeout=5).ping()
            if info["pid"] != pid:  # checked to be pid, it says it is another process
                raise LivepatchError(
                    "untrusted-socket",
                    f"the agent of process {pid} ({path}) says it is process {info['pid']}",
                )
            found.append(info)
        except LivepatchError as exc:
            if exc.code == "untrusted-socket":
                if warn:
                    print(f"pylivepatch: warning: {exc} (not listed)", file=sys.stderr)
            elif not pid_exists(pid):
                try:
                    path.unlink()
                except OSError:
                    pass
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


def targeted(args: argparse.Namespace) -> bool:
    return bool(args.pid or args.app or args.tree)


def select(
    args: argparse.Namespace, live: list[dict[str, Any]] | None = None, complete: bool = False
) -> list[int]:
    """The processes every TARGET option names, in order, each once; an ``--app`` or
    ``--tree`` that names no live agent is ``not-found``. With ``complete`` (an action),
    so is a process of an ``--app`` or ``--tree`` that has no agent: a child of one of
    its processes running the same program (a worker forked by C code, which Python's
    at-fork hooks never see), whose code the action could not change."""
    if not targeted(args):
        raise UsageError("name the target: -p PID, --app NAME or --tree PID (see `pylivepatch ps`)")
    pids = list(args.pid)
    if args.app or args.tree:
        agents = {info["pid"]: info for info in (discover() if live is None else live)}
        groups: list[tuple[str, list[int]]] = []
        for app in args.app:
            found = sorted(p for p, info in agents.items() if info.get("app") == app)
            if not found:
                raise LivepatchError("not-found", f"no running process of app {app!r} has an agent")
            groups.append((f"app {app}", found))
        for root in args.tree:
            found = sorted(p for p in _tree(root) if p in agents)
            if not found:
                raise LivepatchError("not-found", f"no process in the tree of {root} has an agent")
            groups.append((f"the tree of {root}", found))
        for what, found in groups:
            pids += found
            if complete:  # and those whose agent started meanwhile
                pids += _all_have_agents(args, what, found, set(agents))
    return list(dict.fromkeys(pids))


#: how long a process of the target may take to start its agent (a worker just forked)
AGENT_GRACE = 3.0


def _all_have_agents(
    args: argparse.Namespace, what: str, members: list[int], agents: set[int]
) -> list[int]:
    """``not-found`` if a descendant of ``members`` runs the same program and has no
    agent (after ``AGENT_GRACE`` seconds for one just started); else the descendants
    whose agent started during that wait, which the action must change too."""
    deadline = time.monotonic() + AGENT_GRACE
    late: set[int] = set()
    while True:
        kids = _children()
        missing = {
            kid: parent for parent in members for kid in _descendants(kids, parent)
            if kid not in agents and _same_program(kid, parent)
        }  # fmt: skip
        if not missing:
            return sorted(late)
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
        # a worker just started has its agent once its socket is there: it is one of
        # the processes the action changes
        late |= {p for p in missing if protocol.socket_path(p).exists()}
        agents = agents | late
    listed = ", ".join(f"{kid} (child of {parent})" for kid, parent in sorted(missing.items()))
    app = f" --app {args.app[0]}" if args.app else ""
    raise LivepatchError(
        "not-found",
        f"process(es) {listed} of {what} run the same program and have no pylivepatch "
        f"agent: the action could not change their code, so nothing was changed. Give "
        f"them one (pylivepatch attach PID{app}; a server forking workers from C code "
        "under `pylivepatch run` gets none), or name the processes to change with -p",
    )


def _descendants(kids: dict[int, list[int]], root: int) -> list[int]:
    todo, found = list(kids.get(root, [])), []
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(kids.get(pid, []))
    return found


def _same_program(pid: int, other: int) -> bool:
    """Whether two live processes run the same executable (False if either cannot be
    read: gone, a zombie, another user's)."""
    try:
        a, b = os.stat(f"/proc/{pid}/exe"), os.stat(f"/proc/{other}/exe")
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _target_words(args: argparse.Namespace) -> str:
    """The TARGET options as typed, for hints."""
    return " ".join(
        [f"-p {p}" for p in args.pid] + [f"--app {a}" for a in args.app]
        + [f"--tree {t}" for t in args.tree]
    )  # fmt: skip


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
        return 0
    if not infos:
        if targeted(args):
            print("no process of the target has a pylivepatch agent")
        else:
            print("no process with a pylivepatch agent (start one with `pylivepatch run -- CMD`)")
        return 0

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
            events = client.log()
            out[str(pid)] = events[-args.last :] if args.last else events
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if args.verb == "list":
        rows = [
            [pid, s["name"], state_text(s), s["rc"], s["build_id"][:16], (s["depends"] or "")[:16],
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
                f"process {key}: {s['name']} {state_text(s)} rc={s['rc']} "
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


#: how long the clean-up of a failed action (revert, unload) is retried while the
#: process answers busy (another action of its own is finishing)
UNDO_WAIT = 10.0


def act(args: argparse.Namespace) -> int:
    """upload/apply/revert/replace/unload/load on every selected process, all or nothing.

    The report is the truth: a clean-up (revert, unload) that fails after a refusal is
    retried while the process is busy, and one that still fails leaves the process
    named in the table, with what it still has and the command that removes it (exit
    code 3, ``EXIT_PARTIAL``)."""
    # Only what brings new code in needs every same-program process to have an agent:
    # a revert or an unload (a rollback in an incident) goes where it can.
    pids = select(args, complete=args.verb in ("load", "apply", "replace"))
    options: dict[str, Any] = {}
    for key in ("nodeps", "timeout", "force"):
        if getattr(args, key, None):
            options[key] = getattr(args, key)
    checks = {k: True for k in ("no_expect", "no_object_check") if getattr(args, k, False)}
    if len(pids) > 1 or args.app or args.tree:
        # A process of the app that cannot import a target module (a multiprocessing
        # helper started elsewhere) waits for it, as at start (``install``); the table
        # says where each payload waits.
        checks["wait_imports"] = True
    results: dict[int, str] = {}
    left: dict[int, str] = {}  # process -> what the failed action left there
    done: list[int] = []
    name = getattr(args, "name", None)
    failure: LivepatchError | None = None
    data = b""
    uploaded: list[int] = []
    if args.verb in ("upload", "load"):
        import base64

        from ..payload import archive

        data = _payload_bytes(args.file)
        manifest = archive.read(data).manifest
        name = name or manifest.name
        encoded = base64.b64encode(data).decode()

        def upload_to(pid: int) -> tuple[str, LivepatchError | None]:
            try:
                Client(pid)._call("upload", name=name, data=encoded, **checks)
                return "uploaded", None
            except LivepatchError as exc:
                if _exited(pid, exc):
                    return EXITED, None
                if exc.code == "exists":
                    other = _status_or_none(pid, name)
                    if other is not None and other["build_id"] == manifest.build_id:
                        # the same payload is there already (installed, applied at
                        # start): not ours to unload if another process refuses
                        return "already uploaded", None
                    if other is not None:
                        exc = LivepatchError(
                            "exists", _new_version_hint(args, pid, other, manifest)
                        )
                return f"{exc.code}: {exc.message}", exc

        # Uploads only check and change nothing: they run side by side in every process.
        with (
            render.progress(f"upload {name}", len(pids)) as steps,
            _pool(len(pids)) as pool,
        ):
            for pid, (text, exc) in zip(pids, pool.map(upload_to, pids), strict=True):
                results[pid] = text
                if text == "uploaded":
                    uploaded.append(pid)
                if exc is not None and failure is None:
                    failure = exc
                steps.advance()
        if failure is None and checks.get("wait_imports"):
            failure = _imported_nowhere(pids, name, encoded, checks, results, uploaded)
        if failure is not None or args.verb == "upload":
            if failure is not None:
                for pid in uploaded:
                    results[pid] = "uploaded, then " + _unload_again(pid, name, left)
            return _report(args, name, pids, results, failure, left)
    assert name is not None
    verb = "apply" if args.verb == "load" else args.verb
    failed: int | None = None
    replaced: dict[int, list[str]] = {}  # replace: what each process had applied before
    if verb == "replace" and len(pids) > 1:
        for pid in pids:
            replaced[pid] = [
                s.name for s in Client(pid).list() if s.state == "APPLIED" and s.name != name
            ]
    with render.progress(f"{verb} {name}", len(pids)) as steps:
        for pid in pids:
            if results.get(pid) == EXITED:
                steps.advance()
                continue
            try:
                with _watching(pid, name, steps):
                    result = getattr(Client(pid), verb)(name, **options)
                if not result.noop:  # a process that already was so is not put back
                    done.append(pid)
                results[pid] = result.message if result.noop else DONE[verb]
                if verb == "apply":
                    waiting = Client(pid).status(name).pending
                    if waiting:
                        results[pid] += f"; waits for the import of {', '.join(waiting)}"
            except LivepatchError as exc:
                if _exited(pid, exc):  # a pool process retired meanwhile (Celery's)
                    results[pid] = EXITED
                    steps.advance()
                    continue
                results[pid], failure, failed = f"{exc.code}: {exc.message}", exc, pid
                break
            steps.advance()
    if failure is not None and verb in ("apply", "replace"):
        for pid in done:  # all or nothing: put back what was applied
            err = _retrying(lambda p=pid: Client(p).revert(name))
            if err is None:
                results[pid] = f"{DONE[verb]}, then reverted (another process refused)"
                if replaced.get(pid):  # a revert does not apply again what replace reverted
                    gone = ", ".join(replaced[pid])
                    again = " && ".join(f"pylivepatch apply {n} -p {pid}" for n in replaced[pid])
                    results[pid] = left[pid] = (
                        f"{results[pid]}; the payloads it replaced ({gone}) stay reverted "
                        f"here; apply them again: {again}"
                    )
            else:
                results[pid] = left[pid] = (
                    f"{DONE[verb]}, and NOT reverted ({err.code}: {err.message}): {name} is "
                    f"still APPLIED here; revert it: pylivepatch revert {name} -p {pid}"
                )
        if args.verb == "load":
            for pid in uploaded:  # only what this action uploaded
                if pid in left:
                    continue  # still applied: it cannot be unloaded
                if pid in done or pid == failed:
                    results[pid] += "; " + _unload_again(pid, name, left, results[pid])
                else:
                    results[pid] = "uploaded, then " + _unload_again(pid, name, left)
    if failure is None and (args.app or args.tree) and verb in ("apply", "revert"):
        fresh, failure = _newcomers(args, pids, name, verb, data, results, checks, left, options)
        pids += fresh
    return _report(args, name, pids, results, failure, left)


def _imported_nowhere(
    pids: list[int],
    name: str,
    encoded: str,
    checks: dict[str, bool],
    results: dict[int, str],
    uploaded: list[int],
) -> LivepatchError | None:
    """``not-found`` if a target module the payload waits for in every process (imported
    in none) cannot be imported either: a misspelt or absent module, refused as in a
    single process. One that exists in some process may wait in the others (a
    multiprocessing helper); one not imported anywhere yet but importable waits, as in
    a single process: the first process this action uploaded to is asked to check the
    payload again without waiting for what it cannot import."""
    waiting: set[str] | None = None
    for pid in pids:
        status = _status_or_none(pid, name) if results.get(pid) != EXITED else None
        if status is not None:
            modules = set(status["pending"])
            waiting = modules if waiting is None else waiting & modules
    if not waiting or not uploaded:
        return None
    pid = uploaded[0]
    strict = {k: v for k, v in checks.items() if k != "wait_imports"}
    refusal: LivepatchError | None = None
    if _retrying(lambda: Client(pid).unload(name)) is not None:
        return None  # not checked again: it keeps what it has
    try:
        Client(pid)._call("upload", name=name, data=encoded, **strict)
        return None
    except LivepatchError as exc:
        if exc.code == "not-found" and any(m in exc.message for m in waiting):
            refusal = exc
    try:  # as it was
        Client(pid)._call("upload", name=name, data=encoded, **checks)
    except LivepatchError as exc:
        uploaded.remove(pid)
        results[pid] = f"uploaded, then unloaded to check it again ({exc.code}: {exc.message})"
        if refusal is None:
            return LivepatchError(exc.code, f"process {pid}: {exc.message}")
    if refusal is None:
        return None
    listed = ", ".join(sorted(waiting))
    return LivepatchError(
        "not-found",
        f"module(s) {listed} of payload {name} are imported in none of the processes of "
        f"the target and cannot be imported ({refusal.message}): a misspelt or absent "
        "module? nothing was changed; fix the target module names and build the payload "
        "again",
    )


def _retrying(call: Any) -> LivepatchError | None:
    """Run a clean-up step, again while the process answers ``busy`` (at most
    ``UNDO_WAIT`` seconds); its error if it still fails, None if it is done."""
    deadline, delay = time.monotonic() + UNDO_WAIT, 0.05
    while True:
        try:
            call()
            return None
        except LivepatchError as exc:
            if exc.code != "busy" or time.monotonic() + delay > deadline:
                return exc
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _unload_again(pid: int, name: str, left: dict[int, str], before: str = "") -> str:
    """Unload what this action uploaded in ``pid``: "unloaded ...", or what is left
    (recorded in ``left``) and how to remove it."""
    err = _retrying(lambda: Client(pid).unload(name))
    if err is None or err.code == "not-found":
        return "unloaded (another process refused)" if not before else "unloaded again"
    text = (
        f"NOT unloaded ({err.code}: {err.message}): {name} is still uploaded (CHECKED) "
        f"here; remove it: pylivepatch unload {name} -p {pid}"
    )
    left[pid] = f"{before}; {text}" if before else f"uploaded, then {text}"
    return text


@contextmanager
def _watching(pid: int, name: str, steps: render.Steps) -> Iterator[None]:
    """While an action runs in ``pid``, show its transition (what it waits for) in the
    progress line: ``status`` is read every 0.2 s from a second connection."""
    if not steps.live:
        yield
        return
    stop = threading.Event()

    def watch() -> None:
        client = Client(pid, timeout=5)
        while not stop.wait(0.2):
            try:
                s = asdict(client.status(name))
            except LivepatchError:
                continue
            text = _transition(s)
            blockers = (s.get("in_progress") or {}).get("blockers") or []
            if text:
                steps.note(f"process {pid}: {text}" + (f": {blockers[0]}" if blockers else ""))

    watcher = threading.Thread(target=watch, name="pylivepatch-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(10)


def _status_or_none(pid: int, name: str) -> dict[str, Any] | None:
    try:
        return asdict(Client(pid).status(name))
    except LivepatchError:
        return None


def _new_version_hint(
    args: argparse.Namespace, pid: int, other: dict[str, Any], manifest: Any
) -> str:
    """What to do when another build of a payload of this name is in the process."""
    name, target, file = manifest.name, _target_words(args), args.file
    have = f"{name} {other.get('version') or ''} (build {other['build_id'][:16]})".replace(
        "  ", " "
    )
    new = f"build {manifest.build_id[:16]}"
    if other["state"] == "CHECKED":
        return (
            f"{have} is uploaded in process {pid}, this file is another build ({new}); "
            f"unload it first: pylivepatch unload {name} {target}, then {args.verb} {file} again"
        )
    return (
        f"{have} is {other['state']} in process {pid}, this file is another build ({new}); "
        f"to move to it: pylivepatch revert {name} {target} && pylivepatch unload {name} "
        f"{target} && pylivepatch load {file} {target} (the original code runs in between), "
        f"or, with no gap, build the new version with --replace under another name and load "
        f"that: it replaces {name} in one step"
    )


DONE = {"apply": "applied", "revert": "reverted", "replace": "replaced", "unload": "unloaded"}


def _newcomers(
    args: argparse.Namespace,
    seen: list[int],
    name: str,
    verb: str,
    data: bytes,
    results: dict[int, str],
    checks: dict[str, bool],
    left: dict[int, str],
    options: dict[str, Any],
) -> tuple[list[int], LivepatchError | None]:
    """Processes of the target that appeared during the action (a worker respawned by
    its master): bring each to the same state as the others, with the same options;
    one that cannot be is recorded in ``left``, and the first such error returned with
    them. A newcomer holding another build under the payload's name is not given it."""
    try:
        now = select(args)
    except LivepatchError:
        return [], None
    fresh = [p for p in now if p not in seen]
    first: LivepatchError | None = None
    build = ""  # the build the others were given (apply, load)
    if fresh and verb == "apply":
        if data:
            from ..payload import archive

            build = archive.read(data).manifest.build_id
        else:
            for pid in seen:
                status = _status_or_none(pid, name)
                if status is not None:
                    build = status["build_id"]
                    break
    for pid in fresh:
        client = Client(pid)
        try:
            present = {s.name: s for s in client.list()}
            applied = name in present and present[name].state == "APPLIED"
            if verb == "apply" and name in present and build != present[name].build_id:
                other = present[name]
                results[pid] = left[pid] = (
                    f"appeared during the action with another build of {name} (build "
                    f"{other.build_id[:16]}, {other.state}), not build {build[:16]}: NOT "
                    f"changed; see it: pylivepatch status {name} -p {pid}"
                )
                first = first or LivepatchError(
                    "exists", f"process {pid} has another build of {name}: {results[pid]}"
                )
                continue
            if verb == "apply" and not applied:
                if data and name not in present:  # (forked after the upload: it has it)
                    client.load(data, **checks, **options)
                else:
                    client.apply(name, **options)
                results[pid] = "appeared during the action: applied"
            elif verb == "revert" and applied:
                client.revert(name, **{k: v for k, v in options.items() if k != "nodeps"})
                results[pid] = "appeared during the action: reverted"
            else:
                results[pid] = f"appeared during the action: already {DONE[verb]}"
        except LivepatchError as exc:
            if _exited(pid, exc):
                results[pid] = f"appeared and {EXITED}"
                continue
            again = f"load {args.file}" if data else f"{verb} {name}"
            results[pid] = left[pid] = (
                f"appeared during the action and is NOT {DONE[verb]} ({exc.code}: "
                f"{exc.message}); bring it along: pylivepatch {again} -p {pid}"
            )
            first = first or LivepatchError(exc.code, f"process {pid}: {exc.message}")
    return fresh, first


def _payload_bytes(path: str) -> bytes:
    from ..payload import archive

    return archive.read_file(path)


class _Inline:
    """The "pool" for one process: its upload runs in this thread (a command line on
    one process, the common case, does not import ``concurrent.futures``)."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    map = staticmethod(map)


def _pool(n: int) -> Any:
    """Up to 16 threads for ``n`` processes' uploads, side by side."""
    if n <= 1:
        return _Inline()
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=min(16, n))


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
    from . import EXIT_PARTIAL

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
    if left:
        return EXIT_PARTIAL
    if failure is None:
        return 0
    return 2 if failure.retryable else 1


# --- installed payloads and the audit log --------------------------------------------


def install(args: argparse.Namespace) -> int:
    from ..agent import store

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
    from ..agent import store

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
    from ..agent import store

    if args.pid or args.tree:
        raise UsageError("list --installed takes --app NAME (or nothing for every app)")
    items = [i for app in (args.app or store.apps()) for i in store.installed(app)]
    if args.json:
        print(json.dumps([i.to_dict() for i in items], indent=2))
        return 0
    if not items:
        print("nothing installed" + (f" for app {', '.join(args.app)}" if args.app else ""))
        return 0
    render.table(
        ["APP", "#", "NAME", "VERSION", "BUILD ID", "INSTALLED"],
        [[i.app, i.seq, i.name, i.version, i.build_id[:16],
          time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i.installed_at))] for i in items],
    )  # fmt: skip
    return 0


def audit_log(args: argparse.Namespace) -> int:
    """The audit records of the target (every app's when no target is named): those of
    each ``--app``, and by pid from every app's log for ``-p``/``--tree`` (so processes
    that have exited are included)."""
    from ..agent import store

    pids = set(args.pid) | {p for root in args.tree for p in _tree(root)}
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


def _tree(root: int) -> list[int]:
    kids, todo, tree = _children(), [root], []
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(kids.get(pid, []))
    return tree


#: a process of the target that exited during the action (nothing left to change there)
EXITED = "exited during the action"


def _exited(pid: int, exc: LivepatchError) -> bool:
    """Whether ``exc`` only says that ``pid`` exited meanwhile (a pool process retired
    after its last task, a worker recycled): its agent did not answer or closed the
    connection, and within a second the process is gone or a zombie."""
    if exc.code not in ("not-found", "busy"):  # no answer, or the connection closed
        return False
    deadline = time.monotonic() + 1.0
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
