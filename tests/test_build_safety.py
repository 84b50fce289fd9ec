"""The builder never writes an unsafe payload (issue 23): a fix that lives in a data
file is refused naming the file; a payload whose only change is release metadata is
refused as nothing to patch; a version component is not a captured constant."""

from __future__ import annotations

import zipfile

import pytest

from pylivepatch import LivepatchError
from pylivepatch.build.builder import BuildOptions, build
from test_build import Versions


@pytest.fixture
def versions(lab):
    made: list[Versions] = []

    def make(old: dict[str, str], new: dict[str, str]) -> Versions:
        made.append(Versions(lab, old, new))
        return made[-1]

    yield make
    for v in made:
        v.close()


def _wheel(v: Versions, root, tag: str) -> str:
    path = v.lab.root / f"{v.pkg}-{tag}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted((root / v.pkg).rglob("*")):
            if f.is_file():
                zf.write(f, f"{v.pkg}/{f.relative_to(root / v.pkg).as_posix()}")
    return str(path)


def test_a_fix_in_a_data_file_is_refused_naming_it(versions):
    """The release changes only a packaged data file (here a JSON table of trusted
    hosts) and __version__: before, the builder dropped the data file without a word and
    built a payload of the version string."""
    code = "import json, os\n\ndef trusted():\n    return json.load(open(os.path.join(os.path.dirname(__file__), 'hosts.json')))\n"
    old = {"hosts.py": code, "hosts.json": '["a", "evil"]\n'}
    new = {"hosts.py": code, "hosts.json": '["a"]\n'}
    v = versions(old, new)
    (v.old / v.pkg / "__init__.py").write_text("__version__ = '1.0'\n")
    (v.new / v.pkg / "__init__.py").write_text("__version__ = '1.1'\n")
    for wheels in (False, True):
        if wheels:
            result = build(
                _wheel(v, v.old, "1.0"), _wheel(v, v.new, "1.1"), BuildOptions(name="fix")
            )
        else:
            result = v.build()
        assert not result.data
        got = [(r.kind, r.target.replace(v.pkg, "pkg")) for r in result.refusals]
        assert got == [("data-files", "pkg/hosts.json"), ("nothing-to-patch", "pkg:__version__")]
        assert "was changed" in result.refusals[0].reason
        assert "the fix is in the data files refused here" in result.refusals[1].reason
    with pytest.raises(LivepatchError) as err:
        v.build("data-files")
    assert err.value.message.startswith("--allow data-files: not yet available: ")


def test_an_added_data_file_is_refused_and_a_code_fix_beside_it_too(versions):
    v = versions(
        {"m.py": "def f():\n    return 1\n"},
        {"m.py": "def f():\n    return 2\n"},
    )
    (v.new / v.pkg / "templates").mkdir()
    (v.new / v.pkg / "templates" / "page.html").write_text("<p>{{ x }}</p>\n")
    assert v.refusals() == [
        "pkg/templates/page.html:0: data-files: pkg/templates/page.html: a data file of the "
        "distribution was added; a payload patches code and cannot carry data files yet: the "
        "running process would keep reading the old file. Ship the release, or change the "
        "code so it does not need the new file"
    ]


def test_only_version_metadata_is_nothing_to_patch(versions):
    old = (
        "__version__ = '2.0.0'\nMAJOR = 2\nMINOR = 0\nMICRO = 0\nVERSION = (MAJOR, MINOR, MICRO)\n"
    )
    new = old.replace("2.0.0", "2.0.1").replace("MICRO = 0", "MICRO = 1")
    v = versions({"version.py": old}, {"version.py": new})
    result = v.build()
    assert not result.data
    assert [(r.kind, r.target.replace(v.pkg, "pkg")) for r in result.refusals] == [
        ("nothing-to-patch", "pkg.version:__version__")
    ]


def test_a_version_component_is_not_a_captured_constant(versions):
    """MICRO = 1, read at import by VERSION = (...): release metadata, left as OLD had
    it with a warning; the function fix beside it builds."""
    old_v = "MAJOR = 2\nMINOR = 0\nMICRO = 0\nVERSION = (MAJOR, MINOR, MICRO)\n"
    v = versions(
        {"version.py": old_v, "m.py": "def f():\n    return 1\n"},
        {"version.py": old_v.replace("MICRO = 0", "MICRO = 1"), "m.py": "def f():\n    return 2\n"},
    )
    result = v.build()
    assert not result.refusals and result.data
    assert [c.target.replace(v.pkg, "pkg") for c in result.changes] == ["pkg.m:f"]
    assert any("MICRO" in w and "release metadata" in w for w in result.warnings)
