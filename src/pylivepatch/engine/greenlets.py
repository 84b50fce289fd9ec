"""Suspended greenlets are call chains in flight, like threads.

Under gevent (or eventlet, or any user of the ``greenlet`` package), a request is a
greenlet: while it waits for I/O it is *suspended*, its frames on no thread's stack. A
transition that read the threads' stacks only would not see a request suspended in old
code, install the new code, and that request would call the new version when it
resumed: the versions mixed (seen with gunicorn ``-k gevent``: 7 of 755 answers).

:func:`read_stacks` reads the threads' stacks and, when the ``greenlet`` module is
imported, the stack of every suspended greenlet, in *one* call of a C builtin
(``dict`` over a chain of lazy iterators, as :func:`pause.stack_walk` walks the
threads): ``gc.get_objects()``, the greenlet type's ``gr_frame`` getter and every
``f_back`` are called from C (``starmap``, ``map``, ``accumulate(…, getattr)``), never
from bytecode, with the garbage collector off, so no other thread runs in the middle
and no greenlet is switched between the read of the threads and the read of the
greenlets. At that instant every greenlet that has started and not finished is either
running, its frames on its thread's stack, or suspended, its frames under its
``gr_frame``: each is seen. (Two separate reads were not enough: a thread already
waiting for the GIL when the switch interval is raised can still take it between
them, resume a greenlet read as suspended, or suspend one not on the stacks read, and
that greenlet is then on neither.) A greenlet's stack is keyed by a negative number
(``-id(greenlet)``), never a thread id.

Reading never runs the program's code: the greenlets are found by type among
``gc.get_objects()`` (the greenlet type and its subclasses, from
``type.__subclasses__``), and ``gr_frame`` is read with the base ``greenlet.greenlet``
type's own C descriptor, never one a subclass defines (a subclass's descriptor could
run its own code). ``greenlet`` is never imported here.
"""

from __future__ import annotations

import gc
import operator
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import accumulate, chain, compress, repeat, starmap, takewhile, tee
from typing import Any

from . import pause

#: the switch interval while the stacks are read (seconds): no other thread runs meanwhile
HOLD = 1.0

_NOT_NONE = pause._NOT_NONE
_F_BACK = pause._F_BACK
_STACK = operator.itemgetter(1)


def _greenlet_base() -> type | None:
    """``greenlet.greenlet`` (the base type), or None if ``greenlet`` is not imported."""
    module = sys.modules.get("greenlet")
    if type(module) is not types.ModuleType:
        return None
    base = module.__dict__.get("greenlet")
    if type not in type(base).__mro__:  # not a class
        return None
    return base


def greenlet_types() -> set[type] | None:
    """The greenlet type and its subclasses, or None if ``greenlet`` is not imported."""
    base = _greenlet_base()
    if base is None:
        return None
    found: set[type] = set()
    todo: list[type] = [base]
    while todo:
        t = todo.pop()
        if t not in found:
            found.add(t)
            todo.extend(type.__subclasses__(t))
    return found


def _gr_frame(base: type) -> Callable[[Any], Any] | None:
    """The base greenlet type's own ``gr_frame`` getter (its C getset descriptor's
    ``__get__``), read from the base type's ``__dict__`` only: a subclass's attribute of
    that name is never used, whatever it is."""
    descriptor = type.__dict__["__dict__"].__get__(base).get("gr_frame")
    if type(descriptor) is not types.GetSetDescriptorType:
        return None
    return descriptor.__get__


def greenlet_walk(
    kinds: set[type], getter: Callable[[Any], Any]
) -> Iterator[tuple[int, list[types.FrameType]]]:
    """Every suspended greenlet's stack, innermost frame first, as a lazy iterator of
    (``-id(greenlet)``, frames); nothing is read, not even ``gc.get_objects()``, until
    it is consumed. Consumed by one C call, as :func:`pause.stack_walk` is."""
    objects = chain.from_iterable(starmap(gc.get_objects, ((),)))
    objs, for_type = tee(objects)
    found = compress(objs, map(kinds.__contains__, map(type, for_type)))
    keys, for_frame = tee(found)
    tops = map(getter, for_frame)  # None for a greenlet running, not started or dead
    walks = map(accumulate, map(chain, zip(tops), repeat(_F_BACK)), repeat(getattr))
    frames = map(list, map(takewhile, repeat(_NOT_NONE), walks))
    pairs = zip(map(operator.neg, map(id, keys)), frames, strict=True)
    return filter(_STACK, pairs)  # only greenlets with a frame: the suspended ones


def suspended(kinds: set[type]) -> dict[int, list[types.FrameType]]:
    """Every suspended greenlet's stack, innermost frame first (one C-level pass)."""
    base = _greenlet_base()
    getter = None if base is None else _gr_frame(base)
    if getter is None:
        return {}
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return dict(greenlet_walk(kinds, getter))
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def read_stacks() -> Iterator[dict[int, list[types.FrameType]]]:
    """:func:`pause.read_stacks`, with the stacks of suspended greenlets added when the
    ``greenlet`` module is imported (read in the same C call, module docstring)."""
    kinds = greenlet_types()
    base = _greenlet_base() if kinds else None
    getter = None if base is None else _gr_frame(base)
    if not kinds or getter is None:
        with pause.read_stacks() as stacks:
            yield stacks
        return
    walk = chain(pause.stack_walk(), greenlet_walk(kinds, getter))
    saved = sys.getswitchinterval()
    sys.setswitchinterval(max(saved, HOLD))
    was_enabled = gc.isenabled()
    try:
        gc.disable()
        try:
            found = dict(walk)  # threads and greenlets: one C call, no bytecode
        finally:
            if was_enabled:
                gc.enable()
    finally:
        sys.setswitchinterval(saved)
        pause.hand_round()  # a thread that began waiting meanwhile must not wait 1 s
    # The walks' buffers still hold the top frames, this one among them (a cycle).
    del walk
    try:
        yield found
    finally:
        pause.release(found)
