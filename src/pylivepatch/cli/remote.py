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
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..agent import protocol
from ..client import Client
from ..errors import LivepatchError


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
        kids, todo, tree = _children(), [args.tree], []
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(kids.get(pid, []))
        pids = sorted(p for p in tree if p in live)
        if not pids:
            raise LivepatchError("not-found", f"no process in the tree of {args.tree} has an agent")
        return pids
    raise LivepatchError(
        "not-found", "name the target: -p PID, --app NAME or --tree PID (see `pylivepatch ps`)"
    )


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def ps(args: argparse.Namespace) -> int:
    infos = discover()
    if args.json:
        print(json.dumps(infos, indent=2))
        return 0
    if not infos:
        print("no process with a pylivepatch agent")
        return 0
    _print_table(
        [
            [str(i["pid"]), i["app"] or "-", i["python"], ",".join(i["applied"]) or "-"]
            for i in infos
        ],
        ["PID", "APP", "PYTHON", "APPLIED"],
    )
    return 0


def show(args: argparse.Namespace) -> int:
    """``list``, ``status NAME`` and ``log`` for every selected process."""
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
    for key, value in out.items():
        print(f"process {key}")
        if args.verb == "list":
            if not value:
                print("  nothing uploaded")
                continue
            _print_table(
                [[s["name"], s["state"], str(s["rc"]), s["build_id"][:16], (s["depends"] or "-")[:16],
                  ";".join(f"{k}={v}" for k, v in sorted(s["metadata"].items()))] for s in value],
                ["  NAME", "STATE", "RC", "BUILD ID", "DEPENDS", "METADATA"],
            )  # fmt: skip
        elif args.verb == "status":
            s = value
            print(f"  {s['name']}  {s['state']}  rc={s['rc']}  build {s['build_id'][:16]}")
            for f in s["funcs"]:
                print(
                    f"  function {f['target']}  {'active' if f['active'] else 'stacked' if f['applied'] else '-'}"
                )
        else:
            for ev in value:
                print(f"  {ev['seq']:>5} {ev['action']} {ev['payload']}: {ev['event']}")
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
    if args.verb in ("upload", "load"):
        data = Path(args.file).read_bytes() if Path(args.file).is_file() else None
        if data is None:
            raise LivepatchError("not-found", f"payload file {args.file} does not exist")
        from ..payload import archive

        name = archive.read(data).manifest.name if args.verb == "load" else args.name
        uploaded: list[int] = []
        for pid in pids:  # upload and check on all first
            try:
                Client(pid)._call("upload", name=name, data=base64.b64encode(data).decode())
                uploaded.append(pid)
                results[pid] = "uploaded"
            except LivepatchError as exc:
                results[pid], failure = f"{exc.code}: {exc.message}", exc
                break
        if failure is not None or args.verb == "upload":
            if failure is not None:
                for pid in uploaded:
                    _quietly(Client(pid).unload, name)
                    results[pid] = "uploaded, then unloaded (another process refused)"
            return _report(args, pids, results, failure)
    verb = "apply" if args.verb == "load" else args.verb
    for pid in pids:
        try:
            getattr(Client(pid), verb)(name, **options)
            done.append(pid)
            results[pid] = {
                "apply": "applied",
                "revert": "reverted",
                "replace": "replaced",
                "unload": "unloaded",
            }[verb]
        except LivepatchError as exc:
            results[pid], failure = f"{exc.code}: {exc.message}", exc
            break
    if failure is not None and verb in ("apply", "replace"):
        for pid in done:  # all or nothing: put back what was applied
            _quietly(Client(pid).revert, name)
            results[pid] = "applied, then reverted (another process refused)"
        if args.verb == "load":
            for pid in pids:
                _quietly(Client(pid).unload, name)
    return _report(args, pids, results, failure)


def _quietly(call: Any, *args: Any) -> None:
    try:
        call(*args)
    except LivepatchError:
        pass


def _report(
    args: argparse.Namespace,
    pids: list[int],
    results: dict[int, str],
    failure: LivepatchError | None,
) -> int:
    rows = [[str(pid), results.get(pid, "not attempted")] for pid in pids]
    if args.json:
        print(
            json.dumps(
                {
                    "ok": failure is None,
                    "processes": {str(p): results.get(p, "not attempted") for p in pids},
                }
            )
        )
    else:
        _print_table(rows, ["PID", "RESULT"])
    if failure is None:
        return 0
    return 2 if failure.retryable else 1


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
