"""pylivepatch: live patching for running Python services.

The public API, and nothing else: tests and programs outside the project import
these names only. They are imported on first use (PEP 562), so that ``import
pylivepatch`` and the command line do not pay for the engine until they need it.
"""

from __future__ import annotations

import sys
import types

# Not ``typing.TYPE_CHECKING``: importing ``typing`` would cost every process that
# imports pylivepatch (the command line, an idle agent) milliseconds and memory; type
# checkers read this name as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .agent.server import start
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

del TYPE_CHECKING

__version__ = "0.1.0"

_WHERE = {
    "ActionResult": ".engine",
    "Client": ".client",
    "Engine": ".engine",
    "Event": ".engine",
    "FuncStatus": ".engine",
    "LivepatchError": ".errors",
    "Patch": ".payload.authoring",
    "PayloadStatus": ".engine",
    "State": ".engine",
    "engine": ".engine",
    "shadow": ".engine",
    "start": ".agent.server",
}

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


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'pylivepatch' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


class _Package(types.ModuleType):
    """``pylivepatch.engine`` is the function; importing the ``pylivepatch.engine``
    subpackage must not rebind it to the module (the import system sets the
    attribute on the parent package after loading a submodule)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "engine" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
