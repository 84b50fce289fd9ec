"""The builder never writes an unsafe payload (issue 23): a fix that lives in a data
file is refused naming the file; a payload whose only change is release metadata is
refused as nothing to patch; a version component is not a captured constant."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

from pylivepatch.builder.build import BuildOptions, build
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
    # --allow data-files carries it (tests/builder/test_build_datafiles.py)
    result = v.build("data-files")
    assert result.data and not result.refusals
    assert [f.rel.replace(v.pkg, "pkg") for f in result.files] == ["pkg/hosts.json"]


def test_an_added_data_file_is_refused_and_a_code_fix_beside_it_too(versions):
    v = versions(
        {"m.py": "def f():\n    return 1\n"},
        {"m.py": "def f():\n    return 2\n"},
    )
    (v.new / v.pkg / "templates").mkdir()
    (v.new / v.pkg / "templates" / "page.html").write_text("<p>{{ x }}</p>\n")
    assert v.refusals() == [
        "pkg/templates/page.html:0: data-files: pkg/templates/page.html: a data file of the "
        "distribution was added; a payload patches code: the running process would keep "
        "reading the old file. Ship the release, or build with --allow data-files to carry "
        "it (where the process reads it at use time)"
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


# --- no import of the target's dependencies at build time --------------------------------

DEP_OLD = """
import lpt_missing_dep as dep

def limit(x):
    return x
"""
DEP_NEW = """
import lpt_missing_dep as dep
from lpt_missing_dep.sub import Base

def limit(x, cap=dep.CAP):
    return min(x, cap)

class Helper(Base):
    pass
"""


def test_new_code_using_a_dependency_builds_without_importing_it(versions):
    """The target imports a dependency not installed where the build runs, and the new
    code uses it in a default value and a base class: before, `build` failed with
    `importing its code raised ModuleNotFoundError`."""
    import sys

    v = versions({"m.py": DEP_OLD}, {"m.py": DEP_NEW})
    for old, new in ((str(v.old), str(v.new)), (_wheel(v, v.old, "1.0"), _wheel(v, v.new, "1.1"))):
        result = build(old, new, BuildOptions(name="fix"))
        assert not result.refusals and not result.error, result.error
        assert result.data
        assert sorted(c.kind for c in result.changes) == ["function", "new class", "new import"]
    assert "lpt_missing_dep" not in sys.modules, "no stub left behind"


def test_code_that_truly_needs_the_dependency_names_it_and_the_report_is_printed(lab, versions):
    import json
    import os
    import subprocess
    import sys

    new = DEP_NEW + "\nLIMIT = int(dep.CAP)\n\ndef capped(x):\n    return min(x, LIMIT)\n"
    v = versions({"m.py": DEP_OLD}, {"m.py": new})
    src = str(Path(__file__).resolve().parents[2] / "src")
    out = subprocess.run(
        [sys.executable, "-m", "pylivepatch", "build", str(v.old), str(v.new), "-o", "f.lpz",
         "--emit", "payload.py", "--json"],
        cwd=lab.root, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=src),
    )  # fmt: skip
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert [c["kind"] for c in report["changes"]], "the report is printed"
    assert report["message"].startswith("invalid-payload: payload pack: importing its code raised")
    assert "(here lpt_missing_dep)" in report["message"]
    assert "--python-env ENV" in report["message"]
    assert (lab.root / "payload.py").is_file(), "--emit writes the payload module"
    assert not (lab.root / "f.lpz").exists()


def test_a_new_helper_imported_by_another_module_keeps_its_own_globals(lab, versions):
    """A new helper defined in module a (reading a's global _SECRET) is newly imported
    by module b: b's copy must run with a's globals. Before, the engine checked it
    against b's globals and refused: `the new code reads global '_SECRET', which module
    b lacks`."""
    v = versions(
        {"a.py": "_SECRET = 'a'\n\ndef f():\n    return 1\n", "b.py": "def g():\n    return 0\n"},
        {
            "a.py": "_SECRET = 'a'\n\ndef _h():\n    return _SECRET\n\ndef f():\n    return 1\n",
            "b.py": "from .a import _h\n\ndef g():\n    return _h()\n",
        },
    )
    a, b = v.module("a"), v.module("b")
    result = v.build()
    assert not result.refusals and result.data, result.refusals
    name = lab.engine.load(result.data).name
    assert b.g() == "a" and a._h() == "a"
    assert b._h.__globals__ is a.__dict__ and "__pylivepatch_home__" not in vars(b._h)
    lab.engine.revert(name)
    assert not hasattr(b, "_h") and b.g() == 0


def test_a_changed_helper_newly_imported_by_another_module(lab, versions):
    """z._h changes and module a newly imports it: a's name is z's (patched) function,
    imported under its own name in the payload. Before: name-collision (the payload
    needed '_h' as the replacement of z:_h and as a's import)."""
    v = versions(
        {
            "a.py": "def g():\n    return 0\n",
            "z.py": "_SECRET = 'z'\n\ndef _h():\n    return 'old'\n",
        },
        {
            "a.py": "from .z import _h\n\ndef g():\n    return _h()\n",
            "z.py": "_SECRET = 'z'\n\ndef _h():\n    return _SECRET\n",
        },
    )
    a, z = v.module("a"), v.module("z")
    result = v.build()
    assert not result.refusals and result.data, result.refusals
    name = lab.engine.load(result.data).name
    assert a.g() == "z" and a._h is z._h
    lab.engine.revert(name)
    assert z._h() == "old" and not hasattr(a, "_h")


def test_a_sync_module_and_its_async_twin_get_one_namespace_each(lab, versions):
    """Two modules define the same names (a sync module and its async twin): new
    functions whose defaults read each module's own LIMIT, and a new class of one name
    in each. Before: name-collision."""
    old_sync = "LIMIT = 10\n\ndef get(x):\n    return x\n"
    new_sync = (
        "LIMIT = 10\n\ndef _check(x, limit=LIMIT):\n    return min(x, limit)\n\n"
        "class Guard:\n    kind = 'sync'\n\ndef get(x):\n    return (_check(x), Guard.kind)\n"
    )
    v = versions(
        {
            "_sync.py": old_sync,
            "_async.py": old_sync.replace("10", "20").replace("def", "async def"),
        },
        {
            "_sync.py": new_sync,
            "_async.py": new_sync.replace("10", "20")
            .replace("'sync'", "'async'")
            .replace("def get(x):\n    return", "async def get(x):\n    return"),
        },
    )
    sync, asyn = v.module("_sync"), v.module("_async")
    result = v.build()
    assert not result.refusals and result.data, result.refusals
    name = lab.engine.load(result.data).name
    import asyncio

    assert sync.get(50) == (10, "sync")
    assert asyncio.run(asyn.get(50)) == (20, "async")
    assert (sync.Guard.__name__, asyn.Guard.__name__) == ("Guard", "Guard")
    lab.engine.revert(name)
    assert sync.get(50) == 50


# --- classes of the issue: changes read as something they are not -----------------------

GUARDED = """
try:
    import lpt_fast_json as _fast
except ImportError:
    _fast = None

HAVE_FAST = _fast is not None

if not HAVE_FAST:
    class Encoder:
        def encode(self, value):
            return repr(value)

        def name(self):
            return "slow"
"""


def test_methods_of_a_class_under_if_or_try_are_matched_as_methods(lab, versions):
    """Only method bodies of a class defined under `if not HAVE_FAST:` changed (and of a
    function under `try:`): before, the whole `if` was one changed statement
    (side-effect)."""
    old = GUARDED + "\ntry:\n    def probe():\n        return 1\nexcept Exception:\n    pass\n"
    new = old.replace("return repr(value)", "return repr(value).upper()").replace(
        "return 1", "return 2"
    )
    v = versions({"m.py": old}, {"m.py": new})
    m = v.module("m")
    obj = m.Encoder()
    result = v.build()
    assert not result.refusals and result.data, result.refusals
    assert [(c.kind, c.target.replace(v.pkg, "pkg")) for c in result.changes] == [
        ("method", "pkg.m:Encoder.encode"),
        ("function", "pkg.m:probe"),
    ]
    lab.engine.load(result.data)
    assert (obj.encode("a"), m.probe()) == ("'A'", 2)


def test_a_change_of_the_guarding_statement_itself_is_still_a_side_effect(versions):
    new = GUARDED.replace("if not HAVE_FAST:", "if True:").replace("repr(value)", "str(value)")
    v = versions({"m.py": GUARDED}, {"m.py": new})
    assert [r.split(": ")[1] for r in v.refusals()] == ["side-effect"]


def test_object_base_del_and_respelled_imports_are_not_changes(lab, versions):
    old = (
        "try:\n    from secrets import compare_digest, token_hex\nexcept ImportError:\n    pass\n\n"
        "class X(object):\n    def f(self):\n        return 1\n\n"
        "_tmp = [1, 2]\nSIZE = 2\ndel _tmp\n"
    )
    new = (
        "try:\n    from secrets import token_hex\n    from secrets import compare_digest\n"
        "except ImportError:\n    pass\n\n"
        "class X:\n    def f(self):\n        return 2\n\n"
        "_tmp = [1, 2, 3]\nSIZE = 2\ndel _tmp\n"
    )
    v = versions({"m.py": old}, {"m.py": new})
    result = v.build()
    assert not result.refusals and result.data, result.refusals
    assert [(c.kind, c.target.replace(v.pkg, "pkg")) for c in result.changes] == [
        ("method", "pkg.m:X.f")
    ]
    assert any("_tmp" in w and "del" in w for w in result.warnings)


def test_an_import_given_a_fallback_is_the_same_import(lab, versions):
    """``from collections.abc import Mapping`` becoming ``try: ... except ImportError:
    from collections import Mapping`` (python-jose 3.4.0): the running process imported
    it the first way, so the ``try`` branch binds the same object; no side effect, no
    removed name. A fallback that binds another name, or a ``try`` importing something
    OLD did not, stays a module-level change."""
    old = "from collections.abc import Mapping\n\ndef f(x):\n    return isinstance(x, Mapping)\n"
    new = (
        "try:\n    from collections.abc import Mapping\nexcept ImportError:\n"
        "    from collections import Mapping\n\n"
        "def f(x):\n    return isinstance(x, Mapping) and bool(x)\n"
    )
    v = versions({"m.py": old}, {"m.py": new})
    m = v.module("m")
    result = v.build()
    assert not result.refusals and result.data, result.refusals
    assert [(c.kind, c.target.replace(v.pkg, "pkg")) for c in result.changes] == [
        ("function", "pkg.m:f")
    ]
    name = lab.engine.load(result.data).name
    assert m.f({}) is False and m.f({1: 2}) is True
    lab.engine.revert(name)


def test_a_fallback_that_binds_otherwise_stays_a_change(versions):
    old = "from collections.abc import Mapping\n\ndef f(x):\n    return isinstance(x, Mapping)\n"
    new = (
        "try:\n    from collections.abc import Mapping\nexcept ImportError:\n"
        "    Mapping = dict\n\ndef f(x):\n    return isinstance(x, Mapping) and bool(x)\n"
    )
    v = versions({"m.py": old}, {"m.py": new})
    assert "side-effect" in " ".join(v.refusals())


def test_a_value_built_from_a_target_constant_imports_what_it_can(lab, versions):
    """A new pattern built from a constant of another module of the target: with every
    import a stub the payload cannot run (re.compile of a stub), so it runs again with
    what imports where the build runs, and stubs only for what is missing (waitress
    2.1.0 -> 2.1.1)."""
    consts = "SEP = ','\n"
    v = versions(
        {"consts.py": consts, "m.py": "def split(s):\n    return s.split(',')\n"},
        {
            "consts.py": consts,
            "m.py": "import re\nimport lpt_missing_dep\nfrom .consts import SEP\n\n"
            "_SPLIT = re.compile(SEP + ' *')\n\ndef split(s):\n    return _SPLIT.split(s)\n",
        },
    )
    m = v.module("m")
    result = v.build()
    assert not result.refusals and not result.error and result.data, result.error
    assert any("stand-ins for what does not (lpt_missing_dep)" in w for w in result.warnings)
    import sys

    assert "lpt_missing_dep" not in sys.modules
    sys.modules["lpt_missing_dep"] = type(sys)("lpt_missing_dep")  # where the service runs
    try:
        name = lab.engine.load(result.data).name
        assert m.split("a,  b") == ["a", "b"]
        lab.engine.revert(name)
    finally:
        del sys.modules["lpt_missing_dep"]


def _wheel_with_metadata(v: Versions, root, tag: str, requires: list[str]) -> str:
    path = Path(_wheel(v, root, tag))
    with zipfile.ZipFile(path, "a") as zf:
        meta = "Metadata-Version: 2.1\nName: pkg\nVersion: 1\n"
        meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
        zf.writestr(f"{v.pkg}-{tag}.dist-info/METADATA", meta)
    return str(path)


def test_a_changed_requirement_is_refused_naming_it(versions):
    """Some security releases fix a bug by raising a dependency's floor: a payload
    carries code only, so the builder refuses a new or changed runtime requirement,
    naming it and the change (an extra's too, but not one of tooling such as tests);
    ``--allow
    requirements`` builds once the author has checked the environments."""
    v = versions({"m.py": "def f():\n    return 1\n"}, {"m.py": "def f():\n    return 2\n"})
    old = ["multi-part>=0.0.6", "idna", 'pytest; extra == "test"', 'forms>=1; extra == "full"']
    new = [
        "Multi_Part >= 0.0.7",
        "IDNA",
        "fresh",
        'pytest>=8; extra == "test"',
        'forms>=2; extra == "full"',
    ]
    wheels = (
        _wheel_with_metadata(v, v.old, "1.0", old),
        _wheel_with_metadata(v, v.new, "1.1", new),
    )
    result = build(*wheels, BuildOptions(name="fix"))
    assert not result.data
    got = [(r.kind, r.target) for r in result.refusals]
    assert got == [
        ("requirements", "forms (extra full)"),
        ("requirements", "fresh"),
        ("requirements", "multi-part"),
    ], got
    assert "`multi-part>=0.0.6` -> `multi-part>=0.0.7`" in result.refusals[2].reason
    assert "--allow requirements" in result.refusals[2].reason
    allowed = build(*wheels, BuildOptions(name="fix", allow=frozenset({"requirements"})))
    assert allowed.data and not allowed.refusals
    # the same release without a word on requirements (no metadata): nothing to compare
    assert not v.build().refusals


@pytest.mark.skipif(
    sys.version_info < (3, 11), reason="pyproject.toml is read with tomllib (3.11+)"
)
def test_a_changed_requirement_in_pyproject_is_refused(versions):
    v = versions({"m.py": "def f():\n    return 1\n"}, {"m.py": "def f():\n    return 2\n"})
    project = '[project]\nname = "p"\nversion = "1"\ndependencies = [{}]\n'
    (v.old / "pyproject.toml").write_text(project.format('"python-multipart>=0.0.6"'))
    (v.new / "pyproject.toml").write_text(project.format('"python-multipart>=0.0.7"'))
    got = [(r.kind, r.target) for r in v.build().refusals]
    assert got == [("requirements", "python-multipart")], got


def test_an_annotation_of_an_instance_attribute_is_no_change_of_state(versions):
    """``self.endpoint: str = endpoint`` -> ``self.endpoint: Any = endpoint`` (werkzeug
    3.0.3): an annotation in a function body never runs; what objects hold is the same."""
    old = (
        "class Rule:\n    def __init__(self, endpoint):\n        self.endpoint: str = endpoint\n\n"
        "    def __repr__(self):\n        return f'<{self.endpoint}>'\n"
    )
    new = old.replace("self.endpoint: str", "self.endpoint: object").replace("'<{", "'<rule {")
    v = versions({"m.py": old}, {"m.py": new})
    result = v.build()
    assert not result.refusals and result.data, result.refusals
