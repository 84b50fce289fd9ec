"""The cyclic garbage collector held off while the engine computes (docs/benchmarks.md,
"Growth with the number of functions").

Why: an action (and ``pack``) allocates in proportion to its payload (ASTs, code
objects, fingerprints, dispatchers: some 36 GC-tracked objects a function at upload),
and most of it lives until the action ends. CPython runs a full collection about every
70,000 net allocations on 3.11 (threshold0 x threshold1 x threshold2) as long as what
survived since the last one is over a quarter of the older heap, so an action that
grows a heap of a few hundred thousand objects by N walks all of it about N / 70,000
times: quadratic in the payload. On 3.13 and 3.14 the young collections themselves
grow with the heap. Measured at 10,000 functions on 3.11, the collections took 16 to
27 % of each step, and with them off every step grew x1.96-2.10 per doubling.

How: automatic collections are paused by setting ``threshold0`` to 0 ("setting
threshold0 to zero disables collection", the ``gc`` documentation), not with
``gc.disable()``, so the program's own switch stays the program's:

- nothing is held unless automatic collection is on (``gc.isenabled()`` and a
  non-zero ``threshold0``): a program that turned it off keeps it off;
- ``gc.enable()``/``gc.disable()`` from any thread are never touched or undone: a
  thread that disables the collector during an action finds it disabled afterwards;
- at the end the thresholds are put back only if they are still the ones the hold set:
  a thread that sets its own thresholds meanwhile keeps them (the hold then ends early);
  one that sets exactly the held value ``(0, t1, t2)`` cannot be told apart and gets
  the saved thresholds back. Between reading and setting the thresholds at the start
  another thread could set its own and lose them: a window of a few instructions;
- while the hold lasts, another thread reads ``threshold0 == 0`` and its explicit
  ``gc.collect()`` runs as usual;
- one hold at a time in the process: a second thread (another engine) that asks finds
  collection paused and does nothing, and goes on with collection running if the first
  ends before it (only slower);
- a child forked by another thread during a hold gets the thresholds back at once
  (the hold's thread does not exist there); a child forked by the hold's own thread
  (a hook that forks) goes on with the action, which gives them back at its end.

A hold is let go (:func:`released`) while the engine may wait for other threads (an
action's swap: a pause retried, a transition) or runs the payload's hooks: the program
goes on running then, and its garbage must not pile up for as long as a timeout. The objects allocated under
a hold are collected by the first collection after it, in one pass.

The one record of the hold in force is module state: the collector it stands for is
the process's.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _Hold:
    owner: int | None = None  # the thread holding, if any
    saved: tuple[int, ...] = ()  # the thresholds to put back


_hold = _Hold()


def holding() -> bool:
    """Whether this thread holds automatic collections off."""
    return _hold.owner == threading.get_ident()


def take() -> bool:
    """Pause automatic collections for this thread's work; whether it did (to
    :func:`give` back): not if they are off or this thread holds them already."""
    me = threading.get_ident()
    if _hold.owner == me or not gc.isenabled():
        return False
    saved = gc.get_threshold()
    if saved[0] == 0:  # already paused: the program's, or another thread's hold
        return False
    gc.set_threshold(0, *saved[1:])
    _hold.owner, _hold.saved = me, saved
    return True


def give() -> None:
    """End this thread's hold (nothing if it holds none)."""
    if _hold.owner != threading.get_ident():
        return
    saved = _hold.saved
    _hold.owner, _hold.saved = None, ()
    if gc.get_threshold() == (0, *saved[1:]):  # else another thread set its own: kept
        gc.set_threshold(*saved)


@contextmanager
def held() -> Iterator[None]:
    """Automatic collections paused for the block (nothing if this thread holds them
    already, or if they are off); put back however the block ends."""
    took = take()
    try:
        yield
    finally:
        if took:
            give()


@contextmanager
def released() -> Iterator[None]:
    """Inside :func:`held`: automatic collections running again for the block (a
    wait, the program's code), paused again after it."""
    if not holding():
        yield
        return
    give()
    try:
        yield
    finally:
        take()


def _after_fork_in_child() -> None:
    if _hold.owner is not None and _hold.owner != threading.get_ident():
        saved = _hold.saved
        _hold.owner, _hold.saved = None, ()
        if gc.get_threshold() == (0, *saved[1:]):
            gc.set_threshold(*saved)


os.register_at_fork(after_in_child=_after_fork_in_child)
