"""What every part of the engine shares: its state, the book-keeping of one running
action (:class:`Act`), and the small steps all actions take — a named fault point, a
pause, noting in the undo log what a pause will touch, the slots of a payload's
functions and attributes, the consistency mode.

The engine is one class built in layers, one concept each, each importing only the
ones below it: ``base`` (this), ``checks`` (everything verified before anything
changes), ``hooked`` (hooks around an action and action replacement hooks),
``consistency`` (when new code starts to run: the atomic retry and the transition),
``late`` (objects imported later and reloads) and ``core`` (the actions themselves).
"""

from __future__ import annotations

import builtins
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any

from ..errors import LivepatchError
from ..payload import static
from ..payload.fingerprint import ModuleSource
from . import pause
from .events import History
from .records import ActionResult, DataSlot, FuncSlot, Record
from .resolve import ABSENT, DataTarget
from .state import SystemState
from .table import Action, State
from .undo import Undo

DEFAULT_TIMEOUT = {"transition": 10.0, "atomic": 1.0, "immediate": 0.0}
LATE_IMPORT_WAIT = 30.0  # seconds an import waits for a running action to end
TRANSITION_SWITCH_INTERVAL = 0.0005  # seconds; see Consistency._transition
TRANSITION_POLL = (0.001, 0.05)  # seconds between checks of a transition: first, longest
TRANSITION_NAMES_EVERY = 0.25  # seconds between checks that name every blocker (status)


def way_back(limit: float) -> float:
    """How long the way back of a transition that timed out may take: a quarter of the
    timeout, at least 1 s, at most the timeout. The action then returns within about
    ``limit + way_back(limit)`` (docs/benchmarks.md, "The timeout as a bound")."""
    return min(limit, max(1.0, limit / 4))


class EngineBase:
    """The engine's state, and the steps every action shares (see the module docstring)."""

    _lock: threading.Lock
    _payloads: dict[str, Record]
    _funcs: dict[int, FuncSlot]
    _data: dict[tuple[int, str], DataSlot]
    _history: History
    _seq: int
    _progress: dict[str, dict[str, Any]]
    _sources: dict[str, tuple[tuple[str, int, int], ModuleSource]]
    _owner: int | None  # thread running an action
    # payload -> (timeout, force) of a revert asked for during its apply's transition
    _reverse_requests: dict[str, tuple[float | None, bool]]
    _stuck: dict[str, Any]  # payload -> consistency.Stuck: a way back that did not finish
    _waited: frozenset[str]  # modules applied payloads wait for
    _patched_modules: frozenset[str]  # modules applied payloads patch
    _undo: Undo | None  # the undo log of the running action
    # fault injection (engine/faults.py): None except while a test arms a point
    _inject: Callable[[str, pause.Ops | None], None] | None
    _saved_switch_interval: float | None  # the process's own, while a transition runs

    def original_value(self, holder: types.ModuleType | type, name: str) -> Any:
        """What ``holder.name`` held before any payload changed it (``ABSENT`` if nothing)."""
        slot = self._data.get((id(holder), name))
        if slot is not None and slot.holder is holder:
            return slot.original
        return static.namespace(holder).get(name, ABSENT)

    def is_added(self, holder: object, name: str) -> bool:
        """Whether ``holder.name`` exists only because a payload added it."""
        slot = self._data.get((id(holder), name))
        return slot is not None and slot.holder is holder and slot.original is ABSENT

    def _original_value(self, dt: DataTarget) -> Any:
        return self.original_value(dt.holder, dt.name)

    def original_code(self, func: types.FunctionType) -> types.CodeType:
        """The code ``func`` had before any payload patched it."""
        slot = self._funcs.get(id(func))
        return slot.original[0] if slot is not None and slot.func is func else func.__code__

    def _get(self, name: str) -> Record:
        rec = self._payloads.get(name)
        if rec is None:
            known = ", ".join(sorted(self._payloads)) or "none"
            raise LivepatchError(
                "not-found", f"no payload named {name!r} is uploaded (uploaded: {known})"
            )
        return rec

    def _at(self, point: str) -> None:
        """A named step of an action (engine/faults.py): where a test may make it fail."""
        if self._inject is not None:
            self._inject(point, None)

    def _pause(
        self,
        point: str,
        ops: pause.Ops,
        blocking: set[int] | None,
        in_flight: pause.InFlight | None = None,
    ) -> pause.PauseResult:
        """:func:`pause.run`, as the fault point ``point`` (armed, it fails half-way).
        The caller has noted in the undo log what ``ops`` touches."""
        if self._inject is not None:
            self._inject(point, ops)
        return pause.run(ops, blocking, in_flight)

    def _touch(
        self, undo: Undo | None, slots: builtins.list[FuncSlot], dslots: builtins.list[DataSlot]
    ) -> None:
        """Note in the undo log(s) what a pause is about to change."""
        for log in {id(u): u for u in (undo, self._undo) if u is not None}.values():
            log.touch(slots, dslots)

    def _applied(self, exclude: Record | None = None) -> builtins.list[Record]:
        """Applied payloads, oldest first."""
        found = [
            r for r in self._payloads.values() if r.state is State.APPLIED and r is not exclude
        ]
        return sorted(found, key=lambda r: r.applied_seq)

    def state_of(self, name: str, sid: int) -> SystemState | None:
        """The state ``sid`` of payload ``name`` (None if it has none)."""
        rec = self._payloads.get(name)
        return rec.states.get(sid) if rec is not None else None

    def _slot_of(self, fn: types.FunctionType, caches: builtins.list[Any]) -> FuncSlot:
        slot = self._funcs.get(id(fn))
        if slot is None or slot.func is not fn:
            slot = FuncSlot(fn, (fn.__code__, fn.__defaults__, fn.__kwdefaults__), list(caches))
        return slot

    def _dslot_of(self, dt: DataTarget) -> DataSlot:
        dslot = self._data.get((id(dt.holder), dt.name))
        if dslot is None or dslot.holder is not dt.holder:
            dslot = DataSlot(dt.holder, dt.name, dt.current())
        return dslot

    def _slots_for(self, rec: Record) -> tuple[builtins.list[FuncSlot], builtins.list[DataSlot]]:
        slots = [self._slot_of(p.target.func, p.target.caches) for p in rec.funcs]
        return slots, [self._dslot_of(p.target) for p in rec.data]

    def _mode(self, rec: Record, override: str | None) -> str:
        mode = override or rec.manifest.consistency
        if mode not in DEFAULT_TIMEOUT:
            raise LivepatchError("invalid-payload", f"unknown consistency mode {mode!r}")
        if mode != "immediate" and pause.gil_disabled():
            raise LivepatchError(
                "unsupported-target",
                f"{rec.name}: this interpreter runs without the GIL and exposes no stop-the-world; "
                f"{mode} cannot pause it safely (use consistency 'immediate' at your own risk)",
            )
        return mode


class NoAction(Exception):
    pass


class Act:
    """Book-keeping of one running action."""

    def __init__(self, engine: EngineBase, action: Action, name: str) -> None:
        self.engine, self.action, self.name = engine, action, name
        self.t0 = time.perf_counter_ns()
        self.pause_ns = 0
        self.result_message = ""
        self.build_id = ""
        self.undo: Undo | None = None
        # a transition whose way back is stuck (consistency.Stuck): never undone at once
        self.stuck: Any = None

    def rollback(self) -> None:
        """Undo what this action changed (once; see :mod:`.undo`); not while its
        transition is stuck: that would mix versions in the chains still running."""
        if self.undo is not None and self.stuck is None:
            self.undo.restore(self.engine)

    def emit(self, kind: str, **detail: Any) -> None:
        if kind in ("finished", "forced", "refused", "swapped"):  # audited
            rec = self.engine._payloads.get(self.name)
            detail["build_id"] = rec.build_id if rec is not None else self.build_id
            if rec is not None:
                detail["signature"] = rec.signature
        self.engine._history.emit(str(self.action), self.name, kind, **detail)

    def elapsed(self) -> int:
        return time.perf_counter_ns() - self.t0

    def result(
        self, state: State | None, *, pause_ns: int = 0, consistency: str | None = None
    ) -> ActionResult:
        return ActionResult(
            str(self.action), self.name, str(state) if state else None, False, self.result_message,
            pause_ns, self.elapsed(), consistency,
        )  # fmt: skip

    def noop(self, rec: Record, message: str) -> ActionResult:
        self.result_message = message
        self.emit("note", message="no action needed")
        return ActionResult(
            str(self.action), self.name, str(rec.state), True, message, 0, self.elapsed()
        )


def func_attrs(
    triples: list[tuple[types.FunctionType, tuple[Any, Any, Any]]],
) -> list[tuple[types.FunctionType, str, Any]]:
    """The attribute swaps that give each function its triple."""
    return [
        (fn, attr, value)
        for fn, triple in triples
        for attr, value in zip(("__code__", "__defaults__", "__kwdefaults__"), triple, strict=True)
    ]


def module_of(target: str) -> str:
    return target.split(":", 1)[0]


def imported(modname: str) -> bool:
    return static.is_module(sys.modules.get(modname))  # never isinstance: see payload/static.py


def prev_states(records: list[Record]) -> dict[int, SystemState]:
    """For each state id, the state of the most recently applied of ``records``."""
    prev: dict[int, SystemState] = {}
    for rec in records:  # oldest first: later ones win
        prev.update(rec.states)
    return prev
