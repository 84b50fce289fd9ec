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
from typing import Any

from ..payload.fingerprint import fingerprint
from . import syntax
from .changes import Change, ModuleDiff, Refusal
from .literals import NOT_LITERAL, literal_value
from .typing_only import (
    global_runtime_reads,
    is_release_metadata,
    is_typing_definition,
    reads,
    typing_statements,
)

_DESCRIPTORS = ("staticmethod", "classmethod", "property")


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
            self.old_codes = syntax.CodeIndex(d.old, self.file)
            self.new_codes = syntax.CodeIndex(d.new, self.file)
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
        in_class = bool(new_path)
        if not in_class:
            new_body = syntax.import_fallbacks(
                old_body, new_body, self.module, self.file.endswith("__init__.py")
            )
        old, old_other = syntax.scope_entries(old_body)
        new, new_other = syntax.scope_entries(new_body)
        saved, self.class_names = self.class_names, set(new) if in_class else set()
        try:
            self._scope(old, new, old_other, new_other, old_body, new_body, old_path, new_path)
        finally:
            self.class_names = saved

    def _scope(
        self,
        old: dict[str, syntax.Entry],
        new: dict[str, syntax.Entry],
        old_other: list[ast.stmt],
        new_other: list[ast.stmt],
        old_body: list[ast.stmt],
        new_body: list[ast.stmt],
        old_path: list[ast.ClassDef],
        new_path: list[ast.ClassDef],
    ) -> None:
        prefix = "".join(c.name + "." for c in new_path)
        in_class = bool(new_path)
        if syntax.dump(old_other) != syntax.dump(new_other):
            self.statements(old_other, new_other, prefix, set(old), (old_path, new_path))
        self.typing_blocks(old_body, new_body, prefix)
        gone = syntax.deleted(old_body) & syntax.deleted(new_body)  # `_tmp = ...; ...; del _tmp`
        for name, entry in new.items():
            qual = prefix + name
            before = old.get(name)
            if name in gone:
                if before is not None and syntax.dump(before.node) != syntax.dump(entry.node):
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
            elif entry.kind == "import" and syntax.import_key(before) != syntax.import_key(entry):
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
        olds = {syntax.dump(s) for s, _ in typing_statements(old_body)}
        for s, why in typing_statements(new_body):
            if syntax.dump(s) not in olds:
                self.ignore(
                    s.lineno,
                    prefix.rstrip(".") or "<module>",
                    f"`{syntax.short(s)}` is new or changed",
                    why,
                )

    def typing_only(self, name: str, in_class: bool) -> bool:
        """No code of NEW reads ``name`` at run time (module names only: a class
        attribute can be read through any instance)."""
        return not in_class and not self.runtime_use(name)

    def changed_kind(
        self, name: str, qual: str, before: syntax.Entry, entry: syntax.Entry, in_class: bool
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
        self, name: str, qual: str, before: syntax.Entry, entry: syntax.Entry, in_class: bool
    ) -> None:
        line = entry.node.lineno
        what = f"{name!r} is now imported from another place ({syntax.import_text(before)} -> {syntax.import_text(entry)})"
        is_pkg = self.file.endswith("__init__.py")
        old_src, new_src = (
            syntax.import_source(before, self.module, is_pkg),
            syntax.import_source(entry, self.module, is_pkg),
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
        olds = {syntax.sdump(s) for s in old}
        news = {syntax.sdump(s) for s in new}
        # `if HAVE_X:` / `try: ... except ImportError:` whose only change is in the bodies
        # of the functions and classes it defines: those are compared as definitions
        for o, n in self.definition_blocks(old, new, olds, news):
            for ob, nb in syntax.branches(o, n):
                self.scope(ob, nb, *paths)
            olds.add(syntax.sdump(n))
            news.add(syntax.sdump(o))
        bound_old = set(bound_old)
        for s in old:
            bound_old |= syntax.binds_only(s) or set()
        if not prefix:
            # a statement whose only effect is to bind names (`try: X = f() except E: X = 1`)
            # is a definition of those names: new ones are added, removed ones left
            for s in new:
                names = syntax.binds_only(s)
                if syntax.sdump(s) not in olds and names and not names & bound_old:
                    self.change("new names", ",".join(sorted(names)), s, value=sorted(names))
                    olds.add(syntax.sdump(s))
            for s in old:
                names = syntax.binds_only(s)
                if syntax.sdump(s) not in news and names is not None:
                    used = sorted(n for n in names if n in self.runtime_reads)
                    if used:
                        continue  # refused below: its effects stay and NEW reads them
                    self.diff.warnings.append(
                        f"{self.file}:{s.lineno}: {self.module}: the statement `{syntax.short(s)}` was "
                        f"removed; the names it bound ({', '.join(sorted(names)) or 'none'}) stay, "
                        "and the new code does not read them"
                    )
                    news.add(syntax.sdump(s))
        for s in new:
            if syntax.sdump(s) not in olds:
                self.refuse(
                    "side-effect", s.lineno, prefix.rstrip("."),
                    f"the {'class body' if prefix else 'module-level'} statement "
                    f"`{syntax.short(s)}` is new or changed; it ran at import and cannot run again",
                )  # fmt: skip
                return
        for s in old:
            if syntax.sdump(s) not in news:
                self.refuse(
                    "side-effect", s.lineno, prefix.rstrip("."),
                    f"the statement `{syntax.short(s)}` was removed; its effects at import stay",
                )  # fmt: skip
                return

    def definition_blocks(
        self, old: list[ast.stmt], new: list[ast.stmt], olds: set[str], news: set[str]
    ) -> list[tuple[ast.stmt, ast.stmt]]:
        """Changed ``if``/``try`` statements paired with their OLD version when nothing
        but the bodies of the definitions in them changed, and every name defined in
        them is defined once (a patch target then names one definition)."""
        candidates = [
            o for o in old if isinstance(o, (ast.If, ast.Try)) and syntax.sdump(o) not in news
        ]
        pairs: list[tuple[ast.stmt, ast.stmt]] = []
        for n in new:
            if not isinstance(n, (ast.If, ast.Try)) or syntax.sdump(n) in olds:
                continue
            shape = syntax.skeleton(n)
            match = next((o for o in candidates if syntax.skeleton(o) == shape), None)
            if match is None:
                continue
            defined = [getattr(d, "name", "") for d in syntax.block_definitions(n)]
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
        self, name: str, qual: str, entry: syntax.Entry, path: list[ast.ClassDef], in_class: bool
    ) -> None:
        node = entry.node
        if entry.kind == "function":
            assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            kinds = [syntax.decorator_name(d) for d in node.decorator_list]
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
                    node.lineno, qual, f"new import `{syntax.short(node)}`",
                    f"only annotations read it (line {self.typing_use(name)}); an "
                    "annotation-only import is typing-only",
                )  # fmt: skip
                return
            self.change("new import", qual, node)
        elif entry.kind == "assign":
            if is_typing_definition(node) and self.typing_only(name, in_class):
                self.ignore(
                    node.lineno, qual, f"new type alias `{syntax.short(node)}`",
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
        before: syntax.Entry,
        entry: syntax.Entry,
        qual: str,
        old_path: list[ast.ClassDef],
        new_path: list[ast.ClassDef],
        in_class: bool,
    ) -> None:
        old_node, new_node = before.node, entry.node
        assert isinstance(old_node, (ast.FunctionDef, ast.AsyncFunctionDef))
        assert isinstance(new_node, (ast.FunctionDef, ast.AsyncFunctionDef))
        role = syntax.decorator_role(new_node)
        old_decos = [syntax.dump(d) for d in old_node.decorator_list]
        new_decos = [syntax.dump(d) for d in new_node.decorator_list]
        if old_decos != new_decos:
            plain_old = [
                x for x, d in zip(old_decos, old_node.decorator_list, strict=True)
                if syntax.decorator_name(d) not in _DESCRIPTORS
            ]  # fmt: skip
            plain_new = [
                x for x, d in zip(new_decos, new_node.decorator_list, strict=True)
                if syntax.decorator_name(d) not in _DESCRIPTORS
            ]  # fmt: skip
            kinds_old = {syntax.decorator_name(d) for d in old_node.decorator_list} & {
                *_DESCRIPTORS
            }
            kinds_new = {syntax.decorator_name(d) for d in new_node.decorator_list} & {
                *_DESCRIPTORS
            }
            if plain_old != plain_new or "property" in kinds_old | kinds_new or not in_class:
                self.refuse(
                    "decorator", new_node.lineno, qual,
                    f"decorators changed ({syntax.decos(old_node)} -> {syntax.decos(new_node)}); the "
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
        same_defaults = syntax.dump([*a.defaults, *a.kw_defaults]) == syntax.dump(
            [*b.defaults, *b.kw_defaults]
        )
        if same_code and same_defaults:
            return
        # a setter/deleter's qualname already ends in .setter/.deleter (its scope key)
        self.change("method" if in_class else "function", qual, new_node, role=role)

    def klass(
        self,
        before: syntax.Entry,
        entry: syntax.Entry,
        qual: str,
        old_path: list[ast.ClassDef],
        new_path: list[ast.ClassDef],
    ) -> None:
        old, new = before.node, entry.node
        assert isinstance(old, ast.ClassDef) and isinstance(new, ast.ClassDef)
        if (
            not new_path
            and (syntax.typing_class(old) or syntax.typing_class(new))
            and self.typing_only(new.name, False)
        ):
            if syntax.dump(old) != syntax.dump(new):
                self.ignore(
                    new.lineno, qual, "a TypedDict/Protocol class changed",
                    "no running code reads it (only annotations); typing-only",
                )  # fmt: skip
            return
        if syntax.dump(syntax.bases(old)) != syntax.dump(syntax.bases(new)):
            self.refuse(
                "class-bases", new.lineno, qual,
                f"base classes changed ({', '.join(map(ast.unparse, old.bases)) or 'object'} -> "
                f"{', '.join(map(ast.unparse, new.bases)) or 'object'}); the MRO of the class "
                "and of its instances is fixed",
            )  # fmt: skip
        if syntax.dump(old.keywords) != syntax.dump(new.keywords):
            self.refuse(
                "metaclass",
                new.lineno,
                qual,
                "the metaclass or class keywords changed; the class object was built by them",
            )
        if syntax.dump(old.decorator_list) != syntax.dump(new.decorator_list):
            self.refuse(
                "decorator",
                new.lineno,
                qual,
                f"class decorators changed ({syntax.decos(old)} -> {syntax.decos(new)}); they ran at import",
            )
        dataclass_like = any(
            syntax.decorator_name(d) in ("dataclass", "define", "frozen", "attrs", "s", "mutable")
            for d in new.decorator_list
        )
        old_entries, _ = syntax.scope_entries(old.body)
        new_entries, _ = syntax.scope_entries(new.body)
        if dataclass_like:
            fields_old = [
                syntax.dump(e.node)
                for e in old_entries.values()
                if isinstance(e.node, ast.AnnAssign)
            ]
            fields_new = [
                syntax.dump(e.node)
                for e in new_entries.values()
                if isinstance(e.node, ast.AnnAssign)
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
            if either is not None and syntax.dump(a.node if a else None) != syntax.dump(
                b.node if b else None
            ):
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
        old_attrs = syntax.init_attrs(old)
        new_attrs = syntax.init_attrs(new)
        # a bare annotation (`x: int`) makes no class attribute to fall back to
        class_level = {
            name
            for entries in (syntax.scope_entries(new.body)[0], syntax.scope_entries(old.body)[0])
            for name, e in entries.items()
            if e.kind != "annotation"
        }
        set_anywhere_old = syntax.self_assigned(old)
        changed = {c.qualname for c in self.diff.changes if c.qualname.startswith(qual + ".")}
        readers: dict[str, str] = {}
        for node in new.body:
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and f"{qual}.{node.name}" in changed
            ):
                for attr in syntax.self_reads(node):
                    readers.setdefault(attr, node.name)
        for attr, (line, kind) in new_attrs.items():
            if attr in class_level:
                continue  # instances without it fall back to the class attribute
            if attr not in old_attrs and attr not in set_anywhere_old and attr in readers:
                default = syntax.init_default(new, attr)
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

    def assign(self, before: syntax.Entry, entry: syntax.Entry, qual: str) -> None:
        old_node, new_node = before.node, entry.node
        assert isinstance(old_node, (ast.Assign, ast.AnnAssign))
        assert isinstance(new_node, (ast.Assign, ast.AnnAssign))
        if syntax.dump(syntax.spelled_alike(old_node.value)) == syntax.dump(
            syntax.spelled_alike(new_node.value)
        ):
            if syntax.dump(old_node.value) != syntax.dump(new_node.value):
                self.diff.warnings.append(
                    f"{self.file}:{new_node.lineno}: {self.module}:{qual}: spelled differently "
                    f"(`{syntax.short(old_node.value)}` -> `{syntax.short(new_node.value)}`), the same value; "
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
        what = f"changed (`{syntax.short(old_node.value)}` -> `{syntax.short(new_node.value)}`)"
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
            and syntax.is_compiled_pattern(old_node.value)
            and syntax.is_compiled_pattern(new_node.value)
        ):
            # a compiled pattern is immutable: rebound (copies made at import are refused
            # by the builder, as for constants)
            self.change("pattern", qual, new_node)
            return
        if syntax.is_string_expr(old_node.value) and syntax.is_string_expr(new_node.value):
            # a string however computed is immutable: rebound like a constant
            if new_value is not NOT_LITERAL:
                self.change("constant", qual, new_node, value=new_value)
                return
            assert new_node.value is not None
            if not in_class or not (syntax.loads(new_node.value) & self.class_names):
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
                f"(`{syntax.short(old_node.value)}` -> `{syntax.short(new_node.value)}`){typing}; code and "
                f"objects that hold the old object would keep it ({todo}, then --allow {kind})",
            )  # fmt: skip
            return
        self.change("constant", qual, new_node, value=new_value)


_VERSION_WHY = (
    "release metadata (a version, __doc__, __author__...) describes the release and no code "
    "of it decides on it; the payload leaves OLD's value (an immutable literal is rebound)"
)
