"""Everything an action verifies before it changes anything (spec §2, §3): the
interpreter version, the objects' build ids, the expectations of every function, the
stacking order, that the targets are still the objects they were, and the plan of
every replacement and data value with the names their new code needs.
"""

from __future__ import annotations

import builtins
import sys
import types

from ..errors import LivepatchError
from ..payload import static
from ..payload.fingerprint import (
    ModuleSource,
    compile_module,
    fingerprint,
    live_object_build_id,
    python_tag,
    source_key,
)
from ..payload.manifest import DataEntry, FuncEntry, Manifest, split_target
from .base import EngineBase, imported
from .compile import (
    LoadedPackage,
    check_data_expectation,
    check_globals,
    compile_replacement,
    data_value,
    lookup,
    move_to_target,
)
from .records import DataPlan, FuncPlan, Record
from .resolve import DataTarget, FunctionTarget, resolve_data, resolve_function
from .table import State


class Checks(EngineBase):
    """The checks (module docstring)."""

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
            if not static.is_module(module):  # never isinstance: it may ask __class__
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

    def _plan(
        self,
        loaded: LoadedPackage,
        fentries: builtins.list[FuncEntry],
        fts: builtins.list[FunctionTarget],
        dentries: builtins.list[DataEntry],
        dts: builtins.list[DataTarget],
    ) -> tuple[builtins.list[FuncPlan], builtins.list[DataPlan]]:
        """Compile the replacements and evaluate the data of some entries, and check
        every name their new code needs (spec §2)."""
        funcs = [
            FuncPlan(e, ft, compile_replacement(loaded, e, ft))
            for e, ft in zip(fentries, fts, strict=True)
        ]
        data = [
            DataPlan(e, dt, data_value(loaded, e, dt)) for e, dt in zip(dentries, dts, strict=True)
        ]
        _imported_from_home(loaded, data)
        for plan in data:
            check_data_expectation(
                plan.entry, plan.target, plan.value, self._original_value(plan.target)
            )
        stands_in: dict[int, types.FunctionType] = {}
        # The payload's functions planned before (a module imported later is planned
        # alone) stand in for their targets too: the late module may read one through a
        # global of its own (``from home import helper``).
        earlier = [f for r in self._payloads.values() if r.loaded is loaded for f in r.funcs]
        for fplan in earlier + funcs:
            new = lookup(loaded, fplan.entry.new, fplan.entry.target)
            inner = static.func_of(new) if static.is_a(new, (staticmethod, classmethod)) else new
            stands_in[id(new)] = stands_in[id(inner)] = fplan.target.func
        provided: dict[str, set[str]] = {}
        for plan in data:
            if static.is_module(plan.target.holder):
                provided.setdefault(plan.target.module.__name__, set()).add(plan.target.name)
        for dslot in self._data.values():  # what this payload already set (a reload)
            if static.is_module(dslot.holder) and any(r.loaded is loaded for r, _ in dslot.stack):
                provided.setdefault(dslot.holder.__name__, set()).add(dslot.name)
        checks: builtins.list[tuple[str, builtins.list[types.CodeType], types.ModuleType]] = []
        for fplan in funcs:
            impl = fplan.variant.impl
            code = fplan.variant.code if impl is None else impl.__code__
            checks.append((fplan.entry.target, [code], fplan.target.module))
        for plan in data:
            value = plan.value
            if static.is_function(value) and value.__module__ == plan.target.module.__name__:
                checks.append((plan.entry.target, [value.__code__], plan.target.module))
        entries = [
            e for r in self._payloads.values() if r.loaded is loaded for e in r.manifest.funcs
        ]

        def stand_in(obj: object) -> types.FunctionType | None:
            """The function a payload object replaces, for one of a module planned
            later (modules imported since the upload are planned one by one)."""
            for e in entries:
                try:
                    new = lookup(loaded, e.new, e.target)
                except LivepatchError:
                    continue
                inner = (
                    static.func_of(new) if static.is_a(new, (staticmethod, classmethod)) else new
                )
                if (obj is new or obj is inner) and imported(split_target(e.target, "")[0]):
                    try:
                        return resolve_function(e.target).func
                    except LivepatchError:
                        return None
            return None

        for what, codes, mod in checks:
            check_globals(
                what, codes, mod, provided.get(mod.__name__, set()), loaded.namespace,
                stands_in, stand_in,
            )  # fmt: skip
        return funcs, data

    def _adopt_imported(self, rec: Record) -> None:
        """Modules a payload waited for that were imported before it was applied are
        planned now, like the ones imported at upload."""
        for name in [m for m in rec.pending if imported(m)]:
            fentries, dentries = rec.pending[name]
            fts = [resolve_function(e.target) for e in fentries]
            dts = [resolve_data(e.target) for e in dentries]
            self._check_objects_of(rec.manifest, [name], "no-object-check" in rec.flags)
            self._check_expectations(rec.name, fentries, fts, "no-expect" in rec.flags)
            funcs, data = self._plan(rec.loaded, fentries, fts, dentries, dts)
            rec.funcs += funcs
            rec.data += data
            del rec.pending[name]


#: set by ``pylivepatch build`` on a function it adds to module A that module B newly
#: imports (``from A import f``): B's name must be A's function, with A's globals
HOME = "__pylivepatch_home__"


def _imported_from_home(loaded: LoadedPackage, data: builtins.list[DataPlan]) -> None:
    """A payload function that names its home module (``HOME``) runs with that
    module's globals in every module it is given to: the copy ``from A import f`` gives
    module B reads A's globals, as in NEW. Before, B's copy got B's globals, and the
    check refused it for a global only A has."""
    for plan in data:
        if not static.is_function(plan.value):
            continue
        home = plan.value.__dict__.pop(HOME, None)  # a copy the engine made of the payload's
        if home is None or home == plan.target.module.__name__:
            continue
        module = sys.modules.get(home)
        if not static.is_module(module):
            continue
        raw = lookup(loaded, plan.entry.value_source, plan.entry.target)
        name = raw.__name__
        plan.value = move_to_target(
            raw, loaded.package, DataTarget(f"{home}:{name}", module, module, name)
        )
        plan.value.__dict__.pop(HOME, None)
