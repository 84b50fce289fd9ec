"""``pylivepatch build OLD NEW``: a payload from the difference of two versions.

1. Both versions are made directories (:mod:`.sources`); modules are matched by name.
2. Each changed module is compared (:mod:`.compare`); a new module the new code
   imports, a changed C source, and constants whose old value was captured at import
   are refused here, where the whole tree is known.
3. The payload module is written from the NEW definitions (``ast.unparse``, so string
   contents are exact) and packed against OLD (:func:`.pack.pack` with ``against``):
   every expectation is the fingerprint of the OLD code, per interpreter.
4. With ``--allow data-files``, the changed data files a running process reads at use
   time (:mod:`.datafiles`) are added to the archive and its manifest (``data_files``).
"""

from __future__ import annotations

import ast
import re
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from ..errors import LivepatchError
from . import datafiles, sources, state
from .changes import NOT_YET, REFUSALS, UNALLOWABLE, Change, ModuleDiff, Refusal
from .compare import Comparer, TreeIndex
from .emit import emit
from .options import BuildOptions, BuildResult
from .syntax import absolute, import_time_reads, loads
from .typing_only import PYTHONS, VERSION_NAMES, global_runtime_reads, reads, runtime_statements


def build(old: str, new: str, options: BuildOptions) -> BuildResult:
    for kind in sorted(options.allow):
        if kind in NOT_YET:
            raise LivepatchError(
                "invalid-payload", f"--allow {kind}: not yet available: {NOT_YET[kind]}"
            )
        if kind in UNALLOWABLE:
            raise LivepatchError(
                "invalid-payload", f"--allow {kind}: no payload can be written with such a change"
            )
        if kind not in REFUSALS:
            raise LivepatchError(
                "invalid-payload",
                f"--allow {kind}: not a refusal kind; kinds are {', '.join(sorted(REFUSALS))}",
            )
    with tempfile.TemporaryDirectory(prefix="pylivepatch-build-") as tmp:
        work = Path(tmp)
        interpreters: dict[str, str] = {}
        found = None
        if options.installed:
            found = sources.installed(options.dist or sources.dist_name(new), options.python_env)
            old_tree = found.tree
            interpreters[found.python] = found.executable
            if not options.pythons:  # expectations for the interpreter the service runs
                options.pythons = [found.python]
        else:
            old_tree = sources.materialize(old, work, "old", options.repo)
            if options.python_env:  # the service's interpreter checks the payload's code
                exe = sources.environment_python(options.python_env)
                version = sources.python_version(exe)
                interpreters[version] = exe
                if not options.pythons:
                    options.pythons = [version]
        new_tree = sources.materialize(new, work, "new", options.repo)
        versions = tuple(
            (int(v.split(".")[0]), int(v.split(".")[1]))
            for v in options.pythons or [f"{sys.version_info[0]}.{sys.version_info[1]}"]
            if re.match(r"^3\.[0-9]{1,2}$", v)
        ) or (sys.version_info[:2],)
        token = PYTHONS.set(versions)  # version checks decided for these interpreters
        try:
            result = compare_trees(old_tree, new_tree, "data-files" in options.allow)
        finally:
            PYTHONS.reset(token)
        if found is not None:
            result.installed = {
                "name": found.name, "version": found.version, "location": found.location,
                "python": found.python, "executable": found.executable,
            }  # fmt: skip
            result.warnings[:0] = found.warnings
        # the data files --allow data-files cannot carry stay refused (compare_trees)
        result.allowed = [
            r for r in result.refusals if r.kind in options.allow and r.kind != "data-files"
        ]
        result.refusals = [r for r in result.refusals if r not in result.allowed]
        if options.hooks and not Path(options.hooks).exists():
            states = [r for r in result.refusals + result.allowed if r.kind == "instance-state"]
            if states:  # the author completes it, then builds again with it
                Path(options.hooks).write_text(hook_skeleton(states, options.hooks))
                result.warnings.append(
                    f"--hooks {options.hooks}: it did not exist; wrote a skeleton of the hooks "
                    f"for the {len(states)} instance-state refusal(s): complete it, then build "
                    f"again with --hooks {options.hooks} --allow instance-state"
                )
                result.refusals += [r for r in result.allowed if r.kind == "instance-state"]
                result.allowed = [r for r in result.allowed if r.kind != "instance-state"]
                return result
        if result.refusals or not (result.changes or options.hooks or result.files):
            return result
        result.source = emit(result, options)
        if result.refusals:
            result.source = ""
            return result
        payload = work / "payload.py"
        payload.write_text(result.source)
        from .pack import pack

        if not (result.changes or options.hooks):  # data files only: no code to analyse
            result.data, result.manifest = _with_files(None, result, options)
            return result
        old_root = old_tree.write(work / "old", _needed_on_disk(old_tree, result))
        try:
            packed = pack(
                payload, against=str(old_root), pythons=options.pythons,
                made_by=("built-by", "pylivepatch build"), interpreters=interpreters,
                stub_imports=not options.python_env,
            )  # fmt: skip
        except LivepatchError as exc:  # the report is printed and --emit written all the same
            result.error = f"{exc.code}: {exc.message}"
            return result
        result.data, result.manifest = packed.data, packed.manifest
        if result.files:
            result.data, result.manifest = _with_files(packed.data, result, options)
        result.warnings += packed.warnings
        return result


def _with_files(
    packed: bytes | None, result: BuildResult, options: BuildOptions
) -> tuple[bytes, dict[str, Any]]:
    """The archive with the data files of ``result`` added (``data_files`` and their
    members), sealed again; or, without ``packed`` (only data files changed), an archive
    of the payload module and the files."""
    from ..payload import archive

    if packed is not None:
        payload = archive.read(packed)
        doc = payload.manifest.to_json()
        members = dict(payload.files)
    else:
        pythons = options.pythons or [f"{sys.version_info[0]}.{sys.version_info[1]}"]
        doc = {
            "format": 1, "name": options.name, "version": options.version,
            "description": options.description, "depends": options.depends, "objects": {},
            "funcs": [], "data": [], "hooks": {}, "states": [], "replace": options.replace,
            "consistency": options.consistency,
            "metadata": {"built-by": "pylivepatch build", **options.metadata},
            "python": sorted(set(pythons), key=lambda v: tuple(map(int, v.split(".")))),
        }  # fmt: skip
        members = {"payload/__init__.py": result.source.encode()}
    doc["data_files"] = [f.entry() for f in result.files]
    for f in result.files:
        members.update(f.members())
    manifest = archive.seal(doc, members)
    return archive.write(manifest, members), manifest.to_json()


def hook_skeleton(refusals: list[Refusal], path: str) -> str:
    """Payload code for ``--hooks FILE`` that the author completes: for each attribute
    objects made before the patch lack or hold in another form, a descriptor set on the
    class in the same pause as the code (``patch.data``) and taken away by the revert.
    A non-data descriptor (``__get__`` only) answers for objects without the attribute
    and leaves objects made after the patch their own; a data descriptor (``__set__``
    too) can keep the old form in the object and give the new code the new one. The
    skeleton raises until the author deletes that line: an unfinished one never builds."""
    lines = [
        "# Hooks for the instance state of objects made before the patch: a skeleton written by",
        f"# `pylivepatch build --hooks {Path(path).name}`. Complete each TODO, delete the `raise`",
        "# below, then build again with --hooks FILE --allow instance-state. `patch` is the",
        "# generated payload's Patch; each descriptor is set on its class in the same pause as",
        "# the code and removed by the revert.",
        "",
        f"raise NotImplementedError({f'complete the hooks in {Path(path).name}, then delete this line'!r})",
        "",
    ]
    seen: set[tuple[str, str, str]] = set()
    for r in refusals:
        module, _, qual = r.target.partition(":")
        cls = qual.split(".")[0]
        m = re.search(r"self\.(\w+)", r.reason)
        attr = m.group(1) if m else "ATTRIBUTE"
        if (module, cls, attr) in seen:
            continue
        seen.add((module, cls, attr))
        holder = f"_{cls}_{attr.lstrip('_')}"
        lines += ["", ""]
        lines += ["# " + ln for ln in textwrap.wrap(f"{r.file}:{r.line}: {r.reason}", 86)]
        lines += [
            f"class {holder}:",
            f'    """``self.{attr}`` of a {cls} made before the patch."""',
            "",
            "    def __get__(self, obj, owner=None):",
            "        if obj is None:",
            "            return self",
            f"        # TODO: return what NEW's __init__ would have set in obj.{attr}, computed",
            "        # from obj; if old objects hold it in another form, define __set__ too and",
            "        # keep the old form in obj.__dict__ (corpus/hooks/h11_0160.py does).",
            f"        raise AttributeError({attr!r})",
            "",
            "",
            f"{holder.lower()} = {holder}()",
            f"patch.data({f'{module}:{cls}.{attr}'!r}, {holder.lower()})  # noqa: F821",
        ]
    return "\n".join(lines).rstrip() + "\n"


def _needed_on_disk(tree: sources.Tree, result: BuildResult) -> set[str]:
    """The OLD files packing reads: the modules the payload targets with their
    packages' ``__init__`` files, and whole packages the payload imports from."""
    mods = tree.modules()
    wanted = {c.module for c in result.changes} | {m for c in result.changes for m in c.importers}
    rels = set()
    for m in wanted:
        parts = m.split(".")
        for i in range(1, len(parts) + 1):
            rel = mods.get(".".join(parts[:i]))
            if rel:
                rels.add(rel)
    tops = {m.split(".")[0] for m in mods}
    payload = ast.parse(result.source)
    for node in ast.walk(payload):
        names = (
            [a.name for a in node.names] if isinstance(node, ast.Import)
            else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        )  # fmt: skip
        for name in names:
            top = name.split(".")[0]
            if top in tops:
                rels |= {r for m, r in mods.items() if m == top or m.startswith(top + ".")}
    return rels


def compare_trees(
    old_tree: sources.Tree, new_tree: sources.Tree, carry_files: bool = False
) -> BuildResult:
    """Every change and refusal between the trees; with ``carry_files`` (``--allow
    data-files``) the changed data files a payload can carry are carried, the others
    refused with the reason."""
    old_mods, new_mods = old_tree.modules(), new_tree.modules()
    index = _Index(old_tree, new_tree)
    diffs, texts = _module_diffs(old_tree, new_tree, old_mods, new_mods, index)
    warnings = [
        f"module {mod} was removed; the payload leaves it in place"
        for mod in sorted(set(old_mods) - set(new_mods))
    ]
    refusals = _new_module_imports(diffs, sorted(set(new_mods) - set(old_mods)))
    carried, refused = _data_files(old_tree, new_tree, carry_files)
    refusals += refused
    refusals += _requirements(old_tree, new_tree)
    for rel in sorted(_changed_extensions(old_tree, new_tree)):
        refusals.append(
            Refusal(
                "c-extension", rel, 0, rel,
                "C/Cython source changed; compiled code cannot be live-patched",
            )
        )  # fmt: skip
    files = dict(old_mods)
    refusals += _captured_constants(diffs, old_tree, old_mods, texts, files, warnings)
    refusals += state.check(diffs, index)  # may migrate: adds changes, drops refusals
    changes = [c for d in diffs for c in d.changes]
    refusals = [r for d in diffs for r in d.refusals] + refusals
    refusals += _only_metadata(changes, refusals, bool(carried), old_tree)
    warnings += [w for d in diffs for w in d.warnings]
    for c in changes:
        if c.kind in ("function", "method") and _makes_closures(c.node):
            warnings.append(
                f"{c.file}:{c.line}: {c.target}: functions it creates (closures, lambdas) "
                "before the patch keep their old code"
            )
    return BuildResult(diffs, changes, refusals, [], warnings, files=carried)


def _module_diffs(
    old_tree: sources.Tree,
    new_tree: sources.Tree,
    old_mods: dict[str, str],
    new_mods: dict[str, str],
    index: TreeIndex,
) -> tuple[list[ModuleDiff], dict[str, str]]:
    """Each module in both versions whose bytes differ, compared; and the old texts read."""
    diffs: list[ModuleDiff] = []
    texts: dict[str, str] = {}
    for mod, rel in sorted(new_mods.items()):
        if mod not in old_mods:
            continue  # new modules: refused if the new code imports them
        if old_tree.read_bytes(old_mods[mod]) == new_tree.read_bytes(rel):
            continue
        old_text, new_text = old_tree.read(old_mods[mod]), new_tree.read(rel)
        texts[mod] = old_text
        diffs.append(Comparer(mod, rel, old_text, new_text, index).run())
    return diffs, texts


def _new_module_imports(diffs: list[ModuleDiff], added: list[str]) -> list[Refusal]:
    """A refusal for each import statement of the new code that imports a module only
    the new version has."""
    refusals: list[Refusal] = []
    for d in diffs:
        if d.new is None:
            continue
        for node in ast.walk(d.new):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = _imported_modules(node, d.module, d.file)
            hit = next(
                (m for name in names for m in added if name == m or name.startswith(m + ".")),
                None,
            )
            if hit:  # one refusal per import statement
                refusals.append(
                    Refusal(
                        "new-module", d.file, node.lineno, hit,
                        f"the new code imports {hit}, a module the old version does not "
                        "have; a payload patches existing modules (ship the module first)",
                    )
                )  # fmt: skip
    return refusals


def _data_files(
    old_tree: sources.Tree, new_tree: sources.Tree, carry_files: bool
) -> tuple[list[datafiles.DataFile], list[Refusal]]:
    """The changed data files: carried (``--allow data-files``) where a payload can, else
    refused."""
    old_data, new_data = old_tree.data_files(), new_tree.data_files()
    changed = sorted(r for r in set(old_data) | set(new_data) if old_data.get(r) != new_data.get(r))
    if carry_files:
        return datafiles.carry(old_tree, new_tree, changed)
    refusals: list[Refusal] = []
    for rel in changed:
        how = "added" if rel not in old_data else "removed" if rel not in new_data else "changed"
        refusals.append(
            Refusal(
                "data-files", rel, 0, rel,
                f"a data file of the distribution was {how}; a payload patches code: the "
                "running process would keep reading the old file. Ship the release, or build "
                "with --allow data-files to carry it (where the process reads it at use time)",
            )
        )  # fmt: skip
    return [], refusals


def _captured_constants(
    diffs: list[ModuleDiff],
    old_tree: sources.Tree,
    old_mods: dict[str, str],
    texts: dict[str, str],
    files: dict[str, str],
    warnings: list[str],
) -> list[Refusal]:
    """Rebound names whose old object was copied at import (the copy would stay old):
    refused, except a release-metadata constant, which is left as OLD had it (a
    warning says so, and the change is dropped)."""
    constants = [
        (c, d)
        for d in diffs
        for c in d.changes
        if c.kind in ("constant", "pattern", "value", "import")
    ]
    if not constants:
        return []
    # Only modules whose text mentions a changed constant can have copied it.
    constant_names = {c.qualname.rsplit(".", 1)[-1] for c, _ in constants}
    old_asts: dict[str, ast.Module | None] = {}
    for m, rel in old_mods.items():
        text = texts.get(m) or old_tree.read(rel)
        if any(n in text for n in constant_names):
            old_asts[m] = _parse(text)
    refusals: list[Refusal] = []
    for c, d in constants:
        captured = _captured(c, d, old_asts, files)
        if (
            captured
            and c.kind == "constant"
            and (
                c.qualname in VERSION_NAMES or c.qualname in metadata_parts(old_asts.get(c.module))
            )
        ):
            d.changes.remove(c)  # the copy and the name stay as they are, consistently
            where = captured[0].reason.split(";")[0].replace("its old value was ", "")
            warnings.append(
                f"{c.file}:{c.line}: {c.target}: changed, and its old value was {where}; "
                "ignored: release metadata describes the release and no code of it decides "
                "on it; the payload leaves the name and its copy as OLD had them"
            )
            continue
        refusals += captured
    return refusals


def _only_metadata(
    changes: list[Change], refusals: list[Refusal], carried: bool, old_tree: sources.Tree
) -> list[Refusal]:
    """``nothing-to-patch`` when every change is release metadata (and no data file is
    carried): such a payload would report the fixed version and keep the old behaviour."""
    metadata = [c for c in changes if _is_release_metadata(c, old_tree)]
    if not changes or len(metadata) != len(changes) or carried:
        return []
    listed = ", ".join(c.target for c in metadata)
    return [
        Refusal(
            "nothing-to-patch", metadata[0].file, metadata[0].line, metadata[0].target,
            f"the only changes are release metadata ({listed}); a payload of them would make "
            "the process report the fixed version and keep the old behaviour"
            + ("; the fix is in the data files refused here" if any(
                r.kind == "data-files" for r in refusals) else ""),
        )
    ]  # fmt: skip


#: names of version components that release metadata is built from
VERSION_PARTS = frozenset(
    {"MAJOR", "MINOR", "MICRO", "PATCH", "RELEASE", "SERIAL", "PRE", "POST", "DEV", "BUILD",
     "RELEASELEVEL", "VERSION_MAJOR", "VERSION_MINOR", "VERSION_MICRO", "VERSION_PATCH"}
)  # fmt: skip


def _requirements(old_tree: sources.Tree, new_tree: sources.Tree) -> list[Refusal]:
    """A runtime requirement the release adds or changes (a raised floor is how some
    security fixes ship): the payload carries code only, and that code may need it."""
    old, new = old_tree.requirements(), new_tree.requirements()
    if old is None or new is None:
        return []  # one side does not say: nothing to compare
    out = []
    for name in sorted(new):
        if old.get(name) == new[name]:
            continue
        how = f"`{old[name]}` -> `{new[name]}`" if name in old else f"new: `{new[name]}`"
        out.append(
            Refusal(
                "requirements", "(metadata)", 0, name,
                f"the release changes its requirement on {name} ({how}); a payload installs "
                f"nothing, and the fix may rely on it. Make sure every environment the "
                f"service runs in meets it, then build with --allow requirements",
            )
        )  # fmt: skip
    return out


def old_asts_of(tree: sources.Tree, module: str) -> ast.Module | None:
    rel = tree.modules().get(module)
    return _parse(tree.read(rel)) if rel else None


def metadata_parts(module: ast.Module | None) -> set[str]:
    """Names that only release metadata of ``module`` reads at import
    (``VERSION = (MAJOR, MINOR, MICRO)``; ``__version__ = f"{MAJOR}.{MINOR}"``)."""
    if module is None:
        return set()
    from .typing_only import is_release_metadata

    parts: set[str] = set()
    others: set[str] = set()
    for expr, _ in import_time_reads(module.body):
        names = loads(expr)
        if isinstance(expr, (ast.Assign, ast.AnnAssign)):
            targets = expr.targets if isinstance(expr, ast.Assign) else [expr.target]
            if targets and all(
                isinstance(t, ast.Name) and is_release_metadata(t.id, expr) for t in targets
            ):
                parts |= names
                continue
        others |= names
    return parts - others


def _is_release_metadata(c: Change, old_tree: sources.Tree) -> bool:
    """A changed constant that describes the release: a version name, or a component
    of one (``MICRO = 1`` read only by ``VERSION = (MAJOR, MINOR, MICRO)``)."""
    if c.kind != "constant" or "." in c.qualname:
        return False
    name = c.qualname
    if name in VERSION_NAMES or name.upper() in VERSION_PARTS:
        return True
    return name in metadata_parts(old_asts_of(old_tree, c.module))


class _Index(TreeIndex):
    """What other modules of the trees say about a name, parsed on demand."""

    def __init__(self, old_tree: sources.Tree, new_tree: sources.Tree) -> None:
        self.trees = {"old": old_tree, "new": new_tree}
        self.mods = {"old": old_tree.modules(), "new": new_tree.modules()}
        self.texts: dict[tuple[str, str], str] = {}
        self.asts: dict[tuple[str, str], ast.Module | None] = {}

    def text(self, side: str, mod: str) -> str:
        key = (side, mod)
        if key not in self.texts:
            rel = self.mods[side].get(mod)
            self.texts[key] = self.trees[side].read(rel) if rel else ""
        return self.texts[key]

    def tree(self, side: str, mod: str) -> ast.Module | None:
        key = (side, mod)
        if key not in self.asts:
            self.asts[key] = _parse(self.text(side, mod))
        return self.asts[key]

    def read_elsewhere(self, module: str, name: str) -> str:
        last = module.rsplit(".", 1)[-1]
        for other in sorted(self.mods["new"]):
            if other == module or name not in self.text("new", other):
                continue
            tree = self.tree("new", other)
            if tree is None:
                continue
            is_pkg = self.mods["new"][other].endswith("__init__.py")
            runtime = global_runtime_reads(tree.body)
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and absolute(node, other, is_pkg) == module:
                    for a in node.names:
                        local = a.asname or a.name
                        if a.name == name and local in runtime:
                            return f"{other} line {runtime[local]}"
            if last in self.text("new", other):
                attrs = reads(tree).runtime_attrs
                if name in attrs:
                    return f"{other} line {attrs[name]}"
        return ""

    def knows(self, module: str) -> bool:
        return module in self.mods["old"] or module in self.mods["new"]

    def is_class(self, module: str, name: str) -> bool:
        for side in ("new", "old"):
            mod, attr = self.origin(module, name) if side == "old" else (module, name)
            tree = self.tree(side, mod)
            if tree is not None and any(
                isinstance(n, ast.ClassDef) and n.name == attr for n in tree.body
            ):
                return True
        return False

    def origin(self, module: str, name: str) -> tuple[str, str]:
        seen: set[tuple[str, str]] = set()
        while (module, name) not in seen:
            seen.add((module, name))
            tree = self.tree("old", module)
            if tree is None:
                break
            is_pkg = self.mods["old"].get(module, "").endswith("__init__.py")
            found = None
            for node in tree.body:
                if isinstance(node, ast.ImportFrom):
                    for a in node.names:
                        if (a.asname or a.name) == name:
                            found = (absolute(node, module, is_pkg), a.name)
            if found is None:
                break
            module, name = found
        return module, name


def _parse(text: str) -> ast.Module | None:
    try:
        return ast.parse(text)
    except SyntaxError:
        return None


def _imported_modules(node: ast.AST, module: str, file: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = absolute(node, module, file.endswith("__init__.py"))
        return [base] + [f"{base}.{a.name}" for a in node.names]
    return []


def _changed_extensions(old_tree: sources.Tree, new_tree: sources.Tree) -> set[str]:
    old, new = old_tree.extensions(), new_tree.extensions()
    changed = {r for r in set(old) & set(new) if old_tree.read_bytes(r) != new_tree.read_bytes(r)}
    return changed | (set(new) - set(old))


def _makes_closures(node: ast.AST | None) -> bool:
    if node is None:
        return False
    body = getattr(node, "body", [])
    return any(
        isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for stmt in body
        for n in ast.walk(stmt)
    )


# --- constants captured at import --------------------------------------------------------


def _captured(
    c: Change, d: ModuleDiff, old_asts: dict[str, ast.Module | None], files: dict[str, str]
) -> list[Refusal]:
    """A constant whose old value was copied at import: rebinding it would leave
    copies old. Also finds the modules that copied it with ``from m import NAME``."""
    old = old_asts.get(c.module)
    if old is None:
        return []
    parts = c.qualname.split(".")
    found = (
        _copied_in_module(c, old, parts[-1], old_asts, files)
        if len(parts) == 1
        else _copied_in_class(old, parts)
    )
    if found is None:
        return []
    where, file, line = found
    return [
        Refusal(
            "captured-constant", file or d.file, c.line if line is None else line, c.target,
            f"its old value was captured at import by {where}; rebinding it would leave "
            "that copy old: update the copy in a pre_apply hook (--hooks FILE, keeping the "
            "old value in a state to put back in post_revert) and --allow captured-constant, "
            "or patch the code that reads the copy",
        )
    ]  # fmt: skip


#: where a copy was made: (what made it, its file or None for the constant's own, its
#: line or None for the constant's own)
_Copy = tuple[str, "str | None", "int | None"]


def _copied_in_module(
    c: Change, old: ast.Module, name: str, old_asts: dict[str, ast.Module | None],
    files: dict[str, str],
) -> _Copy | None:  # fmt: skip
    """A module-level NAME read at import by its own module, or by a module that
    imported it with ``from m import NAME`` (each such module is added to
    ``c.importers``)."""
    for expr, where in import_time_reads(old.body):
        if isinstance(expr, ast.Assign) and _assigns(expr, name):
            continue
        if name in loads(expr):
            return where, None, None
    functions = _callables(old.body)
    for stmt in _module_statements(old.body):
        built = _calls_reading(stmt, functions, lambda n: name in loads(n))
        if built:
            return f"`{_short(stmt)}` (line {stmt.lineno}), which calls {built}", None, None
    for mod, tree in sorted(old_asts.items()):
        if mod == c.module or tree is None:
            continue
        for node in tree.body:
            if not isinstance(node, ast.ImportFrom) or not any(
                a.name == name and (a.asname or a.name) == name for a in node.names
            ):
                continue
            if c.module not in (absolute(node, mod, False), absolute(node, mod, True)):
                continue
            c.importers.append(mod)
            for expr, where in import_time_reads(tree.body):
                if isinstance(expr, ast.Assign) and _assigns(expr, name):
                    continue  # NAME = NAME: the name itself, patched with it
                if name in loads(expr):
                    return f"{where} in {mod}", files.get(mod, mod), getattr(expr, "lineno", 0)
    return None


def _copied_in_class(old: ast.Module, parts: list[str]) -> _Copy | None:
    """A class attribute C.NAME read at import in its class, or by a module-level
    statement that builds an object with it."""
    name = parts[-1]
    cls = _find_class(old.body, parts[:-1])
    if cls is None:
        return None
    for expr, where in import_time_reads(cls.body):
        if isinstance(expr, ast.Assign) and _assigns(expr, name):
            continue
        if name in loads(expr):
            return f"{where} in class {cls.name}", None, None

    def reads_it(n: ast.AST) -> bool:
        return name in loads(n) or name in {
            a.attr for a in ast.walk(n) if isinstance(a, ast.Attribute)
        }

    callables = {**_callables(old.body), cls.name: cls}
    for stmt in _module_statements(old.body):
        built = _calls_reading(stmt, callables, reads_it)
        if built:
            return (
                f"`{_short(stmt)}` (line {stmt.lineno}), which built an object with {built}",
                None,
                None,
            )
    return None


def _assigns(node: ast.Assign, name: str) -> bool:
    return any(isinstance(t, ast.Name) and t.id == name for t in node.targets)


def _callables(body: list[ast.stmt]) -> dict[str, ast.AST]:
    return {
        n.name: n
        for n in body
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    }


def _module_statements(body: list[ast.stmt]) -> list[ast.stmt]:
    return [
        n for n in runtime_statements(body)
        if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom))
    ]  # fmt: skip


def _calls_reading(stmt: ast.stmt, defs: dict[str, ast.AST], reads: Any) -> str:
    for n in ast.walk(stmt):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in defs:
            target = defs[n.func.id]
            if reads(target):
                return f"{n.func.id}()"
    return ""


def _find_class(body: list[ast.stmt], path: list[str]) -> ast.ClassDef | None:
    cls = None
    for part in path:
        found = [n for n in body if isinstance(n, ast.ClassDef) and n.name == part]
        if not found:
            return None
        cls = found[-1]
        body = cls.body
    return cls


def _short(node: ast.AST, limit: int = 60) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- the payload module ----------------------------------------------------------------
