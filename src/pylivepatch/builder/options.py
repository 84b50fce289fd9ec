"""What ``build`` is asked (:class:`BuildOptions`) and what it answers
(:class:`BuildResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import datafiles
from .changes import Change, ModuleDiff, Refusal


@dataclass
class BuildOptions:
    name: str = "build"
    version: str = ""
    description: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    replace: bool = False
    depends: str | None = None
    consistency: str = "transition"
    pythons: list[str] | None = None
    allow: frozenset[str] = frozenset()
    repo: str | None = None
    installed: bool = False  # OLD is what the environment of python_env has installed
    python_env: str | None = None  # the service's interpreter or virtualenv (default: this one)
    dist: str | None = None  # the distribution NEW is a release of (default: from NEW)
    hooks: str | None = None  # payload code added to the generated module (hooks, states)


@dataclass
class BuildResult:
    diffs: list[ModuleDiff]
    changes: list[Change]
    refusals: list[Refusal]  # not allowed: the build failed
    allowed: list[Refusal]  # accepted by --allow: the author must handle them
    warnings: list[str]
    source: str = ""  # the payload module
    data: bytes = b""  # the packed archive
    manifest: dict[str, Any] | None = None
    installed: dict[str, str] | None = None  # OLD as found installed: name, version, where
    error: str = ""  # "code: message" of a failure after the comparison (packing)
    files: list[datafiles.DataFile] = field(default_factory=list)  # --allow data-files

    @property
    def ok(self) -> bool:
        return not self.refusals and bool(self.changes or self.files)

    @property
    def no_change(self) -> bool:
        return not self.changes and not self.refusals and not self.allowed and not self.files
