"""Objects imported later and reloaded (SPEC §5, Linux ``klp_module_coming``).

A payload may target a module the process has not imported yet. While a payload is
applied, a finder sits first on ``sys.meta_path``. It answers only for a module an
applied payload waits for, or for ``importlib.reload`` of a module a payload patches
(for any other import it costs one set lookup). It lets the other finders find the
module, wraps the loader, and after the module's code has run (before the importer sees
the module) hands it to the engine, which applies the payloads to it: expectations,
hooks and one pause, as for any apply. If a payload refuses the module (its code is not
what the payload expects, or a pre hook vetoes), the import fails with ``ImportError``
naming the payload: known-unpatched code never runs. A refused reload also puts the
module's namespace back as it was, still patched.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from typing import Any


class LateImportHook:
    """The finder; ``wants(name, reloading)`` and ``imported(module)`` come from the engine."""

    def __init__(
        self,
        wants: Callable[[str, bool], bool],
        imported: Callable[[types.ModuleType], None],
    ) -> None:
        self.wants = wants
        self.imported = imported

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: types.ModuleType | None = None,
    ) -> ModuleSpec | None:
        reloading = target is not None  # importlib.reload passes the module being reloaded
        if not self.wants(fullname, reloading):
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
            # A reload sets the module's __spec__ and __loader__ before it runs the new
            # code in the module's own namespace: keep the namespace as it is now, so
            # that a refused reload leaves the module exactly as it was (still patched).
            saved = dict(target.__dict__) if target is not None else None
            spec.loader = _PatchingLoader(spec.loader, self.imported, saved)  # type: ignore[assignment]
        return spec

    def install(self) -> None:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def remove(self) -> None:
        while self in sys.meta_path:
            sys.meta_path.remove(self)


class _PatchingLoader:
    """The module's own loader, plus the engine's turn right after the code has run."""

    def __init__(
        self,
        loader: Any,
        imported: Callable[[types.ModuleType], None],
        saved: dict[str, Any] | None,
    ) -> None:
        self._loader = loader
        self._imported = imported
        self._saved = saved  # a reload: the namespace before it

    def create_module(self, spec: ModuleSpec) -> types.ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: types.ModuleType) -> None:
        saved = self._saved
        self._loader.exec_module(module)
        try:
            self._imported(module)
        except BaseException:
            if saved is not None:
                module.__dict__.clear()
                module.__dict__.update(saved)
            raise

    def __getattr__(self, name: str) -> Any:  # get_code, get_source, is_package, ...
        return getattr(self._loader, name)
