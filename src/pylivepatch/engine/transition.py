"""The consistency model (spec §5 ``transition``; Linux livepatch, adapted).

A call chain never mixes old and new versions of a payload's functions. While a
transition runs, every function of the payload runs a *dispatcher*: each call looks at
its own call stack (which, in a resumed generator or coroutine, includes that frame)
and runs the old version if any frame there runs old code of the payload, else the new
one. The transition completes when no thread stack and no suspended generator,
coroutine or async generator runs old code of the payload; then one pause installs the
new code directly, so the steady state costs nothing. Checks happen at growing
intervals (1 ms up to 50 ms).

Once no old frame exists anywhere, none can appear again: the dispatchers only pick the
old version for a call made from an old frame. So the check and the final pause need
not be atomic together.
"""

from __future__ import annotations

import functools
import gc
import operator
import sys
import threading
import types
from collections.abc import Iterator
from itertools import chain, compress
from typing import Any

from ..payload import static
from ..payload.fingerprint import (
    CO_ASYNC_GENERATOR,
    CO_COROUTINE,
    CO_GENERATOR,
    SUSPENDABLE_FLAGS,
    nested_code,
)
from . import greenlets
from .compile import FunctionTarget, trampoline_code

Triple = tuple[types.CodeType, Any, Any]
_SUSPENDABLE_TYPES = frozenset({types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType})


class Dispatch:
    """Per function: which version a call gets, by its stack."""

    __slots__ = ("transition", "function", "source", "target")

    def __init__(
        self,
        transition: Transition,
        function: types.FunctionType,
        source: types.FunctionType,
        target: types.FunctionType,
    ) -> None:
        self.transition = transition
        self.function = function  # the patched function itself
        self.source = source  # the version the transition leaves
        self.target = target  # the version it goes to

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        # ``self`` is positional-only: a call may pass a keyword argument named "self".
        # One read: a reversal flips every dispatcher at the same instant. The view read
        # stays in this frame's locals until the chosen version runs: a check that finds
        # this frame switched out in between compares it with the view now (in_flight).
        view = self.transition.view
        armed, old_ids, back, over = view
        if over:  # a call that entered the dispatcher as the transition ended
            return self.function(*args, **kwargs)  # what is installed now
        older, newer = (self.target, self.source) if back else (self.source, self.target)
        if not armed:  # not every function has its dispatcher yet
            return older(*args, **kwargs)
        frame: types.FrameType | None = sys._getframe(2)  # skip this and the dispatcher
        while frame is not None:
            if id(frame.f_code) in old_ids:
                return older(*args, **kwargs)
            frame = frame.f_back
        return newer(*args, **kwargs)


_DISPATCH_CODE = Dispatch.__call__.__code__
_DISPATCH_ID = id(_DISPATCH_CODE)
_F_CODE = operator.attrgetter("f_code")


def in_flight(frame: types.FrameType, callee: types.FrameType | None) -> bool:
    """Whether ``frame`` is a dispatcher that chose a version on a view its transition
    has since left (armed, reversed or ended) and has not started that version yet
    (``callee``: the frame it calls, if any). Switched out in between, it would run a
    version that the transition, or an action after it, no longer allows: a check of
    any later action must wait for it (a few bytecodes, once it gets the GIL back).

    Reads the frame's locals, never its ``f_back``: ``frame`` comes from
    :func:`pause.stacks` and its thread may have left it since."""
    if frame.f_code is not _DISPATCH_CODE:
        return False
    seen = frame.f_locals
    d, view = seen.get("self"), seen.get("view")
    if not isinstance(d, Dispatch) or view is None:  # no view read yet: it reads the current
        return False
    if callee is not None and callee.f_code in (d.source.__code__, d.target.__code__):
        return False  # the chosen version runs: its frame is judged by its own code
    return view is not d.transition.view


def _impl(fn: types.FunctionType, triple: Triple) -> types.FunctionType:
    code, defaults, kwdefaults = triple
    impl = types.FunctionType(code, fn.__globals__, fn.__name__, defaults, fn.__closure__)
    impl.__kwdefaults__ = kwdefaults
    impl.__qualname__ = fn.__qualname__
    impl.__module__ = fn.__module__
    return impl


class Transition:
    """One payload's functions moving from ``source`` to ``target`` triples.

    ``view`` is what every dispatcher reads, as one tuple so that it changes for all of
    them with one store: (armed, ids of the code being left, reversed, over). Not armed
    until the pause that installs the dispatchers has installed all of them: until then
    every call gets the old version, so a pause that fails half-way never lets new code
    call a function that has no dispatcher yet. Over once the dispatchers are gone from
    the functions: a call already inside a dispatcher then runs what is installed."""

    def __init__(self, pairs: list[tuple[types.FunctionType, Triple, Triple]]) -> None:
        self.pairs = pairs
        # Each Dispatch is kept by its dispatcher code alone (as a constant), never by
        # the transition it points to: a finished transition is then freed by
        # reference counting, with nothing left to the garbage collector.
        self.dispatch_codes: list[types.CodeType] = [
            _dispatcher_code(
                fn, source[0], Dispatch(self, fn, _impl(fn, source), _impl(fn, target))
            )
            for fn, source, target in pairs
        ]
        self.view: tuple[bool, set[int], bool, bool] = (False, self._ids_of(pairs), False, False)
        self.qualnames = _qualnames(pairs)

    def _ids_of(self, pairs: list[tuple[types.FunctionType, Triple, Triple]]) -> set[int]:
        """Ids of the code (nested code too) the pairs leave."""
        codes = [c for _, source, _ in pairs for c in nested_code(source[0])]
        for c in list(codes):  # a trampoline's real replacement runs as a constant
            for const in c.co_consts:
                if isinstance(const, types.FunctionType):
                    codes.extend(nested_code(const.__code__))
        self._keep = codes  # keeps the ids alive
        # Only code with generator, coroutine or async-generator flags can be suspended:
        # without any, the heap need not be searched for suspended frames.
        self.suspendable = any(c.co_flags & SUSPENDABLE_FLAGS for c in codes)
        return {id(c) for c in codes}

    @property
    def old_ids(self) -> set[int]:
        return self.view[1]

    def arm(self) -> None:
        """Every dispatcher is installed: calls may now get the new version."""
        _, ids, back, over = self.view
        self.view = (True, ids, back, over)

    def reverse(self) -> None:
        """Go back: calls from frames of the new code keep it, others get the old."""
        armed, _, back, over = self.view
        self.pairs = [(fn, target, source) for fn, source, target in self.pairs]
        self.view = (armed, self._ids_of(self.pairs), not back, over)

    def end(self) -> None:
        """The dispatchers are no longer installed (the final pause, or the pause that
        put the old code back): a call still inside one runs the installed code."""
        armed, ids, back, _ = self.view
        self.view = (armed, ids, back, True)

    def start_triples(self) -> list[tuple[types.FunctionType, Triple]]:
        """What the first pause installs: the dispatchers (asked for once).

        The dispatcher code is handed over, not kept: each holds its ``Dispatch`` (which
        holds this transition) as a constant, and code objects are invisible to the
        garbage collector, so a transition that kept them would be a cycle it never
        frees: every transition would leak its dispatchers and both versions of every
        function. Once the functions and the frames running them let go of that code,
        everything goes."""
        codes, self.dispatch_codes = self.dispatch_codes, []
        return [
            (fn, (code, None, None)) for (fn, _, _), code in zip(self.pairs, codes, strict=True)
        ]

    def final_triples(self) -> list[tuple[types.FunctionType, Triple]]:
        return [(fn, target) for fn, _, target in self.pairs]

    def _on_stacks(self, stacks: dict[int, list[types.FrameType]], first: bool) -> list[str]:
        """The threads whose stacks block the transition (``first``: the first found
        only, which is all a check that goes on waiting needs). A function apart from
        :meth:`blockers`: its loop variables, which hold frames, then live in a frame
        that is not on the stacks read, so they form no cycle (pause module docstring)."""
        found: list[str] = []
        names: dict[int | None, str] | None = None
        for tid, frames in stacks.items():
            for i, f in enumerate(frames):
                code = f.f_code
                if id(code) in self.old_ids:
                    what = f"in {_where(f, self.qualnames)}"
                elif code is _DISPATCH_CODE and in_flight(f, frames[i - 1] if i else None):
                    where = _where(frames[i + 1], self.qualnames) if i + 1 < len(frames) else "?"
                    what = f"choosing a version in a dispatcher ({where})"
                else:
                    continue
                if names is None:  # only once a blocker is found: threads are many
                    names = {t.ident: t.name for t in threading.enumerate()}
                found.append(f"{_who(tid, names)} {what}")
                break
            if found and first:
                break
        return found

    def _may_block(self, stacks: dict[int, list[types.FrameType]]) -> bool:
        """Whether any frame read runs old code or a dispatcher: one C-level pass over
        every frame (no bytecode, so the engine's thread is not switched out in the
        middle, which with many busy threads costs it a round of all of them); only
        then are the stacks looked at frame by frame (:meth:`_on_stacks`)."""
        codes = set(map(id, map(_F_CODE, chain.from_iterable(stacks.values()))))
        return _DISPATCH_ID in codes or not codes.isdisjoint(self.old_ids)

    def blockers(self, first: bool = False) -> list[str]:
        """Threads and suspended generators/coroutines still running old code; with
        ``first``, at most one (a check that goes on waiting needs no more, and naming
        every blocker of hundreds of threads is most of a check's cost).

        The stacks are read at one instant, in C (:func:`pause.stacks`); after that only
        what a frame keeps is read (its code, line, globals and, for a dispatcher, its
        locals), never ``f_back`` of a frame its thread may have left."""
        # threads and suspended greenlets (gevent's requests), read at one instant
        with greenlets.read_stacks() as stacks:  # every frame let go of at the end
            found = self._on_stacks(stacks, first) if self._may_block(stacks) else []
        if found:
            return found
        if self.suspendable:
            for obj in _suspended(self.old_ids):
                found.append(_describe_suspended(obj, self.qualnames))
                if first:
                    break
        return found


def _dispatcher_code(fn: types.FunctionType, source: types.CodeType, d: Dispatch) -> types.CodeType:
    """A code object with ``(*args, **kwargs)``, the function's free variables and its
    kind that calls ``d``: a coroutine awaits, a generator or an async generator
    delegates, so the choice is made when the call actually starts running, on the
    stack that runs it, and the function keeps its kind (``inspect`` and frameworks
    that look at it see no difference; CPython 3.13 warns when a function's code
    changes kind)."""
    kind = source.co_flags & (CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR)
    # The trampoline has the function's free variables too: parameter names must differ.
    star, dstar = "args", "kwargs"
    while star in source.co_freevars or dstar in source.co_freevars:
        star, dstar = "_" + star, "_" + dstar
    shape = _shape(kind, source.co_name, star, dstar)
    module = sys.modules.get(fn.__module__)
    if not static.is_module(module):  # never its truth value or isinstance: the program's
        module = types.ModuleType(fn.__module__)
    target = FunctionTarget(f"{fn.__module__}:{fn.__qualname__}", module, fn, [])
    return trampoline_code(target, shape, d)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=256)
def _shape(kind: int, name: str, star: str, dstar: str) -> types.CodeType:
    """The code a dispatcher of that kind and name is made from (compiled once: a
    compile is most of what preparing a transition costs the engine)."""
    params = f"*{star}, **{dstar}"
    if kind & CO_ASYNC_GENERATOR:
        src = f"async def {name}({params}):\n    yield\n"
    elif kind & CO_COROUTINE:
        src = f"async def {name}({params}):\n    pass\n"
    elif kind & CO_GENERATOR:
        src = f"def {name}({params}):\n    yield\n"
    else:
        src = f"def {name}({params}):\n    pass\n"
    return next(
        c
        for c in compile(src, "<pylivepatch dispatcher>", "exec").co_consts
        if isinstance(c, types.CodeType)
    )


def _qualnames(pairs: list[tuple[types.FunctionType, Triple, Triple]]) -> dict[int, str]:
    """id of code -> qualified name, for the functions' code of both versions and the
    code nested in it (what ``co_qualname`` says from Python 3.11 on)."""
    names: dict[int, str] = {}
    # A loop, not a recursive inner function: that one would be a cycle (the function
    # and its own cell) left to the garbage collector at every transition.
    todo = [(triple[0], fn.__qualname__) for fn, *triples in pairs for triple in triples]
    while todo:
        code, qual = todo.pop()
        names.setdefault(id(code), qual)
        todo.extend(
            (const, f"{qual}.<locals>.{const.co_name}")
            for const in code.co_consts
            if isinstance(const, types.CodeType)
        )
    return names


def _who(key: int, names: dict[int | None, str]) -> str:
    """A stack's owner as a blocker names it: a thread by name and id, a suspended
    greenlet (a negative key, engine/greenlets.py) by its ``id()``."""
    if key < 0:
        return f"greenlet (id {-key}, suspended)"
    return f"thread {names.get(key, '?')!r} (id {key})"


def _where(frame: types.FrameType, qualnames: dict[int, str]) -> str:
    code = frame.f_code
    # Python 3.10 code has no co_qualname: the payload's functions name their code.
    qual = getattr(code, "co_qualname", None) or qualnames.get(id(code), code.co_name)
    module = frame.f_globals.get("__name__", "?")
    return f"{module}:{qual} ({code.co_filename}:{frame.f_lineno})"


def _suspended(old_ids: set[int]) -> Iterator[Any]:
    # The heap can hold millions of objects: pick the generators and coroutines out of
    # it in one C-level pass (compress/map/type), not a Python loop that every other
    # thread would interrupt.
    objects = gc.get_objects()
    found = list(compress(objects, map(_SUSPENDABLE_TYPES.__contains__, map(type, objects))))
    del objects
    for obj in found:
        frame = (
            getattr(obj, "gi_frame", None)
            or getattr(obj, "cr_frame", None)
            or getattr(obj, "ag_frame", None)
        )
        if frame is not None and id(frame.f_code) in old_ids:
            yield obj


def _describe_suspended(obj: Any, qualnames: dict[int, str]) -> str:
    frame = (
        getattr(obj, "gi_frame", None)
        or getattr(obj, "cr_frame", None)
        or getattr(obj, "ag_frame", None)
    )
    kind = type(obj).__name__
    where = _where(frame, qualnames) if frame is not None else "?"
    task = _task_of(obj)
    return f"{'asyncio task ' + repr(task) + ' ' if task else ''}{kind} suspended in {where}"


def _task_of(coro: Any) -> str | None:
    """The name of the asyncio task whose coroutine chain holds ``coro``, if any."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    task_type = asyncio.Task
    for obj in gc.get_objects():
        # type() only: isinstance would ask every object of the heap for __class__ (a
        # lazy proxy's setup), and an awaited object may be anything of the program's.
        if static.is_a(obj, task_type):
            c = obj.get_coro()
            for _ in range(100):
                if c is coro:
                    return str(obj.get_name())
                kind = type(c)
                if kind is types.CoroutineType:
                    c = c.cr_await
                elif kind is types.GeneratorType:
                    c = c.gi_yieldfrom
                else:
                    break
                if c is None:
                    break
    return None
