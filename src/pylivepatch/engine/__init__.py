"""The in-process engine: life cycle, swapping, pauses (standard library only)."""

from __future__ import annotations

import threading

from . import shadow
from .core import Engine
from .events import Event
from .records import ActionResult, FuncStatus, PayloadStatus
from .table import Action, State

__all__ = [
    "Action",
    "ActionResult",
    "Engine",
    "Event",
    "FuncStatus",
    "PayloadStatus",
    "State",
    "engine",
    "shadow",
]

_engine: Engine | None = None
_engine_lock = threading.Lock()


def engine() -> Engine:
    """The process-wide engine (created on first use)."""
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                _engine = Engine()
    return _engine
