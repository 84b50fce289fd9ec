"""The life cycle as data (spec §3): which action is allowed from which state.

The engine consults ``TABLE`` and nothing else to decide whether an action may start;
``NOOP`` answers "no action needed" (the payload is already where the action leads),
a missing entry is ``wrong-state``.
"""

from __future__ import annotations

from enum import Enum


class State(str, Enum):
    CHECKED = "CHECKED"
    APPLIED = "APPLIED"
    INCONSISTENT = "INCONSISTENT"

    def __str__(self) -> str:
        return self.value


class Action(str, Enum):
    UPLOAD = "upload"
    APPLY = "apply"
    REVERT = "revert"
    REPLACE = "replace"
    UNLOAD = "unload"

    def __str__(self) -> str:
        return self.value


class _Noop:
    def __repr__(self) -> str:
        return "NOOP"


NOOP = _Noop()
GONE = None  # the payload is forgotten

#: (action, current state) -> resulting state, NOOP, or GONE. Absent: wrong-state.
TABLE: dict[tuple[Action, State], State | _Noop | None] = {
    (Action.APPLY, State.CHECKED): State.APPLIED,
    (Action.APPLY, State.APPLIED): NOOP,
    (Action.REVERT, State.APPLIED): State.CHECKED,
    (Action.REVERT, State.CHECKED): NOOP,
    (Action.REVERT, State.INCONSISTENT): State.CHECKED,  # only with --force
    (Action.REPLACE, State.CHECKED): State.APPLIED,
    (Action.REPLACE, State.APPLIED): NOOP,
    (Action.UNLOAD, State.CHECKED): GONE,
}

#: Actions that only ``force`` may take from a state.
FORCE_ONLY: frozenset[tuple[Action, State]] = frozenset({(Action.REVERT, State.INCONSISTENT)})


def allowed_from(action: Action) -> list[State]:
    """States from which ``action`` does something without ``force``."""
    return [
        s
        for (a, s), r in TABLE.items()
        if a is action and r is not NOOP and (a, s) not in FORCE_ONLY
    ]
