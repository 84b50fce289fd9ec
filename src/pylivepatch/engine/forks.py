"""A fork while an action runs in another thread (gunicorn's master respawning a worker
while its own agent applies a payload, say).

Without care the child would copy the engine in the middle of the action: the action's
thread does not exist there, so its lock stays held (every later action in the child
is ``busy``), and what the action had changed so far stays as it was (a transition's
dispatchers on every function, never to end). So a fork first waits for the running
action to end, at most :data:`FORK_WAIT` seconds (a fork is the program's and must not
hang because of us), and holds the engine's lock across it. An action that takes
longer (a transition waiting for a blocker) goes on in the parent; the child undoes it
at once from the action's undo log, as if it had failed there, and says so in its
history and audit log. A fork made by the action's own thread (a hook that forks) is
left alone: the action goes on in the child too.

A transition stuck on its way back (``consistency.Stuck``) is inherited too, but its
blockers were other threads of the parent, which the child does not have: the child
ends it at once if nothing of its own (the forking thread, a suspended generator) still
runs the new code, and says so in its history; its post hook runs in the parent only.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from typing import TYPE_CHECKING

from ..errors import CODES

if TYPE_CHECKING:
    from .core import Engine

FORK_WAIT = 5.0  # seconds a fork waits for a running action to end
UNDONE_IN_CHILD = (
    "this process was forked while the action ran in its parent; the action was undone "
    "here and nothing changed (the parent goes on with it): repeat it for this process"
)

_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_held: list[Engine] = []


def track(engine: Engine) -> None:
    """Look after ``engine`` at every fork of this process from now on."""
    _engines.add(engine)


def _before() -> None:
    me = threading.get_ident()
    for engine in list(_engines):
        if engine._owner != me and engine._lock.acquire(timeout=FORK_WAIT):
            _held.append(engine)


def _after_in_parent() -> None:
    while _held:
        _held.pop()._lock.release()


def _after_in_child() -> None:
    held = {id(e) for e in _held}
    _after_in_parent()  # this thread is the one that held them: it lives on here
    me = threading.get_ident()
    for engine in list(_engines):
        if id(engine) not in held and engine._owner not in (None, me):
            _undo_inherited(engine)
        if engine._stuck:
            _settle_inherited(engine)


def _settle_inherited(engine: Engine) -> None:
    """End the stuck transitions whose blockers stayed in the parent (module docstring)."""
    for name, stuck in list(engine._stuck.items()):
        try:
            if stuck.trans.blockers():
                continue  # this process runs the new code itself: still stuck here
            engine._final_pause(
                stuck.trans, stuck.ops, stuck.undo_data, stuck.data, stuck.dispatchers,
                stuck.data_first, True,
            )  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - a child must start whatever happens
            print(
                f"pylivepatch: ending a stuck transition inherited by fork failed: {exc!r}",
                file=sys.stderr,
            )
            continue
        del engine._stuck[name]
        engine._history.emit(
            stuck.action, name, "transition-reversed",
            message="the stuck transition ended in this forked process: its blockers "
            "stayed in the parent",
        )  # fmt: skip


def _undo_inherited(engine: Engine) -> None:
    """Undo the action another thread of the parent was running (this process has only
    the forking thread: nothing else runs while it is undone)."""
    running = list(engine._progress.items())
    undo = engine._undo
    try:
        if undo is not None:
            undo.restore(engine)
    except BaseException as exc:  # noqa: BLE001 - a child must start whatever happens
        print(f"pylivepatch: undoing an action inherited by fork failed: {exc!r}", file=sys.stderr)
    if engine._saved_switch_interval is not None:  # a transition had shortened it
        sys.setswitchinterval(engine._saved_switch_interval)
        engine._saved_switch_interval = None
    engine._progress.clear()
    engine._reverse_requests.clear()
    engine._undo = engine._owner = None
    engine._lock = threading.Lock()
    for name, progress in running:
        rec = engine._payloads.get(name)
        engine._history.emit(
            str(progress.get("action", "")), name, "finished",
            rc=CODES["internal"], error="internal", message=f"{progress.get('action', '')} {name}: {UNDONE_IN_CHILD}",
            build_id=rec.build_id if rec is not None else "",
        )  # fmt: skip
    engine._sync_import_hook()


os.register_at_fork(
    before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child
)
