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
hold *at* the swap. The stacks are read first, at one instant (:func:`stack_walk`),
then looked at in Python (which can be interrupted); then the same single C call
re-checks, before the first swap, that every thread's top frame is still the frame the
walk saw and that every generator or coroutine frame on those stacks still has the
caller it had. While a frame stays on top, the frames below it cannot change, so the
stacks at the swap are exactly the stacks the walk approved. If anything moved, nothing
is swapped and the caller retries.

The garbage collector is disabled during the call: a collection could run ``__del__``
methods, which are bytecode. Old code objects, defaults and values stay referenced by
the engine, so no reference count reaches zero inside the pause.

One kind of bytecode cannot be kept out: an audit hook written in Python
(``sys.addaudithook``). Every assignment of ``__code__`` raises the audit event
``object.__setattr__``, so such a hook runs inside the pause, and its bytecode may hand
the GIL over. The switch interval is therefore raised to :data:`PAUSE_SWITCH_INTERVAL`
for the length of the call: a thread that starts waiting for the GIL then asks for it
only after that long. A thread that was already waiting, with the interval it read
before, can still get in (measured with a hook and a thread spinning beside the
pauses: another thread ran in 1 pause of 50 on CPython 3.11 and in none on 3.12 and
3.13, against 48 to 50 of 50 without the raised interval). Afterwards the interval is
restored and the GIL handed round once (:func:`hand_round`): a thread that began waiting
while it was raised would otherwise keep waiting the raised interval, a second after a
pause of microseconds (tests/engine/test_latency_pause.py). CPython runs audit hooks
with tracing off, so the engine cannot tell that such a hook exists; docs/design.md
("The pause") names the limit.

Reading the stacks makes a frame object for every frame of every thread, and those
must be gone when the check is done (:func:`release`). A frame object still referenced
when its function returns takes that function's locals over and keeps them alive; the
engine's own frames are on the stacks it reads, so its lists of frames would reference
the frames that reference the lists: a cycle, freed only by the garbage collector,
later and in any order. The program's objects would then die late (a file closed at
return stays open), and on CPython 3.12.1 a ``BytesIO`` buffer freed in the wrong order
crashes the process (CPython gh-111049): the soak met it in uvicorn workers, whose
thread that answers the supervisor's pings sends through such a buffer.
"""

from __future__ import annotations

import gc
import operator
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import accumulate, chain, compress, repeat, starmap, takewhile, tee
from typing import Any

from ..payload.fingerprint import SUSPENDABLE_FLAGS

PAUSE_SWITCH_INTERVAL = 1.0  # seconds: the GIL switch interval while a pause runs
_GENERATOR_LIKE = SUSPENDABLE_FLAGS
# (frame, the frame it calls or None) -> whether the frame blocks the swap
InFlight = Callable[[types.FrameType, "types.FrameType | None"], bool]


_NOT_NONE = partial(operator.is_not, None)
_F_BACK = repeat("f_back")  # endless, shared by every walk


def stack_walk() -> Iterator[tuple[int, list[types.FrameType]]]:
    """Every thread's stack, innermost frame first, as a lazy iterator of (thread id,
    frames); nothing is read until it is consumed.

    Consumed by *one* C call (``dict(stack_walk())``), the whole walk happens while no
    other thread runs: ``sys._current_frames()`` and every ``f_back`` are called from C
    builtins (``starmap``, ``accumulate(…, getattr)``, ``takewhile``), never from
    bytecode. So ``f_back`` is only ever asked of frames that are live on a stack at
    that instant. Asked later, of a frame its thread has left meanwhile, it can follow
    a dangling pointer on CPython 3.11 (``take_ownership`` may keep a ``previous`` link
    into the thread's frame stack; crashes in ``PyFrame_GetBack``, CPython gh-99110 and
    sentry-python #2386): the soak (benchmarks/soak.py) met exactly that, a revert
    failing with "'code' object has no attribute 'f_code'" and workers dying. The frames
    returned keep what the engine reads of them later (``f_code``, ``f_lineno``,
    ``f_globals``, ``f_locals``): CPython copies a frame into its frame object when the
    thread leaves it.

    The caller's own thread shows the frame that consumes the walk on top (which
    :func:`run` relies on). Consume it with the garbage collector off (:func:`stacks`):
    a collection could run finalizers (bytecode) in the middle of the walk, and on
    CPython 3.11 one inside ``sys._current_frames()`` can deadlock (gh-106883)."""
    pairs = chain.from_iterable(map(dict.items, starmap(sys._current_frames, ((),))))
    ids, tops = tee(pairs)
    walks = map(
        accumulate,
        map(chain, map(operator.itemgetter(slice(1, 2)), tops), repeat(_F_BACK)),
        repeat(getattr),
    )
    frames = map(list, map(takewhile, repeat(_NOT_NONE), walks))
    return zip(map(operator.itemgetter(0), ids), frames, strict=True)


def stacks() -> dict[int, list[types.FrameType]]:
    """Every thread's stack, read at one instant (:func:`stack_walk`); this thread's
    innermost frame is this function's. The caller empties it with :func:`release`
    (or uses :func:`read_stacks`)."""
    walk = stack_walk()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        found = dict(walk)
    finally:
        if was_enabled:
            gc.enable()
    # The walk's buffers still hold every thread's top frame, this function's among
    # them, and this frame outlives the call (it is in ``found``): a cycle.
    del walk
    return found


def release(found: dict[int, list[types.FrameType]]) -> None:
    """Let go of every frame a walk returned, so that each dies with its function, as
    it would without the engine (module docstring)."""
    for frames in found.values():
        frames.clear()
    found.clear()


@contextmanager
def read_stacks() -> Iterator[dict[int, list[types.FrameType]]]:
    """:func:`stacks`, emptied at the end of the block."""
    found = stacks()
    try:
        yield found
    finally:
        release(found)


def gil_disabled() -> bool:
    """True on a free-threaded build running without the GIL."""
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return is_enabled is not None and not is_enabled()


def switch_interval() -> float:
    """The GIL switch interval, as a value that ``sys.setswitchinterval`` takes back
    exactly. CPython keeps whole microseconds and truncates: the seconds it returns
    (``1e-6 * us``), given back as they are, can lose one (0.007 s comes back as
    6,999 µs), and every save and restore would change the process's own value."""
    return sys.getswitchinterval() + 5e-7


@contextmanager
def held_off(interval: float = PAUSE_SWITCH_INTERVAL) -> Iterator[None]:
    """Thread switching held off for the block: the switch interval raised to at least
    ``interval``, then restored and the GIL handed round (:func:`hand_round`)."""
    saved = switch_interval()
    sys.setswitchinterval(max(saved, interval))
    try:
        yield
    finally:
        sys.setswitchinterval(saved)
        hand_round()


def hand_round() -> None:
    """Release the GIL once, after the switch interval was restored.

    A thread that began waiting for the GIL while the interval was raised waits with
    the raised interval: CPython reads it once per wait (``take_gil``) and asks the
    holder for the GIL only when that wait times out. Left alone, such a thread could
    wait the whole raised interval (1 s) after the pause, while this thread runs on.
    Releasing the GIL wakes one waiter (``drop_gil`` signals the condition); it either
    takes the GIL or waits again with the interval as it is now, and each later
    hand-over wakes the next one, as every switch does. ``time.sleep(0)`` releases the
    GIL on every version and returns at once when no thread wants it."""
    time.sleep(0)


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
    stacks: dict[int, list[types.FrameType]], blocking: set[int], in_flight: InFlight | None
) -> tuple[list[Blocker], list[types.FrameType], list[types.FrameType | None]]:
    blockers: list[Blocker] = []
    gens: list[types.FrameType] = []
    backs: list[types.FrameType | None] = []
    for tid, frames in stacks.items():
        for i, f in enumerate(frames):
            code = f.f_code
            if id(code) in blocking or (
                in_flight is not None and in_flight(f, frames[i - 1] if i else None)
            ):
                blockers.append(_describe(tid, f))
                break
            if code.co_flags & _GENERATOR_LIKE:
                gens.append(f)
                backs.append(frames[i + 1] if i + 1 < len(frames) else None)
    return blockers, gens, backs


def run(ops: Ops, blocking: set[int] | None, in_flight: InFlight | None = None) -> PauseResult:
    """Swap everything in ``ops`` in one pause.

    ``blocking`` is the set of ``id()`` of code objects that no thread may be running
    at the swap (``None``: swap at once, no check); ``in_flight(frame, callee)`` says
    whether a frame blocks too, whatever its code (a dispatcher about to call a version
    chosen before: engine/transition.py). Returns whether it swapped, the pause length,
    and the blockers found if it did not.
    """
    done: list[bool] = []
    stamps: list[int] = []
    # The clock is read inside the same C call as the swaps, so the pause length is
    # exactly the swaps, not a GIL hand-over before or after them.
    clock = map(stamps.append, starmap(time.perf_counter_ns, ((),)))
    work = chain(
        clock, ops.iterator(done), map(stamps.append, starmap(time.perf_counter_ns, ((),)))
    )
    # Every frame the check reads is let go of at the end, whatever happens (module
    # docstring): the containers are emptied, since this frame is among their frames.
    all_stacks: dict[int, list[types.FrameType]] = {}
    frames: dict[int, types.FrameType] = {}
    gens: list[types.FrameType] = []
    backs: list[types.FrameType | None] = []
    try:
        if blocking is None:
            gated: Iterable[Any] = work
        else:
            # Consumed in this frame (the check compares this thread's top frame too),
            # so not through stacks(), but with the collector off as it does.
            walk = stack_walk()
            was_enabled = gc.isenabled()
            gc.disable()
            try:
                all_stacks = dict(walk)
            finally:
                if was_enabled:
                    gc.enable()
            del walk  # its buffers hold every top frame, this one's among them
            blockers, gens, backs = _inspect(all_stacks, blocking, in_flight)
            if blockers:
                return PauseResult(False, 0, tuple(blockers))
            frames = {tid: stack[0] for tid, stack in all_stacks.items() if stack}
            release(all_stacks)
            # (inside the pause the collector is already off: see stack_walk)
            same_tops = map(operator.eq, (frames,), starmap(sys._current_frames, ((),)))
            same_backs = map(
                operator.eq, (backs,), map(list, (map(getattr, gens, repeat("f_back")),))
            )
            gate = map(all, (chain(same_tops, same_backs),))
            gated = chain.from_iterable(compress((work,), gate))
        # The switch interval is raised against Python audit hooks (module docstring)
        # by the same C call, right before the first swap, and put back right after the
        # last: no bytecode runs in between, so this thread is never switched out while
        # it is raised. Switched out then (at any bytecode, when another thread asks),
        # it would leave the interval raised for every thread: each that starts waiting
        # reads it, and with many busy threads a round of them takes a second apiece.
        saved = switch_interval()
        raised = max(saved, PAUSE_SWITCH_INTERVAL)
        held = chain(
            map(sys.setswitchinterval, (raised,)), gated, map(sys.setswitchinterval, (saved,))
        )
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            deque(held, 0)
        finally:
            sys.setswitchinterval(saved)  # (already, unless a swap failed half-way)
            if was_enabled:
                gc.enable()
            hand_round()
    finally:
        release(all_stacks)
        frames.clear()
        gens.clear()
        backs.clear()
    if not done:
        return PauseResult(False)
    return PauseResult(True, stamps[1] - stamps[0], started_ns=stamps[0])
