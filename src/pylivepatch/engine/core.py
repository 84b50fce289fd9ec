"""The engine: payloads, their life cycle and the actions on them (SPEC §3, §5).

Sans-IO: it opens no socket and starts no thread. An action runs in the caller's
thread, under one lock (a second caller gets ``busy``), and follows the same shape:
look up the table, run every check, prepare every swap as data, swap in one pause,
then commit the bookkeeping. A failure before the pause changes nothing; a failure
inside it is undone from the snapshot taken just before, so afterwards every touched
function, attribute and namespace is identical (``is``) to what it was.
"""

from __future__ import annotations

import builtins
import errno
import importlib.util
import os
import re
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import LivepatchError
from ..payload import archive, signing
from ..payload.fingerprint import (
    ModuleSource,
    compile_module,
    fingerprint,
    live_object_build_id,
    python_tag,
    source_key,
)
from ..payload.manifest import DataEntry, FuncEntry, Manifest
from . import pause
from .compile import (
    LoadedPackage,
    check_data_expectation,
    check_globals,
    compile_replacement,
    data_value,
    load_package,
    lookup,
)
from .events import Event, History
from .hooks import PAIRS, HookContext, PayloadInfo, run_post, run_pre
from .late import LateImportHook
from .records import (
    ActionResult,
    DataPlan,
    DataSlot,
    FuncPlan,
    FuncSlot,
    FuncStatus,
    PayloadStatus,
    Record,
)
from .resolve import ABSENT, DataTarget, FunctionTarget, resolve_data, resolve_function
from .state import SystemState, check_compatible
from .swap import data_below, data_ops, func_ops, installed_codes, undo_data_ops
from .table import FORCE_ONLY, GONE, NOOP, TABLE, Action, State, allowed_from
from .transition import Transition
from .undo import Undo

DEFAULT_TIMEOUT = {"transition": 10.0, "atomic": 1.0, "immediate": 0.0}
LATE_IMPORT_WAIT = 30.0  # seconds an import waits for a running action to end
TRANSITION_SWITCH_INTERVAL = 0.0005  # seconds; see Engine._transition


class Engine:
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
        self._reverse_requests: dict[str, bool] = {}
        self._waited: frozenset[str] = frozenset()  # modules applied payloads wait for
        self._patched_modules: frozenset[str] = frozenset()  # modules applied payloads patch
        self._late = LateImportHook(self._wants_module, self._module_imported)
        self._undo: Undo | None = None  # the undo log of the running action
        # fault injection (engine/faults.py): None except while a test arms a point
        self._inject: Callable[[str, pause.Ops | None], None] | None = None

    # --- queries ------------------------------------------------------------------

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

    def original_value(self, holder: types.ModuleType | type, name: str) -> Any:
        """What ``holder.name`` held before any payload changed it (``ABSENT`` if nothing)."""
        slot = self._data.get((id(holder), name))
        if slot is not None and slot.holder is holder:
            return slot.original
        return vars(holder).get(name, ABSENT)

    def is_added(self, holder: object, name: str) -> bool:
        """Whether ``holder.name`` exists only because a payload added it."""
        slot = self._data.get((id(holder), name))
        return slot is not None and slot.holder is holder and slot.original is ABSENT

    def _original_value(self, dt: DataTarget) -> Any:
        return self.original_value(dt.holder, dt.name)

    def original_code(self, func: types.FunctionType) -> types.CodeType:
        """The code ``func`` had before any payload patched it."""
        slot = self._funcs.get(id(func))
        return slot.original[0] if slot is not None and slot.func is func else func.__code__

    def _status(self, r: Record) -> PayloadStatus:
        tag = python_tag()
        progress = self._progress.get(r.name)  # read once: an action may end meanwhile
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
            rc=errno.EAGAIN if progress is not None else r.rc,
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

    def _get(self, name: str) -> Record:
        rec = self._payloads.get(name)
        if rec is None:
            known = ", ".join(sorted(self._payloads)) or "none"
            raise LivepatchError(
                "not-found", f"no payload named {name!r} is uploaded (uploaded: {known})"
            )
        return rec

    # --- the action frame ---------------------------------------------------------

    @contextmanager
    def _action(self, action: Action, name: str) -> Iterator[_Act]:
        if not self._lock.acquire(blocking=False):
            running = (
                ", ".join(f"{v['action']} {k}" for k, v in list(self._progress.items()))
                or "another action"
            )
            busy = LivepatchError("busy", f"{action} {name}: {running} is in progress; try again")
            known = self._payloads.get(name)
            self._history.emit(  # refused before it started: audited all the same
                str(action), name, "refused", error=busy.code, rc=busy.errno,
                message=busy.message, build_id=known.build_id if known else "",
            )  # fmt: skip
            raise busy
        self._owner = threading.get_ident()
        act = _Act(self, action, name)
        act.undo = self._undo = Undo(self)
        before = self._payloads.get(name)
        act.build_id = before.build_id if before is not None else ""
        self._progress[name] = {"action": str(action), "started": time.time(), "blockers": []}
        act.emit("started")
        try:
            yield act
        except LivepatchError as exc:
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
            self._progress.pop(name, None)
            self._sync_import_hook()
            self._undo = None
            self._owner = None
            self._lock.release()

    def _at(self, point: str) -> None:
        """A named step of an action (engine/faults.py): where a test may make it fail."""
        if self._inject is not None:
            self._inject(point, None)

    def _pause(self, point: str, ops: pause.Ops, blocking: set[int] | None) -> pause.PauseResult:
        """:func:`pause.run`, as the fault point ``point`` (armed, it fails half-way).
        The caller has noted in the undo log what ``ops`` touches."""
        if self._inject is not None:
            self._inject(point, ops)
        return pause.run(ops, blocking)

    def _touch(
        self, undo: Undo | None, slots: builtins.list[FuncSlot], dslots: builtins.list[DataSlot]
    ) -> None:
        """Note in the undo log(s) what a pause is about to change."""
        for log in {id(u): u for u in (undo, self._undo) if u is not None}.values():
            log.touch(slots, dslots)

    def _table(self, act: _Act, rec: Record, force: bool = False) -> State | None:
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
            raise _NoAction(f"{rec.name} is already {rec.state}: no action needed")
        assert outcome is GONE or isinstance(outcome, State)
        return outcome

    # --- upload / unload ----------------------------------------------------------

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
        with self._action(Action.UPLOAD, name) as act:
            data = _read(source)
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
            pending = {
                m
                for m in _target_modules(man)
                if not _imported(m) and (wait_imports or _importable(m))
            }
            fentries = [e for e in man.funcs if _module_of(e.target) not in pending]
            dentries = [e for e in man.data if _module_of(e.target) not in pending]
            fplans = [resolve_function(e.target) for e in fentries]
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
            self._at("upload.check")
            loaded = load_package(payload)
            try:
                try:
                    rec = self._prepare(man, loaded, fplans, dtargets, fentries, dentries)
                finally:
                    loaded.forget_sources()  # the ASTs would only make every GC pass longer
                self._at("upload.compile")
                rec.flags = flags
                rec.signature = payload.signature_status
                for m in sorted(pending):
                    rec.pending[m] = (
                        [e for e in man.funcs if _module_of(e.target) == m],
                        [e for e in man.data if _module_of(e.target) == m],
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

    def _plan(
        self,
        loaded: LoadedPackage,
        fentries: builtins.list[FuncEntry],
        fts: builtins.list[FunctionTarget],
        dentries: builtins.list[DataEntry],
        dts: builtins.list[DataTarget],
    ) -> tuple[builtins.list[FuncPlan], builtins.list[DataPlan]]:
        """Compile the replacements and evaluate the data of some entries, and check
        every name their new code needs (SPEC §2)."""
        funcs = [
            FuncPlan(e, ft, compile_replacement(loaded, e, ft))
            for e, ft in zip(fentries, fts, strict=True)
        ]
        data = [
            DataPlan(e, dt, data_value(loaded, e, dt)) for e, dt in zip(dentries, dts, strict=True)
        ]
        for plan in data:
            check_data_expectation(
                plan.entry, plan.target, plan.value, self._original_value(plan.target)
            )
        stands_in: dict[int, types.FunctionType] = {}
        for fplan in funcs:
            new = lookup(loaded, fplan.entry.new, fplan.entry.target)
            stands_in[id(new)] = stands_in[id(getattr(new, "__func__", new))] = fplan.target.func
        provided: dict[str, set[str]] = {}
        for plan in data:
            if isinstance(plan.target.holder, types.ModuleType):
                provided.setdefault(plan.target.module.__name__, set()).add(plan.target.name)
        for dslot in self._data.values():  # what this payload already set (a reload)
            if isinstance(dslot.holder, types.ModuleType) and any(
                r.loaded is loaded for r, _ in dslot.stack
            ):
                provided.setdefault(dslot.holder.__name__, set()).add(dslot.name)
        checks: builtins.list[tuple[str, builtins.list[types.CodeType], types.ModuleType]] = []
        for fplan in funcs:
            impl = fplan.variant.impl
            code = fplan.variant.code if impl is None else impl.__code__
            checks.append((fplan.entry.target, [code], fplan.target.module))
        for plan in data:
            value = plan.value
            if (
                isinstance(value, types.FunctionType)
                and value.__module__ == plan.target.module.__name__
            ):
                checks.append((plan.entry.target, [value.__code__], plan.target.module))
        for what, codes, mod in checks:
            check_globals(
                what, codes, mod, provided.get(mod.__name__, set()), loaded.namespace, stands_in
            )
        return funcs, data

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
        data = _read(source)
        name = _peek_name(data)
        self.upload(
            name, data, no_expect=no_expect, no_object_check=no_object_check,
            wait_imports=wait_imports,
        )  # fmt: skip
        try:
            return self.apply(
                name, nodeps=nodeps, timeout=timeout, force=force, consistency=consistency,
                no_expect=no_expect,
            )  # fmt: skip
        except BaseException:
            try:
                self.unload(name)
            except LivepatchError:
                pass
            raise

    # --- checks -------------------------------------------------------------------

    def _check_python(self, man: Manifest, no_expect: bool) -> None:
        tag = python_tag()
        if tag in man.python or no_expect:
            return
        raise LivepatchError(
            "expectation-failed",
            f"payload {man.name} was built for Python {', '.join(man.python)} and has no expectations for "
            f"Python {tag}, which this process runs; pack it with --python {tag} (or pass --no-expect)",
        )

    def _check_objects(self, man: Manifest, skip: bool) -> None:
        self._check_objects_of(man, list(man.objects), skip)

    def _check_objects_of(self, man: Manifest, modules: builtins.list[str], skip: bool) -> None:
        if skip:
            return
        tag = python_tag()
        for modname in modules:
            ids = man.objects.get(modname)
            if ids is None:
                continue
            module = sys.modules.get(modname)
            if not isinstance(module, types.ModuleType):
                continue  # checked when it is imported
            expected = ids.get(tag)
            if expected is None:
                raise LivepatchError(
                    "dependency-mismatch",
                    f"payload {man.name} names no build id of module {modname} for Python {tag}",
                )
            actual, why = live_object_build_id(
                module, self.original_code, self._source_of(module), self.is_added
            )
            if actual != expected:
                found = actual[:16] if actual else f"unknown: {why}"
                raise LivepatchError(
                    "dependency-mismatch",
                    f"payload {man.name} was built for module {modname} {expected[:16]}, but this process runs "
                    f"{found}; build the payload from the code this process runs (or pass --no-object-check)",
                )

    def _source_of(self, module: types.ModuleType) -> ModuleSource | None:
        """The module's compiled source, cached by file path, mtime and size: a large
        module is compiled once, not at every upload (compiling holds the GIL)."""
        key = source_key(module)
        if key is None:
            return None
        hit = self._sources.get(module.__name__)
        if hit is not None and hit[0] == key:
            return hit[1]
        source = compile_module(module)
        if source is not None:
            self._sources[module.__name__] = (key, source)
        return source

    def _check_expectations(
        self,
        name: str,
        entries: builtins.list[FuncEntry],
        fts: builtins.list[FunctionTarget],
        no_expect: bool,
    ) -> None:
        tag = python_tag()
        for entry, ft in zip(entries, fts, strict=True):
            expected = entry.expect.get(tag)
            if expected is None:
                if no_expect:
                    continue
                raise LivepatchError(
                    "expectation-failed",
                    f"payload {name}: {entry.target} has no expectation for Python {tag}",
                )
            found = fingerprint(self.original_code(ft.func))
            if found != expected:
                raise LivepatchError(
                    "expectation-failed",
                    f"payload {name}: {entry.target} is not the code the payload was built against "
                    f"(expected fingerprint {expected[:16]}, found {found[:16]})",
                )

    def _check_depends(self, rec: Record, nodeps: bool) -> None:
        depends = rec.manifest.depends
        if depends is None or nodeps:
            return
        stacked = [
            r
            for r in self._payloads.values()
            if r.state is State.APPLIED and r.manifest.depends is not None
        ]
        top = max(stacked, key=lambda r: r.applied_seq, default=None)
        want = "base" if top is None else top.build_id
        if depends != want:
            have = (
                "nothing (the base)" if top is None else f"payload {top.name} ({top.build_id[:16]})"
            )
            need = "base" if depends == "base" else depends[:16]
            raise LivepatchError(
                "dependency-mismatch",
                f"apply {rec.name}: it stacks on {need}, but the top of the stack is {have}; "
                "apply in order, or pass --nodeps",
            )

    def _check_targets(self, rec: Record, no_expect: bool) -> None:
        """The checks apply and replace share: targets imported since upload are
        planned, every target is still the object it was, and every expectation holds
        against the original code and values. (Object build ids were checked at upload.)"""
        self._adopt_imported(rec)
        self._check_still_there(rec)
        self._check_expectations(
            rec.name, [p.entry for p in rec.funcs], [p.target for p in rec.funcs], no_expect
        )
        for dplan in rec.data:
            check_data_expectation(
                dplan.entry, dplan.target, dplan.value, self._original_value(dplan.target)
            )

    def _check_still_there(self, rec: Record) -> None:
        for plan in rec.funcs:
            if plan.stale:
                continue
            now = resolve_function(plan.entry.target)
            if now.func is not plan.target.func:
                raise LivepatchError(
                    "dependency-mismatch",
                    f"apply {rec.name}: {plan.entry.target} is another function object than at upload "
                    "(its module was reloaded?); unload and upload the payload again",
                )

    # --- apply / revert -------------------------------------------------------------

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
        with self._action(Action.APPLY, name) as act:
            rec = self._get(name)
            try:
                self._table(act, rec)
            except _NoAction as done:
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
                slots, dslots = self._slots_for(rec)
                if "apply" in rec.hooks:
                    result = self._hooked_swap(act, rec, "apply", slots, dslots)
                    self._seq += 1
                    rec.applied_seq, rec.nodeps, rec.state = self._seq, nodeps, State.APPLIED
                    return result
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
                # Committed: from here on only assignments of values prepared above.
                for plan, slot in zip(rec.funcs, slots, strict=True):
                    slot.stack.append((rec, plan.variant))
                for dplan, dslot in zip(rec.data, dslots, strict=True):
                    dslot.stack.append((rec, dplan.value))
                self._seq += 1
                rec.applied_seq, rec.nodeps, rec.state = self._seq, nodeps, State.APPLIED
                return result

            result = self._with_hooks(act, rec, "apply", _prev_states(applied), swap)
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
        progress = self._progress.get(name)
        if progress is not None and progress.get("action") == "apply" and "transition" in progress:
            reversal = self._reverse_running(name)
            if reversal.state != str(State.APPLIED):
                return reversal
            # the transition completed before it saw the request: revert as usual
        with self._action(Action.REVERT, name) as act:
            rec = self._get(name)
            try:
                self._table(act, rec, force=force)
            except _NoAction as done:
                return act.noop(rec, str(done))
            for other in self._payloads.values():
                if (
                    other.state is State.APPLIED
                    and other.manifest.depends == rec.build_id
                    and not other.nodeps
                ):
                    raise LivepatchError(
                        "busy",
                        f"revert {name}: applied payload {other.name} depends on it; revert {other.name} first",
                    )
            mode = self._mode(rec, consistency)
            act.emit("checked", consistency=mode)
            self._at("revert.check")

            recovering = rec.state is State.INCONSISTENT

            def swap() -> pause.PauseResult:
                slots, dslots = self._slots_for(rec)
                if "revert" in rec.hooks and not recovering:
                    result = self._hooked_swap(act, rec, "revert", slots, dslots)
                    rec.state, rec.applied_seq = State.CHECKED, 0
                    return result
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
            if recovering:  # revert --force of an INCONSISTENT payload: no hooks, default swap
                act.emit("forced", reason="INCONSISTENT payload reverted without its hooks")
                result = swap()
            else:
                result = self._with_hooks(act, rec, "revert", _prev_states(earlier), swap)
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
        """Make ``name`` the only applied payload, in one pause (SPEC §7)."""
        with self._action(Action.REPLACE, name) as act:
            rec = self._get(name)
            try:
                self._table(act, rec)
            except _NoAction as done:
                return act.noop(rec, str(done))
            return self._replace(act, rec, timeout, force, consistency, no_expect)

    def _replace(
        self,
        act: _Act,
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
        act.emit(
            "checked",
            funcs=len(rec.funcs),
            data=len(rec.data),
            consistency=mode,
            replaces=[r.name for r in applied],
        )
        self._at("replace.check")

        def swap() -> pause.PauseResult:
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

        result = self._with_hooks(act, rec, "replace", _prev_states(applied), swap)
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
                "invalid-payload", f"unknown action {verb!r}; actions are {', '.join(verbs)}"
            )
        return verbs[verb](name, **options)

    def _reverse_running(self, name: str) -> ActionResult:
        t0 = time.perf_counter_ns()
        self._reverse_requests[name] = True
        self._history.emit("revert", name, "note", message="reversing the running transition")
        while self._progress.get(name, {}).get("action") == "apply":
            time.sleep(0.001)
        self._reverse_requests.pop(name, None)
        state = str(self._get(name).state)  # APPLIED if it completed before seeing us
        return ActionResult(
            "revert", name, state, False, "the transition was reversed",
            0, time.perf_counter_ns() - t0, "transition",
        )  # fmt: skip

    # --- helpers --------------------------------------------------------------------

    def _applied(self, exclude: Record | None = None) -> builtins.list[Record]:
        """Applied payloads, oldest first."""
        found = [
            r for r in self._payloads.values() if r.state is State.APPLIED and r is not exclude
        ]
        return sorted(found, key=lambda r: r.applied_seq)

    def state_of(self, name: str, sid: int) -> SystemState | None:
        """The state ``sid`` of payload ``name`` (None if it has none)."""
        rec = self._payloads.get(name)
        return rec.states.get(sid) if rec is not None else None

    def _with_hooks(
        self,
        act: _Act,
        rec: Record,
        action: str,
        prev: dict[int, SystemState],
        swap: Callable[[], pause.PauseResult],
    ) -> pause.PauseResult:
        """Run ``swap`` between the payload's pre and post hooks (SPEC §4); a replace
        runs the replacing payload's apply hooks with ``ctx.action == "replace"``."""
        pre_kind, post_kind = PAIRS["revert" if action == "revert" else "apply"]
        ctx = HookContext(
            PayloadInfo(rec.name, rec.build_id, dict(rec.manifest.metadata)),
            action,
            rec.states,
            prev,
            act.emit,
        )
        pre, post = rec.hooks.get(pre_kind), rec.hooks.get(post_kind)
        if pre is not None:
            try:
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
            self._post(act, post, post_kind, ctx, rc)
            raise
        self._post(act, post, post_kind, ctx, 0)
        return result

    # --- objects imported later ------------------------------------------------------

    def _wants_module(self, name: str, reloading: bool) -> bool:
        return name in self._waited or (reloading and name in self._patched_modules)

    def _sync_import_hook(self) -> None:
        """The import hook is on sys.meta_path exactly while a payload is applied; the
        sets it consults are refreshed here, after every action."""
        applied = self._applied()
        self._waited = frozenset(m for r in applied for m in r.pending)
        self._patched_modules = frozenset(
            {p.target.module.__name__ for r in applied for p in r.funcs}
            | {d.target.module.__name__ for r in applied for d in r.data}
        )
        if applied:
            self._late.install()
        else:
            self._late.remove()

    def _module_imported(self, module: types.ModuleType) -> None:
        """Apply the payloads waiting for ``module``, which has just run its code."""
        mine = self._owner == threading.get_ident()  # imported from inside an action
        if not mine:
            # Bounded: an action in another thread that imports this very module would
            # otherwise wait on the import lock this thread holds.
            if not self._lock.acquire(timeout=LATE_IMPORT_WAIT):
                raise ImportError(
                    f"pylivepatch: payloads wait for module {module.__name__} but another action "
                    f"kept the engine busy for {LATE_IMPORT_WAIT:g}s; import it again",
                    name=module.__name__,
                )
            self._owner = threading.get_ident()
        undo = Undo(self)
        try:
            self._apply_late(module, undo)
        except BaseException:
            undo.restore(self)
            raise
        finally:
            if not mine:
                self._sync_import_hook()
                self._owner = None
                self._lock.release()

    def _apply_late(self, module: types.ModuleType, undo: Undo, reloading: bool = False) -> None:
        """Apply payloads to a module that was just imported (it was pending) or
        reloaded (its functions are new objects; the old ones stay patched). Any
        failure becomes an ``ImportError`` naming the payload; the caller undoes."""
        name = module.__name__
        applied = self._applied()
        waiting = [r for r in applied if name in r.pending]
        if not waiting:  # a reload
            self._reapply(module, applied, undo)
            return
        prepared: builtins.list[
            tuple[Record, builtins.list[FuncPlan], builtins.list[DataPlan], _Act]
        ] = []
        outcome = (
            "the reload is refused and the module keeps its patched code"
            if reloading
            else "the module is not imported"
        )

        def refuse(rec: Record, exc: LivepatchError) -> ImportError:
            return ImportError(
                f"pylivepatch: payload {rec.name} refuses module {name}: {exc.message} "
                f"({exc.code}); {outcome}",
                name=name,
            )

        for rec in waiting:  # every check before anything changes
            act = _Act(self, Action.APPLY, rec.name)
            act.undo = undo
            act.emit("late-object", module=name)
            fentries, dentries = rec.pending[name]
            try:
                fts = [resolve_function(e.target) for e in fentries]
                dts = [resolve_data(e.target) for e in dentries]
                self._check_objects_of(rec.manifest, [name], "no-object-check" in rec.flags)
                self._check_expectations(rec.name, fentries, fts, "no-expect" in rec.flags)
                funcs, data = self._plan(rec.loaded, fentries, fts, dentries, dts)
            except LivepatchError as exc:
                act.emit("refused", module=name, error=exc.code, rc=exc.errno, message=exc.message)
                raise refuse(rec, exc) from None
            prepared.append((rec, funcs, data, act))
        ready: builtins.list[tuple[Record, HookContext, _Act]] = []
        rc = errno.EIO  # what the post hooks of a failed late apply see
        try:
            self._at("late.check")
            for rec, _, _, act in prepared:
                ctx = self._late_ctx(rec, act)
                pre = rec.hooks.get("pre_apply")
                if pre is not None:
                    try:
                        run_pre(rec.name, "pre_apply", pre, ctx)
                    except LivepatchError as exc:
                        act.emit("hook", hook="pre_apply", result="vetoed")
                        rc = exc.errno
                        act.emit("refused", module=name, error=exc.code, rc=rc, message=exc.message)
                        raise refuse(rec, exc) from None
                    act.emit("hook", hook="pre_apply", result="ok")
                ready.append((rec, ctx, act))
            self._at("late.prepare")
            for rec, funcs, data, act in prepared:  # in apply order: the last applied on top
                slots = [self._slot_of(p.target.func, p.target.caches) for p in funcs]
                dslots = [self._dslot_of(p.target) for p in data]
                ops = pause.Ops()
                for plan, slot in zip(funcs, slots, strict=True):
                    v = plan.variant
                    func_ops(ops, slot, (v.code, v.defaults, v.kwdefaults))
                for dplan, dslot in zip(data, dslots, strict=True):
                    data_ops(ops, dslot, dplan.value)
                self._touch(undo, slots, dslots)
                result = self._pause("pause:late", ops, None)  # nothing has called them yet
                for plan, slot in zip(funcs, slots, strict=True):
                    self._funcs.setdefault(id(slot.func), slot)
                    slot.stack.append((rec, plan.variant))
                for dplan, dslot in zip(data, dslots, strict=True):
                    self._data.setdefault((id(dslot.holder), dslot.name), dslot)
                    dslot.stack.append((rec, dplan.value))
                rec.funcs += funcs
                rec.data += data
                del rec.pending[name]
                act.emit(
                    "swapped",
                    module=name,
                    funcs=len(funcs),
                    data=len(data),
                    pause_ns=result.pause_ns,
                )
        except BaseException as exc:
            undo.restore(self)  # before the post hooks look
            if isinstance(exc, ImportError):
                failed: BaseException = exc
            else:
                names = ", ".join(r.name for r, _, _, _ in prepared) or "?"
                failed = ImportError(
                    f"pylivepatch: patching module {name} for payload {names} failed inside "
                    f"pylivepatch ({type(exc).__name__}: {exc}); nothing was patched and {outcome}",
                    name=name,
                )
                for _, _, _, act in prepared:
                    act.emit("refused", module=name, error="internal", rc=rc, message=str(failed))
            for done, done_ctx, done_act in ready:  # pair the pre hooks that ran
                self._post(done_act, done.hooks.get("post_apply"), "post_apply", done_ctx, rc)
            if failed is exc or not isinstance(exc, Exception):
                raise
            raise failed from exc
        for rec, ctx, act in ready:
            self._post(act, rec.hooks.get("post_apply"), "post_apply", ctx, 0)

    def _reapply(
        self, module: types.ModuleType, applied: builtins.list[Record], undo: Undo
    ) -> None:
        """``importlib.reload`` ran the module's code again: its functions are new
        objects. Patch them like a module imported later; the old objects stay patched
        (other references may hold them) and their plans are marked stale. Attributes a
        payload set are set again over what the reload assigned."""
        name = module.__name__
        old: dict[int, builtins.list[FuncPlan]] = {}
        for rec in applied:
            plans = [p for p in rec.funcs if not p.stale and _module_of(p.entry.target) == name]
            if plans:
                old[id(rec)] = plans
                rec.pending[name] = (list({p.entry.target: p.entry for p in plans}.values()), [])
        try:
            self._apply_late(module, undo, reloading=True)
        finally:
            for rec in applied:
                rec.pending.pop(name, None)
        for rec in applied:
            for plan in old.get(id(rec), []):
                if any(p is not plan and p.entry is plan.entry and not p.stale for p in rec.funcs):
                    plan.stale = True
        ops = pause.Ops()
        dslots = [d for d in self._data.values() if d.holder is module and d.stack]
        for dslot in dslots:
            fresh = module.__dict__.get(dslot.name, ABSENT)
            if dslot.original is not ABSENT and fresh is not dslot.stack[-1][1]:
                dslot.original = fresh  # what the reloaded code defines
            data_ops(ops, dslot, dslot.stack[-1][1])
        self._touch(undo, [], dslots)
        try:
            self._pause("pause:reload", ops, None)
        except Exception as exc:
            owners = [r for r in applied if any(d.holder is module for d in self._dslots_of(r))]
            failed = ImportError(
                f"pylivepatch: setting the data of payload {', '.join(r.name for r in owners)} "
                f"again after the reload of {name} failed inside pylivepatch "
                f"({type(exc).__name__}: {exc}); the reload is refused and the module keeps "
                "its patched code",
                name=name,
            )
            for rec in owners:
                _Act(self, Action.APPLY, rec.name).emit(
                    "refused", module=name, error="internal", rc=errno.EIO, message=str(failed)
                )
            raise failed from exc

    def _dslots_of(self, rec: Record) -> builtins.list[DataSlot]:
        return [d for d in self._data.values() if any(r is rec for r, _ in d.stack)]

    def _adopt_imported(self, rec: Record) -> None:
        """Modules a payload waited for that were imported before it was applied are
        planned now, like the ones imported at upload."""
        for name in [m for m in rec.pending if _imported(m)]:
            fentries, dentries = rec.pending[name]
            fts = [resolve_function(e.target) for e in fentries]
            dts = [resolve_data(e.target) for e in dentries]
            self._check_objects_of(rec.manifest, [name], "no-object-check" in rec.flags)
            self._check_expectations(rec.name, fentries, fts, "no-expect" in rec.flags)
            funcs, data = self._plan(rec.loaded, fentries, fts, dentries, dts)
            rec.funcs += funcs
            rec.data += data
            del rec.pending[name]

    def _late_ctx(self, rec: Record, act: _Act) -> HookContext:
        earlier = [r for r in self._applied(exclude=rec) if r.applied_seq < rec.applied_seq]
        return HookContext(
            PayloadInfo(rec.name, rec.build_id, dict(rec.manifest.metadata)),
            "apply", rec.states, _prev_states(earlier), act.emit,
        )  # fmt: skip

    def _slot_of(self, fn: types.FunctionType, caches: builtins.list[Any]) -> FuncSlot:
        slot = self._funcs.get(id(fn))
        if slot is None or slot.func is not fn:
            slot = FuncSlot(fn, (fn.__code__, fn.__defaults__, fn.__kwdefaults__), list(caches))
        return slot

    def _dslot_of(self, dt: DataTarget) -> DataSlot:
        dslot = self._data.get((id(dt.holder), dt.name))
        if dslot is None or dslot.holder is not dt.holder:
            dslot = DataSlot(dt.holder, dt.name, dt.current())
        return dslot

    def _mark(self, act: _Act, rec: Record, plan: FuncPlan, slot: FuncSlot, applied: bool) -> int:
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
        act: _Act,
        rec: Record,
        action: str,
        slots: builtins.list[FuncSlot],
        dslots: builtins.list[DataSlot],
    ) -> pause.PauseResult:
        """An ``apply``/``revert`` action hook instead of the default swap (SPEC §4).

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
            )  # fmt: skip
            ctx._marker = marker
            interval = sys.getswitchinterval()
            sys.setswitchinterval(max(interval, 1.0))
            try:
                rec.hooks[kind](ctx)
            except Exception as exc:  # noqa: BLE001 - reported; consistency decides
                failure: str | None = f"{type(exc).__name__}: {exc}"
            else:
                failure = None
            finally:
                sys.setswitchinterval(interval)
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

    def _post(
        self, act: _Act, post: Callable[..., Any] | None, kind: str, ctx: HookContext, rc: int
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

    def _mode(self, rec: Record, override: str | None) -> str:
        mode = override or rec.manifest.consistency
        if mode not in DEFAULT_TIMEOUT:
            raise LivepatchError("invalid-payload", f"unknown consistency mode {mode!r}")
        if mode != "immediate" and pause.gil_disabled():
            raise LivepatchError(
                "unsupported-target",
                f"{rec.name}: this interpreter runs without the GIL and exposes no stop-the-world; "
                f"{mode} cannot pause it safely (use consistency 'immediate' at your own risk)",
            )
        return mode

    def _slots_for(self, rec: Record) -> tuple[builtins.list[FuncSlot], builtins.list[DataSlot]]:
        slots = [self._slot_of(p.target.func, p.target.caches) for p in rec.funcs]
        return slots, [self._dslot_of(p.target) for p in rec.data]

    def _swap(
        self,
        act: _Act,
        ops: pause.Ops,
        blocking: set[int],
        mode: str,
        timeout: float | None,
        force: bool,
        slots: builtins.list[FuncSlot],
        dslots: builtins.list[DataSlot],
    ) -> pause.PauseResult:
        """Run the pause (retrying until quiescent in atomic mode) and register slots."""
        for cache in {id(c): c for s in slots for c in s.caches}.values():
            ops.caches.append(cache)
            cache.cache_clear()  # most entries die here, outside the pause
        self._touch(act.undo, slots, dslots)  # a failure from here on is undone from the log
        limit = DEFAULT_TIMEOUT[mode] if timeout is None else timeout
        if mode == "transition":
            result = self._transition(act, ops, limit, force)
            self._register(act, slots, dslots, result)
            return result
        deadline = time.monotonic() + limit
        delay = 0.001
        waited = False
        while True:
            result = self._pause("pause:swap", ops, None if mode == "immediate" else blocking)
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
                    "; ".join(b.describe() for b in result.blockers) or "the stacks kept changing"
                )
                raise LivepatchError(
                    "timeout",
                    f"{act.action} {act.name}: no quiescent moment within {limit:g}s; blocked by {names}",
                )
            if result.blockers:
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            else:
                time.sleep(0)  # the stacks moved between the walk and the swap: retry now
        self._register(act, slots, dslots, result)
        return result

    def _register(
        self,
        act: _Act,
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

    def _transition(
        self, act: _Act, ops: pause.Ops, limit: float, force: bool
    ) -> pause.PauseResult:
        """SPEC §5 ``transition``: dispatchers, waiting, then the new code in one pause;
        on timeout the transition is reversed (or, with ``force``, completed)."""
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
        start = pause.Ops(func_attrs=_func_attrs(trans.start_triples()), caches=ops.caches)
        dispatchers = pause.Ops(func_attrs=list(start.func_attrs))  # to put them back
        if data_first:
            start.dict_sets, start.dict_dels = data.dict_sets, data.dict_dels
            start.class_sets, start.class_dels = data.class_sets, data.class_dels
        undo_data = undo_data_ops(data)  # should the transition reverse
        try:
            first = self._pause("pause:transition-start", start, None)
        except BaseException:  # stopped half-way: back at once, before any call can mix
            back = pause.Ops(func_attrs=_func_attrs([(fn, source) for fn, source, _ in pairs]))
            if data_first:
                back.dict_sets, back.dict_dels = undo_data.dict_sets, undo_data.dict_dels
                back.class_sets, back.class_dels = undo_data.class_sets, undo_data.class_dels
            pause.run(back, None)
            raise
        trans.arm()
        act.emit(
            "transition", direction="patching" if data_first else "unpatching", funcs=len(pairs)
        )
        # A thread preempted inside old code must get the GIL back to leave it: with many
        # busy threads a round of the default 5 ms switch interval takes long, so the
        # interval is shortened while the transition waits (and restored after).
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, TRANSITION_SWITCH_INTERVAL))
        try:
            return self._wait_transition(
                act, ops, trans, undo_data, data, dispatchers, first, data_first, limit, force
            )
        finally:
            sys.setswitchinterval(interval)

    def _wait_transition(
        self,
        act: _Act,
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
        progress = self._progress[act.name]
        t0 = time.monotonic()
        deadline, delay, reversed_ = t0 + limit, 0.001, False
        first_blockers: builtins.list[str] = []
        cancelled = False
        failure: Exception | None = None
        while True:
            try:
                self._at("transition.wait")
                blockers = trans.blockers()
                progress.update(
                    transition="reversing"
                    if reversed_
                    else ("patching" if data_first else "unpatching"),
                    elapsed=time.monotonic() - t0,
                    blockers=blockers,
                )
                if blockers and not reversed_ and self._reverse_requests.pop(act.name, False):
                    act.emit("reversing", reason="revert requested during the transition")
                    first_blockers, cancelled = (
                        ["a revert of the payload during its transition"],
                        True,
                    )
                    trans.reverse()
                    reversed_, deadline = True, time.monotonic() + limit
                    continue
                if blockers and time.monotonic() >= deadline:
                    if force and not reversed_:
                        act.emit("forced", blockers=blockers)
                        blockers = []
                    elif reversed_:  # the way back is blocked too: finish it regardless
                        act.emit("forced", blockers=blockers, reason="reverse transition blocked")
                        blockers = []
                    else:
                        act.emit("reversing", blockers=blockers)
                        first_blockers = blockers
                        trans.reverse()
                        reversed_, deadline = True, time.monotonic() + limit
                if blockers:
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                final = pause.Ops(caches=ops.caches, func_attrs=_func_attrs(trans.final_triples()))
                if reversed_:
                    if data_first:
                        final.dict_sets, final.dict_dels = undo_data.dict_sets, undo_data.dict_dels
                        final.class_sets, final.class_dels = (
                            undo_data.class_sets,
                            undo_data.class_dels,
                        )
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
                break
            except Exception as exc:  # noqa: BLE001 - reversed, then raised below
                if failure is not None:
                    raise  # failing again on the way back: the undo log restores at once
                failure = exc
                act.emit("reversing", reason=f"{type(exc).__name__}: {exc}")
                if not reversed_:
                    trans.reverse()
                    reversed_ = True
                deadline, delay = time.monotonic() + limit, 0.001
        if reversed_:
            act.emit("transition-reversed")
            if failure is not None:
                raise failure
            if cancelled:
                raise LivepatchError(
                    "vetoed",
                    f"{act.action} {act.name}: a revert during the transition reversed it; "
                    "nothing changed",
                )
            raise LivepatchError(
                "timeout",
                f"{act.action} {act.name}: the transition did not complete within {limit:g}s and was "
                f"reversed; blocked by {'; '.join(first_blockers)}",
            )
        act.emit("transition-complete", elapsed_ns=int((time.monotonic() - t0) * 1e9))
        return pause.PauseResult(
            True, first.pause_ns + result.pause_ns, started_ns=result.started_ns
        )


class _NoAction(Exception):
    pass


class _Act:
    """Book-keeping of one running action."""

    def __init__(self, engine: Engine, action: Action, name: str) -> None:
        self.engine, self.action, self.name = engine, action, name
        self.t0 = time.perf_counter_ns()
        self.pause_ns = 0
        self.result_message = ""
        self.build_id = ""
        self.undo: Undo | None = None

    def rollback(self) -> None:
        """Undo what this action changed (once; see :mod:`.undo`)."""
        if self.undo is not None:
            self.undo.restore(self.engine)

    def emit(self, kind: str, **detail: Any) -> None:
        if kind in ("finished", "forced", "refused", "swapped"):  # audited
            rec = self.engine._payloads.get(self.name)
            detail["build_id"] = rec.build_id if rec is not None else self.build_id
            if rec is not None:
                detail["signature"] = rec.signature
        self.engine._history.emit(str(self.action), self.name, kind, **detail)

    def elapsed(self) -> int:
        return time.perf_counter_ns() - self.t0

    def result(
        self, state: State | None, *, pause_ns: int = 0, consistency: str | None = None
    ) -> ActionResult:
        return ActionResult(
            str(self.action), self.name, str(state) if state else None, False, self.result_message,
            pause_ns, self.elapsed(), consistency,
        )  # fmt: skip

    def noop(self, rec: Record, message: str) -> ActionResult:
        self.result_message = message
        self.emit("note", message="no action needed")
        return ActionResult(
            str(self.action), self.name, str(rec.state), True, message, 0, self.elapsed()
        )


def _func_attrs(
    triples: list[tuple[types.FunctionType, tuple[Any, Any, Any]]],
) -> list[tuple[types.FunctionType, str, Any]]:
    """The attribute swaps that give each function its triple."""
    return [
        (fn, attr, value)
        for fn, triple in triples
        for attr, value in zip(("__code__", "__defaults__", "__kwdefaults__"), triple, strict=True)
    ]


def _module_of(target: str) -> str:
    return target.split(":", 1)[0]


def _target_modules(man: Manifest) -> set[str]:
    return {_module_of(e.target) for e in man.funcs} | {_module_of(e.target) for e in man.data}


def _imported(modname: str) -> bool:
    return isinstance(sys.modules.get(modname), types.ModuleType)


def _importable(modname: str) -> bool:
    try:
        return importlib.util.find_spec(modname) is not None
    except (ImportError, ValueError):
        return False


def _prev_states(records: list[Record]) -> dict[int, SystemState]:
    """For each state id, the state of the most recently applied of ``records``."""
    prev: dict[int, SystemState] = {}
    for rec in records:  # oldest first: later ones win
        prev.update(rec.states)
    return prev


def _read(source: str | os.PathLike[str] | bytes) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        size = os.stat(source).st_size
        if size > archive.MAX_ARCHIVE_BYTES:
            raise LivepatchError(
                "invalid-payload",
                f"{source}: {size} bytes; the limit is {archive.MAX_ARCHIVE_BYTES}",
            )
        with open(source, "rb") as fh:
            return fh.read(archive.MAX_ARCHIVE_BYTES + 1)
    except FileNotFoundError:
        raise LivepatchError("not-found", f"payload file {source} does not exist") from None
    except OSError as exc:
        raise LivepatchError(
            "invalid-payload", f"payload file {source} cannot be read: {exc.strerror}"
        ) from None


def _peek_name(data: bytes) -> str:
    return archive.read(data).manifest.name
