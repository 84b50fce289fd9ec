"""pylivepatch: live patching for running Python services.

The public API, and nothing else: tests and programs outside the project import
these names only.
"""

from __future__ import annotations

from .agent import start
from .client import Client
from .engine import (
    ActionResult,
    Engine,
    Event,
    FuncStatus,
    PayloadStatus,
    State,
    engine,
    shadow,
)
from .errors import LivepatchError
from .payload.authoring import Patch

__version__ = "0.1.0"

__all__ = [
    "ActionResult",
    "Client",
    "Engine",
    "Event",
    "FuncStatus",
    "LivepatchError",
    "Patch",
    "PayloadStatus",
    "State",
    "__version__",
    "engine",
    "shadow",
    "start",
]
