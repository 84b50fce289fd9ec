"""Fingerprints of code objects and build ids of modules.

A *fingerprint* names exactly the behaviour of one code object: its bytecode,
constants (recursively, so nested functions, lambdas and comprehensions count),
names, argument shape, free and cell variables, exception table and the flags the
compiler sets that change how it runs. It leaves out what does not change behaviour:
the file name, line numbers, column tables and the qualified name (which depends on
where the compiler saw the definition, not on what it does). The same source compiled
by the same interpreter version gives the same fingerprint, in the builder or in the
target.

It also leaves out the flags that code gets at run time rather than from the
compiler (``RUNTIME_FLAGS``): ``types.coroutine`` (and ``asyncio.coroutine`` of 3.10)
replaces a generator function's ``__code__`` with a copy carrying
CO_ITERABLE_COROUTINE, so the live code of such a function would never match its
source. The decorator call itself is module code, so the object build id still sees
it; what a fingerprint of one function cannot tell is whether something flagged it.
The engine keeps the flag on the code it installs instead (``engine/compile.py``).

An *object build id* names the code of a whole module: the fingerprint of the
module's compiled code object, per interpreter version. Inside a process the module
code object is gone after import, so the engine recompiles the module's source and
checks it against every function it can reach in the live module (see
``live_object_build_id``).
"""

from __future__ import annotations

import hashlib
import os
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# Flags set at run time, never by the compiler: CO_ITERABLE_COROUTINE, which
# ``types.coroutine`` puts on a generator function's code so that it can be awaited
# (and can ``yield from`` coroutines). Left out of fingerprints (module docstring).
CO_ITERABLE_COROUTINE = 0x100
RUNTIME_FLAGS = CO_ITERABLE_COROUTINE

# Flags the compiler sets that change how a code object runs: CO_OPTIMIZED,
# CO_NEWLOCALS, CO_VARARGS, CO_VARKEYWORDS, CO_GENERATOR, CO_COROUTINE,
# CO_ASYNC_GENERATOR. CO_NESTED, CO_NOFREE and the "method"/"docstring" hints of newer
# versions depend on where the compiler saw the code, not on what it does, so they are
# left out, and so are ``RUNTIME_FLAGS``.
_SEMANTIC_FLAGS = 0x1 | 0x2 | 0x4 | 0x8 | 0x20 | 0x80 | 0x200

FINGERPRINT_VERSION = "fp1"


def python_tag(version: tuple[int, ...] | None = None) -> str:
    """The interpreter key used for expectations and object ids, e.g. ``"3.11"``."""
    v = version or sys.version_info
    return f"{v[0]}.{v[1]}"


def _const(value: object, out: list[bytes]) -> None:
    if isinstance(value, types.CodeType):
        out.append(b"C" + fingerprint(value).encode())
    elif isinstance(value, tuple):
        out.append(b"T%d(" % len(value))
        for item in value:
            _const(item, out)
        out.append(b")")
    elif isinstance(value, frozenset):
        parts = []
        for item in value:
            sub: list[bytes] = []
            _const(item, sub)
            parts.append(b"".join(sub))
        out.append(b"S%d(" % len(parts) + b",".join(sorted(parts)) + b")")
    elif value is None or value is Ellipsis or isinstance(value, (bool, int, float, complex)):
        out.append(type(value).__name__.encode() + b":" + repr(value).encode())
    elif isinstance(value, str):
        out.append(b"str:" + value.encode("utf-8", "surrogatepass") + b"\x00")
    elif isinstance(value, bytes):
        out.append(b"bytes:%d:" % len(value) + value)
    else:  # e.g. slice constants of 3.14
        out.append(type(value).__name__.encode() + b":" + repr(value).encode())


def _fingerprint_bytes(code: types.CodeType) -> bytes:
    out: list[bytes] = [
        FINGERPRINT_VERSION.encode(),
        code.co_name.encode(),
        b"%d/%d/%d/%d"
        % (
            code.co_argcount,
            code.co_posonlyargcount,
            code.co_kwonlyargcount,
            code.co_flags & _SEMANTIC_FLAGS,
        ),
        code.co_code,
        getattr(code, "co_exceptiontable", b""),
    ]
    for names in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
        out.append(b"|" + "\x00".join(names).encode("utf-8", "surrogatepass"))
    for const in code.co_consts:
        _const(const, out)
    return b"\x1e".join(out)


def fingerprint(code: types.CodeType) -> str:
    """The hex sha256 fingerprint of ``code``, recursive over nested code objects."""
    return hashlib.sha256(_fingerprint_bytes(code)).hexdigest()


def nested_code(code: types.CodeType) -> Iterator[types.CodeType]:
    """``code`` and every code object nested in its constants."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from nested_code(const)


def global_names(code: types.CodeType) -> set[str]:
    """Names ``code`` (and nested code) may look up in its module's globals."""
    import dis

    found: set[str] = set()
    for c in nested_code(code):
        for ins in dis.get_instructions(c):
            if ins.opname in ("LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL", "LOAD_NAME"):
                found.add(str(ins.argval))
    return found


# --- functions of a module: from compiled source and from the live module ----------


def definitions_in_code(module_code: types.CodeType) -> dict[str, list[str]]:
    """qualname -> fingerprints of functions defined at module or class-body level."""
    found: dict[str, list[str]] = {}

    def walk(code: types.CodeType, prefix: str) -> None:
        for const in code.co_consts:
            if not isinstance(const, types.CodeType):
                continue
            name = const.co_name
            if name.startswith("<generic parameters of "):  # PEP 695 annotation scope
                walk(const, prefix)
                continue
            if name.startswith("<"):  # lambdas, comprehensions, genexprs at top level
                continue
            qual = f"{prefix}{name}"
            if const.co_flags & 0x1:  # CO_OPTIMIZED: a function; class bodies lack it
                found.setdefault(qual, []).append(fingerprint(const))
            else:
                walk(const, qual + ".")

    walk(module_code, "")
    return found


def unwrap_function(obj: object) -> types.FunctionType | None:
    """The innermost Python function behind staticmethod/classmethod/``__wrapped__``."""
    seen = 0
    while seen < 100:
        seen += 1
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
            continue
        if isinstance(obj, types.FunctionType) and "__wrapped__" not in getattr(
            obj, "__dict__", {}
        ):
            return obj
        wrapped = getattr(obj, "__wrapped__", None) if not isinstance(obj, type) else None
        if wrapped is None:
            return obj if isinstance(obj, types.FunctionType) else None
        obj = wrapped
    return None


IsAdded = Callable[[object, str], bool]


def live_functions(
    module: types.ModuleType, is_added: IsAdded = lambda holder, name: False
) -> Iterator[tuple[str, types.FunctionType]]:
    """(qualname, function) for functions defined at module/class level in ``module``,
    leaving out the attributes ``is_added(holder, name)`` says a payload added."""
    modname = module.__name__
    seen: set[int] = set()

    def from_value(value: object) -> Iterator[types.FunctionType]:
        if isinstance(value, property):
            for part in (value.fget, value.fset, value.fdel):
                fn = unwrap_function(part) if part is not None else None
                if fn is not None:
                    yield fn
            return
        fn = unwrap_function(value)
        if fn is not None:
            yield fn

    def visit(
        holder: object, namespace: dict[str, Any], prefix: str, depth: int
    ) -> Iterator[tuple[str, types.FunctionType]]:
        for key, value in list(namespace.items()):
            if is_added(holder, key):
                continue
            if isinstance(value, type):
                if depth < 20 and value.__module__ == modname and id(value) not in seen:
                    qual = getattr(value, "__qualname__", "")
                    if qual == prefix + value.__name__:
                        seen.add(id(value))
                        yield from visit(value, dict(vars(value)), qual + ".", depth + 1)
                continue
            for fn in from_value(value):
                qual = fn.__qualname__
                if id(fn) in seen or fn.__module__ != modname or "<" in qual:
                    continue
                seen.add(id(fn))
                yield qual, fn

    yield from visit(module, dict(vars(module)), "", 0)


def module_code(module: types.ModuleType) -> types.CodeType | None:
    """Recompile the source the module was loaded from (None if it has none)."""
    loader = getattr(module, "__loader__", None)
    spec = getattr(module, "__spec__", None)
    name = spec.name if spec is not None else module.__name__
    get_code = getattr(loader, "get_code", None)
    if get_code is None:
        return None
    try:
        code = get_code(name)
    except Exception:
        return None
    return code if isinstance(code, types.CodeType) else None


def source_object_build_id(code: types.CodeType) -> str:
    """The object build id of a module from its compiled code object."""
    return fingerprint(code)


@dataclass(frozen=True)
class ModuleSource:
    """A module's source as compiled now: its build id and its definitions."""

    build_id: str
    defs: dict[str, list[str]]


def source_key(module: types.ModuleType) -> tuple[str, int, int] | None:
    """(path, mtime, size) of the file a module was loaded from, to cache its compile."""
    origin = getattr(getattr(module, "__spec__", None), "origin", None)
    if not origin:
        return None
    try:
        st = os.stat(origin)
    except OSError:
        return None
    return (origin, st.st_mtime_ns, st.st_size)


def compile_module(module: types.ModuleType) -> ModuleSource | None:
    code = module_code(module)
    if code is None:
        return None
    return ModuleSource(source_object_build_id(code), definitions_in_code(code))


def live_object_build_id(
    module: types.ModuleType,
    original_code: Callable[[types.FunctionType], types.CodeType] = lambda fn: fn.__code__,
    source: ModuleSource | None = None,
    is_added: IsAdded = lambda holder, name: False,
) -> tuple[str | None, str]:
    """The object build id of a live module, or None with the reason it is unknown.

    The module's source is compiled again (or ``source``, compiled before, is used) and
    every function reachable in the live module (through ``original_code``, so patched
    functions count as their original) must be one the source defines under the same
    qualified name; otherwise the source on disk is not what the process runs and no
    build id is claimed. Attributes a payload added (``is_added``) are not the module's.
    """
    source = source or compile_module(module)
    if source is None:
        return None, f"module {module.__name__} has no source or code to compute its build id from"
    for qual, fn in live_functions(module, is_added):
        code = original_code(fn)
        if code.co_filename.startswith("<"):
            continue  # made from a string at import (dataclasses' __init__): not the file's
        fp = fingerprint(code)
        if fp not in source.defs.get(qual, ()):
            return None, (
                f"module {module.__name__}: the running code of {qual} differs from its source file "
                "(the file changed after import, or the function was made at run time)"
            )
    return source.build_id, ""
