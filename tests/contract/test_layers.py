"""The layers of the package import only downward (docs/design.md, "Layout").

Read from the source with ``ast`` (nothing is imported): every ``import`` and ``from
... import`` of ``src/pylivepatch``, at module level, inside functions (lazy imports)
and under ``TYPE_CHECKING`` alike, must name a module of its own layer or of a layer
below. The public face, ``pylivepatch/__init__.py``, stands above every layer: only the
command line (the top layer) takes a name from it, ``__version__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "pylivepatch"

#: bottom first; a module belongs to the first layer one of whose prefixes it starts with
LAYERS: list[tuple[str, ...]] = [
    ("pylivepatch.errors", "pylivepatch.results", "pylivepatch.kinds"),
    ("pylivepatch.payload",),
    ("pylivepatch.engine", "pylivepatch.state", "pylivepatch.process_engine"),
    ("pylivepatch.agent",),
    ("pylivepatch.client", "pylivepatch.attach", "pylivepatch.builder", "pylivepatch.control"),
    ("pylivepatch.cli", "pylivepatch.__main__"),
]


def _layer(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and docs/design.md)")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file (the module ``name``,
    by default the one at ``path``); ``from P import N`` counts as an import of ``P.N``
    where ``P.N`` is a module of the package."""
    name = name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            for alias in node.names:
                sub = f"{parent}.{alias.name}"
                is_module = (SRC / sub.replace(".", "/")).with_suffix(".py").exists() or (
                    SRC / sub.replace(".", "/") / "__init__.py"
                ).exists()
                found.append((node.lineno, sub if is_module else parent))
    return [(line, mod) for line, mod in found if mod.split(".")[0] == "pylivepatch"]


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent.name != "boot")


def test_every_module_has_a_layer():
    for path in SOURCES:
        if path != PACKAGE / "__init__.py":
            _layer(_module_name(path))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_only_downward(path):
    if path == PACKAGE / "__init__.py":
        return  # the public face re-exports every layer
    own = _layer(_module_name(path))
    wrong = [
        f"{path.relative_to(SRC)}:{line} imports {mod}"
        + (" (the public face)" if mod == "pylivepatch" else f" (layer {_layer(mod)} > {own})")
        for line, mod in _imports(path)
        if (mod == "pylivepatch" and own < len(LAYERS) - 1)
        or (mod != "pylivepatch" and _layer(mod) > own)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_lazy_upward_import(tmp_path):
    """The checker itself: a lazy relative import from the engine into the agent is
    seen, as the module it names."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..agent import server\n")
    found = _imports(probe, "pylivepatch.engine.probe")
    assert found == [(2, "pylivepatch.agent.server")]
    assert _layer("pylivepatch.agent.server") > _layer("pylivepatch.engine.probe")
