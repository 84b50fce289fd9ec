"""The undo log of one action: how "everything or nothing" (spec §3) is kept.

An action begins by noting the engine's bookkeeping (the payloads, their states and
plans, the stack of every patched function and attribute). Before each pause it notes
the live objects the pause will touch (a function's code, defaults and keyword
defaults; an attribute's value), the first time it sees each. If the action fails at
any step before it commits, :meth:`Undo.restore` puts the live objects back in one
pause and the bookkeeping back as data, so every touched function, attribute and
namespace is identical (``is``) to what it was, whatever step failed and however
far the failing pause got.

Nothing is copied deeply: the log holds references to the same objects, so noting is
cheap (a few list copies per patched function) and restoring restores identity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..payload import static
from . import pause
from .resolve import ABSENT
from .swap import data_ops, func_ops
from .table import State

if TYPE_CHECKING:
    from .base import EngineBase as Engine
    from .records import DataSlot, FuncSlot, Record


class Undo:
    """What to put back if the action that took it fails."""

    def __init__(self, engine: Engine) -> None:
        self._payloads = dict(engine._payloads)
        self._records = [_note_record(r) for r in engine._payloads.values()]
        self._funcs = dict(engine._funcs)
        self._func_stacks = [(s, list(s.stack)) for s in engine._funcs.values()]
        self._data = dict(engine._data)
        self._data_stacks = [(d, list(d.stack), d.original) for d in engine._data.values()]
        self._seq = engine._seq
        self._live_funcs: dict[int, tuple[FuncSlot, tuple[Any, Any, Any]]] = {}
        self._live_data: dict[tuple[int, str], tuple[DataSlot, Any]] = {}
        # what puts back each data file the action wrote (engine/datafiles.py), in order
        self.files: list[Callable[[], None]] = []
        self.restored = False

    def touch(self, slots: list[FuncSlot], dslots: list[DataSlot]) -> None:
        """Note the live state of what a pause is about to change (first sight wins)."""
        for s in slots:
            fn = s.func
            self._live_funcs.setdefault(
                id(fn), (s, (fn.__code__, fn.__defaults__, fn.__kwdefaults__))
            )
        for d in dslots:
            self._live_data.setdefault(
                (id(d.holder), d.name), (d, static.namespace(d.holder).get(d.name, ABSENT))
            )

    def keep(self, engine: Engine, inner: Undo) -> None:
        """A module was imported during the action this log undoes, and patched with
        its own log ``inner``: that patch is not the action's to undo (the module stays
        imported), so what it changed is noted here as it is now."""
        records = {id(r) for r in engine._payloads.values() if r.state is State.APPLIED}
        self._records = [
            _note_record(note[0]) if id(note[0]) in records else note for note in self._records
        ]
        for slot, _ in inner._live_funcs.values():
            self._live_funcs.pop(id(slot.func), None)
            if engine._funcs.get(id(slot.func)) is slot:
                self._funcs[id(slot.func)] = slot
                self._func_stacks = [(s, st) for s, st in self._func_stacks if s is not slot]
                self._func_stacks.append((slot, list(slot.stack)))
        for dslot, _ in inner._live_data.values():
            key = (id(dslot.holder), dslot.name)
            self._live_data.pop(key, None)
            if engine._data.get(key) is dslot:
                self._data[key] = dslot
                self._data_stacks = [d for d in self._data_stacks if d[0] is not dslot]
                self._data_stacks.append((dslot, list(dslot.stack), dslot.original))

    def restore(self, engine: Engine) -> None:
        """Put the live objects back in one pause, then the bookkeeping."""
        if self.restored:
            return
        self.restored = True
        # The disk first, and whatever else fails: a data file goes back to the bytes it
        # held if it still holds what the action wrote (it is shared with other processes).
        for put_back in reversed(self.files):
            try:
                put_back()
            except Exception as exc:  # noqa: BLE001 - said, and the others are still put back
                engine._history.emit(
                    "undo", "", "note", message=f"a data file could not be put back: {exc}"
                )
        if any(
            r.state is State.INCONSISTENT and was is not State.INCONSISTENT
            for r, was, *_ in self._records
        ):
            # An action hook left a half state its own opposite could not fix: that is
            # kept, and said loudly, for ``revert --force`` (spec §3).
            return
        ops = pause.Ops()
        caches: dict[int, Any] = {}
        for slot, triple in self._live_funcs.values():
            func_ops(ops, slot, triple)  # what it had: its free variables match
            caches.update((id(c), c) for c in slot.caches)
        for dslot, value in self._live_data.values():
            data_ops(ops, dslot, value)
        ops.caches = list(caches.values())  # results the new code cached
        pause.run(ops, None)
        engine._payloads.clear()
        engine._payloads.update(self._payloads)
        for note in self._records:
            _restore_record(*note)
        engine._funcs.clear()
        engine._funcs.update(self._funcs)
        for slot, stack in self._func_stacks:
            slot.stack[:] = stack
        engine._data.clear()
        engine._data.update(self._data)
        for dslot, dstack, original in self._data_stacks:
            dslot.stack[:] = dstack
            dslot.original = original
        engine._seq = self._seq


def _note_record(r: Record) -> tuple[Any, ...]:
    return (
        r,
        r.state,
        r.applied_seq,
        r.nodeps,
        list(r.funcs),
        list(r.data),
        dict(r.pending),
        [p.stale for p in r.funcs],
    )


def _restore_record(
    r: Record,
    state: Any,
    applied_seq: int,
    nodeps: bool,
    funcs: list[Any],
    data: list[Any],
    pending: dict[str, Any],
    stale: list[bool],
) -> None:
    r.state, r.applied_seq, r.nodeps = state, applied_seq, nodeps
    r.funcs[:] = funcs
    r.data[:] = data
    r.pending.clear()
    r.pending.update(pending)
    for plan, was in zip(funcs, stale, strict=True):
        plan.stale = was
