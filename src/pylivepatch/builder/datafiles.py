"""``build --allow data-files``: the changed non-Python files of the distribution a
payload carries, and the static rule for when a running process would see them.

A payload writes a data file where the installation has it (engine/datafiles.py); the
process sees the new bytes only where it opens the file again after that. The rule,
read from the source of OLD and NEW without running it (docs/patch-author-guide.md,
"Data files"):

- a *path name* is a module-level name bound to a path expression: string constants,
  ``__file__``/``__name__``/``__package__``, other path names, ``os.path.join``/
  ``dirname``/``abspath``..., ``Path(...)``, ``.parent``, ``/``, ``files(...)``/
  ``joinpath`` — computing where the file is reads nothing;
- code *reaches* the file when a string constant in it, or in a path name it reads, has
  the file's name or one of the directories between the package and the file as a
  ``/``-separated component (``'hosts.json'``, ``'data/hosts.json'``, ``'templates'``),
  or when it reads a path name and neither it nor the path names it reads name any
  file (``os.listdir(HERE)``, ``join(HERE, name)``: it may be any file there); code
  whose strings name other files only (``join(HERE, 'logging.ini')``) does not;
- code that runs when a module is imported (module and class bodies, decorators,
  default values) and reaches the file, other than to bind a path name, *read it at
  import*: refused, the process holds what it read then;
- a function that reaches the file reads it at use time: carried, unless it keeps what
  it read (decorated with ``cache``/``lru_cache``/``cached_property``, or storing into
  a ``global``): refused, the process would keep what its first call read.

A removed file, a file outside any import package and a file with a code suffix are
refused too. Code that builds a file's name at run time from parts none of which is
named above is not seen: the author who gives ``--allow data-files`` checks it.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from ..payload.archive import MAX_FILE_BYTES
from ..payload.manifest import CODE_SUFFIXES
from . import sources
from .changes import Refusal

_PATH_CALLS = frozenset({
    "join", "dirname", "abspath", "realpath", "normpath", "Path", "PurePath", "PosixPath",
    "PurePosixPath", "files", "joinpath", "resolve", "absolute", "expanduser", "fspath",
    "with_name", "with_suffix", "as_file", "str",
})  # fmt: skip
_PATH_NAMES = frozenset({"__file__", "__name__", "__package__"})
_CACHES = frozenset({"cache", "lru_cache", "cached_property", "cached", "memoize", "memoized"})


@dataclass(frozen=True)
class DataFile:
    """A changed or added data file the payload carries."""

    package: str  # the innermost import package whose directory holds it
    path: str  # relative to that package's directory
    rel: str  # relative to the tree (as the report shows it)
    old: bytes | None  # None: added
    new: bytes

    def entry(self) -> dict[str, object]:
        return {
            "package": self.package, "path": self.path,
            "old": hashlib.sha256(self.old).hexdigest() if self.old is not None else None,
            "new": hashlib.sha256(self.new).hexdigest(), "size": len(self.new),
        }  # fmt: skip

    def members(self) -> dict[str, bytes]:
        """The archive members: ``files/new/...`` and, unless added, ``files/old/...``."""
        out = {f"files/new/{self.package}/{self.path}": self.new}
        if self.old is not None:
            out[f"files/old/{self.package}/{self.path}"] = self.old
        return out


def carry(
    old_tree: sources.Tree, new_tree: sources.Tree, rels: list[str]
) -> tuple[list[DataFile], list[Refusal]]:
    """The files of ``rels`` a payload can carry, and a refusal for each other one."""
    old_data, new_data = old_tree.data_files(), new_tree.data_files()
    packages = {
        rel[: -len("/__init__.py")]: mod
        for mod, rel in new_tree.modules().items()
        if rel.endswith("/__init__.py")
    }
    readers = _Readers(old_tree, new_tree)
    files: list[DataFile] = []
    refusals: list[Refusal] = []

    def refuse(rel: str, line: int, why: str) -> None:
        refusals.append(Refusal("data-files", rel, line, rel, why + " (not carried)"))

    for rel in rels:
        if rel not in new_data:
            refuse(
                rel, 0, "a data file of the distribution was removed; a payload does not remove "
                "files (a running process may still open it): ship the release",
            )  # fmt: skip
            continue
        if rel.lower().endswith(CODE_SUFFIXES):
            refuse(rel, 0, "a file of code, not data: a payload patches code through functions")
            continue
        directory = rel.rsplit("/", 1)[0]
        while directory and directory not in packages:
            directory = directory.rsplit("/", 1)[0] if "/" in directory else ""
        if not directory:
            refuse(rel, 0, "a file outside any import package: no running process finds it")
            continue
        new = new_tree.data_bytes(rel)
        if len(new) > MAX_FILE_BYTES:
            refuse(rel, 0, f"{len(new)} bytes: a payload carries files of at most {MAX_FILE_BYTES}")
            continue
        path = rel[len(directory) + 1 :]
        read = readers.find(rel, path)
        if read is not None:
            refuse(rel, read[1], read[0])
            continue
        old = old_tree.data_bytes(rel) if rel in old_data else None
        files.append(DataFile(packages[directory], path, rel, old, new))
    return files, refusals


class _Readers:
    """Where the code of OLD and NEW opens a data file (the module docstring's rule)."""

    def __init__(self, old_tree: sources.Tree, new_tree: sources.Tree) -> None:
        self.modules: list[tuple[str, str, ast.Module]] = []  # (module, file, tree)
        for tree in (old_tree, new_tree):
            for mod, rel in sorted(tree.modules().items()):
                try:
                    parsed = ast.parse(tree.read(rel))
                except SyntaxError:
                    continue  # refused as syntax by the comparison
                self.modules.append((mod, rel, parsed))
        # path names each module binds at import, by module: name -> the components
        # of the strings it is built from
        self.paths = {mod: _path_names(t.body) for mod, _, t in self.modules}

    def find(self, rel: str, path: str) -> tuple[str, int] | None:
        """Why the process would not see a new ``rel`` (``path`` in its package), and
        the line; None if it reads it at use time only."""
        parts = path.split("/")
        names = {parts[-1], *parts[:-1]}
        for mod, file, tree in self.modules:
            paths = {**_imported_paths(tree, self.paths), **self.paths[mod]}
            for node, line in _import_time(tree.body):
                if _names_file(node, names, paths):
                    return (
                        f"read when {mod} is imported ({file} line {line} names it or a path "
                        "to it, outside any function): the running process keeps what it read "
                        "then and would not see the new file",
                        line,
                    )
            for fn in _functions(tree.body):
                if not any(_names_file(s, names, paths) for s in fn.body):
                    continue
                cached = _keeps(fn)
                if cached:
                    return (
                        f"{mod}.{fn.name}() ({file} line {fn.lineno}) reads it and {cached}: "
                        "after its first call the process would not see the new file",
                        fn.lineno,
                    )
        return None


def _names_file(node: ast.AST, names: set[str], paths: dict[str, frozenset[str]]) -> bool:
    """Whether ``node`` may reach the file: a string names it (its name or a directory
    on its way), a path name it reads does, or a path name leads somewhere no string of
    it or of ``node`` names as a file (``join(HERE, name)``: any file)."""
    consts: set[str] = set()
    used: list[str] = []
    for n in _walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            parts = _parts(n.value)
            if names & parts:
                return True
            consts |= parts
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in paths:
            used.append(n.id)
    if any(names & paths[p] for p in used):
        return True
    leads_to = consts.union(*(paths[p] for p in used))
    return bool(used) and not any("." in c.strip(".") for c in leads_to)


def _parts(text: str) -> set[str]:
    return set(text.replace("\\", "/").split("/"))


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk`` without docstrings and without ``__all__``."""
    if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
    ):
        return
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
        return
    yield node
    for child in ast.iter_child_nodes(node):
        yield from _walk(child)


def _is_path(node: ast.AST, paths: set[str] | dict[str, frozenset[str]]) -> bool:
    """An expression that computes where a file is, and reads nothing."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.Name):
        return node.id in _PATH_NAMES or node.id in paths
    if isinstance(node, ast.Attribute):
        return node.attr in ("parent", "parents") and _is_path(node.value, paths)
    if isinstance(node, ast.Subscript):
        return _is_path(node.value, paths)
    if isinstance(node, ast.BinOp):
        return isinstance(node.op, (ast.Div, ast.Add)) and all(
            _is_path(x, paths) for x in (node.left, node.right)
        )
    if isinstance(node, ast.JoinedStr):
        return all(
            _is_path(v.value if isinstance(v, ast.FormattedValue) else v, paths)
            for v in node.values
        )
    if isinstance(node, ast.Call):
        f = node.func
        callee = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        receiver_ok = (
            not isinstance(f, ast.Attribute) or _dotted(f.value) or _is_path(f.value, paths)
        )
        return (
            callee in _PATH_CALLS
            and receiver_ok
            and all(
                _is_path(a.value if isinstance(a, ast.Starred) else a, paths) for a in node.args
            )
            and all(_is_path(k.value, paths) for k in node.keywords)
        )
    return False


def _dotted(node: ast.AST) -> bool:
    """``os.path``, ``importlib.resources``: a module reached by name."""
    return isinstance(node, ast.Name) or (isinstance(node, ast.Attribute) and _dotted(node.value))


def _path_names(body: list[ast.stmt]) -> dict[str, frozenset[str]]:
    """Module-level names bound to a path expression, in order, each with the
    components of the strings it is built from (those of the path names it reads too)."""
    paths: dict[str, frozenset[str]] = {}
    for node in _statements(body):
        targets: list[ast.expr] = []
        value = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        if (
            value is not None
            and all(isinstance(t, ast.Name) for t in targets)
            and _is_path(value, set(paths))
        ):
            parts: set[str] = set()
            for n in ast.walk(value):
                if isinstance(n, ast.Constant) and isinstance(n.value, str):
                    parts |= _parts(n.value)
                elif isinstance(n, ast.Name) and n.id in paths:
                    parts |= paths[n.id]
            paths.update({t.id: frozenset(parts) for t in targets if isinstance(t, ast.Name)})
    return paths


def _imported_paths(
    tree: ast.Module, by_module: dict[str, dict[str, frozenset[str]]]
) -> dict[str, frozenset[str]]:
    """Path names another module of the package binds, imported by name."""
    every: dict[str, frozenset[str]] = {}
    for names in by_module.values():
        for name, parts in names.items():
            every[name] = every.get(name, frozenset()) | parts
    found: dict[str, frozenset[str]] = {}
    for node in _statements(tree.body):
        if isinstance(node, ast.ImportFrom):
            for a in node.names:
                if a.name in every:
                    found[a.asname or a.name] = every[a.name]
    return found


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements of a module body that run at import, blocks opened."""
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            for attr in ("body", "orelse", "finalbody"):
                yield from _statements(getattr(node, attr, []))
            for h in getattr(node, "handlers", []):
                yield from _statements(h.body)


def _import_time(body: list[ast.stmt]) -> Iterator[tuple[ast.AST, int]]:
    """What runs when a module (or class) body runs: not function bodies, not the
    binding of a path name."""
    paths: set[str] = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            for d in [*a.defaults, *[k for k in a.kw_defaults if k is not None]]:
                yield d, d.lineno
            for d in node.decorator_list:
                yield d, d.lineno
        elif isinstance(node, ast.ClassDef):
            for b in [*node.bases, *node.keywords, *node.decorator_list]:
                yield b, node.lineno
            yield from _import_time(node.body)
        elif isinstance(node, (ast.If, ast.While)):
            yield node.test, node.lineno
            yield from _import_time(node.body)
            yield from _import_time(node.orelse)
        elif isinstance(node, ast.For):
            yield node.iter, node.lineno
            yield from _import_time(node.body)
            yield from _import_time(node.orelse)
        elif isinstance(node, ast.With):
            for item in node.items:
                yield item.context_expr, node.lineno
            yield from _import_time(node.body)
        elif isinstance(node, ast.Try):
            for part in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                yield from _import_time(part)
        elif isinstance(node, (ast.Import, ast.ImportFrom)) or (
            isinstance(node, (ast.Assign, ast.AnnAssign)) and _binds_path(node, paths)
        ):
            continue
        else:
            yield node, node.lineno


def _binds_path(node: ast.Assign | ast.AnnAssign, paths: set[str]) -> bool:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    if node.value is None or not all(isinstance(t, ast.Name) for t in targets):
        return False
    # a path name may be built from another path name of any module: any name is
    # accepted where a path is expected, as long as nothing is opened or called
    if _is_path(
        node.value, paths | {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
    ):
        paths |= {t.id for t in targets if isinstance(t, ast.Name)}
        return True
    return False


def _functions(body: list[ast.stmt]) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Every function and method of a module, nested ones too."""
    for node in ast.walk(ast.Module(body=body, type_ignores=[])):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _keeps(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """How ``fn`` keeps what it read across calls, or ""."""
    for d in fn.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        name = (
            target.attr if isinstance(target, ast.Attribute)
            else target.id if isinstance(target, ast.Name) else ""
        )  # fmt: skip
        if name in _CACHES:
            return f"caches its result (@{name})"
    declared = {n for s in ast.walk(fn) if isinstance(s, ast.Global) for n in s.names}
    for s in ast.walk(fn):
        if isinstance(s, ast.Name) and isinstance(s.ctx, ast.Store) and s.id in declared:
            return f"keeps it in the module global {s.id}"
    return ""
