"""The engine: payloads, their life cycle and the actions on them (spec §3).

Sans-IO: it opens no socket and starts no thread. An action runs in the caller's
thread, under one lock (a second caller gets ``busy``), and follows the same shape:
look up the table, run every check (:mod:`.checks`), run the pre hook
(:mod:`.hooked`), prepare every swap as data, swap in one pause or a transition
(:mod:`.consistency`), commit the bookkeeping, run the post hook. A failure at any step
before the commit is undone from the action's undo log (:mod:`.undo`), so afterwards
every touched function, attribute and namespace is identical (``is``) to what it was.
The layers below this one are described in :mod:`.base`.

The cyclic garbage collector's automatic collections are held off while an action
computes (its allocations grow with the payload, and collections over a heap that
grows with them made the actions quadratic) and run again while it waits for other
threads or runs the payload's hooks (:mod:`.collector`).
"""

from __future__ import annotations

import builtins
import errno
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import LivepatchError
from ..payload import archive, signing
from ..payload.fingerprint import ModuleSource, python_tag
from ..payload.manifest import DataEntry, FuncEntry, Manifest
from . import collector, datafiles, forks, pause
from .base import (
    DEFAULT_TIMEOUT,
    TRANSITION_SWITCH_INTERVAL,
    Act,
    NoAction,
    imported,
    module_of,
    prev_states,
)
from .compile import LoadedPackage, load_package, lookup
from .consistency import Stuck
from .events import Event, History
from .late import LateImportHook, LateObjects
from .records import ActionResult, DataSlot, FuncSlot, FuncStatus, PayloadStatus, Record
from .requests import check_request, peek_name, read_payload, request_detail, shown
from .resolve import DataTarget, FunctionTarget, importable, resolve_data, resolve_function
from .state import SystemState, check_compatible
from .swap import data_ops, func_ops, installed_codes
from .table import FORCE_ONLY, GONE, NOOP, TABLE, Action, State, allowed_from
from .undo import Undo


class Engine(LateObjects):
    """The in-process live-patching engine. Use :func:`pylivepatch.engine` for the
    process-wide one; separate instances exist for tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._payloads: dict[str, Record] = {}
        self._funcs: dict[int, FuncSlot] = {}
        self._data: dict[tuple[int, str], DataSlot] = {}
        self._history = History()
        self._seq = 0
        self._progress: dict[str, dict[str, Any]] = {}
        self._sources: dict[str, tuple[tuple[str, int, int], ModuleSource]] = {}
        self._owner: int | None = None  # thread running an action
        self._reverse_requests: dict[str, tuple[float | None, bool]] = {}
        self._stuck: dict[str, Stuck] = {}
        self._waited: frozenset[str] = frozenset()  # modules applied payloads wait for
        self._patched_modules: frozenset[str] = frozenset()  # modules applied payloads patch
        self._late = LateImportHook(self._wants_module, self._module_imported)
        self._undo: Undo | None = None  # the undo log of the running action
        # fault injection (engine/faults.py): None except while a test arms a point
        self._inject: Callable[[str, pause.Ops | None], None] | None = None
        self._saved_switch_interval: float | None = None  # while a transition shortens it
        forks.track(self)  # a fork during an action: engine/forks.py

    def list(self) -> builtins.list[PayloadStatus]:
        return [self._status(r) for r in list(self._payloads.values())]

    def status(self, name: str) -> PayloadStatus:
        return self._status(self._get(name))

    def history(self, since: int = 0) -> builtins.list[Event]:
        return self._history.events(since)

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener(event)`` for every event from now on, in the thread that acts
        (the agent's audit log). It must be quick; what it raises is ignored."""
        self._history.listeners.append(listener)

    def remove_listener(self, listener: Callable[[Event], None]) -> None:
        if listener in self._history.listeners:
            self._history.listeners.remove(listener)

    def _status(self, r: Record) -> PayloadStatus:
        tag = python_tag()
        progress = self._progress.get(r.name)  # read once: an action may end meanwhile
        stuck = self._stuck.get(r.name) if progress is None else None
        if stuck is not None:
            progress = stuck.progress()
        funcs = []
        for plan in r.funcs:
            slot = self._funcs.get(id(plan.target.func))
            stack = tuple(rec.name for rec, _ in slot.stack) if slot else ()
            funcs.append(
                FuncStatus(
                    plan.entry.target,
                    bool(slot and any(rec is r for rec, _ in slot.stack)),
                    bool(slot and slot.stack and slot.stack[-1][0] is r),
                    stack,
                    plan.variant.impl is not None,
                    plan.entry.expect.get(tag),
                )
            )
        return PayloadStatus(
            name=r.name,
            state=str(r.state),
            rc=errno.EAGAIN if progress is not None and stuck is None else r.rc,
            build_id=r.build_id,
            depends=r.manifest.depends,
            metadata=dict(r.manifest.metadata),
            version=r.manifest.version,
            description=r.manifest.description,
            consistency=r.manifest.consistency,
            python=r.manifest.python,
            error=r.error,
            message=r.message,
            funcs=tuple(funcs),
            data=tuple(p.entry.target for p in r.data),
            in_progress=dict(progress, elapsed=time.time() - progress["started"])
            if progress
            else None,
            pending=tuple(sorted(r.pending)),
            signature=r.signature,
        )

    @contextmanager
    def _action(self, action: Action, name: str, **options: Any) -> Iterator[Act]:
        request = request_detail(options)
        try:
            check_request(name, options)
        except LivepatchError as bad:  # nothing armed, nothing looked up: audited all the same
            named = name if isinstance(name, str) else shown(name)
            self._history.emit(
                str(action), named, "refused", error=bad.code, rc=bad.errno,
                message=f"{action} {named}: {bad.message}", build_id="", **request,
            )  # fmt: skip
            raise LivepatchError(bad.code, f"{action} {named}: {bad.message}") from None
        if not self._lock.acquire(blocking=False):
            running = (
                ", ".join(f"{v['action']} {k}" for k, v in list(self._progress.items()))
                or "another action"
            )
            busy = LivepatchError("busy", f"{action} {name}: {running} is in progress; try again")
            known = self._payloads.get(name)
            self._history.emit(  # refused before it started: audited all the same
                str(action), name, "refused", error=busy.code, rc=busy.errno,
                message=busy.message, build_id=known.build_id if known else "", **request,
            )  # fmt: skip
            raise busy
        try:
            self._owner = threading.get_ident()
            act = Act(self, action, name)
            act.undo = self._undo = Undo(self)
            before = self._payloads.get(name)
            act.build_id = before.build_id if before is not None else ""
            self._progress[name] = {"action": str(action), "started": time.time(), "blockers": []}
            act.emit("started", **request)
            stuck = next(iter(self._stuck.values()), None)
            held = collector.take()  # given back in the finally below
            # The action's own work is switched out often but briefly (base.py,
            # TRANSITION_SWITCH_INTERVAL); the process's interval is put back at the end.
            self._saved_switch_interval = pause.switch_interval()  # (engine/forks.py)
            sys.setswitchinterval(min(self._saved_switch_interval, TRANSITION_SWITCH_INTERVAL))
        except BaseException:  # MemoryError, KeyboardInterrupt: never keep the lock
            if self._saved_switch_interval is not None:
                sys.setswitchinterval(self._saved_switch_interval)
                self._saved_switch_interval = None
            self._progress.pop(name, None)
            self._undo = self._owner = None
            self._lock.release()
            raise
        try:
            if stuck is not None and (stuck.name, stuck.resume) != (name, action):
                raise LivepatchError(
                    "transition-stuck",
                    f"{action} {name}: the transition of {stuck.action} {stuck.name} is stuck "
                    f"on its way back to {stuck.target} (blocked by "
                    f"{'; '.join(stuck.blockers) or '?'}); nothing else is done until it ends: "
                    f"run `pylivepatch {stuck.resume} {stuck.name}` once the blockers are gone, or "
                    f"`pylivepatch {stuck.resume} {stuck.name} --force` to end it now (mixing versions)",
                )
            yield act
        except LivepatchError as exc:
            if act.stuck is not None:
                self._stuck[name] = act.stuck
            act.rollback()
            if not re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", exc.message):
                # every message names the payload
                exc = LivepatchError(exc.code, f"{action} {name}: {exc.message}")
            rec = self._payloads.get(name)
            if rec is not None and action is not Action.UPLOAD:
                rec.rc, rec.error, rec.message = exc.errno, exc.code, exc.message
            act.emit(
                "finished",
                rc=exc.errno,
                error=exc.code,
                message=exc.message,
                duration_ns=act.elapsed(),
            )
            raise exc from None
        except BaseException as exc:
            # Not a refusal: a bug, MemoryError, an injected fault, KeyboardInterrupt.
            # Undone like any failure; an Exception becomes the ``internal`` error (its
            # cause chained), anything else goes on as it is.
            if act.stuck is not None:
                self._stuck[name] = act.stuck
            act.rollback()
            internal = LivepatchError(
                "internal",
                f"{action} {name}: failed inside pylivepatch ({type(exc).__name__}: {exc}); "
                "the action was undone and nothing changed; please report it",
            )
            rec = self._payloads.get(name)
            if rec is not None and action is not Action.UPLOAD:
                rec.rc, rec.error, rec.message = internal.errno, internal.code, internal.message
            act.emit(
                "finished",
                rc=internal.errno,
                error=internal.code,
                message=internal.message,
                duration_ns=act.elapsed(),
            )
            if isinstance(exc, Exception):
                raise internal from exc
            raise
        else:
            rec = self._payloads.get(name)
            if rec is not None:
                rec.rc, rec.error, rec.message = 0, None, act.result_message
            act.emit("finished", rc=0, pause_ns=act.pause_ns, duration_ns=act.elapsed())
        finally:
            if held:
                collector.give()
            if self._saved_switch_interval is not None:
                sys.setswitchinterval(self._saved_switch_interval)
                self._saved_switch_interval = None
            self._progress.pop(name, None)
            self._sync_import_hook()
            self._undo = None
            self._owner = None
            self._lock.release()

    def _table(self, act: Act, rec: Record, force: bool = False) -> State | None:
        action = act.action
        outcome = TABLE.get((action, rec.state), "wrong")
        if (action, rec.state) in FORCE_ONLY and not force:
            outcome = "wrong"
        if outcome == "wrong":
            allowed = [str(state) for state in allowed_from(action)]
            hint = (
                " (only revert --force is accepted for an INCONSISTENT payload)"
                if rec.state is State.INCONSISTENT
                else ""
            )
            raise LivepatchError(
                "wrong-state",
                f"{action} {rec.name}: payload is {rec.state}; {action} needs {' or '.join(allowed)}{hint}",
            )
        if outcome is NOOP:
            raise NoAction(f"{rec.name} is already {rec.state}: no action needed")
        assert outcome is GONE or isinstance(outcome, State)
        return outcome

    def upload(
        self,
        name: str,
        source: str | os.PathLike[str] | bytes,
        *,
        no_expect: bool = False,
        no_object_check: bool = False,
        wait_imports: bool = False,
    ) -> ActionResult:
        """Validate a payload and keep it ``CHECKED``; the process is not changed.

        A target module not imported yet is waited for (patched when it is imported) if
        it can be found on ``sys.path``; with ``wait_imports`` it is waited for even if
        it cannot be found yet (at interpreter start-up, before the program has put its
        own directories on ``sys.path``).
        """
        with self._action(
            Action.UPLOAD, name, no_expect=no_expect, no_object_check=no_object_check,
            wait_imports=wait_imports,
        ) as act:  # fmt: skip
            data = read_payload(source)
            payload = archive.read(data, check_signature=signing.Policy.from_env().check)
            self._at("upload.read")
            man = payload.manifest
            if man.name != name:
                raise LivepatchError(
                    "invalid-payload",
                    f"upload {name}: the payload in that file is named {man.name!r}; use that name",
                )
            if name in self._payloads:
                raise LivepatchError(
                    "exists", f"a payload named {name} is already uploaded; unload it first"
                )
            for other in self._payloads.values():
                if other.build_id == man.build_id:
                    raise LivepatchError(
                        "exists",
                        f"payload {name} has the same build id as uploaded payload {other.name}",
                    )
            flags = tuple(
                f
                for f, on in (("no-expect", no_expect), ("no-object-check", no_object_check))
                if on
            )
            self._check_python(man, no_expect)
            _not_ours(name, _target_modules(man))
            pending = {
                m
                for m in _target_modules(man)
                if not imported(m) and (wait_imports or _importable(m))
            }
            fentries = [e for e in man.funcs if module_of(e.target) not in pending]
            dentries = [e for e in man.data if module_of(e.target) not in pending]
            fplans = [resolve_function(e.target) for e in fentries]
            for e, ft in zip(fentries, fplans, strict=True):  # a name for one of ours
                if ft.func.__code__.co_filename.startswith(_OURS):
                    _not_ours(name, {e.target}, ft.func.__code__.co_filename)
            seen: dict[int, str] = {}
            for e, ft in zip(fentries, fplans, strict=True):
                if id(ft.func) in seen:
                    raise LivepatchError(
                        "invalid-payload",
                        f"payload {name}: {e.target} and {seen[id(ft.func)]} are the same function",
                    )
                seen[id(ft.func)] = e.target
            dtargets = [resolve_data(e.target) for e in dentries]
            self._at("upload.resolve")
            self._check_objects(man, no_object_check)
            self._check_expectations(man.name, fentries, fplans, no_expect)
            files = datafiles.check(man, payload.files)  # engine/datafiles.py
            self._at("upload.check")
            loaded = load_package(payload)
            try:
                try:
                    rec = self._prepare(man, loaded, fplans, dtargets, fentries, dentries)
                finally:
                    loaded.forget_sources()  # the ASTs would only make every GC pass longer
                self._at("upload.compile")
                rec.flags = flags
                rec.files = files
                rec.signature = payload.signature_status
                for m in sorted(pending):
                    rec.pending[m] = (
                        [e for e in man.funcs if module_of(e.target) == m],
                        [e for e in man.data if module_of(e.target) == m],
                    )
                self._at("upload.commit")
            except BaseException:
                loaded.discard()
                raise
            self._payloads[name] = rec
            act.emit(
                "checked",
                funcs=len(rec.funcs),
                data=len(rec.data),
                flags=list(flags),
                **({"pending": sorted(pending)} if pending else {}),
            )
            act.result_message = "uploaded"
            return act.result(State.CHECKED, consistency=man.consistency)

    def _prepare(
        self,
        man: Manifest,
        loaded: LoadedPackage,
        fts: builtins.list[FunctionTarget],
        dts: builtins.list[DataTarget],
        fentries: builtins.list[FuncEntry],
        dentries: builtins.list[DataEntry],
    ) -> Record:
        funcs, data = self._plan(loaded, fentries, fts, dentries, dts)
        hooks: dict[str, Callable[..., Any]] = {}
        for kind, symbol in man.hooks.items():
            hook = lookup(loaded, symbol, f"hook {kind}")
            if not callable(hook):
                raise LivepatchError(
                    "invalid-payload", f"payload {man.name}: hook {kind} ({symbol}) is not callable"
                )
            hooks[kind] = hook
        states = {st.id: SystemState(st.id, st.version, man.name) for st in man.states}
        return Record(man, loaded, funcs, data, hooks=hooks, states=states)

    def unload(self, name: str) -> ActionResult:
        """Forget a ``CHECKED`` payload."""
        with self._action(Action.UNLOAD, name) as act:
            rec = self._get(name)
            self._table(act, rec)
            self._at("unload.forget")
            del self._payloads[name]
            rec.loaded.discard()
            act.result_message = "unloaded"
            return act.result(None)

    def load(
        self,
        source: str | os.PathLike[str] | bytes,
        *,
        nodeps: bool = False,
        timeout: float | None = None,
        force: bool = False,
        consistency: str | None = None,
        no_expect: bool = False,
        no_object_check: bool = False,
        wait_imports: bool = False,
    ) -> ActionResult:
        """Upload and apply; the payload is unloaded again if the apply fails."""
        options = dict(
            nodeps=nodeps, timeout=timeout, force=force, consistency=consistency,
            no_expect=no_expect, no_object_check=no_object_check, wait_imports=wait_imports,
        )  # fmt: skip
        try:
            check_request("load", options)
            data = read_payload(source)
            name = peek_name(data)
        except LivepatchError as exc:  # before any action started: audited here
            self._history.emit(
                "load", "", "refused", error=exc.code, rc=exc.errno, message=exc.message,
                build_id="", **request_detail(options),
            )  # fmt: skip
            raise
        self.upload(
            name, data, no_expect=no_expect, no_object_check=no_object_check,
            wait_imports=wait_imports,
        )  # fmt: skip
        try:
            return self.apply(
                name, nodeps=nodeps, timeout=timeout, force=force, consistency=consistency,
                no_expect=no_expect,
            )  # fmt: skip
        except LivepatchError as exc:
            left = self._unload_after_load(name)
            if left is None:
                raise
            how = (
                f"once the transition has ended, run `pylivepatch unload {name}`"
                if left.code == "transition-stuck"
                else f"remove it with `pylivepatch unload {name}`"
            )
            raise LivepatchError(
                exc.code,
                f"{exc.message}; the payload {name} stays uploaded (its unload was refused: "
                f"{left.code}): {how}",
            ) from None
        except BaseException:
            self._unload_after_load(name)
            raise

    def _unload_after_load(self, name: str) -> LivepatchError | None:
        """Unload what a failed ``load`` uploaded; the refusal if it stays (None if it
        is gone). ``busy`` (another client's action) is waited out for a while."""
        delay, refusal = 0.005, None
        for _ in range(60):  # about 5 s in all
            try:
                self.unload(name)
                return None
            except LivepatchError as exc:
                if exc.code == "not-found":
                    return None  # someone else unloaded it
                if exc.code != "busy":
                    return exc
                refusal = exc
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        return refusal

    def apply(
        self,
        name: str,
        *,
        nodeps: bool = False,
        timeout: float | None = None,
        force: bool = False,
        consistency: str | None = None,
        no_expect: bool = False,
    ) -> ActionResult:
        """Make a ``CHECKED`` payload's code run."""
        with self._action(
            Action.APPLY, name, nodeps=nodeps, timeout=timeout, force=force,
            consistency=consistency, no_expect=no_expect,
        ) as act:  # fmt: skip
            rec = self._get(name)
            if name in self._stuck:
                return self._resume(act, rec, timeout, force)
            try:
                self._table(act, rec)
            except NoAction as done:
                return act.noop(rec, str(done))
            if rec.manifest.replace:  # a cumulative payload replaces what is applied
                return self._replace(act, rec, timeout, force, consistency, no_expect)
            mode = self._mode(rec, consistency)
            no_expect = no_expect or "no-expect" in rec.flags
            self._check_python(rec.manifest, no_expect)
            self._check_depends(rec, nodeps)
            self._check_targets(rec, no_expect)
            applied = self._applied(exclude=rec)
            check_compatible(rec.name, rec.states, [(r.name, r.states) for r in applied], False)
            act.emit(
                "checked", funcs=len(rec.funcs), data=len(rec.data), consistency=mode, nodeps=nodeps
            )
            self._at("apply.check")

            def swap() -> pause.PauseResult:
                datafiles.apply(act, rec)  # first, undone by the undo log if a step fails
                if "apply" in rec.hooks:
                    slots, dslots = self._slots_for(rec)
                    result = self._hooked_swap(act, rec, "apply", slots, dslots)
                    self._seq += 1
                    rec.applied_seq, rec.nodeps, rec.state = self._seq, nodeps, State.APPLIED
                    return result
                with collector.held():
                    slots, dslots = self._slots_for(rec)
                    ops = pause.Ops()
                    blocking: set[int] = set()
                    for plan, slot in zip(rec.funcs, slots, strict=True):
                        variant = plan.variant
                        func_ops(ops, slot, (variant.code, variant.defaults, variant.kwdefaults))
                        blocking.update(id(c) for c in installed_codes(slot))
                    for dplan, dslot in zip(rec.data, dslots, strict=True):
                        data_ops(ops, dslot, dplan.value)
                    self._at("apply.prepare")
                result = self._swap(act, ops, blocking, mode, timeout, force, slots, dslots)
                with collector.held():
                    # Committed: from here on only assignments of values prepared above.
                    for plan, slot in zip(rec.funcs, slots, strict=True):
                        slot.stack.append((rec, plan.variant))
                    for dplan, dslot in zip(rec.data, dslots, strict=True):
                        dslot.stack.append((rec, dplan.value))
                self._seq += 1
                rec.applied_seq, rec.nodeps, rec.state = self._seq, nodeps, State.APPLIED
                return result

            with collector.released():  # the hooks and the swap's waits: the program runs
                result = self._with_hooks(act, rec, "apply", prev_states(applied), swap)
            act.result_message = act.result_message or "applied"
            return act.result(State.APPLIED, pause_ns=result.pause_ns, consistency=mode)

    def revert(
        self,
        name: str,
        *,
        timeout: float | None = None,
        force: bool = False,
        consistency: str | None = None,
    ) -> ActionResult:
        """Make an ``APPLIED`` payload's code stop running; it stays ``CHECKED``.

        A revert of a payload whose apply is still in its transition reverses that
        transition (Linux semantics) and returns once it is back."""
        try:  # a bad request is refused (and audited) by _action below
            check_request(name, {"timeout": timeout, "force": force, "consistency": consistency})
            progress = self._progress.get(name)
        except LivepatchError:
            progress = None
        if progress is not None and progress.get("action") == "apply" and "transition" in progress:
            reversal = self._reverse_running(name, timeout, force)
            if reversal.state != str(State.APPLIED):
                return reversal
            # the transition completed before it saw the request: revert as usual
        with self._action(
            Action.REVERT, name, timeout=timeout, force=force, consistency=consistency
        ) as act:
            rec = self._get(name)
            if name in self._stuck:
                return self._resume(act, rec, timeout, force)
            try:
                self._table(act, rec, force=force)
            except NoAction as done:
                return act.noop(rec, str(done))
            for other in self._payloads.values():
                if (
                    other.state is State.APPLIED
                    and other.manifest.depends == rec.build_id
                    and not other.nodeps
                ):
                    raise LivepatchError(
                        "has-dependents",
                        f"revert {name}: applied payload {other.name} depends on it; revert {other.name} first",
                    )
            mode = self._mode(rec, consistency)
            act.emit("checked", consistency=mode)
            self._at("revert.check")

            recovering = rec.state is State.INCONSISTENT

            def swap() -> pause.PauseResult:
                datafiles.revert(act, rec)  # first, undone by the undo log if a step fails
                if "revert" in rec.hooks and not recovering:
                    slots, dslots = self._slots_for(rec)
                    result = self._hooked_swap(act, rec, "revert", slots, dslots)
                    rec.state, rec.applied_seq = State.CHECKED, 0
                    return result
                with collector.held():
                    slots, dslots = self._slots_for(rec)
                    ops = pause.Ops()
                    blocking: set[int] = set()
                    for slot in slots:
                        if slot.stack and slot.stack[-1][0] is rec:
                            below = slot.stack[-2][1] if len(slot.stack) > 1 else None
                            blocking.update(id(c) for c in slot.stack[-1][1].codes())
                            func_ops(
                                ops,
                                slot,
                                (below.code, below.defaults, below.kwdefaults)
                                if below
                                else slot.original,
                            )
                    for dslot in dslots:
                        if dslot.stack and dslot.stack[-1][0] is rec:
                            value = dslot.stack[-2][1] if len(dslot.stack) > 1 else dslot.original
                            data_ops(ops, dslot, value)
                    self._at("revert.prepare")
                result = self._swap(act, ops, blocking, mode, timeout, force, slots, dslots)
                with collector.held():
                    # Committed: from here on only bookkeeping of what was prepared above.
                    for slot in slots:
                        slot.stack[:] = [(r, v) for r, v in slot.stack if r is not rec]
                        if not slot.stack:
                            self._funcs.pop(id(slot.func), None)
                    for dslot in dslots:
                        dslot.stack[:] = [(r, v) for r, v in dslot.stack if r is not rec]
                        if not dslot.stack:
                            self._data.pop((id(dslot.holder), dslot.name), None)
                rec.state, rec.applied_seq = State.CHECKED, 0
                return result

            earlier = [r for r in self._applied(exclude=rec) if r.applied_seq < rec.applied_seq]
            with collector.released():  # the hooks and the swap's waits: the program runs
                if recovering:  # revert --force of an INCONSISTENT payload: no hooks, default swap
                    act.emit("forced", reason="INCONSISTENT payload reverted without its hooks")
                    result = swap()
                else:
                    result = self._with_hooks(act, rec, "revert", prev_states(earlier), swap)
            act.result_message = act.result_message or "reverted"
            return act.result(State.CHECKED, pause_ns=result.pause_ns, consistency=mode)

    def replace(
        self,
        name: str,
        *,
        timeout: float | None = None,
        force: bool = False,
        consistency: str | None = None,
        no_expect: bool = False,
    ) -> ActionResult:
        """Make ``name`` the only applied payload, in one pause (spec §7)."""
        with self._action(
            Action.REPLACE, name, timeout=timeout, force=force, consistency=consistency,
            no_expect=no_expect,
        ) as act:  # fmt: skip
            rec = self._get(name)
            try:
                self._table(act, rec)
            except NoAction as done:
                return act.noop(rec, str(done))
            return self._replace(act, rec, timeout, force, consistency, no_expect)

    def _replace(
        self,
        act: Act,
        rec: Record,
        timeout: float | None,
        force: bool,
        consistency: str | None,
        no_expect: bool,
    ) -> ActionResult:
        """Every check first; then one pause installs ``rec`` and returns every function
        and attribute that only earlier payloads touched to its original ("nop")."""
        mode = self._mode(rec, consistency)
        no_expect = no_expect or "no-expect" in rec.flags
        if rec.manifest.depends not in (None, "base"):
            raise LivepatchError(
                "dependency-mismatch",
                f"replace {rec.name}: a replacing payload must depend on 'base' or nothing, "
                f"not on {rec.manifest.depends[:16]}",
            )
        self._check_python(rec.manifest, no_expect)
        self._check_targets(rec, no_expect)
        applied = self._applied(exclude=rec)
        if set(rec.hooks) & {"apply", "revert"}:
            raise LivepatchError(
                "replace-refused",
                f"replace {rec.name}: a replacing payload cannot have apply/revert action hooks; "
                "its swap is the engine's one pause",
            )
        for other in applied:
            if set(other.hooks) and not other.states:  # any hook: its mutations are untracked
                raise LivepatchError(
                    "replace-refused",
                    f"replace {rec.name}: applied payload {other.name} has hooks "
                    f"({', '.join(sorted(other.hooks))}) but declares no system state, so what its "
                    "hooks changed would be lost untracked; revert it first",
                )
        check_compatible(rec.name, rec.states, [(r.name, r.states) for r in applied], True)
        datafiles.refuse_replace(rec, applied)
        act.emit(
            "checked",
            funcs=len(rec.funcs),
            data=len(rec.data),
            consistency=mode,
            replaces=[r.name for r in applied],
        )
        self._at("replace.check")

        def swap() -> pause.PauseResult:
            with collector.held():
                return prepared_swap()

        def prepared_swap() -> pause.PauseResult:
            mine, mine_data = self._slots_for(rec)
            slots: dict[int, FuncSlot] = {id(s.func): s for s in mine}
            dslots: dict[tuple[int, str], DataSlot] = {(id(d.holder), d.name): d for d in mine_data}
            for key, slot in self._funcs.items():
                slots.setdefault(key, slot)
            for dkey, dslot in self._data.items():
                dslots.setdefault(dkey, dslot)
            variants = {id(s.func): p.variant for p, s in zip(rec.funcs, mine, strict=True)}
            values = {
                (id(d.holder), d.name): p.value for p, d in zip(rec.data, mine_data, strict=True)
            }
            ops = pause.Ops()
            blocking: set[int] = set()
            for key, slot in slots.items():
                blocking.update(id(c) for c in installed_codes(slot))
                v = variants.get(key)
                func_ops(ops, slot, (v.code, v.defaults, v.kwdefaults) if v else slot.original)
            for dkey, dslot in dslots.items():
                data_ops(
                    ops,
                    dslot,
                    values.get(dkey, dslot.original) if dkey in values else dslot.original,
                )
            self._at("replace.prepare")
            with collector.released():  # the swap's waits: the program runs
                result = self._swap(
                    act,
                    ops,
                    blocking,
                    mode,
                    timeout,
                    force,
                    list(slots.values()),
                    list(dslots.values()),
                )
            for key, slot in slots.items():
                slot.stack[:] = [(rec, variants[key])] if key in variants else []
                if not slot.stack:
                    self._funcs.pop(key, None)
            for dkey, dslot in dslots.items():
                dslot.stack[:] = [(rec, values[dkey])] if dkey in values else []
                if not dslot.stack:
                    self._data.pop(dkey, None)
            for other in applied:  # replaced: CHECKED, and their hooks never run
                other.state, other.applied_seq = State.CHECKED, 0
            self._seq += 1
            rec.applied_seq, rec.nodeps, rec.state = self._seq, False, State.APPLIED
            return result

        with collector.released():  # the hooks: the program's code
            result = self._with_hooks(act, rec, "replace", prev_states(applied), swap)
        act.result_message = act.result_message or f"replaced {len(applied)} payload(s)"
        return act.result(State.APPLIED, pause_ns=result.pause_ns, consistency=mode)

    def action(self, name: str, verb: str, **options: Any) -> ActionResult:
        """Run ``verb`` (apply, revert, unload) on payload ``name``."""
        verbs = {
            "apply": self.apply,
            "revert": self.revert,
            "replace": self.replace,
            "unload": self.unload,
        }
        if verb not in verbs:
            raise LivepatchError(
                "bad-request", f"unknown action {verb!r}; actions are {', '.join(verbs)}"
            )
        return verbs[verb](name, **options)

    def _resume(self, act: Act, rec: Record, timeout: float | None, force: bool) -> ActionResult:
        """End the stuck transition of ``rec`` (``Stuck``): wait for its way back again,
        or with ``force`` end it regardless; then it is as the failed action left it."""
        stuck = self._stuck[rec.name]
        limit = DEFAULT_TIMEOUT["transition"] if timeout is None else timeout
        act.emit("checked", consistency="transition", resumes=stuck.action, force=force)
        with collector.released():  # a wait, then the post hook: the program runs
            result = self._settle(act, stuck, limit, force)
            del self._stuck[rec.name]
            if stuck.post is not None:
                stuck.post()
        act.pause_ns = result.pause_ns
        act.result_message = (
            f"the stuck transition of {stuck.action} {rec.name} ended"
            f"{' by force' if force else ''}; {rec.name} is {rec.state}"
        )
        return act.result(rec.state, pause_ns=result.pause_ns, consistency="transition")

    def _reverse_running(self, name: str, timeout: float | None, force: bool) -> ActionResult:
        """A revert during the payload's apply transition: the transition is reversed
        (its way back bounded by ``timeout``, ended by force only with ``force``)."""
        t0 = time.perf_counter_ns()
        self._reverse_requests[name] = (timeout, force)
        self._history.emit(
            "revert", name, "requested", message="reversing the running transition",
            timeout=timeout, force=force,
        )  # fmt: skip
        while self._progress.get(name, {}).get("action") == "apply":
            time.sleep(0.001)
        self._reverse_requests.pop(name, None)
        stuck = self._stuck.get(name)
        if stuck is not None:
            raise stuck.error("revert")
        state = str(self._get(name).state)  # APPLIED if it completed before seeing us
        return ActionResult(
            "revert", name, state, False, "the transition was reversed",
            0, time.perf_counter_ns() - t0, "transition",
        )  # fmt: skip


#: pylivepatch's own directory: no payload patches code there
_OURS = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _not_ours(name: str, targets: set[str], where: str = "") -> None:
    """Refuse (``unsupported-target``) targets inside pylivepatch itself: a payload,
    even a signed one, must not patch the engine (turn its own checks off)."""
    ours = sorted(
        t for t in targets if where or t.split(":")[0].split(".")[0] == __name__.split(".")[0]
    )
    if ours:
        raise LivepatchError(
            "unsupported-target",
            f"upload {name}: {', '.join(ours)} is part of pylivepatch"
            f"{f' ({where})' if where else ''}; pylivepatch does not patch itself "
            "(a payload could turn its own checks off): upgrade pylivepatch instead",
        )


def _target_modules(man: Manifest) -> set[str]:
    return {module_of(e.target) for e in man.funcs} | {module_of(e.target) for e in man.data}


def _importable(modname: str) -> bool:
    return importable(modname)  # engine/resolve.py: imports nothing, not even its parents
