"""The process-wide engine, created on first use.

The engine and its compiler cost a few MB and tens of milliseconds to import; an agent
that is only waiting does not need them. ``created()`` says whether the engine exists
without importing it; ``when_created`` runs a callback on it as soon as it exists (the
agent's audit log listens to it that way).
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Callable
from types import ModuleType

TYPE_CHECKING = False  # not typing's: an idle agent imports this module (see __init__.py)
if TYPE_CHECKING:
    from .engine.core import Engine

_engine: Engine | None = None
_lock = threading.Lock()
_callbacks: list[Callable[[Engine], None]] = []


def get() -> Engine:
    global _engine
    if _engine is None:
        with _lock:
            if _engine is None:
                from .engine.core import Engine

                made = Engine()
                for callback in _callbacks:
                    callback(made)
                _engine = made
    return _engine


def created() -> Engine | None:
    return _engine


def imported(name: str) -> ModuleType:
    """Import ``name`` for the agent under the same lock as the engine's creation, so
    that a fork never copies it half-imported (below)."""
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    if module is not None and not getattr(spec, "_initializing", False):
        return module
    with _lock:
        return importlib.import_module(name)


# Forks and the agent's lazy imports. A thread of the agent importing the engine (or
# another module) while the program forks leaves the child with that module's import
# lock held by a thread that does not exist there: the child's agent would wait on it
# for good at its first request (seen in the fleet lab and in CI). So a fork waits for
# an import under ``_lock`` to end (at most FORK_WAIT seconds: a fork is the program's,
# and must not hang because of us), and the child gets a fresh lock.
FORK_WAIT = 5.0
_held_for_fork = False


def _before_fork() -> None:
    global _held_for_fork
    _held_for_fork = _lock.acquire(timeout=FORK_WAIT)


def _after_fork_in_parent() -> None:
    global _held_for_fork
    if _held_for_fork:
        _held_for_fork = False
        _lock.release()


def _after_fork_in_child() -> None:
    global _lock, _held_for_fork
    _lock = threading.Lock()
    _held_for_fork = False


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)


def when_created(callback: Callable[[Engine], None]) -> None:
    with _lock:
        if _engine is None:
            _callbacks.append(callback)
            return
    callback(_engine)
