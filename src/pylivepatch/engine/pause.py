"""The pause: a set of swaps that no other thread can see half done.

CPython (with its GIL) hands the interpreter to another thread only between bytecode
instructions of the running thread, when the eval loop notices a switch request. A
call into C code that runs to completion without executing bytecode therefore cannot
be interrupted by another Python thread. The pause is built on that: every swap is
prepared beforehand as plain data, and the swaps run as *one* call,
``deque(iterator, maxlen=0)``, over a chain of ``map(setattr, …)``-style iterators
made only of C builtins. No bytecode runs from the first swap to the last, so no other
thread runs Python code in between, and nothing is allocated but iterator cells.

For ``atomic`` the check "no thread's stack holds a function of the payload" must
hold *at* the swap. The stacks are walked in Python first (that walk can be
interrupted); then the same single C call re-checks, before the first swap, that
every thread's top frame is still the frame the walk saw and that every generator or
coroutine frame on those stacks still has the caller it had. While a frame stays on
top, the frames below it cannot change, so the stacks at the swap are exactly the
stacks the walk approved. If anything moved, nothing is swapped and the caller retries.

The garbage collector is disabled during the call: a collection could run ``__del__``
methods, which are bytecode. Old code objects, defaults and values stay referenced by
the engine, so no reference count reaches zero inside the pause.
"""

from __future__ import annotations

import gc
import operator
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, compress, repeat, starmap
from typing import Any

_GENERATOR_LIKE = 0x20 | 0x80 | 0x100 | 0x200  # generator, coroutine, iterable coroutine, async gen


def current_frames() -> dict[int, types.FrameType]:
    """``sys._current_frames()`` with the garbage collector off.

    On CPython 3.11 the call holds the runtime's thread-list lock while it makes frame
    objects; an allocation there can start a collection whose finalizers take that lock
    again, and the process hangs for good (CPython gh-106883, not fixed in 3.11; 3.12
    collects only at the eval breaker). Found by the soak (benchmarks/soak.py): a
    gunicorn worker stopped answering its heartbeat until it was killed."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames()
    finally:
        if was_enabled:
            gc.enable()


def gil_disabled() -> bool:
    """True on a free-threaded build running without the GIL."""
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return is_enabled is not None and not is_enabled()


@dataclass
class Ops:
    """Prepared swaps, grouped by kind so that each kind is one C-level ``map``."""

    func_attrs: list[tuple[types.FunctionType, str, Any]] = field(default_factory=list)
    dict_sets: list[tuple[dict[str, Any], str, Any]] = field(default_factory=list)
    dict_dels: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    class_sets: list[tuple[type, str, Any]] = field(default_factory=list)
    class_dels: list[tuple[type, str]] = field(default_factory=list)
    caches: list[Any] = field(default_factory=list)

    def iterator(self, done: list[bool]) -> Iterator[Any]:
        def cols(rows: list[Any], n: int) -> list[list[Any]]:
            return [[r[i] for r in rows] for i in range(n)] if rows else [[] for _ in range(n)]

        fa, ds, dd = cols(self.func_attrs, 3), cols(self.dict_sets, 3), cols(self.dict_dels, 2)
        cs, cd = cols(self.class_sets, 3), cols(self.class_dels, 2)
        return chain(
            map(setattr, *fa),
            map(operator.setitem, *ds),
            map(dict.pop, *dd, repeat(None)),  # a name already gone is no failure
            map(type.__setattr__, *cs),
            map(type.__delattr__, *cd),
            map(operator.methodcaller("cache_clear"), self.caches),
            map(done.append, (True,)),
        )


@dataclass(frozen=True)
class Blocker:
    """A thread whose stack holds code the pause must not swap under it."""

    thread_id: int
    thread_name: str
    function: str
    filename: str
    line: int

    def describe(self) -> str:
        return f"thread {self.thread_name!r} (id {self.thread_id}) in {self.function} ({self.filename}:{self.line})"


@dataclass(frozen=True)
class PauseResult:
    swapped: bool
    pause_ns: int = 0
    blockers: tuple[Blocker, ...] = ()
    started_ns: int = 0  # time.perf_counter_ns() at the first swap


def _describe(tid: int, frame: types.FrameType) -> Blocker:
    names = {t.ident: t.name for t in threading.enumerate()}
    code = frame.f_code
    qual = getattr(code, "co_qualname", code.co_name)
    module = frame.f_globals.get("__name__", "?")
    return Blocker(
        tid, names.get(tid, "?"), f"{module}:{qual}", code.co_filename, frame.f_lineno or 0
    )


def _inspect(
    frames: dict[int, types.FrameType], blocking: set[int]
) -> tuple[list[Blocker], list[types.FrameType], list[types.FrameType | None]]:
    blockers: list[Blocker] = []
    gens: list[types.FrameType] = []
    backs: list[types.FrameType | None] = []
    for tid, top in frames.items():
        f: types.FrameType | None = top
        while f is not None:
            code = f.f_code
            if id(code) in blocking:
                blockers.append(_describe(tid, f))
                break
            back = f.f_back
            if code.co_flags & _GENERATOR_LIKE:
                gens.append(f)
                backs.append(back)
            f = back
    return blockers, gens, backs


def run(ops: Ops, blocking: set[int] | None) -> PauseResult:
    """Swap everything in ``ops`` in one pause.

    ``blocking`` is the set of ``id()`` of code objects that no thread may be running
    at the swap (``None``: swap at once, no check). Returns whether it swapped, the
    pause length, and the blockers found if it did not.
    """
    done: list[bool] = []
    stamps: list[int] = []
    # The clock is read inside the same C call as the swaps, so the pause length is
    # exactly the swaps, not a GIL hand-over before or after them.
    clock = map(stamps.append, starmap(time.perf_counter_ns, ((),)))
    work = chain(
        clock, ops.iterator(done), map(stamps.append, starmap(time.perf_counter_ns, ((),)))
    )
    if blocking is None:
        gated: Iterable[Any] = work
    else:
        # Must be taken in this frame (the check compares this thread's top frame too),
        # so not through current_frames(), but with the collector off as it does.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            frames = sys._current_frames()
        finally:
            if was_enabled:
                gc.enable()
        blockers, gens, backs = _inspect(frames, blocking)
        if blockers:
            return PauseResult(False, 0, tuple(blockers))
        # (inside the pause the collector is already off: see current_frames)
        same_tops = map(operator.eq, (frames,), starmap(sys._current_frames, ((),)))
        same_backs = map(operator.eq, (backs,), map(list, (map(getattr, gens, repeat("f_back")),)))
        gate = map(all, (chain(same_tops, same_backs),))
        gated = chain.from_iterable(compress((work,), gate))
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        deque(gated, 0)
    finally:
        if was_enabled:
            gc.enable()
    if not done:
        return PauseResult(False)
    return PauseResult(True, stamps[1] - stamps[0], started_ns=stamps[0])
