"""Swaps as data: the operations a pause performs on functions and attributes (the
undo of a failed action is in :mod:`.undo`)."""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

from ..errors import LivepatchError
from ..payload import static
from ..payload.fingerprint import nested_code
from . import pause
from .records import DataSlot, FuncSlot, Record, Triple
from .resolve import ABSENT


def data_below(slot: DataSlot, rec: Record) -> Any:
    """What a data slot shows once ``rec`` is taken off its stack."""
    rest = [v for r, v in slot.stack if r is not rec]
    return rest[-1] if rest else slot.original


def func_ops(ops: pause.Ops, slot: FuncSlot, triple: Triple) -> None:
    fn = slot.func
    code, defaults, kwdefaults = triple
    if len(code.co_freevars) != len(fn.__closure__ or ()):
        raise LivepatchError(
            "unsupported-target",
            f"{fn.__module__}:{fn.__qualname__}: new code has {len(code.co_freevars)} free variables, the function "
            f"{len(fn.__closure__ or ())}",
        )
    ops.func_attrs += [
        (fn, "__code__", code),
        (fn, "__defaults__", defaults),
        (fn, "__kwdefaults__", kwdefaults),
    ]


def data_ops(ops: pause.Ops, slot: DataSlot, value: Any) -> None:
    holder, name = slot.holder, slot.name
    if static.is_module(holder):
        if value is ABSENT:
            if name in holder.__dict__:
                ops.dict_dels.append((holder.__dict__, name))
        else:
            ops.dict_sets.append((holder.__dict__, name, value))
    elif value is ABSENT:
        if name in static.class_dict(holder):  # type: ignore[arg-type]
            ops.class_dels.append((holder, name))  # type: ignore[arg-type]
    else:
        ops.class_sets.append((holder, name, value))  # type: ignore[arg-type]


def installed_codes(slot: FuncSlot) -> Iterator[types.CodeType]:
    if slot.stack:
        yield from slot.stack[-1][1].codes()
    else:
        yield from nested_code(slot.original[0])


def undo_data_ops(ops: pause.Ops) -> pause.Ops:
    """The data operations that put back what ``ops`` is about to change (taken before)."""
    undo = pause.Ops()
    for d, key, _ in ops.dict_sets:
        if key in d:
            undo.dict_sets.append((d, key, d[key]))
        else:
            undo.dict_dels.append((d, key))
    for d, key in ops.dict_dels:
        if key in d:
            undo.dict_sets.append((d, key, d[key]))
    for cls, name, _ in ops.class_sets:
        if name in static.class_dict(cls):
            undo.class_sets.append((cls, name, static.class_dict(cls)[name]))
        else:
            undo.class_dels.append((cls, name))
    for cls, name in ops.class_dels:
        if name in static.class_dict(cls):
            undo.class_sets.append((cls, name, static.class_dict(cls)[name]))
    return undo
