"""``pylivepatch test FILE -- CMD…``: run CMD with payloads applied at the start of
every Python process it starts, and report whether they applied.

The boot ``sitecustomize`` sees ``$PYLIVEPATCH_TEST_PAYLOADS`` (paths, ``os.pathsep``
separated) and loads them in order with ``wait_imports`` — as an installed payload
would be at start — instead of starting an agent. Each process appends JSON lines to
``$PYLIVEPATCH_TEST_REPORT``: one per payload at start, and one at exit saying which
target modules were still never imported (the payload then did nothing there).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from typing import Any

PAYLOADS = "PYLIVEPATCH_TEST_PAYLOADS"
REPORT = "PYLIVEPATCH_TEST_REPORT"


def _write(record: dict[str, Any]) -> None:
    path = os.environ.get(REPORT)
    if not path:
        return
    line = (json.dumps({"pid": os.getpid(), **record}) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def apply_test_payloads() -> None:
    """Load the payloads named in the environment (in a process CMD started)."""
    from ..engine import engine
    from ..errors import LivepatchError

    e = engine()
    names: list[str] = []
    for path in filter(None, os.environ.get(PAYLOADS, "").split(os.pathsep)):
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            result = e.load(data, wait_imports=True)
            names.append(result.name)
            _write({"payload": result.name, "event": "applied", "argv": sys.argv[:3]})
        except LivepatchError as exc:
            _write({"payload": path, "event": "refused", "code": exc.code, "message": exc.message})
            print(f"pylivepatch test: {path} not applied: {exc}", file=sys.stderr)
        except OSError as exc:
            _write({"payload": path, "event": "refused", "code": "not-found", "message": str(exc)})

    def at_exit() -> None:
        for name in names:
            try:
                waiting = e.status(name).pending
            except LivepatchError:
                continue
            _write({"payload": name, "event": "exit", "never_imported": list(waiting)})

    if names:
        atexit.register(at_exit)


def summarize(path: str) -> tuple[list[str], bool]:
    """Lines for the operator and whether every process applied every payload."""
    records = []
    try:
        with open(path) as fh:
            records = [json.loads(line) for line in fh if line.strip()]
    except (OSError, ValueError):
        pass
    applied = [r for r in records if r["event"] == "applied"]
    refused = [r for r in records if r["event"] == "refused"]
    exits = {(r["pid"], r["payload"]): r["never_imported"] for r in records if r["event"] == "exit"}
    processes = {r["pid"] for r in records}
    lines = []
    for name in sorted({r["payload"] for r in applied}):
        pids = {r["pid"] for r in applied if r["payload"] == name}
        never: dict[str, int] = {}
        for p in pids:
            for module in exits.get((p, name), []):
                never[module] = never.get(module, 0) + 1
        lines.append(
            f"pylivepatch test: {name} applied at start in {len(pids)} of {len(processes)} "
            "Python processes"
        )
        for module, count in sorted(never.items()):
            lines.append(
                f"pylivepatch test: {name}: {module} was never imported in {count} of them "
                "(nothing to patch there)"
            )
    for r in refused:
        lines.append(
            f"pylivepatch test: {r['payload']} REFUSED in process {r['pid']}: "
            f"{r['code']}: {r['message']}"
        )
    if not records:
        lines.append("pylivepatch test: no Python process started; nothing was applied")
    return lines, bool(applied) and not refused
