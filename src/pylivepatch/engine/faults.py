"""Fault injection: the named steps of every action at which a test makes it fail.

"Everything or nothing" (spec §3) is a promise about every step of every action, so the
engine names its steps: before an action changes anything it passes ``check`` and
``prepare`` points, and every pause is a ``pause:`` point. Normally a point is one
attribute test (``engine._inject is None``). A test arms a point with :func:`inject`:
at a plain point the engine raises :class:`InjectedFault` there; at a pause point the
pause itself fails half-way, from C, after half of its swaps are done (the hardest
case for an undo: some functions already run new code, one may have its new code but
its old defaults). :func:`record` lists the points an action passes, so a harness can
make each of them fail in turn (``tests/engine/test_faults.py``; the count is in
``docs/security.md``).

Every point the engine passes is declared here, once, with what has happened by then.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from .core import Engine
    from .pause import Ops

#: point -> what has been done when the engine reaches it
POINTS: dict[str, str] = {
    "upload.read": "the archive is read, its limits and signature checked",
    "upload.resolve": "the targets are resolved in the live process",
    "upload.check": "object build ids and expectations are checked",
    "upload.compile": "the payload's code has run and the replacements are compiled",
    "upload.commit": "the record is ready, not yet stored",
    "unload.forget": "the payload is about to be forgotten",
    "apply.check": "every check of apply passed; the pre hook has not run",
    "apply.prepare": "the pre hook ran; the swaps are prepared, nothing is changed",
    "revert.check": "every check of revert passed; the pre hook has not run",
    "revert.prepare": "the pre hook ran; the swaps back are prepared",
    "replace.check": "every check of replace passed; the pre hook has not run",
    "replace.prepare": "the pre hook ran; the swaps of the replace are prepared",
    "transition.wait": "dispatchers are installed; the engine waits for old frames to go",
    "late.check": "a module was imported late; the waiting payloads' checks passed",
    "late.prepare": "the pre hooks ran; the swaps for the late module are prepared",
    "pause:swap": "the one pause of an atomic or immediate action",
    "pause:transition-start": "the pause that installs a transition's dispatchers",
    "pause:transition-final": "the pause that ends a transition with the new code",
    "pause:mark": "the pause of one mark_applied/mark_reverted in an action hook",
    "pause:hook-data": "the pause that sets a hooked payload's data",
    "pause:late": "the pause that patches a module imported late",
    "pause:reload": "the pause that sets a payload's data again after a reload",
}


class InjectedFault(RuntimeError):
    """The failure a test injected at a point."""


@dataclass
class _Plan:
    point: str | None  # None: only record
    nth: int = 1
    seen: list[str] = field(default_factory=list)
    fired: bool = False
    raises: type[BaseException] = field(default_factory=lambda: InjectedFault)

    def __call__(self, point: str, ops: Ops | None) -> None:
        if point not in POINTS:
            raise AssertionError(f"undeclared fault point {point!r}")
        self.seen.append(point)
        if point != self.point or self.fired or self.seen.count(point) != self.nth:
            return
        self.fired = True
        if ops is not None:
            poison(ops)
            return
        raise self.raises(f"fault injected at {point}")


@contextmanager
def inject(
    engine: Engine, point: str, nth: int = 1, raises: type[BaseException] = InjectedFault
) -> Iterator[_Plan]:
    """Make the ``nth`` pass of ``point`` fail while the block runs (a plain point
    raises ``raises``, e.g. ``KeyboardInterrupt``); ``plan.fired`` says whether it was
    reached."""
    if point not in POINTS:
        raise ValueError(f"unknown fault point {point!r}; points are {', '.join(POINTS)}")
    plan = _Plan(point, nth, raises=raises)
    engine._inject = plan
    try:
        yield plan
    finally:
        engine._inject = None


@contextmanager
def record(engine: Engine) -> Iterator[list[str]]:
    """The points passed while the block runs, in order."""
    plan = _Plan(None)
    engine._inject = plan
    try:
        yield plan.seen
    finally:
        engine._inject = None


def poison(ops: Ops) -> None:
    """Make the swap half-way through ``ops`` fail inside the pause, from C.

    The failing operation is an ordinary one with a value C rejects (a function's
    ``__code__`` set to ``None``, an unhashable key, a non-string attribute name), so
    the swaps before it are done and the ones after it are not. The lists are replaced,
    not changed: the engine shares them between prepared pauses."""
    bad: dict[str, Callable[[list[Any]], Any]] = {
        "func_attrs": lambda rows: (rows[0][0], "__code__", None),
        "dict_sets": lambda rows: ({}, [], None),
        "dict_dels": lambda rows: ({}, []),
        "class_sets": lambda rows: (object, 0, None),
        "class_dels": lambda rows: (object, 0),
    }
    half = sum(len(getattr(ops, kind)) for kind in bad) // 2
    for kind, make in bad.items():
        rows = getattr(ops, kind)
        if rows and half <= len(rows):
            at = max(half, 1)
            setattr(ops, kind, [*rows[:at], make(rows), *rows[at:]])
            return
        half -= len(rows)
    victim = cast(types.FunctionType, _victim)
    ops.func_attrs = [*ops.func_attrs, (victim, "__code__", None)]  # nothing to swap


def _victim() -> None:
    """A function no payload touches, whose ``__code__`` a poisoned empty pause fails to set."""
