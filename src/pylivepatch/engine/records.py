"""What the engine keeps about payloads and patched functions, and what it reports.

A ``Record`` is one uploaded payload; a ``FuncSlot`` is one patched function with its
original code and the stack of payloads patching it (Linux ``func_stack``), a
``DataSlot`` the same for an attribute. ``PayloadStatus``/``FuncStatus``/``ActionResult``
(in :mod:`pylivepatch.results`) are what ``list``, ``status`` and every action return.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..payload.manifest import DataEntry, FuncEntry, Manifest
from ..results import ActionResult, FuncStatus, PayloadStatus
from .compile import LoadedPackage, Variant
from .resolve import DataTarget, FunctionTarget
from .state import SystemState
from .table import State

__all__ = [
    "ActionResult",
    "DataSlot",
    "FuncPlan",
    "FuncSlot",
    "FuncStatus",
    "PayloadStatus",
    "Record",
]

Triple = tuple[types.CodeType, Any, Any]  # __code__, __defaults__, __kwdefaults__


@dataclass
class FuncPlan:
    entry: FuncEntry
    target: FunctionTarget
    variant: Variant
    stale: bool = False  # its module was reloaded: the module now holds another function


@dataclass
class DataPlan:
    entry: DataEntry
    target: DataTarget
    value: Any


@dataclass
class Record:
    """One uploaded payload."""

    manifest: Manifest
    loaded: LoadedPackage
    funcs: list[FuncPlan]
    data: list[DataPlan]
    state: State = State.CHECKED
    rc: int = 0
    error: str | None = None
    message: str = ""
    applied_seq: int = 0
    nodeps: bool = False
    flags: tuple[str, ...] = ()
    signature: str = "unsigned"  # what the signature policy said at upload
    hooks: dict[str, Callable[..., Any]] = field(default_factory=dict)
    states: dict[int, SystemState] = field(default_factory=dict)
    # module -> (funcs, data) entries waiting for that module to be imported
    pending: dict[str, tuple[list[FuncEntry], list[DataEntry]]] = field(default_factory=dict)
    files: list[Any] = field(default_factory=list)  # datafiles.FilePlan: its data files

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def build_id(self) -> str:
        return self.manifest.build_id


@dataclass
class FuncSlot:
    """One patched function: its original and the stack of payloads patching it."""

    func: types.FunctionType
    original: Triple
    caches: list[Any]
    stack: list[tuple[Record, Variant]] = field(default_factory=list)

    def installed(self) -> Triple:
        if self.stack:
            v = self.stack[-1][1]
            return (v.code, v.defaults, v.kwdefaults)
        return self.original


@dataclass
class DataSlot:
    holder: types.ModuleType | type
    name: str
    original: Any
    stack: list[tuple[Record, Any]] = field(default_factory=list)

    def installed(self) -> Any:
        return self.stack[-1][1] if self.stack else self.original
