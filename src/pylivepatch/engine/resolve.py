"""Finding what a target names in the live process.

``module:qualname`` is walked through the module's and classes' own ``__dict__`` (never
``getattr``, which would run descriptors and return bound methods), then unwrapped to
the innermost Python function: staticmethod/classmethod ``__func__``, property
getter/setter/deleter, and ``__wrapped__`` chains (``functools.wraps``,
``lru_cache``, ``singledispatch``). Patching that innermost function in place is what
makes every wrapper, alias, bound method and registry see the new code.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass, field
from typing import Any

from ..errors import LivepatchError
from ..payload.manifest import split_target

_PROPERTY_PARTS = {"getter": "fget", "setter": "fset", "deleter": "fdel"}
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
            self.holder.__dict__
            if isinstance(self.holder, types.ModuleType)
            else dict(vars(self.holder))
        )

    def current(self) -> object:
        return self.namespace.get(self.name, ABSENT)


def find_module(target: str, field_name: str) -> types.ModuleType:
    """The imported module of a target (modules not imported yet are handled by the
    engine as pending before resolution is asked for)."""
    modname, _ = split_target(target, field_name)
    module = sys.modules.get(modname)
    if isinstance(module, types.ModuleType):
        return module
    try:
        spec = importlib.util.find_spec(modname)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
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
        namespace = vars(holder)
        if part not in namespace:
            where = ".".join(parts[:i]) or module.__name__
            raise LivepatchError("not-found", f"{target}: {where} has no attribute {part!r}")
        value = namespace[part]
        if isinstance(value, property) and i == len(parts) - 2 and parts[-1] in _PROPERTY_PARTS:
            return classes, value, parts[-1]
        if not isinstance(value, type):
            raise LivepatchError(
                "unsupported-target",
                f"{target}: {'.'.join(parts[: i + 1])} is a {type(value).__name__}, not a class; "
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
    if isinstance(holder, property):
        obj = getattr(holder, _PROPERTY_PARTS[last])
        if obj is None:
            raise LivepatchError("not-found", f"{target}: the property has no {last}")
    else:
        namespace = vars(holder)
        if last not in namespace:
            inherited = isinstance(holder, type) and any(
                last in vars(k) for k in holder.__mro__[1:]
            )
            hint = " (it is inherited: target the class that defines it)" if inherited else ""
            raise LivepatchError("not-found", f"{target}: {last!r} is not defined there{hint}")
        obj = namespace[last]
    if isinstance(obj, property):
        obj = obj.fget
        if obj is None:
            raise LivepatchError("not-found", f"{target}: the property has no getter")
    caches: list[object] = []
    seen = 0
    while True:
        seen += 1
        if seen > 100:
            raise LivepatchError(
                "unsupported-target", f"{target}: __wrapped__ chain is too long or cyclic"
            )
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
            continue
        if callable(_attr(obj, "cache_clear")) and not isinstance(obj, type):
            caches.append(obj)
        wrapped = None if isinstance(obj, type) else _attr(obj, "__wrapped__")
        if wrapped is not None:
            obj = wrapped
            continue
        break
    if not isinstance(obj, types.FunctionType):
        kind = type(obj).__name__
        if isinstance(
            obj,
            (types.BuiltinFunctionType, types.WrapperDescriptorType, types.MethodDescriptorType),
        ):
            why = "a C function; only functions written in Python can be patched"
        elif isinstance(obj, type):
            why = "a class; patch its methods one by one"
        else:
            why = f"a {kind}, not a Python function"
        raise LivepatchError("unsupported-target", f"{target} is {why}")
    return FunctionTarget(target, module, obj, classes, caches)


def resolve_data(target: str) -> DataTarget:
    """Resolve a ``data`` target to its holder (module or class) and attribute name."""
    module, _, holder, last = _locate(target)
    if isinstance(holder, property):
        raise LivepatchError(
            "unsupported-target", f"{target}: a property part is code; patch it as a function"
        )
    assert isinstance(holder, (types.ModuleType, type))
    if isinstance(holder, type) and not _writable_class(holder):
        raise LivepatchError(
            "unsupported-target", f"{target}: class {holder.__qualname__} is immutable (a C type)"
        )
    return DataTarget(target, module, holder, last)


def _writable_class(cls: type) -> bool:
    return (
        not (cls.__flags__ & (1 << 8)) if hasattr(cls, "__flags__") else True
    )  # Py_TPFLAGS_IMMUTABLETYPE


def _attr(obj: Any, name: str) -> Any:
    """``getattr(obj, name, None)``, also when a wrapper's ``__getattr__`` raises
    something else than AttributeError (then it has no such attribute, for us)."""
    try:
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001 - a target's own code, whatever it raises
        return None
