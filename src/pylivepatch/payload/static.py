"""Reading a target's objects without running their code.

The engine reads objects it did not make: module globals, classes, the functions and
wrappers a target names, the values a data entry replaces. Ordinary attribute access
on such an object may run the program's own code, which a check must never do:

- ``isinstance(obj, cls)`` falls back to ``obj.__class__`` when the type does not
  match, and a lazy proxy (Django's ``LazyObject``/``LazySettings``) answers that by
  setting itself up (reading the settings, importing the project);
- ``getattr``/``hasattr`` reach a ``__getattr__`` (of the object, of its metaclass, or
  of a module), a property, any descriptor's ``__get__``, a ``__getattribute__``;
- ``isinstance``/``issubclass`` with a class whose metaclass defines
  ``__instancecheck__``/``__subclasscheck__`` call them; ``callable(x)``, ``bool(x)``
  and ``x == y`` call the object's type.

The helpers here look only at ``type(obj)`` (which never runs Python code) and at the
``__dict__`` of the object and of the classes of ``type(obj).__mro__``, read through the
C descriptors of ``type``, ``object`` and ``ModuleType`` themselves (a class may
shadow ``__dict__``, ``__mro__`` or ``__name__`` with a property; those are not
consulted). A value found is returned as stored, never through its ``__get__``. The
only comparison made is ``is``; ``issubclass(type(obj), C)`` is used only with a
class ``C`` of the standard library whose metaclass is ``type``, which answers from the
type's C-level MRO.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any, TypeGuard

_TYPE_DICT = type.__dict__["__dict__"]
_TYPE_MRO = type.__dict__["__mro__"]
_TYPE_NAME = type.__dict__["__name__"]
_TYPE_QUALNAME = type.__dict__["__qualname__"]
_MODULE_DICT: Any = vars(types.ModuleType)["__dict__"]
_STATIC_FUNC = staticmethod.__dict__["__func__"]
_CLASS_FUNC = classmethod.__dict__["__func__"]
_PROPERTY_PARTS = {part: property.__dict__[part] for part in ("fget", "fset", "fdel")}
# The descriptors CPython makes for an instance ``__dict__`` (a getset on heap types, a
# member on some C types): reading through them runs no Python code.
_C_DESCRIPTORS = (types.GetSetDescriptorType, types.MemberDescriptorType)

MISSING: Any = type("Missing", (), {"__repr__": lambda self: "<missing>"})()


def is_a(obj: object, cls: type | tuple[type, ...]) -> bool:
    """``isinstance(obj, cls)`` from ``type(obj)`` alone (never ``obj.__class__``).

    ``cls`` must be a class (or tuple of classes) of the engine or the standard library
    whose metaclass is ``type``; the answer comes from the C-level MRO of ``type(obj)``."""
    return issubclass(type(obj), cls)


def is_class(obj: object) -> TypeGuard[type]:
    """Whether ``obj`` is a class (its type derives from ``type``)."""
    return issubclass(type(obj), type)


def is_module(obj: object) -> TypeGuard[types.ModuleType]:
    return issubclass(type(obj), types.ModuleType)


def is_function(obj: object) -> TypeGuard[types.FunctionType]:
    """A plain Python function (``types.FunctionType`` cannot be subclassed)."""
    return type(obj) is types.FunctionType


def mro(cls: type) -> tuple[type, ...]:
    """``cls.__mro__`` as CPython keeps it (a metaclass cannot intercept the read)."""
    return _TYPE_MRO.__get__(cls)


def class_dict(cls: type) -> Mapping[str, Any]:
    """The class's own namespace (``vars(cls)`` without the metaclass)."""
    return _TYPE_DICT.__get__(cls)


def class_name(cls: type) -> str:
    return _TYPE_NAME.__get__(cls)


def class_qualname(cls: type) -> str:
    return _TYPE_QUALNAME.__get__(cls)


def class_module(cls: type) -> str | None:
    """The ``__module__`` a class was defined in, as stored in its namespace (a string),
    or None (C types keep it in their name; a class may store anything there)."""
    value = class_dict(cls).get("__module__")
    return value if type(value) is str else None


def module_dict(module: types.ModuleType) -> dict[str, Any]:
    """A module's namespace (``vars(module)`` without a subclass's ``__getattribute__``)."""
    return _MODULE_DICT.__get__(module)


def module_name(module: types.ModuleType) -> str | None:
    value = module_dict(module).get("__name__")
    return value if type(value) is str else None


def namespace(holder: object) -> Mapping[str, Any]:
    """The namespace of a module or a class (read-only for a class)."""
    if is_module(holder):
        return module_dict(holder)
    if is_class(holder):
        return class_dict(holder)
    raise TypeError(f"not a module or a class: a {class_name(type(holder))}")


def instance_dict(obj: object) -> Mapping[str, Any] | None:
    """The ``__dict__`` of an instance, when its class keeps one the C way (None when it
    has none, or when a class shadows ``__dict__`` with something of its own)."""
    if is_module(obj):
        return module_dict(obj)
    if is_class(obj):
        return class_dict(obj)
    for klass in mro(type(obj)):
        descr = class_dict(klass).get("__dict__", MISSING)
        if descr is MISSING:
            continue
        if type(descr) not in _C_DESCRIPTORS:
            return None
        try:
            found = descr.__get__(obj, type(obj))
        except (AttributeError, TypeError):
            return None
        return found if type(found) is dict else None
    return None


def class_lookup(cls: type, name: str, default: Any = MISSING) -> Any:
    """``name`` as found in the namespaces of ``cls.__mro__``, unbound."""
    for klass in mro(cls):
        found = class_dict(klass).get(name, MISSING)
        if found is not MISSING:
            return found
    return default


def static_attr(obj: object, name: str, default: Any = MISSING) -> Any:
    """``obj.name`` where it is a plain value: the instance's own ``__dict__`` first
    (a class's or module's namespace for those), then the class namespaces of
    ``type(obj).__mro__``; nothing found (or a descriptor or property found in a class,
    whose value would need its code) gives ``default``."""
    if is_class(obj):
        return class_lookup(obj, name, default)
    own = instance_dict(obj)
    if own is not None and name in own:
        return own[name]
    found = class_lookup(type(obj), name, MISSING)
    if found is MISSING:
        return default
    kind = type(found)
    if kind is types.FunctionType or class_lookup(kind, "__get__", None) is not None:
        return default  # a method or a descriptor: its value needs its code
    return found


def func_of(wrapper: staticmethod[Any, Any] | classmethod[Any, Any, Any]) -> object:
    """The ``__func__`` a staticmethod or classmethod holds (never a subclass's own)."""
    if is_a(wrapper, staticmethod):
        return _STATIC_FUNC.__get__(wrapper)
    return _CLASS_FUNC.__get__(wrapper)


def property_part(prop: property, part: str) -> object:
    """``prop.fget``/``fset``/``fdel`` as the property stores it."""
    return _PROPERTY_PARTS[part].__get__(prop)


def unwrap(obj: object, limit: int = 100) -> tuple[object, list[object]]:
    """Follow staticmethod/classmethod ``__func__`` and ``__wrapped__`` chains
    (``functools.wraps``, ``lru_cache``, ``singledispatch``) statically: the innermost
    object and the objects passed on the way. A ``__wrapped__`` counts only where it is
    stored in the wrapper's own ``__dict__`` (where ``functools.update_wrapper`` puts
    it); classes are never unwrapped. Raises ``RecursionError`` past ``limit`` steps."""
    passed: list[object] = []
    for _ in range(limit):
        if is_a(obj, (staticmethod, classmethod)):
            passed.append(obj)
            obj = func_of(obj)  # type: ignore[arg-type]
            continue
        if is_class(obj):
            return obj, passed
        own = instance_dict(obj)
        wrapped = own.get("__wrapped__") if own is not None else None
        if wrapped is None:
            return obj, passed
        passed.append(obj)
        obj = wrapped
    raise RecursionError("__wrapped__ chain is too long or cyclic")
