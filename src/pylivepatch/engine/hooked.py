"""Hooks around an action (spec §4): pre hooks that may veto, post hooks paired with
them and told the rc, and the ``apply``/``revert`` action replacement hooks that swap
the functions themselves with ``ctx.mark_applied``/``ctx.mark_reverted``.
"""

from __future__ import annotations

import builtins
import errno
from collections.abc import Callable
from typing import Any

from ..errors import LivepatchError
from . import pause
from .base import Act
from .checks import Checks
from .hooks import PAIRS, HookContext, PayloadInfo, run_post, run_pre
from .records import DataSlot, FuncPlan, FuncSlot, Record
from .state import SystemState
from .swap import data_below, data_ops, func_ops
from .table import State


class Hooked(Checks):
    """Hooks around actions (module docstring)."""

    def _with_hooks(
        self,
        act: Act,
        rec: Record,
        action: str,
        prev: dict[int, SystemState],
        swap: Callable[[], pause.PauseResult],
    ) -> pause.PauseResult:
        """Run ``swap`` between the payload's pre and post hooks (spec §4); a replace
        runs the replacing payload's apply hooks with ``ctx.action == "replace"``."""
        pre_kind, post_kind = PAIRS["revert" if action == "revert" else "apply"]
        modules = {p.target.module.__name__ for p in rec.funcs}
        modules |= {p.target.module.__name__ for p in rec.data}
        ctx = HookContext(
            PayloadInfo(rec.name, rec.build_id, dict(rec.manifest.metadata)),
            action,
            rec.states,
            prev,
            act.emit,
            tuple(sorted(modules)),
        )
        pre, post = rec.hooks.get(pre_kind), rec.hooks.get(post_kind)
        if pre is not None:
            try:
                with rec.loaded.noting_imports():  # taken out if the payload is discarded
                    run_pre(rec.name, pre_kind, pre, ctx)
            except LivepatchError as exc:
                act.emit("hook", hook=pre_kind, result="vetoed")
                raise exc from None
            act.emit("hook", hook=pre_kind, result="ok")
        try:
            result = swap()
        except BaseException as exc:
            act.rollback()  # the post hook sees the process as it is again
            rc = exc.errno if isinstance(exc, LivepatchError) else errno.EIO
            if act.stuck is not None:  # not as it was yet: the post hook runs once it is
                act.stuck.post = lambda: self._post(act, post, post_kind, ctx, rc)
                raise
            self._post(act, post, post_kind, ctx, rc)
            raise
        self._post(act, post, post_kind, ctx, 0)
        return result

    def _post(
        self, act: Act, post: Callable[..., Any] | None, kind: str, ctx: HookContext, rc: int
    ) -> None:
        if post is None:
            return
        ctx.rc = rc
        failure = run_post(post, ctx)
        if failure is None:
            act.emit("hook", hook=kind, rc=rc, result="ok")
        else:
            act.emit("hook", hook=kind, rc=rc, result="failed", error=failure)
            act.result_message = f"{kind} hook failed: {failure} (the action stands)"

    def _mark(self, act: Act, rec: Record, plan: FuncPlan, slot: FuncSlot, applied: bool) -> int:
        """Install (or take back) one function of ``rec`` in its own pause; returns its length."""
        if any(r is rec for r, _ in slot.stack) == applied:
            return 0
        self._touch(act.undo, [slot], [])
        ops = pause.Ops()
        if applied:
            v = plan.variant
            func_ops(ops, slot, (v.code, v.defaults, v.kwdefaults))
            result = self._pause("pause:mark", ops, None)
            self._funcs.setdefault(id(slot.func), slot)
            slot.stack.append((rec, v))
            return result.pause_ns
        was_top = slot.stack[-1][0] is rec
        slot.stack[:] = [(r, v) for r, v in slot.stack if r is not rec]
        pause_ns = 0
        if was_top:
            func_ops(ops, slot, slot.installed())
            pause_ns = self._pause("pause:mark", ops, None).pause_ns
        if not slot.stack:
            self._funcs.pop(id(slot.func), None)
        return pause_ns

    def _hooked_swap(
        self,
        act: Act,
        rec: Record,
        action: str,
        slots: builtins.list[FuncSlot],
        dslots: builtins.list[DataSlot],
    ) -> pause.PauseResult:
        """An ``apply``/``revert`` action hook instead of the default swap (spec §4).

        The hook installs functions with ``ctx.mark_applied(target)`` and takes them
        back with ``ctx.mark_reverted(target)``, each in its own pause; it runs with
        thread switching held off (the switch interval raised to at least 1 s), so it
        must not block. Afterwards every function must be in the state the action
        promises; otherwise the opposite hook (or, without one, the engine) puts them
        back, and if even that fails the payload is ``INCONSISTENT``."""
        want = action == "apply"
        plans = {p.entry.target: (p, s) for p, s in zip(rec.funcs, slots, strict=True)}
        total = [0]

        def marker(target: str, applied: bool) -> None:
            if target not in plans:
                raise LivepatchError(
                    "not-found", f"{rec.name}: {target} is not a function of this payload"
                )
            plan, slot = plans[target]
            total[0] += self._mark(act, rec, plan, slot, applied)

        def run(kind: str) -> str | None:
            ctx = HookContext(
                PayloadInfo(rec.name, rec.build_id, dict(rec.manifest.metadata)),
                kind, rec.states, {}, act.emit,
                tuple(sorted({p.target.module.__name__ for p in rec.funcs})),
            )  # fmt: skip
            ctx._marker = marker
            failure: str | None = None
            try:
                with pause.held_off():  # restored and handed round after: pause.hand_round
                    rec.hooks[kind](ctx)
            except Exception as exc:  # noqa: BLE001 - reported; consistency decides
                failure = f"{type(exc).__name__}: {exc}"
            act.emit("hook", hook=kind, result="ok" if failure is None else "failed")
            return failure

        def state_is(on: bool) -> builtins.list[str]:
            """Targets not in state ``on``."""
            return [t for t, (_, s) in plans.items() if any(r is rec for r, _ in s.stack) != on]

        self._at(f"{action}.prepare")
        failure = run(action)
        off = state_is(want)
        if failure is None and not off:
            ops = pause.Ops()
            for dplan, dslot in zip(rec.data, dslots, strict=True):
                data_ops(ops, dslot, dplan.value if want else data_below(dslot, rec))
            self._touch(act.undo, [], dslots)
            try:
                result = self._pause("pause:hook-data", ops, None)
            except BaseException:
                opposite = "revert" if want else "apply"
                if opposite in rec.hooks:  # undo what the hook did beyond its marks
                    run(opposite)
                raise  # and the undo log puts back the functions and data
            for dplan, dslot in zip(rec.data, dslots, strict=True):
                if want:
                    self._data.setdefault((id(dslot.holder), dslot.name), dslot)
                    dslot.stack.append((rec, dplan.value))
                else:
                    dslot.stack[:] = [(r, v) for r, v in dslot.stack if r is not rec]
                    if not dslot.stack:
                        self._data.pop((id(dslot.holder), dslot.name), None)
            act.pause_ns = total[0] + result.pause_ns
            act.emit("swapped", funcs=len(slots), data=len(dslots), pause_ns=act.pause_ns)
            return pause.PauseResult(True, act.pause_ns)
        why = failure or f"it left {', '.join(off)} {'unapplied' if want else 'applied'}"
        opposite = "revert" if want else "apply"
        if opposite in rec.hooks:
            run(opposite)
        else:
            for plan, slot in plans.values():
                self._mark(act, rec, plan, slot, not want)
        back = state_is(not want)
        if not back:
            raise LivepatchError(
                "inconsistent",
                f"{action} {rec.name}: the {action} hook failed ({why}); everything was put back, nothing changed",
            )
        rec.state = State.INCONSISTENT
        raise LivepatchError(
            "inconsistent",
            f"{action} {rec.name}: the {action} hook failed ({why}) and {', '.join(back)} could not be put "
            f"back: payload {rec.name} is INCONSISTENT; only revert --force is accepted",
        )
