"""When new code starts to run (spec §5): the pause of an ``atomic`` or ``immediate``
action, retried until no thread runs the payload's code, and the ``transition`` mode
driven from the first pause (the dispatchers) through the wait for old frames to the
final pause, reversed on a timeout, a revert request or a failure
(:mod:`.transition` holds the dispatchers themselves).
"""

from __future__ import annotations

import builtins
import time
import types
from collections.abc import Callable
from typing import Any

from ..errors import LivepatchError
from . import collector, pause
from .base import (
    DEFAULT_TIMEOUT,
    TRANSITION_NAMES_EVERY,
    TRANSITION_POLL,
    Act,
    func_attrs,
    way_back,
)
from .hooked import Hooked
from .records import DataSlot, FuncSlot
from .swap import undo_data_ops
from .table import Action, State
from .transition import Transition, in_flight


class Consistency(Hooked):
    """Swapping in a pause or a transition (module docstring)."""

    def _swap(
        self,
        act: Act,
        ops: pause.Ops,
        blocking: set[int],
        mode: str,
        timeout: float | None,
        force: bool,
        slots: builtins.list[FuncSlot],
        dslots: builtins.list[DataSlot],
    ) -> pause.PauseResult:
        """Run the pause (retrying until quiescent in atomic mode) and register slots."""
        # The engine's own work, with automatic garbage collections held off; they run
        # while it sleeps, waiting for other threads (engine/collector.py).
        with collector.held():
            for cache in {id(c): c for s in slots for c in s.caches}.values():
                ops.caches.append(cache)
                cache.cache_clear()  # most entries die here, outside the pause
            # a failure from here on is undone from the log
            self._touch(act.undo, slots, dslots)
            limit = DEFAULT_TIMEOUT[mode] if timeout is None else timeout
            if mode == "transition":
                result = self._transition(act, ops, limit, force)
                self._register(act, slots, dslots, result)
                return result
            deadline = time.monotonic() + limit
            delay = 0.001
            waited = False
            while True:
                result = self._pause(
                    "pause:swap", ops, None if mode == "immediate" else blocking, in_flight
                )
                if result.swapped:
                    break
                if result.blockers:
                    self._progress[act.name]["blockers"] = [b.describe() for b in result.blockers]
                    if not waited:
                        act.emit("waiting", blockers=[b.describe() for b in result.blockers])
                        waited = True
                if time.monotonic() >= deadline:
                    if force:
                        act.emit("forced", blockers=[b.describe() for b in result.blockers])
                        result = pause.run(ops, None)
                        break
                    names = (
                        "; ".join(b.describe() for b in result.blockers)
                        or "the stacks kept changing"
                    )
                    raise LivepatchError(
                        "timeout",
                        f"{act.action} {act.name}: no quiescent moment within {limit:g}s; blocked by {names}",
                    )
                if result.blockers:
                    with collector.released():
                        time.sleep(delay)
                    delay = min(delay * 2, 0.05)
                else:
                    # the stacks moved between the walk and the swap: retry now
                    with collector.released():
                        time.sleep(0)
            self._register(act, slots, dslots, result)
            return result

    def _register(
        self,
        act: Act,
        slots: builtins.list[FuncSlot],
        dslots: builtins.list[DataSlot],
        result: pause.PauseResult,
    ) -> None:
        for slot in slots:
            self._funcs.setdefault(id(slot.func), slot)
        for dslot in dslots:
            self._data.setdefault((id(dslot.holder), dslot.name), dslot)
        act.pause_ns = result.pause_ns
        act.emit(
            "swapped",
            funcs=len(slots),
            data=len(dslots),
            pause_ns=result.pause_ns,
            pause_start_ns=result.started_ns,
        )

    def _transition(self, act: Act, ops: pause.Ops, limit: float, force: bool) -> pause.PauseResult:
        """spec §5 ``transition``: dispatchers, waiting, then the new code in one pause;
        on timeout the transition is reversed (or, with ``force``, completed).

        With many busy threads, every time the engine's thread gives the GIL up (a
        sleep, the hand-over after a pause) or is made to (after a switch interval of
        Python), it waits for a round of the other threads, each running a switch
        interval: a round of the default 5 ms with 128 threads is 0.64 s. So every
        action runs with the interval shortened (Engine._action): a thread preempted
        inside old code gets the GIL back sooner to leave it, and the engine's own work,
        switched out as often as any thread's, waits a short round each time. Each
        check asks only whether anything blocks, in a few C-level passes, and names
        every blocker only now and then (docs/benchmarks.md, "Transitions under
        load")."""
        return self._run_transition(act, ops, limit, force)

    def _run_transition(
        self, act: Act, ops: pause.Ops, limit: float, force: bool
    ) -> pause.PauseResult:
        changes: dict[int, dict[str, Any]] = {}
        funcs: dict[int, types.FunctionType] = {}
        for fn, attr, value in ops.func_attrs:
            changes.setdefault(id(fn), {})[attr] = value
            funcs[id(fn)] = fn
        pairs = [
            (
                fn,
                (fn.__code__, fn.__defaults__, fn.__kwdefaults__),
                (changes[k]["__code__"], changes[k]["__defaults__"], changes[k]["__kwdefaults__"]),
            )
            for k, fn in funcs.items()
        ]
        data_first = act.action is not Action.REVERT  # new code may need added names
        data = pause.Ops(
            dict_sets=ops.dict_sets, dict_dels=ops.dict_dels,
            class_sets=ops.class_sets, class_dels=ops.class_dels, caches=ops.caches,
        )  # fmt: skip
        trans = Transition(pairs)
        start = pause.Ops(func_attrs=func_attrs(trans.start_triples()), caches=ops.caches)
        dispatchers = pause.Ops(func_attrs=list(start.func_attrs))  # to put them back
        if data_first:
            start.dict_sets, start.dict_dels = data.dict_sets, data.dict_dels
            start.class_sets, start.class_dels = data.class_sets, data.class_dels
        undo_data = undo_data_ops(data)  # should the transition reverse
        try:
            first = self._pause("pause:transition-start", start, None)
        except BaseException:  # stopped half-way: back at once, before any call can mix
            back = pause.Ops(func_attrs=func_attrs([(fn, source) for fn, source, _ in pairs]))
            if data_first:
                back.dict_sets, back.dict_dels = undo_data.dict_sets, undo_data.dict_dels
                back.class_sets, back.class_dels = undo_data.class_sets, undo_data.class_dels
            pause.run(back, None)
            trans.end()
            raise
        trans.arm()
        act.emit(
            "transition", direction="patching" if data_first else "unpatching", funcs=len(pairs)
        )
        return self._wait_transition(
            act, ops, trans, undo_data, data, dispatchers, first, data_first, limit, force
        )

    def _wait_transition(
        self,
        act: Act,
        ops: pause.Ops,
        trans: Transition,
        undo_data: pause.Ops,
        data: pause.Ops,
        dispatchers: pause.Ops,
        first: pause.PauseResult,
        data_first: bool,
        limit: float,
        force: bool,
    ) -> pause.PauseResult:
        """Wait until no old frame is left, then end the transition in one pause.

        A failure while waiting or in the final pause (a bug, an injected fault) is
        handled like a timeout, so the consistency model holds on the way back too: the
        dispatchers are put back on every function (the final pause may have stopped
        half-way), the transition is reversed, and once no frame of the new code is left
        the old code is installed; then the failure is raised."""
        w = _Waiting(limit, force)
        while True:
            try:
                self._at("transition.wait")
                blockers = self._check(act, trans, w, data_first)
                if blockers and not w.reversed_ and self._reverse_requested(act, trans, w):
                    continue
                if blockers and w.now >= w.deadline:
                    if w.force:  # an operator's --force: mixing is asked for, and recorded
                        reason = {"reason": "reverse transition blocked"} if w.reversed_ else {}
                        act.emit("forced", blockers=blockers, **reason)
                        blockers = []
                    elif w.reversed_:  # the way back is blocked too: stuck, never forced
                        stuck = Stuck(
                            act, trans, ops, undo_data, data, dispatchers, data_first,
                            w.first_blockers, blockers, w.failure, w.cancelled, w.limit,
                            w.back_limit,
                        )  # fmt: skip
                        act.stuck = stuck
                        act.emit("stuck", blockers=blockers, target=stuck.target)
                        raise stuck.error(str(act.action))
                    else:
                        act.emit("reversing", blockers=blockers)
                        w.first_blockers = blockers
                        # The way back has a budget of its own, a part of the timeout:
                        # the action returns soon after the timeout, never at twice it.
                        w.reverse(trans, way_back(w.limit))
                if blockers:  # never past the deadline: the timeout is a bound
                    with collector.released():  # the program runs: so does the collector
                        time.sleep(min(w.delay, max(w.deadline - time.monotonic(), 0.0)))
                    w.delay = min(w.delay * 2, TRANSITION_POLL[1])
                    continue
                result = self._final_pause(
                    trans, ops, undo_data, data, dispatchers, data_first, w.reversed_
                )
                break
            except BaseException as exc:  # noqa: BLE001 - reversed, then raised below
                # KeyboardInterrupt and SystemExit too: undone at once, the threads still
                # in new code would call old code.
                if act.stuck is not None:
                    raise  # the way back is stuck: the dispatchers stay (Stuck)
                if w.failure is not None:
                    raise  # failing again on the way back: the undo log restores at once
                w.failure = exc
                act.emit("reversing", reason=f"{type(exc).__name__}: {exc}")
                if w.reversed_:
                    w.deadline, w.delay = time.monotonic() + w.limit, TRANSITION_POLL[0]
                    w.named_at = 0.0
                else:
                    w.reverse(trans, w.limit)
        if w.reversed_:
            act.emit("transition-reversed")
            raise w.error(act)
        act.emit("transition-complete", elapsed_ns=int((time.monotonic() - w.t0) * 1e9))
        return pause.PauseResult(
            True, first.pause_ns + result.pause_ns, started_ns=result.started_ns
        )

    def _check(self, act: Act, trans: Transition, w: _Waiting, data_first: bool) -> list[str]:
        """One check of the transition's blockers, shown in ``status``. Most checks only
        ask whether anything blocks: naming every blocker among hundreds of threads is
        most of a check's cost. Every blocker is named for status now and then, and at
        the deadline (the report)."""
        now = w.now = time.monotonic()
        named = now >= w.named_at or now >= w.deadline
        blockers = trans.blockers(first=not named)
        shown: dict[str, Any] = {
            "transition": "reversing"
            if w.reversed_
            else ("patching" if data_first else "unpatching"),
            # the state it leads to (the kernel's target state)
            "target": str(State.APPLIED if data_first != w.reversed_ else State.CHECKED),
            "elapsed": now - w.t0,
        }
        if named:
            w.named_at = now + TRANSITION_NAMES_EVERY
            shown["blockers"] = blockers
        # One update: ``status`` reads it from another thread, and never sees the blockers
        # without the direction they block.
        self._progress[act.name].update(shown)
        return blockers

    def _reverse_requested(self, act: Act, trans: Transition, w: _Waiting) -> bool:
        """A revert of the payload asked for during its transition reverses it; the way
        back gets the revert's timeout and force."""
        request = self._reverse_requests.pop(act.name, None)
        if request is None:
            return False
        w.limit = w.limit if request[0] is None else request[0]
        w.force = request[1]
        act.emit("reversing", reason="revert requested during the transition")
        w.first_blockers, w.cancelled = ["a revert of the payload during its transition"], True
        w.reverse(trans, w.limit)
        return True

    def _final_pause(
        self,
        trans: Transition,
        ops: pause.Ops,
        undo_data: pause.Ops,
        data: pause.Ops,
        dispatchers: pause.Ops,
        data_first: bool,
        reversed_: bool,
    ) -> pause.PauseResult:
        """The pause that ends a transition (forward or reversed): the code it leads to
        and the data that goes with it; stopped half-way, the dispatchers go back."""
        final = pause.Ops(caches=ops.caches, func_attrs=func_attrs(trans.final_triples()))
        if reversed_:
            if data_first:
                final.dict_sets, final.dict_dels = undo_data.dict_sets, undo_data.dict_dels
                final.class_sets, final.class_dels = undo_data.class_sets, undo_data.class_dels
        elif not data_first:
            final.dict_sets, final.dict_dels = data.dict_sets, data.dict_dels
            final.class_sets, final.class_dels = data.class_sets, data.class_dels
        back = undo_data_ops(final)  # its data as it is now, should it stop half-way
        back.func_attrs = dispatchers.func_attrs
        try:
            result = self._pause("pause:transition-final", final, None)
        except BaseException:
            pause.run(back, None)  # plain values put back: cannot fail
            raise
        trans.end()
        return result

    def _settle(self, act: Act, stuck: Stuck, limit: float, force: bool) -> pause.PauseResult:
        """Wait again, at most ``limit`` seconds, for the way back of a stuck transition,
        then end it in one pause; still blocked, it stays stuck (``transition-stuck``),
        or with ``force`` it ends regardless (recorded)."""
        act.stuck = stuck  # a failure here leaves the dispatchers as they are
        progress = self._progress[act.name]
        progress.update(transition="reversing", target=stuck.target, blockers=stuck.blockers)
        t0 = time.monotonic()
        deadline, delay = t0 + limit, 0.001
        while True:
            self._at("transition.wait")
            blockers = stuck.trans.blockers()
            stuck.blockers = blockers
            progress.update(elapsed=time.monotonic() - t0, blockers=blockers)
            if blockers and time.monotonic() >= deadline:
                if not force:
                    act.emit("stuck", blockers=blockers, target=stuck.target)
                    raise stuck.error(str(act.action), again=True)
                act.emit("forced", blockers=blockers, reason="stuck transition finished")
                blockers = []
            if blockers:
                time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
                delay = min(delay * 2, TRANSITION_POLL[1])
                continue
            result = self._final_pause(
                stuck.trans, stuck.ops, stuck.undo_data, stuck.data, stuck.dispatchers,
                stuck.data_first, True,
            )  # fmt: skip
            break
        act.stuck = None
        act.emit("transition-reversed")
        return result


class _Waiting:
    """Where a transition's wait stands (``Consistency._wait_transition``)."""

    def __init__(self, limit: float, force: bool) -> None:
        self.t0 = self.now = time.monotonic()
        self.limit, self.force = limit, force
        self.deadline, self.delay = self.t0 + limit, TRANSITION_POLL[0]
        self.reversed_ = False
        self.back_limit = limit  # the way back's budget, once reversed
        self.named_at = self.t0  # when a check next names every blocker (status shows them)
        self.first_blockers: list[str] = []  # what the way forward met
        self.cancelled = False  # reversed by a revert request
        self.failure: BaseException | None = None

    def reverse(self, trans: Transition, budget: float) -> None:
        trans.reverse()
        self.reversed_, self.back_limit = True, budget
        self.deadline, self.delay = time.monotonic() + budget, TRANSITION_POLL[0]
        self.named_at = 0.0

    def error(self, act: Act) -> BaseException:
        """What a reversed transition raises."""
        if self.failure is not None:
            return self.failure
        if self.cancelled:
            return LivepatchError(
                "vetoed",
                f"{act.action} {act.name}: a revert during the transition reversed it; "
                "nothing changed",
            )
        return LivepatchError(
            "timeout",
            f"{act.action} {act.name}: the transition did not complete within {self.limit:g}s "
            f"and was reversed; blocked by {'; '.join(self.first_blockers)}",
        )


class Stuck:
    """A transition whose way back could not finish in time (spec §5, docs/design.md
    "Stuck transitions"). Never forced without an operator's ``force``: every
    dispatcher stays armed and reversed, so each call chain keeps its version, the old
    code for new chains. The engine keeps it until ``revert`` (or ``apply``, for a
    revert's transition: the action that leads to ``target``) finds no blocker left or
    is given ``force``; every other action is refused meanwhile."""

    def __init__(
        self,
        act: Act,
        trans: Transition,
        ops: pause.Ops,
        undo_data: pause.Ops,
        data: pause.Ops,
        dispatchers: pause.Ops,
        data_first: bool,
        first_blockers: builtins.list[str],
        blockers: builtins.list[str],
        failure: BaseException | None,
        cancelled: bool,
        limit: float,
        back_limit: float,
    ) -> None:
        self.action, self.name = str(act.action), act.name
        self.trans, self.ops, self.undo_data, self.data = trans, ops, undo_data, data
        self.dispatchers, self.data_first = dispatchers, data_first
        self.first_blockers, self.blockers = first_blockers, blockers
        self.cause = (
            f"{type(failure).__name__}: {failure}"
            if failure is not None
            else "a revert during the transition"
            if cancelled
            else f"it did not complete within {limit:g}s"
        )
        self.limit = back_limit  # what the way back had
        self.since = time.time()
        # the state the way back leads to, and the action that resumes it
        self.target = str(State.CHECKED if data_first else State.APPLIED)
        self.resume = Action.REVERT if data_first else Action.APPLY
        self.post: Callable[[], None] | None = None  # the post hook, run once it ends

    def progress(self) -> dict[str, Any]:
        """What ``status`` shows as ``in_progress`` while it is stuck."""
        return {
            "action": self.action,
            "transition": "stuck",
            "target": self.target,
            "started": self.since,
            "blockers": list(self.blockers),
            "resume": str(self.resume),
        }

    def error(self, action: str, again: bool = False) -> LivepatchError:
        blocked = "; ".join(self.blockers) or "?"
        head = (
            f"{action} {self.name}: the way back of the stuck transition ({self.action} "
            f"{self.name}) is still blocked by {blocked}"
            if again
            else f"{action} {self.name}: the transition was reversed ({self.cause}) and its "
            f"way back did not complete within {self.limit:g}s; blocked by {blocked}"
        )
        return LivepatchError(
            "transition-stuck",
            f"{head}. The transition is stuck, not forced: every call chain keeps its version "
            f"and new calls run the old code. Once the blockers are gone, run `pylivepatch "
            f"{self.resume} {self.name}` to end it; `pylivepatch {self.resume} {self.name} "
            "--force` ends it now (the chains named above then mix versions)",
        )
