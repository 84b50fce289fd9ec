"""Comparing two versions of a module and classifying every change (spec §8) — what
``create-diff-object`` is to kpatch.

Definitions are matched by name, scope by scope: module functions, classes, methods
(a property's getter/setter/deleter apart), class and module attributes, imports.
Functions are compared by the fingerprint of their compiled code with docstrings
removed, so comments, formatting, docstrings and annotations produce nothing; nested
functions are part of their enclosing function's code. Every other change is either
something a payload can do (a :class:`Change`) or a :class:`Refusal` naming the file,
the line, the kind and the reason.
"""

from __future__ import annotations

import ast
import builtins
import copy
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..payload.fingerprint import fingerprint
from .literals import NOT_LITERAL, literal_value
from .typing_only import (
    global_runtime_reads,
    is_release_metadata,
    is_typing_definition,
    reads,
    runtime_statements,
    static_branches,
    typing_statements,
)

#: refusal kinds, each with what ``--allow KIND`` means
REFUSALS: dict[str, str] = {
    "decorator": "a changed decorator (other than staticmethod/classmethod/property)",
    "class-bases": "changed base classes",
    "metaclass": "a changed metaclass or class keyword",
    "slots": "changed __slots__",
    "dataclass-fields": "changed dataclass/attrs fields",
    "mutable-data": "a changed mutable module or class attribute",
    "computed-data": "a changed computed module or class attribute",
    "side-effect": "a changed module-level statement with side effects",
    "captured-constant": "a constant whose old value was captured at import",
    "instance-state": "new or retyped instance attributes set up by __init__",
    "removed-referenced": "a removed definition the new code still uses",
    "new-module": "a new module the new code imports",
    "c-extension": "a changed C extension source",
    "syntax": "a module that does not parse",
    "name-collision": "two modules of one payload need different objects under one name",
    "data-files": (
        "a changed or added non-Python file of the distribution, carried by the payload and "
        "written where the process reads it at use time"
    ),
    "nothing-to-patch": "the only changes are release metadata (a version)",
}
#: kinds no hook can make up for: ``--allow`` refuses them
UNALLOWABLE = frozenset({"syntax", "name-collision", "nothing-to-patch"})
#: kinds ``--allow`` will accept once the payload can carry what they need
NOT_YET: dict[str, str] = {}

#: supported change kinds
CHANGES = (
    "function", "method", "new function", "new method", "new class", "new import",
    "new name", "constant", "descriptor", "import", "pattern", "value", "new names",
)  # fmt: skip

_DESCRIPTORS = ("staticmethod", "classmethod", "property")


@dataclass(frozen=True)
class Refusal:
    kind: str
    file: str
    line: int
    target: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.target}: {self.reason}"


@dataclass
class Change:
    """One supported change; ``node`` is the NEW definition or statement."""

    kind: str
    module: str
    qualname: str
    file: str
    line: int
    node: ast.AST | None = None
    value: Any = None  # a constant's new value
    role: str | None = None  # property accessor: getter/setter/deleter
    descriptor: str | None = None  # staticmethod/classmethod (new or changed descriptor)
    importers: list[str] = field(default_factory=list)  # modules that copied a constant

    @property
    def target(self) -> str:
        return f"{self.module}:{self.qualname}"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.target}"


@dataclass
class ModuleDiff:
    module: str
    file: str
    old: ast.Module | None
    new: ast.Module | None
    changes: list[Change] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cosmetic: bool = False  # changed text, no functional change


# --- scopes ---------------------------------------------------------------------------


@dataclass
class Entry:
    """A name bound in a scope by one kind of statement."""

    kind: str  # function | class | assign | import | annotation
    node: ast.stmt
    alias: ast.alias | None = None


def _decorator_name(d: ast.expr) -> str:
    target = d.func if isinstance(d, ast.Call) else d
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute):
        return target.attr
    return ""


def _role(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """``overload`` for a typing stub, ``setter``/``deleter`` for property accessors."""
    for d in node.decorator_list:
        name = _decorator_name(d)
        if name == "overload":
            return "overload"
        if isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter", "getter"):
            return d.attr
    return None


def is_type_checking(node: ast.stmt) -> bool:
    """``if TYPE_CHECKING:`` or ``if not TYPE_CHECKING:`` (see :mod:`.typing_only`)."""
    return static_branches(node) is not None


def is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def scope_entries(body: list[ast.stmt]) -> tuple[dict[str, Entry], list[ast.stmt]]:
    """Names bound by definitions in ``body`` (the last binding wins, as at run time)
    and the remaining statements, in order."""
    entries: dict[str, Entry] = {}
    others: list[ast.stmt] = []
    if body and is_docstring(body[0]):
        body = body[1:]
    # the branch of `if [not] TYPE_CHECKING:` that runs counts as if written here
    for node in runtime_statements(body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            role = _role(node)
            if role == "overload":
                continue
            key = node.name if role in (None, "getter") else f"{node.name}.{role}"
            entries[key] = Entry("function", node)
        elif isinstance(node, ast.ClassDef):
            entries[node.name] = Entry("class", node)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    others.append(node)
                    continue
                name = alias.asname or alias.name.split(".")[0]
                entries[name] = Entry("import", node, alias)
        elif (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            entries[node.targets[0].id] = Entry("assign", node)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            entries[node.target.id] = Entry("assign" if node.value else "annotation", node)
        elif isinstance(node, ast.Pass) or is_docstring(node):
            continue  # `pass`, and a string under an attribute (its "docstring"): no effect
        else:
            others.append(node)
    return entries, others


def _sdump(node: ast.stmt) -> str:
    """A statement's dump with its imports in one canonical spelling: ``from m import
    a, b``, ``from m import b, a`` and the same names on two lines bind the same
    objects (a run of import statements is compared as the set of names it binds)."""
    return _dump(_canonical_imports(node))


def _canonical_imports(node: ast.stmt) -> ast.stmt:
    if not any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(node)):
        return node
    node = copy.deepcopy(node)
    for n in ast.walk(node):
        for name in ("body", "orelse", "finalbody"):
            stmts = getattr(n, name, None)
            if isinstance(stmts, list) and stmts and isinstance(stmts[0], ast.stmt):
                setattr(n, name, _canonical_run(stmts))
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return _canonical_run([node])[0] if len(node.names) == 1 else node
    return node


def _canonical_run(stmts: list[ast.stmt]) -> list[ast.stmt]:
    out: list[ast.stmt] = []
    run: list[ast.stmt] = []

    def flush() -> None:
        singles: set[tuple[str, int, str, str, str]] = set()
        for imp in run:
            for a in imp.names:  # type: ignore[attr-defined]
                if isinstance(imp, ast.ImportFrom):
                    singles.add(("from", imp.level, imp.module or "", a.name, a.asname or ""))
                else:
                    singles.add(("import", 0, "", a.name, a.asname or ""))
        for kind, level, module, name, asname in sorted(singles):
            alias = ast.alias(name, asname or None)
            out.append(
                ast.ImportFrom(module or None, [alias], level)
                if kind == "from"
                else ast.Import([alias])
            )
        run.clear()

    for st in stmts:
        if isinstance(st, (ast.Import, ast.ImportFrom)) and not any(
            a.name == "*" for a in st.names
        ):
            run.append(st)
            continue
        flush()
        out.append(st)
    flush()
    return out


def _dump(node: ast.AST | list[Any] | None) -> str:
    if node is None:
        return ""
    if isinstance(node, list):
        return "[" + ", ".join(_dump(n) for n in node) + "]"
    return ast.dump(node, annotate_fields=False, include_attributes=False)


def strip_docstrings(tree: ast.Module) -> ast.Module:
    """A copy without docstrings (each replaced by ``pass`` on the same line; a
    module's is dropped, as ``from __future__`` imports may follow it)."""
    tree = copy.deepcopy(tree)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and is_docstring(body[0]):
                if isinstance(node, ast.Module) and len(body) > 1:
                    del body[0]
                else:
                    body[0] = ast.copy_location(ast.Pass(), body[0])
    return tree


class CodeIndex:
    """Code objects of a compiled module, found by definition node."""

    def __init__(self, tree: ast.Module, filename: str) -> None:
        self.code = compile(strip_docstrings(tree), filename, "exec", dont_inherit=True)

    def scope(self, path: list[ast.ClassDef]) -> types.CodeType | None:
        code: types.CodeType | None = self.code
        for cls in path:
            code = self._find(code, cls.name, _first_line(cls)) if code else None
        return code

    def function(self, path: list[ast.ClassDef], node: ast.stmt) -> types.CodeType | None:
        scope = self.scope(path)
        if scope is None or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return None
        return self._find(scope, node.name, _first_line(node))

    @staticmethod
    def _find(scope: types.CodeType, name: str, line: int) -> types.CodeType | None:
        for c in scope.co_consts:
            if isinstance(c, types.CodeType) and c.co_name == name and c.co_firstlineno == line:
                return c
        return None


def _first_line(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", [])
    return decorators[0].lineno if decorators else node.lineno


# --- names read ------------------------------------------------------------------------


def loads(node: ast.AST | list[ast.AST]) -> set[str]:
    nodes = node if isinstance(node, list) else [node]
    return {
        n.id
        for top in nodes
        for n in ast.walk(top)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }


def attr_loads(node: ast.AST) -> set[str]:
    return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def import_time_reads(body: list[ast.stmt]) -> Iterator[tuple[ast.AST, str]]:
    """Expressions of ``body`` evaluated when it runs (module or class body): defaults
    and decorators of functions, class bases and bodies, statements — not function
    bodies. Yields (expression, where)."""
    for node in runtime_statements(body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            for d in [*a.defaults, *[k for k in a.kw_defaults if k is not None]]:
                yield d, f"a default value of {node.name}() (line {node.lineno})"
            for d in node.decorator_list:
                yield d, f"a decorator of {node.name}() (line {d.lineno})"
        elif isinstance(node, ast.ClassDef):
            for b in [*node.bases, *node.keywords, *node.decorator_list]:
                yield b, f"the definition of class {node.name} (line {node.lineno})"
            yield from import_time_reads(node.body)
        elif is_docstring(node) or isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        else:
            yield node, f"the module-level statement at line {node.lineno}"


# --- comparing ------------------------------------------------------------------------


class TreeIndex:
    """What the other modules of the tree say about a name (the builder gives one;
    comparing a module alone knows no other module)."""

    def read_elsewhere(self, module: str, name: str) -> str:
        """Where another module of NEW reads ``module.name`` at run time, or ""."""
        return ""

    def origin(self, module: str, name: str) -> tuple[str, str]:
        """The module that defines ``name`` as ``module`` imports it, following
        re-exports (``from .x import name``) in OLD."""
        return module, name

    def knows(self, module: str) -> bool:
        """``module`` is a module of the tree."""
        return False

    def is_class(self, module: str, name: str) -> bool:
        """``module.name`` is (re-exported from) a class defined in the tree."""
        return False


class Comparer:
    """Compare one module's OLD and NEW source."""

    def __init__(
        self,
        module: str,
        file: str,
        old_text: str | None,
        new_text: str | None,
        index: TreeIndex | None = None,
    ) -> None:
        self.module, self.file = module, file
        self.diff = ModuleDiff(module, file, None, None)
        self.old_text, self.new_text = old_text, new_text
        self.index = index or TreeIndex()
        self.class_names: set[str] = set()  # names the class body being compared binds

    def ignore(self, line: int, qual: str, what: str, why: str) -> None:
        """A change running code never sees: left out of the payload, with a warning."""
        self.diff.warnings.append(
            f"{self.file}:{line}: {self.module}:{qual}: {what}; ignored: {why}"
        )

    def runtime_use(self, name: str) -> str:
        """Where NEW reads the module global ``name`` at run time (this module or
        another), or ""."""
        line = self.runtime_reads.get(name)
        if line is not None:
            return f"line {line}"
        return self.index.read_elsewhere(self.module, name)

    def typing_use(self, name: str) -> int:
        """The first line where NEW reads ``name`` only in a typing position, or 0."""
        return self.all_reads.typing.get(name, 0)

    def refuse(self, kind: str, line: int, qualname: str, reason: str) -> None:
        target = f"{self.module}:{qualname}" if qualname else self.module
        self.diff.refusals.append(Refusal(kind, self.file, line, target, reason))

    def change(self, kind: str, qualname: str, node: ast.AST | None, **more: Any) -> Change:
        line = getattr(node, "lineno", 0)
        c = Change(kind, self.module, qualname, self.file, line, node, **more)
        self.diff.changes.append(c)
        return c

    def run(self) -> ModuleDiff:
        d = self.diff
        try:
            d.old = ast.parse(self.old_text or "", self.file)
            d.new = ast.parse(self.new_text or "", self.file)
        except SyntaxError as exc:
            self.refuse("syntax", exc.lineno or 0, "", f"does not parse: {exc.msg}")
            return d
        try:
            self.old_codes = CodeIndex(d.old, self.file)
            self.new_codes = CodeIndex(d.new, self.file)
        except (SyntaxError, ValueError) as exc:  # parses, but does not compile
            line = getattr(exc, "lineno", 0) or 0
            self.refuse("syntax", line, "", f"does not compile: {getattr(exc, 'msg', exc)}")
            return d
        if fingerprint(self.old_codes.code) == fingerprint(self.new_codes.code):
            d.cosmetic = True  # comments, docstrings, formatting: nothing to do
            return d
        self.runtime_reads = global_runtime_reads(d.new.body)
        self.all_reads = reads(d.new.body)
        self.scope(d.old.body, d.new.body, [], [])
        if not d.changes and not d.refusals:
            d.cosmetic = True  # annotations only
        return d

    # a scope is the module body or a class body; paths are the enclosing classes
    def scope(
        self,
        old_body: list[ast.stmt],
        new_body: list[ast.stmt],
        old_path: list[ast.ClassDef],
        new_path: list[ast.ClassDef],
    ) -> None:
        old, old_other = scope_entries(old_body)
        new, new_other = scope_entries(new_body)
        in_class = bool(new_path)
        saved, self.class_names = self.class_names, set(new) if in_class else set()
        try:
            self._scope(old, new, old_other, new_other, old_body, new_body, old_path, new_path)
        finally:
            self.class_names = saved

    def _scope(
        self,
        old: dict[str, Entry],
        new: dict[str, Entry],
        old_other: list[ast.stmt],
        new_other: list[ast.stmt],
        old_body: list[ast.stmt],
        new_body: list[ast.stmt],
        old_path: list[ast.ClassDef],
        new_path: list[ast.ClassDef],
    ) -> None:
        prefix = "".join(c.name + "." for c in new_path)
        in_class = bool(new_path)
        if _dump(old_other) != _dump(new_other):
            self.statements(old_other, new_other, prefix, set(old), (old_path, new_path))
        self.typing_blocks(old_body, new_body, prefix)
        gone = _deleted(old_body) & _deleted(new_body)  # `_tmp = ...; ...; del _tmp`
        for name, entry in new.items():
            qual = prefix + name
            before = old.get(name)
            if name in gone:
                if before is not None and _dump(before.node) != _dump(entry.node):
                    self.ignore(
                        entry.node.lineno, qual, "changed",
                        "both versions delete it at import (`del`); what the module computed "
                        "from it is compared on its own",
                    )  # fmt: skip
                continue
            if before is not None and before.kind == "annotation" != entry.kind:
                before = None  # `x: int` gained a value: a new attribute
            if before is None:
                self.added(name, qual, entry, new_path, in_class)
            elif entry.kind == "annotation" and before.kind == "assign":
                self.diff.warnings.append(
                    f"{self.file}:{entry.node.lineno}: {self.module}:{qual} lost its value; the "
                    "payload leaves the old value in place"
                )
            elif before.kind != entry.kind:
                self.changed_kind(name, qual, before, entry, in_class)
            elif entry.kind == "function":
                self.function(before, entry, qual, old_path, new_path, in_class)
            elif entry.kind == "class":
                self.klass(before, entry, qual, old_path, new_path)
            elif entry.kind == "assign":
                self.assign(before, entry, qual)
            elif entry.kind == "import" and _import_key(before) != _import_key(entry):
                self.moved_import(name, qual, before, entry, in_class)
        for name, entry in old.items():
            if name in new:
                continue
            qual = prefix + name
            used = self.new_uses(name, in_class, new_path)
            if used:
                self.refuse(
                    "removed-referenced", entry.node.lineno, qual,
                    f"removed, but the new code still uses it ({used})",
                )  # fmt: skip
            elif entry.kind != "annotation":
                self.diff.warnings.append(
                    f"{self.file}:{entry.node.lineno}: {self.module}:{qual} was removed; the "
                    "payload leaves it in place (the new code does not use it)"
                )

    def typing_blocks(
        self, old_body: list[ast.stmt], new_body: list[ast.stmt], prefix: str
    ) -> None:
        """Code that never runs (under ``TYPE_CHECKING``, or a version check decided
        for the payload's interpreters): a change there is a warning."""
        olds = {_dump(s) for s, _ in typing_statements(old_body)}
        for s, why in typing_statements(new_body):
            if _dump(s) not in olds:
                self.ignore(
                    s.lineno,
                    prefix.rstrip(".") or "<module>",
                    f"`{_short(s)}` is new or changed",
                    why,
                )

    def typing_only(self, name: str, in_class: bool) -> bool:
        """No code of NEW reads ``name`` at run time (module names only: a class
        attribute can be read through any instance)."""
        return not in_class and not self.runtime_use(name)

    def changed_kind(
        self, name: str, qual: str, before: Entry, entry: Entry, in_class: bool
    ) -> None:
        line = entry.node.lineno
        what = f"was a {before.kind}, is now a {entry.kind}"
        if not in_class and (
            is_release_metadata(name, before.node) or is_release_metadata(name, entry.node)
        ):
            self.ignore(line, qual, what, _VERSION_WHY)
        elif not in_class and before.kind == "assign" and entry.kind == "import":
            self.change("import", qual, entry.node)  # rebound, like a changed import
        elif self.typing_only(name, in_class) and self.typing_use(name):
            self.ignore(
                line,
                qual,
                what,
                f"only annotations read it (line {self.typing_use(name)}); typing-only",
            )
        else:
            used = self.runtime_use(name)
            self.refuse(
                "computed-data", line, qual,
                f"{what}; a payload cannot change what kind of object a name holds"
                + (f" (running code reads it: {used})" if used else ""),
            )  # fmt: skip

    def moved_import(
        self, name: str, qual: str, before: Entry, entry: Entry, in_class: bool
    ) -> None:
        line = entry.node.lineno
        what = f"{name!r} is now imported from another place ({_import_text(before)} -> {_import_text(entry)})"
        is_pkg = self.file.endswith("__init__.py")
        old_src, new_src = (
            _import_source(before, self.module, is_pkg),
            _import_source(entry, self.module, is_pkg),
        )
        if (
            old_src
            and new_src
            and (old_src == new_src or self.index.origin(*old_src) == self.index.origin(*new_src))
        ):
            self.ignore(
                line,
                qual,
                what,
                "both name the same object (a relative import, or a re-export of it)",
            )
        elif self.typing_only(name, in_class) and self.typing_use(name):
            self.ignore(
                line,
                qual,
                what,
                f"only annotations read it (line {self.typing_use(name)}); typing-only",
            )
        elif not in_class and (
            is_release_metadata(name, before.node) or is_release_metadata(name, entry.node)
        ):
            self.ignore(line, qual, what, _VERSION_WHY)
        elif in_class:
            self.refuse("computed-data", line, qual, what + " in a class body")
        elif self.index.is_class(*(new_src or ("", ""))) or (
            new_src is not None and new_src[1][:1].isupper() and not self.index.knows(new_src[0])
        ):
            self.refuse(
                "computed-data", line, qual,
                f"{what}; it names another class, and objects made from the old one would fail "
                "isinstance() checks of the new code",
            )  # fmt: skip
        else:
            # rebound like a new import; a copy made at import is refused by the builder
            self.change("import", qual, entry.node)

    def statements(
        self,
        old: list[ast.stmt],
        new: list[ast.stmt],
        prefix: str,
        bound_old: set[str] = frozenset(),  # type: ignore[assignment]
        paths: tuple[list[ast.ClassDef], list[ast.ClassDef]] = ([], []),
    ) -> None:
        olds = {_sdump(s) for s in old}
        news = {_sdump(s) for s in new}
        # `if HAVE_X:` / `try: ... except ImportError:` whose only change is in the bodies
        # of the functions and classes it defines: those are compared as definitions
        for o, n in self.definition_blocks(old, new, olds, news):
            for ob, nb in _branches(o, n):
                self.scope(ob, nb, *paths)
            olds.add(_sdump(n))
            news.add(_sdump(o))
        bound_old = set(bound_old)
        for s in old:
            bound_old |= binds_only(s) or set()
        if not prefix:
            # a statement whose only effect is to bind names (`try: X = f() except E: X = 1`)
            # is a definition of those names: new ones are added, removed ones left
            for s in new:
                names = binds_only(s)
                if _sdump(s) not in olds and names and not names & bound_old:
                    self.change("new names", ",".join(sorted(names)), s, value=sorted(names))
                    olds.add(_sdump(s))
            for s in old:
                names = binds_only(s)
                if _sdump(s) not in news and names is not None:
                    used = sorted(n for n in names if n in self.runtime_reads)
                    if used:
                        continue  # refused below: its effects stay and NEW reads them
                    self.diff.warnings.append(
                        f"{self.file}:{s.lineno}: {self.module}: the statement `{_short(s)}` was "
                        f"removed; the names it bound ({', '.join(sorted(names)) or 'none'}) stay, "
                        "and the new code does not read them"
                    )
                    news.add(_sdump(s))
        for s in new:
            if _sdump(s) not in olds:
                self.refuse(
                    "side-effect", s.lineno, prefix.rstrip("."),
                    f"the {'class body' if prefix else 'module-level'} statement "
                    f"`{_short(s)}` is new or changed; it ran at import and cannot run again",
                )  # fmt: skip
                return
        for s in old:
            if _sdump(s) not in news:
                self.refuse(
                    "side-effect", s.lineno, prefix.rstrip("."),
                    f"the statement `{_short(s)}` was removed; its effects at import stay",
                )  # fmt: skip
                return

    def definition_blocks(
        self, old: list[ast.stmt], new: list[ast.stmt], olds: set[str], news: set[str]
    ) -> list[tuple[ast.stmt, ast.stmt]]:
        """Changed ``if``/``try`` statements paired with their OLD version when nothing
        but the bodies of the definitions in them changed, and every name defined in
        them is defined once (a patch target then names one definition)."""
        candidates = [o for o in old if isinstance(o, (ast.If, ast.Try)) and _sdump(o) not in news]
        pairs: list[tuple[ast.stmt, ast.stmt]] = []
        for n in new:
            if not isinstance(n, (ast.If, ast.Try)) or _sdump(n) in olds:
                continue
            shape = _skeleton(n)
            match = next((o for o in candidates if _skeleton(o) == shape), None)
            if match is None:
                continue
            defined = [getattr(d, "name", "") for d in _block_definitions(n)]
            if len(defined) != len(set(defined)):
                continue  # two definitions of one name (if/else): refused as a statement
            candidates.remove(match)
            pairs.append((match, n))
        return pairs

    def new_uses(self, name: str, in_class: bool, path: list[ast.ClassDef]) -> str:
        """Where the NEW module reads ``name`` at run time (a global, or
        ``self.name``/``cls.name``); annotations and typing-only code do not count."""
        assert self.diff.new is not None
        if not in_class:
            line = self.runtime_reads.get(name)
            return f"line {line}" if line is not None else ""
        scope: list[ast.stmt] = path[-1].body if in_class else self.diff.new.body
        for top in scope:
            for n in ast.walk(top):
                if in_class and isinstance(n, ast.Attribute) and n.attr == name:
                    return f"line {n.lineno}"
                if (
                    not in_class
                    and isinstance(n, ast.Name)
                    and n.id == name
                    and isinstance(n.ctx, ast.Load)
                ):
                    return f"line {n.lineno}"
        return ""

    def added(
        self, name: str, qual: str, entry: Entry, path: list[ast.ClassDef], in_class: bool
    ) -> None:
        node = entry.node
        if entry.kind == "function":
            assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            kinds = [_decorator_name(d) for d in node.decorator_list]
            other = [k for k in kinds if k not in _DESCRIPTORS]
            if other or "." in name:
                self.refuse(
                    "decorator", node.lineno, qual,
                    f"a new function with decorators ({', '.join('@' + k for k in kinds)}) cannot "
                    "be added: only staticmethod, classmethod and property are rebuilt",
                )  # fmt: skip
                return
            descriptor = next((k for k in kinds if k in _DESCRIPTORS), None)
            self.change(
                "new method" if in_class else "new function", qual, node, descriptor=descriptor
            )
        elif entry.kind == "class":
            assert isinstance(node, ast.ClassDef)
            self.change("new class", qual, node)
        elif entry.kind == "import":
            if self.typing_only(name, in_class) and self.typing_use(name):
                self.ignore(
                    node.lineno, qual, f"new import `{_short(node)}`",
                    f"only annotations read it (line {self.typing_use(name)}); an "
                    "annotation-only import is typing-only",
                )  # fmt: skip
                return
            self.change("new import", qual, node)
        elif entry.kind == "assign":
            if is_typing_definition(node) and self.typing_only(name, in_class):
                self.ignore(
                    node.lineno, qual, f"new type alias `{_short(node)}`",
                    "no running code reads it (only annotations and typing code); typing-only",
                )  # fmt: skip
                return
            value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
            if in_class and literal_value(value) is NOT_LITERAL:
                self.refuse(
                    "computed-data", node.lineno, qual,
                    "a new class attribute that is not an immutable literal cannot be added "
                    "(instances and subclasses were built without it); use a property or a "
                    "module-level name",
                )  # fmt: skip
                return
            self.change("new name", qual, node)

    def function(
        self,
        before: Entry,
        entry: Entry,
        qual: str,
        old_path: list[ast.ClassDef],
        new_path: list[ast.ClassDef],
        in_class: bool,
    ) -> None:
        old_node, new_node = before.node, entry.node
        assert isinstance(old_node, (ast.FunctionDef, ast.AsyncFunctionDef))
        assert isinstance(new_node, (ast.FunctionDef, ast.AsyncFunctionDef))
        role = _role(new_node)
        old_decos = [_dump(d) for d in old_node.decorator_list]
        new_decos = [_dump(d) for d in new_node.decorator_list]
        if old_decos != new_decos:
            plain_old = [
                x for x, d in zip(old_decos, old_node.decorator_list, strict=True)
                if _decorator_name(d) not in _DESCRIPTORS
            ]  # fmt: skip
            plain_new = [
                x for x, d in zip(new_decos, new_node.decorator_list, strict=True)
                if _decorator_name(d) not in _DESCRIPTORS
            ]  # fmt: skip
            kinds_old = {_decorator_name(d) for d in old_node.decorator_list} & {*_DESCRIPTORS}
            kinds_new = {_decorator_name(d) for d in new_node.decorator_list} & {*_DESCRIPTORS}
            if plain_old != plain_new or "property" in kinds_old | kinds_new or not in_class:
                self.refuse(
                    "decorator", new_node.lineno, qual,
                    f"decorators changed ({_decos(old_node)} -> {_decos(new_node)}); the "
                    "function is wrapped by them at import and only its code can be swapped",
                )  # fmt: skip
                return
            descriptor = next(iter(kinds_new), None)
            self.change("descriptor", qual, new_node, descriptor=descriptor)
            return
        old_code = self.old_codes.function(old_path, old_node)
        new_code = self.new_codes.function(new_path, new_node)
        same_code = (
            old_code is not None
            and new_code is not None
            and fingerprint(old_code) == fingerprint(new_code)
        )
        a, b = old_node.args, new_node.args
        same_defaults = _dump([*a.defaults, *a.kw_defaults]) == _dump([*b.defaults, *b.kw_defaults])
        if same_code and same_defaults:
            return
        # a setter/deleter's qualname already ends in .setter/.deleter (its scope key)
        self.change("method" if in_class else "function", qual, new_node, role=role)

    def klass(
        self,
        before: Entry,
        entry: Entry,
        qual: str,
        old_path: list[ast.ClassDef],
        new_path: list[ast.ClassDef],
    ) -> None:
        old, new = before.node, entry.node
        assert isinstance(old, ast.ClassDef) and isinstance(new, ast.ClassDef)
        if (
            not new_path
            and (_typing_class(old) or _typing_class(new))
            and self.typing_only(new.name, False)
        ):
            if _dump(old) != _dump(new):
                self.ignore(
                    new.lineno, qual, "a TypedDict/Protocol class changed",
                    "no running code reads it (only annotations); typing-only",
                )  # fmt: skip
            return
        if _dump(_bases(old)) != _dump(_bases(new)):
            self.refuse(
                "class-bases", new.lineno, qual,
                f"base classes changed ({', '.join(map(ast.unparse, old.bases)) or 'object'} -> "
                f"{', '.join(map(ast.unparse, new.bases)) or 'object'}); the MRO of the class "
                "and of its instances is fixed",
            )  # fmt: skip
        if _dump(old.keywords) != _dump(new.keywords):
            self.refuse(
                "metaclass",
                new.lineno,
                qual,
                "the metaclass or class keywords changed; the class object was built by them",
            )
        if _dump(old.decorator_list) != _dump(new.decorator_list):
            self.refuse(
                "decorator",
                new.lineno,
                qual,
                f"class decorators changed ({_decos(old)} -> {_decos(new)}); they ran at import",
            )
        dataclass_like = any(
            _decorator_name(d) in ("dataclass", "define", "frozen", "attrs", "s", "mutable")
            for d in new.decorator_list
        )
        old_entries, _ = scope_entries(old.body)
        new_entries, _ = scope_entries(new.body)
        if dataclass_like:
            fields_old = [
                _dump(e.node) for e in old_entries.values() if isinstance(e.node, ast.AnnAssign)
            ]
            fields_new = [
                _dump(e.node) for e in new_entries.values() if isinstance(e.node, ast.AnnAssign)
            ]
            if fields_old != fields_new:
                self.refuse(
                    "dataclass-fields", new.lineno, qual,
                    "dataclass fields changed; __init__, __eq__ and __repr__ were generated from "
                    "them at import",
                )  # fmt: skip
        if "__slots__" in old_entries or "__slots__" in new_entries:
            a, b = old_entries.get("__slots__"), new_entries.get("__slots__")
            either = b or a
            if either is not None and _dump(a.node if a else None) != _dump(b.node if b else None):
                self.refuse(
                    "slots", either.node.lineno, qual + ".__slots__",
                    "__slots__ changed; the layout of existing instances is fixed",
                )  # fmt: skip
                return
        before_count = len(self.diff.changes)
        self.scope(old.body, new.body, [*old_path, old], [*new_path, new])
        if len(self.diff.changes) > before_count:
            self.instance_state(old, new, qual)

    def instance_state(self, old: ast.ClassDef, new: ast.ClassDef, qual: str) -> None:
        """A new attribute set up by ``__init__`` (or one whose initial value changes
        type) breaks objects that already exist, if the new code reads it."""
        old_attrs = _init_attrs(old)
        new_attrs = _init_attrs(new)
        # a bare annotation (`x: int`) makes no class attribute to fall back to
        class_level = {
            name
            for entries in (scope_entries(new.body)[0], scope_entries(old.body)[0])
            for name, e in entries.items()
            if e.kind != "annotation"
        }
        set_anywhere_old = _self_assigned(old)
        changed = {c.qualname for c in self.diff.changes if c.qualname.startswith(qual + ".")}
        readers: dict[str, str] = {}
        for node in new.body:
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and f"{qual}.{node.name}" in changed
            ):
                for attr in _self_reads(node):
                    readers.setdefault(attr, node.name)
        for attr, (line, kind) in new_attrs.items():
            if attr in class_level:
                continue  # instances without it fall back to the class attribute
            if attr not in old_attrs and attr not in set_anywhere_old and attr in readers:
                default = _init_default(new, attr)
                value = default or "<default>"
                self.refuse(
                    "instance-state", line, f"{qual}.__init__",
                    f"__init__ now sets self.{attr}, which {self.module}:{qual}.{readers[attr]} reads; "
                    "instances created before the patch do not have it. Give them a default"
                    + (f" ({default}, what __init__ sets)" if default else "")
                    + f": `{attr} = {value}` in class {new.name} in NEW, or `{qual}.{attr} = "
                    f"{value}` in a pre_apply hook (--hooks FILE, with --allow instance-state), "
                    f"or read it as getattr(self, {attr!r}, {value}) in NEW",
                )  # fmt: skip
            elif (
                attr in old_attrs
                and old_attrs[attr][1] != kind
                and "?" not in (kind, old_attrs[attr][1])
            ):
                self.refuse(
                    "instance-state", line, f"{qual}.__init__",
                    f"self.{attr} starts as a {kind} instead of a {old_attrs[attr][1]}; instances "
                    "created before the patch hold the old type",
                )  # fmt: skip

    def assign(self, before: Entry, entry: Entry, qual: str) -> None:
        old_node, new_node = before.node, entry.node
        assert isinstance(old_node, (ast.Assign, ast.AnnAssign))
        assert isinstance(new_node, (ast.Assign, ast.AnnAssign))
        if _dump(_spelled_alike(old_node.value)) == _dump(_spelled_alike(new_node.value)):
            if _dump(old_node.value) != _dump(new_node.value):
                self.diff.warnings.append(
                    f"{self.file}:{new_node.lineno}: {self.module}:{qual}: spelled differently "
                    f"(`{_short(old_node.value)}` -> `{_short(new_node.value)}`), the same value; "
                    "ignored"
                )
            return
        name = qual.rsplit(".", 1)[-1]
        if name == "__all__":
            self.diff.warnings.append(
                f"{self.file}:{new_node.lineno}: {self.module}:{qual} changed; only "
                "`from module import *` reads it, and the payload leaves it"
            )
            return
        old_value, new_value = literal_value(old_node.value), literal_value(new_node.value)
        what = f"changed (`{_short(old_node.value)}` -> `{_short(new_node.value)}`)"
        in_class = "." in qual
        if (old_value is NOT_LITERAL or new_value is NOT_LITERAL) and (
            not in_class
            and (is_release_metadata(name, old_node) or is_release_metadata(name, new_node))
        ):
            self.ignore(new_node.lineno, qual, what, _VERSION_WHY)
            return
        if (
            is_typing_definition(old_node)
            and is_typing_definition(new_node)
            and self.typing_only(name, in_class)
        ):
            self.ignore(
                new_node.lineno, qual, what.replace("changed", "a type alias changed", 1),
                "no running code reads it (only annotations and typing code); typing-only",
            )  # fmt: skip
            return
        if (
            old_value is NOT_LITERAL
            and new_value is NOT_LITERAL
            and is_compiled_pattern(old_node.value)
            and is_compiled_pattern(new_node.value)
        ):
            # a compiled pattern is immutable: rebound (copies made at import are refused
            # by the builder, as for constants)
            self.change("pattern", qual, new_node)
            return
        if is_string_expr(old_node.value) and is_string_expr(new_node.value):
            # a string however computed is immutable: rebound like a constant
            if new_value is not NOT_LITERAL:
                self.change("constant", qual, new_node, value=new_value)
                return
            assert new_node.value is not None
            if not in_class or not (loads(new_node.value) & self.class_names):
                self.change("value", qual, new_node)
                return
        if old_value is NOT_LITERAL or new_value is NOT_LITERAL:
            mutable = isinstance(
                new_node.value,
                (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp),
            )
            kind = "mutable-data" if mutable else "computed-data"
            todo = (
                "mutate the existing object in a post_apply hook and undo it in post_revert"
                if mutable
                else "set the new value in a post_apply hook and the old one back in post_revert"
            )
            typing = ""
            if is_typing_definition(new_node) and not in_class:
                typing = f"; a type, but running code reads it ({self.runtime_use(name)})"
            self.refuse(
                kind, new_node.lineno, qual,
                f"the value changed and is not an immutable literal "
                f"(`{_short(old_node.value)}` -> `{_short(new_node.value)}`){typing}; code and "
                f"objects that hold the old object would keep it ({todo}, then --allow {kind})",
            )  # fmt: skip
            return
        self.change("constant", qual, new_node, value=new_value)


# --- helpers ----------------------------------------------------------------------------

_VERSION_WHY = (
    "release metadata (a version, __doc__, __author__...) describes the release and no code "
    "of it decides on it; the payload leaves OLD's value (an immutable literal is rebound)"
)


def binds_only(node: ast.stmt) -> set[str] | None:
    """The names a statement binds, if binding names is all it does: ``if``/``try``
    whose statements assign plain names, import, define functions, ``pass`` or
    evaluate a bare name; None if it does anything else."""
    names: set[str] = set()

    def walk(stmts: list[ast.stmt]) -> bool:
        for n in stmts:
            if isinstance(n, ast.Assign) and all(isinstance(t, ast.Name) for t in n.targets):
                names.update(t.id for t in n.targets if isinstance(t, ast.Name))
            elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
                names.add(n.target.id)
            elif isinstance(n, (ast.Import, ast.ImportFrom)):
                if any(a.name == "*" for a in n.names):
                    return False
                names.update((a.asname or a.name).split(".")[0] for a in n.names)
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(n.name)
            elif isinstance(n, ast.Pass) or (
                isinstance(n, ast.Expr) and isinstance(n.value, (ast.Name, ast.Constant))
            ):
                continue
            elif isinstance(n, ast.If):
                if not (walk(n.body) and walk(n.orelse)):
                    return False
            elif isinstance(n, ast.Try):
                handlers = [h.body for h in n.handlers]
                if not all(walk(b) for b in [n.body, n.orelse, n.finalbody, *handlers]):
                    return False
            else:
                return False
        return True

    if not isinstance(node, (ast.If, ast.Try)):
        return None
    return names if walk([node]) else None


def _block_definitions(node: ast.stmt) -> list[ast.stmt]:
    """Functions and classes an ``if``/``try`` statement defines, in all its branches."""
    out: list[ast.stmt] = []
    for _, body in _branches(node, node):
        for st in body:
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.append(st)
            elif isinstance(st, (ast.If, ast.Try)):
                out += _block_definitions(st)
    return out


def _branches(old: ast.stmt, new: ast.stmt) -> list[tuple[list[ast.stmt], list[ast.stmt]]]:
    """The bodies of two ``if``/``try`` statements of one shape, pairwise."""
    pairs = []
    for name in ("body", "orelse", "finalbody"):
        a, b = getattr(old, name, None), getattr(new, name, None)
        if isinstance(a, list) and isinstance(b, list):
            pairs.append((a, b))
    for ha, hb in zip(getattr(old, "handlers", []), getattr(new, "handlers", []), strict=False):
        pairs.append((ha.body, hb.body))
    return pairs


def _skeleton(node: ast.stmt) -> str:
    """A statement's dump with the bodies of the functions and classes it defines left
    out (their decorators, bases and signatures stay)."""
    node = copy.deepcopy(node)

    def strip(stmts: list[ast.stmt]) -> None:
        for st in stmts:
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                st.body = [ast.Pass()]
            elif isinstance(st, (ast.If, ast.Try)):
                for _, body in _branches(st, st):
                    strip(body)

    strip([node])
    return _sdump(node)


def _bases(node: ast.ClassDef) -> list[ast.expr]:
    """The bases as written, ``object`` left out (``class X(object):`` is ``class X:``)."""
    return [b for b in node.bases if not (isinstance(b, ast.Name) and b.id == "object")]


def _deleted(body: list[ast.stmt]) -> set[str]:
    """Names a module or class body deletes with a top-level ``del``."""
    return {
        t.id
        for n in runtime_statements(body)
        if isinstance(n, ast.Delete)
        for t in n.targets
        if isinstance(t, ast.Name)
    }


def _typing_class(node: ast.ClassDef) -> bool:
    """A ``TypedDict`` or ``Protocol`` class: a type for annotations."""
    for b in node.bases:
        base = b.value if isinstance(b, ast.Subscript) else b
        if isinstance(base, (ast.Name, ast.Attribute)) and (
            (base.id if isinstance(base, ast.Name) else base.attr) in ("TypedDict", "Protocol")
        ):
            return True
    return False


def is_compiled_pattern(node: ast.expr | None) -> bool:
    """``re.compile(<literal>[, <flags>])``: an immutable value the payload can make."""
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "compile"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "re"
        and 1 <= len(node.args) <= 2
        and all(k.arg == "flags" for k in node.keywords)
    ):
        return False
    if not isinstance(literal_value(node.args[0]), (str, bytes)):
        return False
    return all(_is_flag(f) for f in [*node.args[1:], *(k.value for k in node.keywords)])


def is_string_expr(node: ast.expr | None) -> bool:
    """An expression whose value is certainly an (immutable) str or bytes, however it
    is computed: a string literal, an f-string, or ``+``/``%`` with a string on the left
    (``str.__add__`` only takes a str and makes a new one)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (str, bytes))
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return is_string_expr(node.left)
    return False


def _is_flag(node: ast.expr) -> bool:
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitOr, ast.Add)):
        return _is_flag(node.left) and _is_flag(node.right)
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int)
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "re"
        and node.attr.isupper()
    )


def _spelled_alike(node: ast.AST | None) -> ast.AST | None:
    """``node`` with ``"{}:{}".format(a, b)`` written as ``f"{a}:{b}"`` (the same
    call of ``format()`` on each value), so that modernised spelling compares equal."""
    if node is None:
        return None

    class Spell(ast.NodeTransformer):
        def visit_Call(self, n: ast.Call) -> ast.AST:
            self.generic_visit(n)
            f = n.func
            if not (
                isinstance(f, ast.Attribute)
                and f.attr == "format"
                and isinstance(f.value, ast.Constant)
                and isinstance(f.value.value, str)
                and not n.keywords
                and not any(isinstance(a, ast.Starred) for a in n.args)
            ):
                return n
            pieces = f.value.value.split("{}")
            if len(pieces) != len(n.args) + 1 or any(("{" in p or "}" in p) for p in pieces):
                return n
            values: list[ast.expr] = []
            for text, arg in zip(pieces, [*n.args, None], strict=True):
                if text:
                    values.append(ast.Constant(text))
                if arg is not None:
                    values.append(ast.FormattedValue(arg, -1, None))
            return ast.JoinedStr(values)

    return Spell().visit(copy.deepcopy(node))


def _import_source(entry: Entry, module: str, is_package: bool) -> tuple[str, str] | None:
    """(absolute module, name) an import binds, for ``from M import name``."""
    node, alias = entry.node, entry.alias
    if not isinstance(node, ast.ImportFrom) or alias is None:
        return None
    parts = module.split(".")
    if node.level:
        if not is_package:
            parts = parts[:-1]
        if node.level > 1:
            parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*parts, *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    return base, alias.name


def _import_key(entry: Entry) -> tuple[Any, ...]:
    node, alias = entry.node, entry.alias
    assert alias is not None
    if isinstance(node, ast.ImportFrom):
        return ("from", node.module, node.level, alias.name, alias.asname)
    return ("import", alias.name, alias.asname)


def _import_text(entry: Entry) -> str:
    node, alias = entry.node, entry.alias
    assert alias is not None
    asname = f" as {alias.asname}" if alias.asname else ""
    if isinstance(node, ast.ImportFrom):
        return f"from {'.' * node.level}{node.module or ''} import {alias.name}{asname}"
    return f"import {alias.name}{asname}"


def _decos(node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    return " ".join("@" + ast.unparse(d) for d in node.decorator_list) or "none"


def _short(node: ast.AST | None, limit: int = 60) -> str:
    text = " ".join(ast.unparse(node).split()) if node is not None else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _value_kind(node: ast.expr) -> str:
    if isinstance(node, ast.Constant):
        return "None" if node.value is None else type(node.value).__name__
    for kind, types_ in (
        ("list", (ast.List, ast.ListComp)), ("dict", (ast.Dict, ast.DictComp)),
        ("set", (ast.Set, ast.SetComp)), ("tuple", (ast.Tuple,)), ("str", (ast.JoinedStr,)),
    ):  # fmt: skip
        if isinstance(node, types_):
            return kind
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id
        in (
            "list",
            "dict",
            "set",
            "tuple",
            "frozenset",
            "str",
            "int",
            "float",
            "bytes",
            "bytearray",
        )
    ):
        return node.func.id
    return "?"


def _init_attrs(cls: ast.ClassDef) -> dict[str, tuple[int, str]]:
    """``self.X = value`` in ``__init__``: X -> (line, kind of the initial value)."""
    out: dict[str, tuple[int, str]] = {}
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            for n in ast.walk(node):
                if isinstance(n, (ast.Assign, ast.AnnAssign)):
                    targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                    for t in targets:
                        if _is_self_attr(t):
                            assert isinstance(t, ast.Attribute)
                            kind = _value_kind(n.value) if n.value is not None else "?"
                            out.setdefault(t.attr, (n.lineno, kind))
    return out


def _is_self_attr(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def _self_assigned(cls: ast.ClassDef) -> set[str]:
    return {
        n.attr
        for n in ast.walk(cls)
        if _is_self_attr(n) and isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
    }


def _self_reads(func: ast.AST) -> set[str]:
    """``self.X`` read (``self.X += 1`` and ``getattr(self, "X")`` read it too;
    ``getattr(self, "X", default)`` does not: it has an answer for old instances)."""
    augmented = {id(n.target) for n in ast.walk(func) if isinstance(n, ast.AugAssign)}
    found = {
        n.attr
        for n in ast.walk(func)
        if _is_self_attr(n)
        and isinstance(n, ast.Attribute)
        and (isinstance(n.ctx, ast.Load) or id(n) in augmented)
    }
    for n in ast.walk(func):
        if (
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Name)
            and n.func.id == "getattr"
            and len(n.args) == 2
            and isinstance(n.args[0], ast.Name)
            and n.args[0].id == "self"
            and isinstance(n.args[1], ast.Constant)
            and isinstance(n.args[1].value, str)
        ):
            found.add(n.args[1].value)
    return found


def _init_default(cls: ast.ClassDef, attr: str) -> str:
    """Source of the value ``__init__`` gives ``self.attr`` when called without
    arguments for it: a literal, or a parameter's literal default; "" if unknown."""
    for node in cls.body:
        if not (isinstance(node, ast.FunctionDef) and node.name == "__init__"):
            continue
        a = node.args
        positional = [*a.posonlyargs, *a.args]
        named = [x.arg for x in positional[len(positional) - len(a.defaults) :]]
        defaults = dict(zip(named, a.defaults, strict=True))
        defaults.update(
            {x.arg: d for x, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is not None}
        )
        for n in ast.walk(node):
            if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None:
                targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                if not any(_is_self_attr(t) and t.attr == attr for t in targets):  # type: ignore[attr-defined]
                    continue
                value = n.value
                if isinstance(value, ast.Name) and value.id in defaults:
                    value = defaults[value.id]
                if literal_value(value) is not NOT_LITERAL:
                    return ast.unparse(value)
                return ""
    return ""


def free_names(nodes: list[ast.AST]) -> set[str]:
    """Global names an expression or statement list reads when evaluated at import,
    without builtins."""
    return {n for n in loads(nodes) if not hasattr(builtins, n)}
