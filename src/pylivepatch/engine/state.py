"""System state (spec §6, Linux ``klp_state``): what a payload changed in the process
beyond code, so that a later payload can take it over.

A payload declares ``patch.state(id=7, version=1)``; its hooks reach the state object
with ``ctx.state(7)`` and keep whatever they need in ``.data``. During an action,
``ctx.prev_state(7)`` is the state of the same id in the payloads being replaced or
applied before it, so a cumulative payload can take over what an earlier one set up.
Payload code reaches a state at run time with ``get_state(name, id)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import LivepatchError


@dataclass
class SystemState:
    """One payload's state ``id`` at ``version``; ``data`` is the payload's to use."""

    id: int
    version: int
    payload: str
    data: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def check_compatible(
    name: str,
    new_states: dict[int, SystemState],
    applied: Iterable[tuple[str, dict[int, SystemState]]],
    replacing: bool,
) -> None:
    """Refuse (``incompatible-state``) a payload that would break an applied state:
    for every state of every applied payload, the new payload either has that id at a
    version at least as high, or lacks the id and is not a replace payload."""
    for other, states in applied:
        for sid, old in states.items():
            new = new_states.get(sid)
            if new is not None:
                if new.version < old.version:
                    raise LivepatchError(
                        "incompatible-state",
                        f"{name}: state {sid} is at version {old.version} (payload {other}); "
                        f"{name} has version {new.version}, a downgrade",
                    )
            elif replacing:
                raise LivepatchError(
                    "incompatible-state",
                    f"{name}: replacing would drop state {sid} (version {old.version}, payload {other}), "
                    f"which {name} does not declare",
                )


def get_state(name: str, id: int) -> SystemState | None:  # noqa: A002 - the spec's name
    """The state ``id`` of payload ``name`` in this process's engine, or None."""
    from . import engine

    return engine().state_of(name, id)
