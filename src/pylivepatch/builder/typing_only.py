"""What running code never sees: the builder's rules for typing-only changes.

A release that fixes one function often also touches things no running code reads:
``if TYPE_CHECKING:`` blocks, type aliases and ``TypeVar``s that gained members,
imports that only annotations use, version strings. These rules tell such changes
apart from changes that alter what running code sees (docs/patch-author-guide.md,
"Changes that running code never sees", has the rule for each kind):

- **typing blocks**: the body of ``if TYPE_CHECKING:`` (and the ``else`` of
  ``if not TYPE_CHECKING:``) never runs; the other branch always does and is compared
  like the statements around it.
- **typing positions**: annotations (of arguments, returns and variables), code under
  ``TYPE_CHECKING``, the type argument of ``cast()``, and the values of typing-only
  definitions. A read there is not a *runtime read*.
- **typing-only name**: a module or class attribute whose value is a typing construct
  (``TypeVar``/``ParamSpec``/``NewType`` calls, subscripted generics such as
  ``Union[...]``, ``X | Y`` of such, or anything annotated ``TypeAlias``) and that no
  module of the package reads at run time.
- **version metadata**: ``__version__``, ``version``, ``VERSION``, ``version_info``
  and the like describe the release; no code of the package decides on them.
"""

from __future__ import annotations

import ast
import contextvars
import operator
import sys
from collections.abc import Iterator
from typing import Any

#: the interpreters the payload is built for, (3, 11)...: a version check that is the
#: same for all of them is decided (its other branch never runs)
PYTHONS: contextvars.ContextVar[tuple[tuple[int, int], ...]] = contextvars.ContextVar(
    "PYTHONS", default=(sys.version_info[:2],)
)
_COMPARE: dict[type, Any] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}  # fmt: skip

#: names of generics whose subscription makes a type, from typing, typing_extensions,
#: collections.abc and the builtins
GENERICS = frozenset(
    """Union Optional Callable Literal Annotated Type Tuple List Dict Set FrozenSet
    DefaultDict OrderedDict Counter ChainMap Deque Mapping MutableMapping Sequence
    MutableSequence AbstractSet MutableSet Iterable Iterator Generator AsyncIterable
    AsyncIterator AsyncGenerator Awaitable Coroutine Collection Container ClassVar Final
    Concatenate TypeGuard TypeIs Generic Protocol IO Pattern Match Unpack Required
    NotRequired ReadOnly Self LiteralString Never NoReturn TypeAlias ContextManager
    AsyncContextManager Reversible Sized Hashable KeysView ValuesView ItemsView
    dict list tuple set frozenset type""".split()  # noqa: SIM905
)
#: calls that make a typing object
TYPE_FACTORIES = frozenset({"TypeVar", "ParamSpec", "TypeVarTuple", "NewType", "TypeAliasType"})
#: module attributes that describe the release
VERSION_NAMES = frozenset(
    {
        "__version__", "version", "VERSION", "__version_info__", "version_info",
        "VERSION_INFO", "__version_tuple__", "version_tuple", "__VERSION__",
        "__release__", "__build__", "__doc__", "__author__", "__email__", "__license__",
        "__copyright__", "__uri__", "__url__", "__summary__", "__title__",
        "__description__", "__maintainer__", "__credits__", "__status__",
    }
)  # fmt: skip


def is_release_metadata(name: str, node: ast.stmt | None) -> bool:
    """``name`` describes the release: one of :data:`VERSION_NAMES`, a name bound to
    a version looked up at import (``importlib.metadata.version("pkg")``), or a
    version imported under another name (``from . import __version__ as _v``)."""
    if name in VERSION_NAMES:
        return True
    if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Call):
        return _last_name(node.value.func) == "version" or (
            isinstance(node.value.func, ast.Attribute)
            and _last_name(node.value.func.value) == "get_distribution"
        )
    if isinstance(node, ast.ImportFrom):
        return any((a.asname or a.name) == name and a.name in VERSION_NAMES for a in node.names)
    return False


def _last_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def version_check(test: ast.expr) -> bool | None:
    """The value of ``sys.version_info >= (3, 12)`` (``<``, ``==``..., also
    ``sys.version_info[0]``/``.major``) on every interpreter of :data:`PYTHONS`, or
    None if it differs between them or is no such check."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _COMPARE):
        return None
    left, right = test.left, test.comparators[0]
    index: Any = None
    if isinstance(left, ast.Subscript):
        index = left.slice
        if isinstance(index, ast.Constant) and isinstance(index.value, int):
            index = index.value
        elif (
            isinstance(index, ast.Slice)
            and index.lower is None
            and isinstance(index.upper, ast.Constant)
        ):
            index = slice(None, index.upper.value)
        else:
            return None
        left = left.value
    elif isinstance(left, ast.Attribute) and left.attr in ("major", "minor"):
        index = 0 if left.attr == "major" else 1
        left = left.value
    if not (
        isinstance(left, ast.Attribute)
        and left.attr == "version_info"
        and isinstance(left.value, ast.Name)
        and left.value.id == "sys"
    ):
        return None
    try:
        value = ast.literal_eval(right)
    except ValueError:
        return None
    results = set()
    for version in PYTHONS.get():
        full = (*version, 99, "final", 0)  # a released interpreter of that minor version
        mine = full if index is None else full[index]
        try:
            results.add(bool(_COMPARE[type(test.ops[0])](mine, value)))
        except TypeError:
            return None
    return results.pop() if len(results) == 1 else None


def _is_main_check(test: ast.expr) -> bool:
    return (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq)
        and {ast.dump(test.left), ast.dump(test.comparators[0])}
        == {ast.dump(ast.Name("__name__", ast.Load())), ast.dump(ast.Constant("__main__"))}
    )


def static_branches(node: ast.stmt) -> tuple[list[ast.stmt], list[ast.stmt]] | None:
    """``(never runs, runs)`` for ``if TYPE_CHECKING:`` / ``if not TYPE_CHECKING:``
    (also ``typing.TYPE_CHECKING``) and for a version check decided for every
    interpreter of :data:`PYTHONS`; None for any other statement."""
    if not isinstance(node, ast.If):
        return None
    test, negated = node.test, False
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        test, negated = test.operand, True
    if _is_main_check(test):  # `if __name__ == "__main__":` never runs in an imported module
        return (node.body, node.orelse)
    if _last_name(test) != "TYPE_CHECKING":
        decided = version_check(test)
        if decided is None:
            return None
        negated = not decided  # "TYPE_CHECKING" is what never runs
        return (node.body, node.orelse) if negated else (node.orelse, node.body)
    return (node.orelse, node.body) if negated else (node.body, node.orelse)


def runtime_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements of ``body`` that run, ``TYPE_CHECKING`` branches resolved."""
    for node in body:
        branches = static_branches(node)
        if branches is None:
            yield node
        else:
            yield from runtime_statements(branches[1])


def typing_statements(body: list[ast.stmt]) -> Iterator[tuple[ast.stmt, str]]:
    """The statements of ``body`` that never run, each with why: under
    ``TYPE_CHECKING``, or in the branch of a version check not taken on
    :data:`PYTHONS`."""
    for node in body:
        branches = static_branches(node)
        if branches is not None:
            assert isinstance(node, ast.If)
            if _last_name(getattr(node.test, "operand", node.test)) == "TYPE_CHECKING":
                why = "code under TYPE_CHECKING never runs (typing-only)"
            elif _is_main_check(node.test):
                why = "a module's `__main__` block never runs when it is imported"
            else:
                versions = ", ".join(f"{v[0]}.{v[1]}" for v in PYTHONS.get())
                why = f"`{ast.unparse(node.test)}` decides it on Python {versions}: it never runs"
            for stmt in branches[0]:
                yield stmt, why
            yield from typing_statements(branches[1])


def is_typing_value(node: ast.expr | None) -> bool:
    """A value that only makes a type: ``TypeVar(...)``, ``Union[...]``, ``A | B`` of
    such, ``Optional["X"]``..."""
    if node is None:
        return False
    if isinstance(node, ast.Call):
        return _last_name(node.func) in TYPE_FACTORIES
    if isinstance(node, ast.Subscript):
        return _last_name(node.value) in GENERICS
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return any(is_typing_value(side) for side in (node.left, node.right)) and all(
            is_typing_value(side)
            or isinstance(side, (ast.Name, ast.Attribute))
            or (isinstance(side, ast.Constant) and side.value is None)
            for side in (node.left, node.right)
        )
    return False


def is_typing_definition(node: ast.stmt) -> bool:
    """``X = <typing value>``, ``X: TypeAlias = ...`` or ``type X = ...``."""
    if type(node).__name__ == "TypeAlias":  # Python 3.12's `type X = ...`: evaluated lazily
        return True
    if isinstance(node, ast.AnnAssign):
        return _last_name(node.annotation) == "TypeAlias" or is_typing_value(node.value)
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        return is_typing_value(node.value)
    return False


def _cast_call(node: ast.Call) -> bool:
    return _last_name(node.func) == "cast" and bool(node.args)


class Reads(ast.NodeVisitor):
    """Where names and attributes are read: at run time, or only in typing positions."""

    def __init__(self) -> None:
        self.runtime: dict[str, int] = {}  # name -> first line
        self.runtime_attrs: dict[str, int] = {}
        self.typing: dict[str, int] = {}  # names read in typing positions
        self._typing_depth = 0

    def typed(self, node: ast.AST | None) -> None:
        if node is not None:
            self._typing_depth += 1
            self.visit(node)
            self._typing_depth -= 1

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            into = self.typing if self._typing_depth else self.runtime
            into.setdefault(node.id, node.lineno)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if not self._typing_depth and isinstance(node.ctx, ast.Load):
            self.runtime_attrs.setdefault(node.attr, node.lineno)
        self.visit(node.value)

    def visit_If(self, node: ast.If) -> None:
        branches = static_branches(node)
        if branches is None:
            self.generic_visit(node)
            return
        for stmt in branches[0]:
            self.typed(stmt)
        for stmt in branches[1]:
            self.visit(stmt)

    def visit_arg(self, node: ast.arg) -> None:
        self.typed(node.annotation)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for d in node.decorator_list:
            self.visit(d)
        self.visit(node.args)
        self.typed(node.returns)
        for stmt in node.body:
            self.visit(stmt)

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.typed(node.annotation)
        if node.value is not None:
            (self.typed if _last_name(node.annotation) == "TypeAlias" else self.visit)(node.value)
        self.visit(node.target)

    def visit_Assign(self, node: ast.Assign) -> None:
        if is_typing_definition(node):
            self.typed(node.value)
        else:
            self.visit(node.value)
        for t in node.targets:
            self.visit(t)

    def visit_Call(self, node: ast.Call) -> None:
        if _cast_call(node):
            self.visit(node.func)
            self.typed(node.args[0])
            for a in node.args[1:]:
                self.visit(a)
            for k in node.keywords:
                self.visit(k)
            return
        self.generic_visit(node)

    def generic_visit(self, node: ast.AST) -> None:
        if type(node).__name__ == "TypeAlias":
            self.typed(getattr(node, "value", None))
            return
        super().generic_visit(node)


def reads(tree: ast.AST | list[ast.stmt]) -> Reads:
    r = Reads()
    for node in tree if isinstance(tree, list) else [tree]:
        r.visit(node)
    return r


def local_names(func: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> set[str]:
    """Names a function binds itself (parameters, assignments, imports inside it),
    without those it declares ``global``/``nonlocal``."""
    a = func.args
    names = {x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]}
    names |= {x.arg for x in (a.vararg, a.kwarg) if x is not None}
    declared: set[str] = set()
    body = func.body if isinstance(func.body, list) else [func.body]
    for stmt in body:
        for n in ast.walk(stmt):
            if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
                names.add(n.id)
            elif isinstance(n, (ast.Import, ast.ImportFrom)):
                names |= {(x.asname or x.name).split(".")[0] for x in n.names}
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(n.name)
            elif isinstance(n, (ast.Global, ast.Nonlocal)):
                declared |= set(n.names)
    return names - declared


def global_runtime_reads(body: list[ast.stmt]) -> dict[str, int]:
    """Module globals read at run time: runtime reads, without names a function reads
    that it binds itself (a deprecation ``__getattr__`` importing what it returns)."""
    out: dict[str, int] = {}

    def walk(nodes: list[ast.stmt], hidden: frozenset[str]) -> None:
        for node in nodes:
            r = Reads()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for d in node.decorator_list:
                    r.visit(d)
                r.visit(node.args)
                inner = hidden | local_names(node)
                _merge(out, r.runtime, hidden)
                walk(node.body, inner)
                continue
            if isinstance(node, ast.ClassDef):
                for x in [*node.bases, *node.keywords, *node.decorator_list]:
                    r.visit(x)
                _merge(out, r.runtime, hidden)
                walk(node.body, hidden)
                continue
            branches = static_branches(node)
            if branches is not None:
                walk(branches[1], hidden)
                continue
            if isinstance(node, (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With,
                                 ast.AsyncWith, ast.Try)):  # fmt: skip
                r2 = Reads()
                for field in ("test", "iter", "target"):
                    value = getattr(node, field, None)
                    if value is not None:
                        r2.visit(value)
                for item in getattr(node, "items", []):
                    r2.visit(item)
                for handler in getattr(node, "handlers", []):
                    if handler.type is not None:
                        r2.visit(handler.type)
                    walk(handler.body, hidden)
                _merge(out, r2.runtime, hidden)
                for field in ("body", "orelse", "finalbody"):
                    walk(getattr(node, field, []), hidden)
                continue
            r.visit(node)
            _merge(out, r.runtime, hidden)

    walk(body, frozenset())
    return out


def _merge(into: dict[str, int], found: dict[str, int], hidden: frozenset[str]) -> None:
    for name, line in found.items():
        if name not in hidden:
            into.setdefault(name, line)
