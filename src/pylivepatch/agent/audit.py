"""The audit log (SPEC §9): one JSON line for every action in this process.

The agent registers :class:`Audit` as a listener of the engine, so every action is
recorded whoever asked for it: a client over the control socket (its uid and pid from
``SO_PEERCRED``), the program itself through ``pylivepatch.engine()``, the start-up of
the process (installed payloads), or an import that patched a module late. Lines go to
the app's ``audit.jsonl`` (see :mod:`.store`); a failing disk never fails an action, it
is reported once on stderr.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from . import store

if TYPE_CHECKING:
    from ..engine.events import Event

_context = threading.local()

#: the engine events that become audit records
AUDITED = frozenset({"finished", "forced", "refused", "stuck", "requested"})


@contextmanager
def requested_by(via: str, uid: int | None = None, pid: int | None = None) -> Iterator[None]:
    """Attribute the actions run in this thread to a peer."""
    previous = getattr(_context, "peer", None)
    _context.peer = {"via": via, "uid": uid, "pid": pid}
    try:
        yield
    finally:
        _context.peer = previous


def current_peer() -> dict[str, Any]:
    peer = getattr(_context, "peer", None)
    if peer is not None:
        return dict(peer)
    # no agent request in this thread: the program itself, or an import patching late
    return {"via": "in-process", "uid": os.getuid(), "pid": os.getpid()}


class Audit:
    """Writes audit records of one app."""

    def __init__(self, app: str | None) -> None:
        self.app = app or None
        self._warned = False

    def __call__(self, event: Event) -> None:
        late = event.kind == "swapped" and "module" in event.detail
        if event.kind == "checked" and event.detail.get("flags"):
            # checks the caller turned off (--no-expect, --no-object-check): carried to
            # the record of the action they were turned off for
            _context.flags = (event.action, event.payload, list(event.detail["flags"]))
        if event.kind not in AUDITED and not late:
            return
        d = event.detail
        record: dict[str, Any] = {
            "action": event.action,
            "payload": event.payload,
            "event": "late-apply" if late else event.kind,
            "build_id": d.get("build_id", ""),
            "signature": d.get("signature", ""),
            "result": d.get("error") or ("refused" if event.kind == "refused" else "ok"),
            "rc": d.get("rc", 0),
        }
        if "message" in d:
            record["message"] = d["message"]
        flags = getattr(_context, "flags", None)
        if flags is not None and event.kind == "finished":
            _context.flags = None
            if flags[:2] == (event.action, event.payload):
                record["flags"] = flags[2]
        if "module" in d:
            record["module"] = d["module"]
        if "duration_ns" in d:
            record["duration_ms"] = round(d["duration_ns"] / 1e6, 3)
        if "pause_ns" in d:
            record["pause_us"] = round(d["pause_ns"] / 1e3, 1)
        if event.kind in ("forced", "stuck"):
            record["blockers"] = d.get("blockers", [])
            if "reason" in d:
                record["reason"] = d["reason"]
        if late:
            with requested_by("import", os.getuid(), os.getpid()):
                self.write(record, when=event.time)
        else:
            self.write(record, when=event.time)

    def write(self, record: dict[str, Any], when: float | None = None) -> None:
        when = time.time() if when is None else when
        full = {
            "time": round(when, 6),
            "at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
            + f".{int(when % 1 * 1000):03d}Z",
            "pid": os.getpid(),
            "app": self.app or "",
            "python": sys.version.split()[0],
            "peer": current_peer(),
            **record,
        }
        try:
            store.append_audit(self.app, full)
        except Exception as exc:  # noqa: BLE001 - never fail an action for its log
            if not self._warned:
                self._warned = True
                print(f"pylivepatch: cannot write the audit log: {exc}", file=sys.stderr)
