"""Finding what a target names in the live process.

``module:qualname`` is walked through the module's and classes' own ``__dict__`` (never
``getattr``, which would run descriptors and return bound methods), then unwrapped to
the innermost Python function: staticmethod/classmethod ``__func__``, property
getter/setter/deleter, and ``__wrapped__`` chains (``functools.wraps``,
``lru_cache``, ``singledispatch``). Patching that innermost function in place is what
makes every wrapper, alias, bound method and registry see the new code.

Everything is read with ``type()`` and static lookups (``payload/static.py``): no
``isinstance`` (it falls back to ``__class__``), no ``getattr``/``hasattr`` (they reach
``__getattr__``, properties, descriptors and metaclasses). Resolving a target never
runs the program's code.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import sys
import types
from dataclasses import dataclass, field
from typing import Any

from ..errors import LivepatchError
from ..payload import static
from ..payload.manifest import split_target

_PROPERTY_PARTS = {"getter": "fget", "setter": "fset", "deleter": "fdel"}
_LRU_WRAPPER: type = type(functools.lru_cache(lambda: None))
ABSENT: object = type("Absent", (), {"__repr__": lambda self: "<absent>"})()


@dataclass
class FunctionTarget:
    """A Python function to patch, with the context its replacement compiles in."""

    target: str
    module: types.ModuleType
    func: types.FunctionType
    classes: list[type]  # enclosing classes, outermost first (empty for module functions)
    caches: list[object] = field(default_factory=list)  # lru_cache wrappers to clear

    @property
    def klass(self) -> type | None:
        return self.classes[-1] if self.classes else None


@dataclass
class DataTarget:
    """A module or class attribute replaced by value."""

    target: str
    module: types.ModuleType
    holder: types.ModuleType | type
    name: str

    @property
    def namespace(self) -> dict[str, object]:
        return (
            static.module_dict(self.holder)
            if static.is_module(self.holder)
            else dict(static.class_dict(self.holder))  # type: ignore[arg-type]
        )

    def current(self) -> object:
        return self.namespace.get(self.name, ABSENT)


def find_module(target: str, field_name: str) -> types.ModuleType:
    """The imported module of a target (modules not imported yet are handled by the
    engine as pending before resolution is asked for)."""
    modname, _ = split_target(target, field_name)
    module = sys.modules.get(modname)
    if static.is_module(module):
        return module
    if not importable(modname):
        raise LivepatchError(
            "not-found", f"{target}: module {modname} does not exist in this process"
        )
    raise LivepatchError(
        "not-found",
        f"{target}: module {modname} is not (or no longer) imported in this process",
    )


def _walk(
    target: str, module: types.ModuleType, parts: list[str]
) -> tuple[list[type], object, str]:
    """Walk all but the last part through class dicts; return (classes, holder, last)."""
    holder: object = module
    classes: list[type] = []
    for i, part in enumerate(parts[:-1]):
        namespace = static.namespace(holder)
        if part not in namespace:
            where = ".".join(parts[:i]) or module.__name__
            raise LivepatchError("not-found", f"{target}: {where} has no attribute {part!r}")
        value = namespace[part]
        if static.is_a(value, property) and i == len(parts) - 2 and parts[-1] in _PROPERTY_PARTS:
            return classes, value, parts[-1]
        if not static.is_class(value):
            raise LivepatchError(
                "unsupported-target",
                f"{target}: {'.'.join(parts[: i + 1])} is a {static.class_name(type(value))}, not a class; "
                "a target walks through classes only",
            )
        classes.append(value)
        holder = value
    return classes, holder, parts[-1]


def _locate(target: str) -> tuple[types.ModuleType, list[type], object, str]:
    """(module, enclosing classes, holder, last name) of a target."""
    module = find_module(target, "target")
    _, qualname = split_target(target, "target")
    classes, holder, last = _walk(target, module, qualname.split("."))
    return module, classes, holder, last


def resolve_function(target: str) -> FunctionTarget:
    """Resolve a ``funcs`` target to the innermost Python function."""
    module, classes, holder, last = _locate(target)
    obj: object
    if static.is_a(holder, property):
        obj = static.property_part(holder, _PROPERTY_PARTS[last])  # type: ignore[arg-type]
        if obj is None:
            raise LivepatchError("not-found", f"{target}: the property has no {last}")
    else:
        namespace = static.namespace(holder)
        if last not in namespace:
            inherited = static.is_class(holder) and any(
                last in static.class_dict(k) for k in static.mro(holder)[1:]
            )
            hint = " (it is inherited: target the class that defines it)" if inherited else ""
            raise LivepatchError("not-found", f"{target}: {last!r} is not defined there{hint}")
        obj = namespace[last]
    if static.is_a(obj, property):
        obj = static.property_part(obj, "fget")  # type: ignore[arg-type]
        if obj is None:
            raise LivepatchError("not-found", f"{target}: the property has no getter")
    try:
        obj, passed = static.unwrap(obj)
    except RecursionError:
        raise LivepatchError(
            "unsupported-target", f"{target}: __wrapped__ chain is too long or cyclic"
        ) from None
    caches = [o for o in (*passed, obj) if _is_cache(o)]
    if not static.is_function(obj):
        kind = static.class_name(type(obj))
        if static.is_a(
            obj,
            (types.BuiltinFunctionType, types.WrapperDescriptorType, types.MethodDescriptorType),
        ):
            why = "a C function; only functions written in Python can be patched"
        elif static.is_class(obj):
            why = "a class; patch its methods one by one"
        else:
            why = f"a {kind}, not a Python function"
        raise LivepatchError("unsupported-target", f"{target} is {why}")
    return FunctionTarget(target, module, obj, classes, caches)


def _is_cache(obj: object) -> bool:
    """An ``functools.lru_cache``/``cache`` wrapper, whose ``cache_clear`` the engine
    calls after a swap: the C wrapper, or the pure-Python one (a function carrying
    ``cache_clear`` in its ``__dict__``, made by ``functools``)."""
    if static.is_a(obj, _LRU_WRAPPER):
        return True
    if not static.is_function(obj):
        return False
    own = static.instance_dict(obj)
    clear = own.get("cache_clear") if own is not None else None
    return static.is_function(clear) and clear.__module__ == "functools"


def resolve_data(target: str) -> DataTarget:
    """Resolve a ``data`` target to its holder (module or class) and attribute name."""
    module, _, holder, last = _locate(target)
    if static.is_a(holder, property):
        raise LivepatchError(
            "unsupported-target", f"{target}: a property part is code; patch it as a function"
        )
    assert static.is_module(holder) or static.is_class(holder)
    if static.is_class(holder) and not _writable_class(holder):
        raise LivepatchError(
            "unsupported-target",
            f"{target}: class {static.class_qualname(holder)} is immutable (a C type)",
        )
    assert static.is_module(holder) or static.is_class(holder)
    return DataTarget(target, module, holder, last)


def _writable_class(cls: type) -> bool:
    flags = type.__dict__["__flags__"].__get__(cls)  # not through a metaclass
    return not flags & (1 << 8)  # Py_TPFLAGS_IMMUTABLETYPE


def _search_path(path: object) -> list[str] | None:
    """A package's ``__path__`` as a list of directories, read without the program's
    code: a plain list of strings, or the import system's own namespace path; any other
    object is the program's (None)."""
    if type(path) is list:
        return [p for p in path if type(p) is str]
    cls = type(path)
    if static.class_qualname(cls) == "_NamespacePath" and static.class_module(cls) in (
        "importlib._bootstrap_external",
        "_frozen_importlib_external",
    ):
        return [p for p in list(path) if type(p) is str]  # type: ignore[call-overload]
    return None


def importable(modname: str) -> bool:
    """Whether module ``modname`` can be found, without importing anything: neither it
    nor its parent packages (``importlib.util.find_spec`` of a dotted name imports the
    parents, and a package's ``__init__`` is the program's code). A parent already
    imported gives its ``__path__`` (read from its namespace); one not imported is found
    on the file system, and its search locations are used for the next part."""
    parts = modname.split(".")
    path: Any = None
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        module = sys.modules.get(name)
        if static.is_module(module):
            if last:
                return True
            path = static.module_dict(module).get("__path__")
            if path is None:
                return False  # not a package
            continue
        try:
            if i == 0:
                spec = importlib.util.find_spec(name)  # a top-level name imports nothing
            else:
                search = _search_path(path)
                if search is None:
                    return False  # a __path__ the program made: not read (its code)
                spec = importlib.machinery.PathFinder.find_spec(name, search)
        except (ImportError, ValueError, TypeError):
            return False
        if spec is None:
            return False
        if last:
            return True
        path = spec.submodule_search_locations
        if path is None:
            return False
    return True
