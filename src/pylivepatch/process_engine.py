"""The process-wide engine, created on first use.

The engine and its compiler cost a few MB and tens of milliseconds to import; an agent
that is only waiting does not need them. ``created()`` says whether the engine exists
without importing it; ``when_created`` runs a callback on it as soon as it exists (the
agent's audit log listens to it that way).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

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


def _after_fork_in_child() -> None:
    """A fork while another thread was creating the engine leaves the child with the
    lock held and no engine: every later request would wait on it for good. The child
    has only the forking thread: a fresh lock is right (it makes its own engine)."""
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def when_created(callback: Callable[[Engine], None]) -> None:
    with _lock:
        if _engine is None:
            _callbacks.append(callback)
            return
    callback(_engine)
