"""Shadow variables (spec §6, Linux ``klp_shadow_*``): data attached to existing
objects without changing their class.

A payload that fixes a bug sometimes needs one more field on objects that already
exist (a lock per connection, a counter per session). It cannot change their class
under live instances; it attaches a *shadow* keyed by ``(object, id)`` instead::

    from pylivepatch import shadow

    LOCK = 0x5ec1
    lock = shadow.get_or_alloc(conn, LOCK, lambda obj: threading.Lock())

Lifetimes:

- For an object that can be weakly referenced, the entry lives as long as the object:
  when the object is collected its shadows go with it (no dtor runs then, as in the
  kernel). The registry never keeps such an object alive. Data that itself refers to
  its object does keep it alive, until the shadow is freed.
- An object that cannot be weakly referenced (an int, a tuple, an instance of a
  ``__slots__`` class without ``__weakref__``) is held strongly by its shadow until the
  shadow is freed: free it (or ``free_all`` in ``post_revert``) when done.

All operations are thread-safe. ``get_or_alloc`` attaches one instance per pair however
many threads race for it, and its ``ctor`` runs only for the instance attached: like the
kernel, it runs under the registry's lock (reentrant, so a ctor may use shadows too).
A ctor that raises attaches nothing.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from ..errors import LivepatchError

__all__ = ["alloc", "free", "free_all", "get", "get_or_alloc"]

Ctor = Callable[..., Any]
Dtor = Callable[[Any, Any], Any]


class _Entry:
    __slots__ = ("data", "ref", "strong")

    def __init__(self, obj: object, data: Any, on_death: Callable[[Any], None]) -> None:
        self.data = data
        try:
            self.ref: weakref.ref[Any] | None = weakref.ref(obj, on_death)
            self.strong: object | None = None
        except TypeError:  # not weakly referenceable: keep it alive until freed
            self.ref = None
            self.strong = obj

    def target(self) -> object | None:
        return self.strong if self.ref is None else self.ref()


class ShadowRegistry:
    """The table of shadow variables, keyed by ``(id(obj), shadow id)``."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entries: dict[tuple[int, int], _Entry] = {}

    def _on_death(self, key: tuple[int, int]) -> Callable[[Any], None]:
        def forget(ref: weakref.ref[Any]) -> None:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry.ref is ref:
                    del self._entries[key]

        return forget

    def _find(self, obj: object, sid: int) -> _Entry | None:
        entry = self._entries.get((id(obj), sid))
        # The id of a dead object may be reused before its weakref callback has run:
        # only an entry whose referent is this very object counts.
        if entry is not None and entry.target() is obj:
            return entry
        return None

    def get(self, obj: object, sid: int) -> Any:
        with self._lock:
            entry = self._find(obj, sid)
            return None if entry is None else entry.data

    def _attach(self, obj: object, sid: int, ctor: Ctor | None, args: tuple[Any, ...]) -> Any:
        data = ctor(obj, *args) if ctor is not None else {}
        key = (id(obj), sid)
        self._entries[key] = _Entry(obj, data, self._on_death(key))
        return data

    def alloc(self, obj: object, sid: int, ctor: Ctor | None = None, *args: Any) -> Any:
        with self._lock:
            if self._find(obj, sid) is not None:
                raise LivepatchError(
                    "exists",
                    f"shadow variable {sid} already exists on this {type(obj).__name__}; "
                    "use get_or_alloc, or free it first",
                )
            return self._attach(obj, sid, ctor, args)

    def get_or_alloc(self, obj: object, sid: int, ctor: Ctor | None = None, *args: Any) -> Any:
        with self._lock:
            entry = self._find(obj, sid)
            if entry is not None:
                return entry.data
            return self._attach(obj, sid, ctor, args)

    def free(self, obj: object, sid: int, dtor: Dtor | None = None) -> None:
        with self._lock:
            entry = self._find(obj, sid)
            if entry is None:
                return
            del self._entries[(id(obj), sid)]
            if dtor is not None:
                dtor(obj, entry.data)

    def free_all(self, sid: int, dtor: Dtor | None = None) -> None:
        with self._lock:
            doomed = [(k, e) for k, e in self._entries.items() if k[1] == sid]
            for key, _ in doomed:
                del self._entries[key]
            if dtor is not None:
                for _, entry in doomed:
                    obj = entry.target()
                    if obj is not None:
                        dtor(obj, entry.data)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


_registry = ShadowRegistry()


def get(obj: object, id: int) -> Any:  # noqa: A002 - the spec's name
    """The shadow data ``id`` of ``obj``, or None."""
    return _registry.get(obj, id)


def alloc(obj: object, id: int, ctor: Ctor | None = None, *args: Any) -> Any:  # noqa: A002
    """Attach new shadow data (``ctor(obj, *args)``, or ``{}``); ``exists`` if attached."""
    return _registry.alloc(obj, id, ctor, *args)


def get_or_alloc(obj: object, id: int, ctor: Ctor | None = None, *args: Any) -> Any:  # noqa: A002
    """The attached shadow data, or attach it; one instance per ``(obj, id)``."""
    return _registry.get_or_alloc(obj, id, ctor, *args)


def free(obj: object, id: int, dtor: Dtor | None = None) -> None:  # noqa: A002
    """Detach shadow ``id`` of ``obj``; ``dtor(obj, data)`` runs if given."""
    _registry.free(obj, id, dtor)


def free_all(id: int, dtor: Dtor | None = None) -> None:  # noqa: A002
    """Detach shadow ``id`` from every object; ``dtor(obj, data)`` runs for each."""
    _registry.free_all(id, dtor)
