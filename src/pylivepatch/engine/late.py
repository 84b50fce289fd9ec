"""Objects imported later (SPEC §5, Linux ``klp_module_coming``).

A payload may target a module the process has not imported yet. While an applied
payload waits for such a module — and only then — a finder sits first on
``sys.meta_path``; for a module some payload waits for it lets the other finders find
it, wraps the loader, and after the module's code has run (before the importer sees the
module) hands it to the engine, which applies the waiting payloads to it: expectations,
hooks and one pause, as for any apply. If a payload refuses the module (its code is not
what the payload expects, or a pre hook vetoes), the import fails with ``ImportError``
naming the payload: known-unpatched code never runs.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from typing import Any


class LateImportHook:
    """The finder; ``wants(name)`` and ``imported(module)`` come from the engine."""

    def __init__(
        self, wants: Callable[[str], bool], imported: Callable[[types.ModuleType], None]
    ) -> None:
        self.wants = wants
        self.imported = imported

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: types.ModuleType | None = None,
    ) -> ModuleSpec | None:
        if not self.wants(fullname):
            return None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchingLoader(spec.loader, self.imported)  # type: ignore[assignment]
        return spec

    def install(self) -> None:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def remove(self) -> None:
        while self in sys.meta_path:
            sys.meta_path.remove(self)


class _PatchingLoader:
    """The module's own loader, plus the engine's turn right after the code has run."""

    def __init__(self, loader: Any, imported: Callable[[types.ModuleType], None]) -> None:
        self._loader = loader
        self._imported = imported

    def create_module(self, spec: ModuleSpec) -> types.ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: types.ModuleType) -> None:
        self._loader.exec_module(module)
        self._imported(module)

    def __getattr__(self, name: str) -> Any:  # get_code, get_source, is_package, ...
        return getattr(self._loader, name)
