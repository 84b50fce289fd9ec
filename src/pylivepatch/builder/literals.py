"""Immutable literal values written in source: what the builder may rebind safely.

Numbers, strings, bytes, ``None``/``True``/``False``/``...``, and tuples and frozensets of
those — including ``frozenset([...])``/``frozenset((...))``/``frozenset({...})`` of
literals, the usual spelling of a constant set of names.
"""

from __future__ import annotations

import ast
from typing import Any

NOT_LITERAL: Any = object()


def literal_value(node: ast.expr | None) -> Any:
    """The value of an immutable literal expression, or ``NOT_LITERAL``."""
    if node is None:
        return NOT_LITERAL
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "frozenset"
        and not node.keywords
        and len(node.args) <= 1
    ):
        if not node.args:
            return frozenset()
        arg = node.args[0]
        if isinstance(arg, (ast.List, ast.Tuple, ast.Set)):
            items = [literal_value(e) for e in arg.elts]
            if any(i is NOT_LITERAL for i in items):
                return NOT_LITERAL
            return frozenset(items)
        return NOT_LITERAL
    if isinstance(node, ast.Tuple):
        items = [literal_value(e) for e in node.elts]
        return NOT_LITERAL if any(i is NOT_LITERAL for i in items) else tuple(items)
    if isinstance(node, (ast.List, ast.Dict, ast.Set)):
        return NOT_LITERAL  # mutable
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return NOT_LITERAL
    return value if is_immutable_literal(value) else NOT_LITERAL


def is_immutable_literal(value: Any) -> bool:
    if value is None or value is Ellipsis or isinstance(value, (bool, int, float, complex)):
        return True
    if isinstance(value, (str, bytes)):
        return True
    if isinstance(value, (tuple, frozenset)):
        return all(is_immutable_literal(v) for v in value)
    return False


def literal_source(value: Any) -> str:
    """Python source that evaluates to ``value`` (an immutable literal)."""
    if isinstance(value, frozenset):
        inner = ", ".join(sorted(literal_source(v) for v in value))
        return f"frozenset(({inner}{',' if len(value) == 1 else ''}))" if value else "frozenset()"
    if isinstance(value, tuple):
        inner = ", ".join(literal_source(v) for v in value)
        return f"({inner}{',' if len(value) == 1 else ''})"
    return repr(value)
