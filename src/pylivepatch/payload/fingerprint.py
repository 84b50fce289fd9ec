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
source; on CPython 3.15 the flag also changes the oparg of ``yield from``'s GET_ITER
when the code object is made, so such code is fingerprinted as it is without the flag.
The decorator call itself is module code, so the object build id still sees it; what a
fingerprint of one function cannot tell is whether something flagged it.
The engine keeps the flag on the code it installs instead (``engine/compile.py``).

An *object build id* names the code of a whole module: the fingerprint of the
module's compiled code object, per interpreter version. Inside a process the module
code object is gone after import, so the engine recompiles the module's source and
checks it against every function it can reach in the live module (see
``live_object_build_id``).
"""

from __future__ import annotations

import dis  # at the engine's import, never during an action (engine/compile.py ImportRecord)
import hashlib
import importlib.machinery
import os
import sys
import types
import zipimport
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import static

# Flags set at run time, never by the compiler: CO_ITERABLE_COROUTINE, which
# ``types.coroutine`` puts on a generator function's code so that it can be awaited
# (and can ``yield from`` coroutines). Left out of fingerprints (module docstring).
CO_ITERABLE_COROUTINE = 0x100
RUNTIME_FLAGS = CO_ITERABLE_COROUTINE

# The code-object flags pylivepatch reads, declared here once (the values CPython
# has used since 3.5; the engine imports them from this module).
CO_OPTIMIZED, CO_NEWLOCALS, CO_VARARGS, CO_VARKEYWORDS = 0x1, 0x2, 0x4, 0x8
CO_GENERATOR, CO_COROUTINE, CO_ASYNC_GENERATOR = 0x20, 0x80, 0x200
#: code that can be suspended with its frame alive: generators, coroutines (iterable
#: ones too) and async generators
SUSPENDABLE_FLAGS = CO_GENERATOR | CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR

# Flags the compiler sets that change how a code object runs. CO_NESTED, CO_NOFREE
# and the "method"/"docstring" hints of newer versions depend on where the compiler
# saw the code, not on what it does, so they are left out, and so are
# ``RUNTIME_FLAGS``.
_SEMANTIC_FLAGS = (
    CO_OPTIMIZED | CO_NEWLOCALS | CO_VARARGS | CO_VARKEYWORDS
    | CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR
)  # fmt: skip

FINGERPRINT_VERSION = "fp1"


def python_tag(version: tuple[int, ...] | None = None) -> str:
    """The interpreter key used for expectations and object ids, e.g. ``"3.11"``."""
    v = version or sys.version_info
    return f"{v[0]}.{v[1]}"


def _const(value: object, out: list[bytes]) -> None:
    # Code constants are of the exact types below; a data value's literal digest
    # (engine/compile.py) may also see tuple/frozenset subclasses, read with the base
    # type's own methods (never a method of the program's class).
    kind = type(value)
    if kind is types.CodeType:
        out.append(b"C" + fingerprint(value).encode())  # type: ignore[arg-type]
    elif static.is_a(value, tuple):
        out.append(b"T%d(" % tuple.__len__(value))  # type: ignore[arg-type]
        item: object
        for item in tuple.__iter__(value):  # type: ignore[arg-type]
            _const(item, out)
        out.append(b")")
    elif static.is_a(value, frozenset):
        parts = []
        for item in frozenset.__iter__(value):  # type: ignore[arg-type]
            sub: list[bytes] = []
            _const(item, sub)
            parts.append(b"".join(sub))
        out.append(b"S%d(" % len(parts) + b",".join(sorted(parts)) + b")")
    elif value is None or value is Ellipsis or kind in (bool, int, float, complex):
        out.append(kind.__name__.encode() + b":" + repr(value).encode())
    elif kind is str:
        out.append(b"str:" + value.encode("utf-8", "surrogatepass") + b"\x00")  # type: ignore[attr-defined]
    elif kind is bytes:
        out.append(b"bytes:%d:" % len(value) + value)  # type: ignore[arg-type, operator]
    else:  # e.g. slice constants of 3.14 (never a program's object: see literal_digest)
        out.append(kind.__name__.encode() + b":" + repr(value).encode())


def _fingerprint_bytes(code: types.CodeType) -> bytes:
    if code.co_flags & RUNTIME_FLAGS:
        # CPython 3.15 makes the bytecode follow the flag: a code object made with
        # CO_ITERABLE_COROUTINE gets another oparg for ``yield from``'s GET_ITER. The
        # code as the compiler made it (without the flag) is what is fingerprinted.
        code = code.replace(co_flags=code.co_flags & ~RUNTIME_FLAGS)
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
    """The innermost Python function behind staticmethod/classmethod/``__wrapped__``.

    Read statically (``payload/static.py``): ``obj`` is the target's, and reading it
    must not run its code (a ``__getattr__``, a property, a lazy proxy's setup)."""
    try:
        inner, _ = static.unwrap(obj)
    except RecursionError:
        return None
    return inner if static.is_function(inner) else None


IsAdded = Callable[[object, str], bool]


def live_functions(
    module: types.ModuleType, is_added: IsAdded = lambda holder, name: False
) -> Iterator[tuple[str, types.FunctionType]]:
    """(qualname, function) for functions defined at module/class level in ``module``,
    leaving out the attributes ``is_added(holder, name)`` says a payload added.

    Every global of the module is read with ``type()`` and static lookups only
    (``payload/static.py``): a lazy object, a proxy, a class with a metaclass of its own
    is looked at, never asked."""
    modname = static.module_name(module)
    seen: set[int] = set()

    def from_value(value: object) -> Iterator[types.FunctionType]:
        if static.is_a(value, property):
            for name in ("fget", "fset", "fdel"):
                part = static.property_part(value, name)  # type: ignore[arg-type]
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
            if static.is_class(value):
                if depth < 20 and static.class_module(value) == modname and id(value) not in seen:
                    qual = static.class_qualname(value)
                    if qual == prefix + static.class_name(value):
                        seen.add(id(value))
                        yield from visit(
                            value, dict(static.class_dict(value)), qual + ".", depth + 1
                        )
                continue
            for fn in from_value(value):
                qual = fn.__qualname__
                if id(fn) in seen or fn.__module__ != modname or "<" in qual:
                    continue
                seen.add(id(fn))
                yield qual, fn

    yield from visit(module, dict(static.module_dict(module)), "", 0)


# Loaders whose ``get_code`` is the standard library's own, called as it is.
_STDLIB_LOADERS: tuple[type, ...] = (
    importlib.machinery.SourceFileLoader,
    importlib.machinery.SourcelessFileLoader,
    zipimport.zipimporter,
)

# A frozen application's modules come from its packager's archive, not from files:
# PyInstaller's loader (``pyimod02_importers.PyiFrozenLoader``, part of the packager's
# bootloader, not of the application) unpickles the code object from the archive the
# app was built from. It is asked like a standard loader; the class is told by where it
# was defined, read from its namespace (any other loader stays the program's code).
_PACKAGER_LOADERS: frozenset[tuple[str, str]] = frozenset(
    {("pyimod02_importers", "PyiFrozenLoader")}
)


def _asked_loader(loader: object) -> bool:
    """Whether ``loader``'s ``get_code`` may be called: the standard library's own or a
    packager's (never a loader the program defined)."""
    cls = type(loader)
    if cls in _STDLIB_LOADERS:
        return True
    return (static.class_module(cls), static.class_qualname(cls)) in _PACKAGER_LOADERS


def _module_spec(module: types.ModuleType) -> object:
    return static.module_dict(module).get("__spec__")


def _source_origin(module: types.ModuleType) -> str | None:
    """The ``.py`` file a module was loaded from by the standard source loader."""
    spec = _module_spec(module)
    if spec is None:
        return None
    origin = static.static_attr(spec, "origin", None)
    loader = _own_loader(static.static_attr(spec, "loader", None))
    if type(origin) is not str or not origin.endswith(".py"):
        return None
    if not static.is_a(loader, importlib.machinery.SourceFileLoader):
        return None
    return origin


def _own_loader(loader: object) -> object:
    """The loader behind pylivepatch's own wrappers of a loader (the engine's late
    imports, ``engine/late.py``; ``pylivepatch test``, ``agent/testing.py``)."""
    for _ in range(10):
        if not str(static.class_module(type(loader)) or "").startswith("pylivepatch."):
            return loader
        own = static.instance_dict(loader)
        loader = own.get("_loader") if own is not None else None
    return loader


def module_code(module: types.ModuleType) -> types.CodeType | None:
    """Compile again the source the module was loaded from (None if it has none).

    The module's objects are not asked: its ``__spec__`` is read from its namespace, a
    ``.py`` file loaded by the standard source loader is compiled here as that loader
    compiles it, and a standard sourceless or zip loader is asked for its code. Any
    other loader is the program's own code (PyInstaller's frozen loader excepted, see
    ``_PACKAGER_LOADERS``): the module then has no source we can use."""
    origin = _source_origin(module)
    if origin is not None:
        try:
            with open(origin, "rb") as f:
                data = f.read()
            code = compile(data, origin, "exec", dont_inherit=True, optimize=-1)
        except (OSError, SyntaxError, ValueError):
            return None
        return code
    spec = _module_spec(module)
    loader = _own_loader(static.static_attr(spec, "loader", None) if spec is not None else None)
    if loader is None or not _asked_loader(loader):
        return None
    name = static.static_attr(spec, "name", None)
    if type(name) is not str:
        return None
    try:
        code = loader.get_code(name)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a missing or unreadable file: no source
        return None
    return code if type(code) is types.CodeType else None


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
    spec = _module_spec(module)
    origin = static.static_attr(spec, "origin", None) if spec is not None else None
    if type(origin) is not str or not origin:
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
        return (
            None,
            f"module {static.module_name(module)} has no source or code to compute its build id from",
        )
    for qual, fn in live_functions(module, is_added):
        code = original_code(fn)
        if code.co_filename.startswith("<"):
            continue  # made from a string at import (dataclasses' __init__): not the file's
        fp = fingerprint(code)
        if fp not in source.defs.get(qual, ()):
            return None, (
                f"module {static.module_name(module)}: the running code of {qual} differs from its source file "
                "(the file changed after import, or the function was made at run time)"
            )
    return source.build_id, ""
