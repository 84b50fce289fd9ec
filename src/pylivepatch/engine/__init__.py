"""The in-process engine: life cycle, swapping, pauses (standard library only)."""

from __future__ import annotations

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


def engine() -> Engine:
    """The process-wide engine (created on first use)."""
    from ..process_engine import get

    return get()
