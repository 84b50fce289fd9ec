"""Objects imported later and reloaded (spec §5, Linux ``klp_module_coming``).

A payload may target a module the process has not imported yet. While a payload is
applied, a finder sits first on ``sys.meta_path``. It answers only for a module an
applied payload waits for, or for ``importlib.reload`` of a module a payload patches
(for any other import it costs one set lookup). It lets the other finders find the
module, wraps the loader, and after the module's code has run (before the importer sees
the module) hands it to the engine, which applies the payloads to it: expectations,
hooks and one pause, as for any apply. If a payload refuses the module (its code is not
what the payload expects, or a pre hook vetoes), the import fails with ``ImportError``
naming the payload: known-unpatched code never runs. A refused reload also puts the
module's namespace back as it was, still patched.

:class:`LateImportHook` is the finder; :class:`LateObjects` is the engine's side: the
checks, hooks and pause for the module, under the engine's lock, undone as a whole if
any step fails.
"""

from __future__ import annotations

import builtins
import errno
import sys
import threading
import types
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from typing import Any

from ..errors import LivepatchError
from . import pause
from .base import LATE_IMPORT_WAIT, Act, module_of, prev_states
from .consistency import Consistency
from .hooks import HookContext, PayloadInfo, run_pre
from .records import DataPlan, DataSlot, FuncPlan, Record
from .resolve import ABSENT, resolve_data, resolve_function
from .swap import data_ops, func_ops
from .table import Action
from .undo import Undo


class LateImportHook:
    """The finder; ``wants(name, reloading)`` and ``imported(module)`` come from the engine."""

    def __init__(
        self,
        wants: Callable[[str, bool], bool],
        imported: Callable[[types.ModuleType], None],
    ) -> None:
        self.wants = wants
        self.imported = imported

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: types.ModuleType | None = None,
    ) -> ModuleSpec | None:
        reloading = target is not None  # importlib.reload passes the module being reloaded
        if not self.wants(fullname, reloading):
            return None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            # A reload sets the module's __spec__ and __loader__ before it runs the new
            # code in the module's own namespace: keep the namespace as it is now, so
            # that a refused reload leaves the module exactly as it was (still patched).
            saved = dict(target.__dict__) if target is not None else None
            spec.loader = _PatchingLoader(spec.loader, self.imported, saved)  # type: ignore[assignment]
        return spec

    def install(self) -> None:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def remove(self) -> None:
        while self in sys.meta_path:
            sys.meta_path.remove(self)


class _PatchingLoader:
    """The module's own loader, plus the engine's turn right after the code has run."""

    def __init__(
        self,
        loader: Any,
        imported: Callable[[types.ModuleType], None],
        saved: dict[str, Any] | None,
    ) -> None:
        self._loader = loader
        self._imported = imported
        self._saved = saved  # a reload: the namespace before it

    def create_module(self, spec: ModuleSpec) -> types.ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: types.ModuleType) -> None:
        saved, self._saved = self._saved, None  # it stays the module's __loader__
        self._loader.exec_module(module)
        try:
            self._imported(module)
        except BaseException:
            if saved is not None:
                # In one pause: no other thread sees the namespace half put back.
                ns = module.__dict__
                ops = pause.Ops(
                    dict_sets=[(ns, k, v) for k, v in saved.items()],
                    dict_dels=[(ns, k) for k in list(ns) if k not in saved],
                )
                pause.run(ops, None)
            raise

    def __getattr__(self, name: str) -> Any:  # get_code, get_source, is_package, ...
        return getattr(self._loader, name)


class LateObjects(Consistency):
    """The engine's part in late imports and reloads (module docstring)."""

    _late: LateImportHook  # on sys.meta_path while a payload is applied

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
        undo = Undo(self)  # its own: a module stays imported whatever the action does
        try:
            self._apply_late(module, undo)
        except BaseException:
            undo.restore(self)
            raise
        else:
            if mine and self._undo is not None:  # not the running action's to undo
                self._undo.keep(self, undo)
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
        if not waiting:
            if not reloading:  # a reload: its functions are new objects
                self._reapply(module, applied, undo)
            return  # _reapply found no function of the module to patch again (data only)
        prepared: builtins.list[
            tuple[Record, builtins.list[FuncPlan], builtins.list[DataPlan], Act]
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
            act = Act(self, Action.APPLY, rec.name)
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
            except Exception as exc:
                broken = ImportError(
                    f"pylivepatch: checking module {name} for payload {rec.name} failed inside "
                    f"pylivepatch ({type(exc).__name__}: {exc}); nothing was patched and "
                    f"{outcome}",
                    name=name,
                )
                act.emit(
                    "refused", module=name, error="internal", rc=errno.EIO, message=str(broken)
                )
                raise broken from exc
            prepared.append((rec, funcs, data, act))
        ready: builtins.list[tuple[Record, HookContext, Act]] = []
        rc = errno.EIO  # what the post hooks of a failed late apply see
        try:
            self._at("late.check")
            for rec, _, _, act in prepared:
                ctx = self._late_ctx(rec, act, name)
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
                self._install_late(name, rec, funcs, data, act, undo)
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

    def _install_late(
        self,
        name: str,
        rec: Record,
        funcs: builtins.list[FuncPlan],
        data: builtins.list[DataPlan],
        act: Act,
        undo: Undo,
    ) -> None:
        """One payload's functions and data of the module just imported, in one pause."""
        slots = [self._slot_of(p.target.func, p.target.caches) for p in funcs]
        dslots = [self._dslot_of(p.target) for p in data]
        ops = pause.Ops()
        for plan, slot in zip(funcs, slots, strict=True):
            v = plan.variant
            func_ops(ops, slot, (v.code, v.defaults, v.kwdefaults))
        for dplan, dslot in zip(data, dslots, strict=True):
            data_ops(ops, dslot, dplan.value)
        undo.touch(slots, dslots)
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
        act.emit("swapped", module=name, funcs=len(funcs), data=len(data), pause_ns=result.pause_ns)

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
            plans = [p for p in rec.funcs if not p.stale and module_of(p.entry.target) == name]
            if plans:
                old[id(rec)] = plans
                rec.pending[name] = (list({p.entry.target: p.entry for p in plans}.values()), [])
        try:
            if old:  # else only data of the module is patched: set again below
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
        undo.touch([], dslots)
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
                Act(self, Action.APPLY, rec.name).emit(
                    "refused", module=name, error="internal", rc=errno.EIO, message=str(failed)
                )
            raise failed from exc

    def _dslots_of(self, rec: Record) -> builtins.list[DataSlot]:
        return [d for d in self._data.values() if any(r is rec for r, _ in d.stack)]

    def _late_ctx(self, rec: Record, act: Act, module: str) -> HookContext:
        earlier = [r for r in self._applied(exclude=rec) if r.applied_seq < rec.applied_seq]
        return HookContext(
            PayloadInfo(rec.name, rec.build_id, dict(rec.manifest.metadata)),
            "apply", rec.states, prev_states(earlier), act.emit, (module,),
        )  # fmt: skip
