"""What comparing two versions of a package yields (spec §8): the changes a payload
carries, the refusals with their kinds (each with what ``--allow KIND`` means), and a
module's diff holding both."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

#: refusal kinds, each with what ``--allow KIND`` means
REFUSALS: dict[str, str] = {
    "decorator": "a changed decorator (other than staticmethod/classmethod/property)",
    "class-bases": "changed base classes",
    "metaclass": "a changed metaclass or class keyword",
    "slots": "changed __slots__",
    "dataclass-fields": "changed dataclass/attrs fields",
    "mutable-data": "a changed mutable module or class attribute",
    "computed-data": "a changed computed module or class attribute",
    "side-effect": "a changed module-level statement with side effects",
    "captured-constant": "a constant whose old value was captured at import",
    "instance-state": "new or retyped instance attributes set up by __init__",
    "removed-referenced": "a removed definition the new code still uses",
    "new-module": "a new module the new code imports",
    "c-extension": "a changed C extension source",
    "syntax": "a module that does not parse",
    "name-collision": "two modules of one payload need different objects under one name",
    "data-files": (
        "a changed or added non-Python file of the distribution, carried by the payload and "
        "written where the process reads it at use time"
    ),
    "nothing-to-patch": "the only changes are release metadata (a version)",
    "requirements": (
        "a changed runtime requirement of the distribution (a payload installs nothing: the "
        "author has checked that every process's environment already meets the new one)"
    ),
}


#: kinds no hook can make up for: ``--allow`` refuses them
UNALLOWABLE = frozenset({"syntax", "name-collision", "nothing-to-patch"})


#: kinds ``--allow`` will accept once the payload can carry what they need
NOT_YET: dict[str, str] = {}


#: supported change kinds
CHANGES = (
    "function", "method", "new function", "new method", "new class", "new import",
    "new name", "constant", "descriptor", "import", "pattern", "value", "new names",
)  # fmt: skip


@dataclass(frozen=True)
class Refusal:
    kind: str
    file: str
    line: int
    target: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.target}: {self.reason}"


@dataclass
class Change:
    """One supported change; ``node`` is the NEW definition or statement."""

    kind: str
    module: str
    qualname: str
    file: str
    line: int
    node: ast.AST | None = None
    value: Any = None  # a constant's new value
    role: str | None = None  # property accessor: getter/setter/deleter
    descriptor: str | None = None  # staticmethod/classmethod (new or changed descriptor)
    importers: list[str] = field(default_factory=list)  # modules that copied a constant

    @property
    def target(self) -> str:
        return f"{self.module}:{self.qualname}"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.target}"


@dataclass
class ModuleDiff:
    module: str
    file: str
    old: ast.Module | None
    new: ast.Module | None
    changes: list[Change] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cosmetic: bool = False  # changed text, no functional change
