"""What ``list``, ``status`` and every action return, in the engine and through the
bindings alike (spec §10). Plain frozen dataclasses; importing them costs nothing."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class FuncStatus:
    target: str
    applied: bool  # the per-function marker: this payload's code is on the function's stack
    active: bool  # this payload's code is the one running
    stack: tuple[str, ...]  # payloads patching the function, bottom first
    trampoline: bool
    expect: str | None


@dataclass(frozen=True)
class PayloadStatus:
    name: str
    state: str
    rc: int
    build_id: str
    depends: str | None
    metadata: dict[str, str]
    version: str
    description: str
    consistency: str
    python: tuple[str, ...]
    error: str | None
    message: str
    funcs: tuple[FuncStatus, ...]
    data: tuple[str, ...]
    in_progress: dict[str, Any] | None = None
    pending: tuple[str, ...] = ()  # modules the payload waits for (not imported yet)
    signature: str = "unsigned"  # "unsigned", "verified KEYID", "signed by KEYID (not verified...)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ActionResult:
    action: str
    name: str
    state: str | None
    noop: bool
    message: str
    pause_ns: int = 0
    duration_ns: int = 0
    consistency: str | None = None
