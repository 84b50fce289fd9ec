"""Suspended greenlets are call chains in flight, like threads.

Under gevent (or eventlet, or any user of the ``greenlet`` package), a request is a
greenlet: while it waits for I/O it is *suspended*, its frames on no thread's stack. A
transition that read the threads' stacks only would not see a request suspended in old
code, install the new code, and that request would call the new version when it
resumed: the versions mixed (seen with gunicorn ``-k gevent``: 7 of 755 answers).

:func:`read_stacks` reads the threads' stacks (:func:`pause.stacks`) and, when the
``greenlet`` module is imported, the stack of every suspended greenlet: thread switching
is held off for the read, and each greenlet's stack is walked from its ``gr_frame`` by
C builtins (as :func:`pause.stack_walk` walks threads). A greenlet's stack is keyed by
a negative number (``-id(greenlet)``), never a thread id.

Known limit: the two reads are two calls with some bytecode between them, and a thread
that was already waiting for the GIL when the switch interval was raised can still take
it there; if it resumes a greenlet read as suspended, or suspends one that was not on
the stacks read, that greenlet is seen on neither. A single C call for both reads was
tried and left reference cycles holding other threads' frames (a leak of the kind
docs/design.md describes for the 3.12 crash), so it was taken out; making the read one
call without cycles is open work.

Reading never runs the program's code: the greenlets are found by type among
``gc.get_objects()`` (the greenlet type and its subclasses, from
``type.__subclasses__``), and ``gr_frame`` is read with the greenlet type's own
descriptor, whatever a subclass defines. ``greenlet`` is never imported here.
"""

from __future__ import annotations

import gc
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import accumulate, chain, compress, repeat, takewhile
from typing import Any

from . import pause

#: the switch interval while the stacks are read (seconds): no other thread runs meanwhile
HOLD = 1.0


def greenlet_types() -> set[type] | None:
    """The greenlet type and its subclasses, or None if ``greenlet`` is not imported."""
    module = sys.modules.get("greenlet")
    if type(module) is not types.ModuleType:
        return None
    base = module.__dict__.get("greenlet")
    if type not in type(base).__mro__:  # not a class
        return None
    found: set[type] = set()
    todo: list[type] = [base]  # type: ignore[list-item]
    while todo:
        t = todo.pop()
        if t not in found:
            found.add(t)
            todo.extend(type.__subclasses__(t))
    return found


def _not_none(frame: object) -> bool:
    return frame is not None


def suspended(kinds: set[type]) -> dict[int, list[types.FrameType]]:
    """Every suspended greenlet's stack, innermost frame first (one C-level pass)."""
    objects = gc.get_objects()
    found = list(compress(objects, map(kinds.__contains__, map(type, objects))))
    del objects
    getter = _gr_frame(kinds)
    if getter is None:
        return {}
    tops = list(map(getter, found))
    stacks = {
        -id(g): list(takewhile(_not_none, accumulate(chain((top,), repeat("f_back")), getattr)))
        for g, top in zip(found, tops, strict=True)
        if top is not None
    }
    del found, tops
    return stacks


def _gr_frame(kinds: set[type]) -> Callable[[Any], Any] | None:
    """The greenlet type's own ``gr_frame`` getter (a C descriptor's ``__get__``)."""
    for t in kinds:
        descriptor = t.__dict__.get("gr_frame")
        if descriptor is not None and type(descriptor).__name__ == "getset_descriptor":
            return descriptor.__get__
    return None


@contextmanager
def read_stacks() -> Iterator[dict[int, list[types.FrameType]]]:
    """:func:`pause.read_stacks`, with the stacks of suspended greenlets added when the
    ``greenlet`` module is imported (read at the same instant)."""
    kinds = greenlet_types()
    if not kinds:
        with pause.read_stacks() as stacks:
            yield stacks
        return
    saved = pause.switch_interval()
    sys.setswitchinterval(max(saved, HOLD))
    was_enabled = gc.isenabled()
    try:
        found = pause.stacks()
        gc.disable()
        try:
            found.update(suspended(kinds))
        finally:
            if was_enabled:
                gc.enable()
    finally:
        sys.setswitchinterval(saved)
        pause.hand_round()  # a thread that began waiting meanwhile must not wait 1 s
    try:
        yield found
    finally:
        pause.release(found)
