"""Structured events of every action: the history, the audit log's source and the
transcript that scenario tests compare (like the kernel livepatch selftests' dmesg).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    seq: int
    time: float
    action: str
    payload: str
    kind: str  # started | checked | waiting | forced | swapped | finished | refused | note
    detail: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """The transcript line: stable text without times or durations."""
        skip = {"pause_ns", "pause_start_ns", "duration_ns", "elapsed_ns", "build_id", "signature"}
        parts = [f"{k}={_short(v)}" for k, v in self.detail.items() if k not in skip]
        return f"{self.action} {self.payload}: {self.kind}" + (
            " " + " ".join(parts) if parts else ""
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "action": self.action,
            "payload": self.payload,
            "event": self.kind,
            **self.detail,
        }

    def __str__(self) -> str:
        return self.line()


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_short(v) for v in value) + "]"
    return str(value)


class History:
    """A bounded in-memory list of events (the agent persists them as JSON lines)."""

    def __init__(self, limit: int = 10_000) -> None:
        self._events: list[Event] = []
        self._seq = 0
        self._limit = limit
        self._lock = threading.Lock()  # a refused action emits outside the engine's lock
        self.listeners: list[Callable[[Event], None]] = []

    def emit(self, action: str, payload: str, kind: str, **detail: Any) -> Event:
        with self._lock:
            self._seq += 1
            event = Event(self._seq, time.time(), action, payload, kind, detail)
            self._events.append(event)
            if len(self._events) > self._limit:
                del self._events[: len(self._events) - self._limit]
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001, S110 - an observer never breaks an action
                pass
        return event

    def events(self, since: int = 0) -> list[Event]:
        with self._lock:  # an emit may trim the front meanwhile
            return [e for e in self._events if e.seq > since]

    @property
    def last_seq(self) -> int:
        return self._seq
