"""Reading Python source as the builder compares it: the definitions of a scope, the
names a statement reads or binds, canonical forms of imports and statements, and the
shapes of values and ``__init__`` assignments. Pure functions over ``ast`` trees; the
comparison itself is compare.py."""

from __future__ import annotations

import ast
import builtins
import copy
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .literals import NOT_LITERAL, literal_value
from .typing_only import (
    runtime_statements,
    static_branches,
)


@dataclass
class Entry:
    """A name bound in a scope by one kind of statement."""

    kind: str  # function | class | assign | import | annotation
    node: ast.stmt
    alias: ast.alias | None = None


def decorator_name(d: ast.expr) -> str:
    target = d.func if isinstance(d, ast.Call) else d
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute):
        return target.attr
    return ""


def decorator_role(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """``overload`` for a typing stub, ``setter``/``deleter`` for property accessors."""
    for d in node.decorator_list:
        name = decorator_name(d)
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
            role = decorator_role(node)
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


def sdump(node: ast.stmt) -> str:
    """A statement's dump with its imports in one canonical spelling: ``from m import
    a, b``, ``from m import b, a`` and the same names on two lines bind the same
    objects (a run of import statements is compared as the set of names it binds)."""
    return dump(canonical_imports(node))


def canonical_imports(node: ast.stmt) -> ast.stmt:
    if not any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(node)):
        return node
    node = copy.deepcopy(node)
    for n in ast.walk(node):
        for name in ("body", "orelse", "finalbody"):
            stmts = getattr(n, name, None)
            if isinstance(stmts, list) and stmts and isinstance(stmts[0], ast.stmt):
                setattr(n, name, canonical_run(stmts))
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return canonical_run([node])[0] if len(node.names) == 1 else node
    return node


def canonical_run(stmts: list[ast.stmt]) -> list[ast.stmt]:
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


def dump(node: ast.AST | list[Any] | None) -> str:
    if node is None:
        return ""
    if isinstance(node, list):
        return "[" + ", ".join(dump(n) for n in node) + "]"
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
            code = self._find(code, cls.name, first_line(cls)) if code else None
        return code

    def function(self, path: list[ast.ClassDef], node: ast.stmt) -> types.CodeType | None:
        scope = self.scope(path)
        if scope is None or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return None
        return self._find(scope, node.name, first_line(node))

    @staticmethod
    def _find(scope: types.CodeType, name: str, line: int) -> types.CodeType | None:
        for c in scope.co_consts:
            if isinstance(c, types.CodeType) and c.co_name == name and c.co_firstlineno == line:
                return c
        return None


def first_line(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", [])
    return decorators[0].lineno if decorators else node.lineno


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


def block_definitions(node: ast.stmt) -> list[ast.stmt]:
    """Functions and classes an ``if``/``try`` statement defines, in all its branches."""
    out: list[ast.stmt] = []
    for _, body in branches(node, node):
        for st in body:
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.append(st)
            elif isinstance(st, (ast.If, ast.Try)):
                out += block_definitions(st)
    return out


def branches(old: ast.stmt, new: ast.stmt) -> list[tuple[list[ast.stmt], list[ast.stmt]]]:
    """The bodies of two ``if``/``try`` statements of one shape, pairwise."""
    pairs = []
    for name in ("body", "orelse", "finalbody"):
        a, b = getattr(old, name, None), getattr(new, name, None)
        if isinstance(a, list) and isinstance(b, list):
            pairs.append((a, b))
    for ha, hb in zip(getattr(old, "handlers", []), getattr(new, "handlers", []), strict=False):
        pairs.append((ha.body, hb.body))
    return pairs


def skeleton(node: ast.stmt) -> str:
    """A statement's dump with the bodies of the functions and classes it defines left
    out (their decorators, bases and signatures stay)."""
    node = copy.deepcopy(node)

    def strip(stmts: list[ast.stmt]) -> None:
        for st in stmts:
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                st.body = [ast.Pass()]
            elif isinstance(st, (ast.If, ast.Try)):
                for _, body in branches(st, st):
                    strip(body)

    strip([node])
    return sdump(node)


def bases(node: ast.ClassDef) -> list[ast.expr]:
    """The bases as written, ``object`` left out (``class X(object):`` is ``class X:``)."""
    return [b for b in node.bases if not (isinstance(b, ast.Name) and b.id == "object")]


def deleted(body: list[ast.stmt]) -> set[str]:
    """Names a module or class body deletes with a top-level ``del``."""
    return {
        t.id
        for n in runtime_statements(body)
        if isinstance(n, ast.Delete)
        for t in n.targets
        if isinstance(t, ast.Name)
    }


def typing_class(node: ast.ClassDef) -> bool:
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
    return all(is_flag(f) for f in [*node.args[1:], *(k.value for k in node.keywords)])


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


def is_flag(node: ast.expr) -> bool:
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitOr, ast.Add)):
        return is_flag(node.left) and is_flag(node.right)
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int)
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "re"
        and node.attr.isupper()
    )


def spelled_alike(node: ast.AST | None) -> ast.AST | None:
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


def import_source(entry: Entry, module: str, is_package: bool) -> tuple[str, str] | None:
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


def import_key(entry: Entry) -> tuple[Any, ...]:
    node, alias = entry.node, entry.alias
    assert alias is not None
    if isinstance(node, ast.ImportFrom):
        return ("from", node.module, node.level, alias.name, alias.asname)
    return ("import", alias.name, alias.asname)


def import_text(entry: Entry) -> str:
    node, alias = entry.node, entry.alias
    assert alias is not None
    asname = f" as {alias.asname}" if alias.asname else ""
    if isinstance(node, ast.ImportFrom):
        return f"from {'.' * node.level}{node.module or ''} import {alias.name}{asname}"
    return f"import {alias.name}{asname}"


def decos(node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    return " ".join("@" + ast.unparse(d) for d in node.decorator_list) or "none"


def short(node: ast.AST | None, limit: int = 60) -> str:
    text = " ".join(ast.unparse(node).split()) if node is not None else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def value_kind(node: ast.expr) -> str:
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


def init_attrs(cls: ast.ClassDef) -> dict[str, tuple[int, str]]:
    """``self.X = value`` in ``__init__``: X -> (line, kind of the initial value)."""
    out: dict[str, tuple[int, str]] = {}
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            for n in ast.walk(node):
                if isinstance(n, (ast.Assign, ast.AnnAssign)):
                    targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                    for t in targets:
                        if is_self_attr(t):
                            assert isinstance(t, ast.Attribute)
                            kind = value_kind(n.value) if n.value is not None else "?"
                            out.setdefault(t.attr, (n.lineno, kind))
    return out


def is_self_attr(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def self_assigned(cls: ast.ClassDef) -> set[str]:
    return {
        n.attr
        for n in ast.walk(cls)
        if is_self_attr(n) and isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
    }


def self_reads(func: ast.AST) -> set[str]:
    """``self.X`` read (``self.X += 1`` and ``getattr(self, "X")`` read it too;
    ``getattr(self, "X", default)`` does not: it has an answer for old instances)."""
    augmented = {id(n.target) for n in ast.walk(func) if isinstance(n, ast.AugAssign)}
    found = {
        n.attr
        for n in ast.walk(func)
        if is_self_attr(n)
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


def init_default(cls: ast.ClassDef, attr: str) -> str:
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
                if not any(is_self_attr(t) and t.attr == attr for t in targets):  # type: ignore[attr-defined]
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


def absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module name a ``from ... import`` reads from."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


def _imported(stmts: list[ast.stmt], module: str, is_package: bool) -> set[tuple[str, str]]:
    """(bound name, what it names) of the import statements among ``stmts``."""
    out = set()
    for st in stmts:
        if isinstance(st, ast.Import):
            for a in st.names:
                out.add(
                    (a.asname or a.name.split(".")[0], a.name if a.asname else a.name.split(".")[0])
                )
        elif isinstance(st, ast.ImportFrom):
            source = absolute(st, module, is_package)
            out |= {(a.asname or a.name, f"{source}:{a.name}") for a in st.names}
    return out


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return bool(kinds) and all(
        isinstance(k, ast.Name) and k.id in ("ImportError", "ModuleNotFoundError") for k in kinds
    )


def import_fallbacks(
    old_body: list[ast.stmt], new_body: list[ast.stmt], module: str, is_package: bool
) -> list[ast.stmt]:
    """NEW's module body with each import that gained a fallback (``try: <imports>
    except ImportError: <imports>``) read as its ``try`` branch, where that branch
    imports nothing but what OLD's own import statements imported, under the same names
    from the same places, and the fallback binds no other name. In the running
    process OLD's imports succeeded, so the ``try`` branch would too: the same objects,
    no change (``from collections.abc import Mapping`` given a fallback to
    ``collections`` for old Pythons)."""
    old = _imported(old_body, module, is_package)
    out: list[ast.stmt] = []
    for st in new_body:
        if (
            isinstance(st, ast.Try)
            and st.handlers
            and not st.orelse
            and not st.finalbody
            and all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in st.body)
            and all(_catches_import_error(h) and h.name is None for h in st.handlers)
            and all(
                isinstance(s, (ast.Import, ast.ImportFrom)) for h in st.handlers for s in h.body
            )
        ):
            tried = _imported(st.body, module, is_package)
            fallback = {
                name for h in st.handlers for name, _ in _imported(h.body, module, is_package)
            }
            if tried and tried <= old and fallback <= {name for name, _ in tried}:
                out += st.body
                continue
        out.append(st)
    return out
