"""Writing a payload by hand: the ``Patch`` object a payload module declares.

The decorators only *record*; nothing is patched when a payload module runs. ``pack``
(or the builder) reads the record, fingerprints the targets and writes the manifest;
inside the target, the manifest is what the engine trusts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import LivepatchError
from .manifest import CONSISTENCY, NAME_RE, split_target

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class FunctionRecord:
    target: str
    func: Callable[..., Any]


@dataclass(frozen=True)
class DataRecord:
    target: str
    value: Any


class Patch:
    """A payload being authored: ``patch = Patch("fix-login", version="1")``."""

    def __init__(
        self,
        name: str,
        *,
        version: str = "",
        description: str = "",
        metadata: dict[str, str] | None = None,
        replace: bool = False,
        depends: str | None = None,
        consistency: str = "transition",
    ) -> None:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ValueError(f"payload name {name!r} must be 1-127 characters of A-Z a-z 0-9 . _ -")
        if consistency not in CONSISTENCY:
            raise ValueError(f"consistency {consistency!r} must be one of {', '.join(CONSISTENCY)}")
        self.name = name
        self.version = version
        self.description = description
        self.metadata = dict(metadata or {})
        self.replace = replace
        self.depends = depends
        self.consistency = consistency
        self.functions: list[FunctionRecord] = []
        self._replacement_names: set[str] = set()
        self._targets: set[str] = set()
        self.data_entries: list[DataRecord] = []
        self.hooks: dict[str, Callable[..., Any]] = {}
        self.states: list[tuple[int, int]] = []

    def __repr__(self) -> str:
        return f"<Patch {self.name} funcs={len(self.functions)} data={len(self.data_entries)}>"

    def _claim(self, target: str) -> None:
        try:
            split_target(target, "target")
        except LivepatchError as exc:
            raise ValueError(exc.message) from None
        if target in self._targets:
            raise ValueError(f"{target} is patched twice in payload {self.name}")
        self._targets.add(target)

    def function(self, target: str) -> Callable[[F], F]:
        """Replace the function ``module:qualname`` with the decorated one."""
        self._claim(target)

        def record(func: F) -> F:
            qual = getattr(func, "__qualname__", "")
            if "<locals>" in qual:
                raise ValueError(
                    f"replacement for {target} must be defined at module or class level, not inside a function"
                )
            if qual in self._replacement_names:
                raise ValueError(
                    f"two replacements are named {qual} in payload {self.name}; give them distinct names"
                )
            self._replacement_names.add(qual)
            self.functions.append(FunctionRecord(target, func))
            return func

        return record

    def data(self, target: str, value: Any) -> None:
        """Replace the module or class attribute ``module:NAME`` by ``value``."""
        self._claim(target)
        self.data_entries.append(DataRecord(target, value))

    def state(self, id: int, version: int) -> None:  # noqa: A002 - the spec's word
        """Declare a system state this payload modifies (spec §6)."""
        if any(sid == id for sid, _ in self.states):
            raise ValueError(f"state {id} is declared twice in payload {self.name}")
        self.states.append((id, version))

    def _hook(self, kind: str, func: F) -> F:
        if kind in self.hooks:
            raise ValueError(f"payload {self.name} already has a {kind} hook")
        self.hooks[kind] = func
        return func

    def pre_apply(self, func: F) -> F:
        return self._hook("pre_apply", func)

    def post_apply(self, func: F) -> F:
        return self._hook("post_apply", func)

    def pre_revert(self, func: F) -> F:
        return self._hook("pre_revert", func)

    def post_revert(self, func: F) -> F:
        return self._hook("post_revert", func)

    def apply(self, func: F) -> F:
        return self._hook("apply", func)

    def revert(self, func: F) -> F:
        return self._hook("revert", func)
