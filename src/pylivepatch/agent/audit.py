"""The audit log (spec §9): one JSON line for every action in this process.

The agent registers :class:`Audit` as a listener of the engine, so every action is
recorded whoever asked for it: a client over the control socket (its uid and pid from
``SO_PEERCRED``), the program itself through ``pylivepatch.engine()``, the start-up of
the process (installed payloads), or an import that patched a module late. Each record
says what was asked: the mode (``mode``: the consistency asked for, or the one the
action ran with), the flags (``force``, ``nodeps``, ``no-expect``...) and the timeout.
Lines go to the app's ``audit.jsonl`` (see :mod:`.store`). A log that cannot be written
is reported on stderr (once) and to the client of the request (its reply's
``audit_error``, see :func:`take_failure`); with ``PYLIVEPATCH_AUDIT=require`` the
agent refuses every action whose request it cannot record first
(``audit-failed``; docs/security.md).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager

from .. import process_engine

TYPE_CHECKING = False  # not typing's: see pylivepatch/__init__.py
if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType
    from typing import Any

    from ..engine.events import Event

_context = threading.local()

#: the engine events that become audit records
AUDITED = frozenset({"finished", "forced", "refused", "stuck", "requested"})

#: ``PYLIVEPATCH_AUDIT``: ``require`` makes the agent refuse an action it cannot log
POLICY_ENV = "PYLIVEPATCH_AUDIT"


def required() -> bool:
    """Whether actions must be refused when the audit log cannot be written."""
    return os.environ.get(POLICY_ENV, "").strip().lower() == "require"


def take_failure() -> str | None:
    """Why the audit log could not be written while this thread served its request
    (None if every record was written), and forget it."""
    failure = getattr(_context, "failure", None)
    _context.failure = None
    return failure


def _asked(detail: dict[str, Any]) -> dict[str, Any]:
    """The mode, flags and timeout an event says its action was asked with."""
    asked: dict[str, Any] = {k: detail[k] for k in ("mode", "flags", "timeout") if k in detail}
    if detail.get("force") is True:  # a revert asked for during a transition
        asked["flags"] = [*asked.get("flags", []), "force"]
    return asked


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


def _store() -> ModuleType:
    """:mod:`.store`, imported at the first record (an idle agent has not written one),
    under the engine's fork lock like the agent's other late imports."""
    return process_engine.imported(f"{__package__}.store")


class Audit:
    """Writes audit records of one app."""

    def __init__(self, app: str | None) -> None:
        self.app = app or None
        self._warned = False

    def __call__(self, event: Event) -> None:
        late = event.kind == "swapped" and "module" in event.detail
        if event.kind == "started":  # what it was asked with, for its records
            _context.asked = (event.action, event.payload, _asked(event.detail))
        if event.kind == "checked" and "consistency" in event.detail:
            asked = getattr(_context, "asked", None)
            if asked is not None and asked[:2] == (event.action, event.payload):
                asked[2]["mode"] = event.detail["consistency"]  # the mode it runs with
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
        asked = getattr(_context, "asked", None)
        if event.kind in ("refused", "requested"):
            record.update(_asked(d))
        elif asked is not None and asked[:2] == (event.action, event.payload) and not late:
            record.update(asked[2])
            record["flags"] = list(asked[2].get("flags", []))
            if event.kind == "finished":
                _context.asked = None
        flags = getattr(_context, "flags", None)
        if flags is not None and event.kind == "finished":
            _context.flags = None
            if flags[:2] == (event.action, event.payload):
                record["flags"] = sorted({*record.get("flags", []), *flags[2]})
        if not record.get("flags"):
            record.pop("flags", None)
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

    def write(self, record: dict[str, Any], when: float | None = None) -> bool:
        """Append ``record``; False (and the reason kept for :func:`take_failure`) if
        the log cannot be written."""
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
            store = _store()
            store.append_audit(self.app, full)
        except Exception as exc:  # noqa: BLE001 - never fail an action for its log
            try:
                where = f" {_store().audit_path(self.app)}"
            except Exception:  # noqa: BLE001 - the path itself is what fails
                where = ""
            why = f"cannot write the audit log{where}: {exc}"
            _context.failure = why
            if not self._warned:
                self._warned = True
                print(f"pylivepatch: {why}", file=sys.stderr)
            return False
        return True
