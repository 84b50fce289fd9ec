"""Hooks (spec §4): declared once, called in a defined order.

| hook | when | may veto |
|---|---|---|
| ``pre_apply`` / ``pre_revert`` | after every check, before the swap, outside the pause | yes |
| ``post_apply`` / ``post_revert`` | after the swap (or its failure), outside the pause | no |
| ``apply`` / ``revert`` | instead of the default swap, with thread switching held off | no |

A post hook runs exactly when its action got past its checks and the pre hook (if
any) did not veto, with ``ctx.rc`` 0 or the error's errno — also when the swap failed
or timed out, so it can undo what the pre hook prepared (Linux pairs them; Xen skips
them after a timeout; we pair them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import LivepatchError
from ..kinds import HOOK_KINDS, VETOING_HOOKS
from .state import SystemState

#: name -> may it veto (the kinds are the manifest's; only ``pre_*`` hooks veto)
HOOKS: dict[str, bool] = {kind: kind in VETOING_HOOKS for kind in HOOK_KINDS}
PAIRS = {"apply": ("pre_apply", "post_apply"), "revert": ("pre_revert", "post_revert")}

log = logging.getLogger("pylivepatch.hooks")


@dataclass(frozen=True)
class PayloadInfo:
    name: str
    build_id: str
    metadata: dict[str, str]


class HookContext:
    """What a hook receives: ``payload``, ``action``, ``rc``, ``modules``,
    ``state(id)``, ``prev_state(id)``, ``log``, and for action hooks
    ``mark_applied``/``mark_reverted``.

    ``modules`` names the target modules this run of the hook is for: at an action, the
    payload's targets imported by then (none, for a payload whose every target is still
    to be imported); when a module is imported later, just that module (the hooks run
    again for it, like Linux's per-object callbacks)."""

    def __init__(
        self,
        payload: PayloadInfo,
        action: str,
        states: dict[int, SystemState],
        prev_states: dict[int, SystemState],
        emit: Callable[..., None],
        modules: tuple[str, ...] = (),
    ) -> None:
        self.payload = payload
        self.action = action
        self.modules = modules
        self.rc = 0
        self._states = states
        self._prev = prev_states
        self._emit = emit
        self._marker: Callable[[str, bool], None] | None = None

    def state(self, id: int) -> SystemState | None:  # noqa: A002 - the spec's name
        """This payload's state ``id`` (declared in its manifest)."""
        return self._states.get(id)

    def prev_state(self, id: int) -> SystemState | None:  # noqa: A002
        """The state ``id`` of the payloads being replaced or applied before this one."""
        return self._prev.get(id)

    def log(self, message: str) -> None:
        """A line in the action's history (and the ``pylivepatch.hooks`` logger)."""
        log.info("%s: %s", self.payload.name, message)
        self._emit("hook-log", message=message)

    def mark_applied(self, target: str) -> None:
        """In an ``apply``/``revert`` hook: install the payload's code for ``target``."""
        self._mark(target, True)

    def mark_reverted(self, target: str) -> None:
        """In an ``apply``/``revert`` hook: put back the code ``target`` had before."""
        self._mark(target, False)

    def _mark(self, target: str, applied: bool) -> None:
        if self._marker is None:
            raise LivepatchError(
                "wrong-state",
                f"{self.payload.name}: mark_* is only available inside apply/revert hooks",
            )
        self._marker(target, applied)


def vetoed(result: Any) -> bool:
    """A pre hook vetoes by returning False or a non-zero int (None, True, 0 go on)."""
    if result is None or result is True:
        return False
    if result is False:
        return True
    return isinstance(result, int) and result != 0


def run_pre(name: str, kind: str, func: Callable[[HookContext], Any], ctx: HookContext) -> None:
    """Run a vetoing hook; raise ``vetoed`` with the hook's reason if it says no."""
    try:
        result = func(ctx)
    except Exception as exc:  # noqa: BLE001 - the message becomes the error
        raise LivepatchError(
            "vetoed", f"{name}: {kind} hook refused: {type(exc).__name__}: {exc}"
        ) from None
    if vetoed(result):
        raise LivepatchError("vetoed", f"{name}: {kind} hook refused (returned {result!r})")


def run_post(func: Callable[[HookContext], Any], ctx: HookContext) -> str | None:
    """Run a post hook; return the error text if it raised (the action stands)."""
    try:
        func(ctx)
    except Exception as exc:  # noqa: BLE001 - reported, never undoes the action
        return f"{type(exc).__name__}: {exc}"
    return None
