"""The payload format (spec §2) and bad input: every malformed payload is
``invalid-payload`` with its cause, and leaves the engine and the process unchanged."""

from __future__ import annotations

import io
import json
import sys
import zipfile

import pytest

from pylivepatch import LivepatchError, Patch
from pylivepatch.payload import archive, manifest
from pylivepatch.payload.fingerprint import fingerprint, python_tag

from conftest import assert_identical, snapshot

TARGET = """
    def greet(name):
        return "hello " + name
"""

FIX = """
    import pylivepatch as lp
    patch = lp.Patch("fix-greet", version="2", consistency="atomic", metadata={"ticket": "T-1"})

    @patch.function("{m}greet_mod:greet")
    def greet(name):
        return "hi " + name
"""


@pytest.fixture
def target(lab):
    return lab.module("greet_mod", TARGET)


def rezip(data: bytes, edit) -> bytes:
    """Rewrite an archive's members through ``edit(dict) -> dict`` (no re-sealing)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    members = {i.filename: src.read(i) for i in src.infolist()}
    members = edit(members)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return out.getvalue()


def reseal(data: bytes, edit_manifest=None, edit_files=None) -> bytes:
    """Change a payload and compute a correct build id again (a well-formed forgery)."""
    payload = archive.read(data)
    doc = payload.manifest.to_json()
    files = dict(payload.files)
    if edit_manifest:
        edit_manifest(doc)
    if edit_files:
        edit_files(files)
    return archive.write(archive.seal(doc, files), files)


def refused(lab, data: bytes, *objs, code="invalid-payload") -> LivepatchError:
    before = snapshot(*objs)
    modules = set(sys.modules)
    with pytest.raises(LivepatchError) as err:
        lab.engine.upload("fix-greet", data)
    assert err.value.code == code, err.value
    assert lab.engine.list() == []
    assert_identical(before, snapshot(*objs))
    assert not [m for m in set(sys.modules) - modules if m.startswith("_pylivepatch_payload_")]
    return err.value


def test_manifest_fields_and_build_id(lab, target):
    data = lab.pack(FIX)
    payload = archive.read(data)
    man = payload.manifest
    assert man.name == "fix-greet" and man.version == "2" and man.depends is None
    assert man.python == (python_tag(),)
    assert man.consistency == "atomic" and man.metadata["ticket"] == "T-1"
    (func,) = man.funcs
    assert func.target == f"{lab.name('greet_mod')}:greet" and func.new == "greet"
    assert func.expect[python_tag()] == fingerprint(target.greet.__code__)
    assert set(man.objects) == {lab.name("greet_mod")}
    assert man.build_id == archive.content_build_id(
        man.canonical(with_build_id=False), payload.files
    )
    # Packing twice gives byte-identical archives: the build id names the content.
    assert lab.pack(FIX) == data


def test_fingerprint_ignores_file_names_and_lines():
    ns1: dict = {}
    ns2: dict = {}
    exec(compile("def f(x):\n    return [y * x for y in range(3)]\n", "a.py", "exec"), ns1)
    exec(compile("\n\n\ndef f(x):\n    return [y * x for y in range(3)]\n", "b.py", "exec"), ns2)
    assert fingerprint(ns1["f"].__code__) == fingerprint(ns2["f"].__code__)
    exec(compile("def f(x):\n    return [y * x for y in range(4)]\n", "a.py", "exec"), ns2)
    assert fingerprint(ns1["f"].__code__) != fingerprint(ns2["f"].__code__), "nested code counts"


def test_truncated_zip(lab, target):
    data = lab.pack(FIX)
    err = refused(lab, data[: len(data) // 2], target.greet, target)
    assert "zip" in err.message


def test_dotdot_path(lab, target):
    data = rezip(lab.pack(FIX), lambda m: {**m, "payload/../evil.py": b"x = 1\n"})
    err = refused(lab, data, target.greet, target)
    assert "'..'" in err.message


def test_absolute_path_and_foreign_member(lab, target):
    err = refused(lab, rezip(lab.pack(FIX), lambda m: {**m, "/etc/x": b""}), target.greet)
    assert "absolute" in err.message
    err = refused(lab, rezip(lab.pack(FIX), lambda m: {**m, "other.txt": b""}), target.greet)
    assert "outside payload/" in err.message


def test_symlink_member(lab, target):
    data = lab.pack(FIX)
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for info in src.infolist():
            zf.writestr(info, src.read(info))
        link = zipfile.ZipInfo("payload/link.py")
        link.external_attr = (0o120777) << 16
        zf.writestr(link, "/etc/passwd")
    err = refused(lab, out.getvalue(), target.greet)
    assert "symbolic link" in err.message


def test_manifest_with_a_wrong_type(lab, target):
    data = rezip(
        lab.pack(FIX),
        lambda m: {
            **m,
            "manifest.json": json.dumps(
                {**json.loads(m["manifest.json"]), "funcs": "all"}
            ).encode(),
        },
    )
    err = refused(lab, data, target.greet, target)
    assert "'funcs'" in err.message and "list" in err.message


def test_unknown_manifest_field(lab, target):
    data = rezip(
        lab.pack(FIX),
        lambda m: {
            **m,
            "manifest.json": json.dumps(
                {**json.loads(m["manifest.json"]), "color": "red"}
            ).encode(),
        },
    )
    err = refused(lab, data, target.greet)
    assert "'color'" in err.message and "unknown field" in err.message


def test_tampered_content_breaks_the_build_id(lab, target):
    data = rezip(
        lab.pack(FIX), lambda m: {**m, "payload/__init__.py": m["payload/__init__.py"] + b"\n# x\n"}
    )
    err = refused(lab, data, target.greet)
    assert "build_id" in err.message


def test_payload_code_raises_at_import(lab, target):
    def boom(files):
        files["payload/__init__.py"] = (
            b"raise RuntimeError('not today')\n" + files["payload/__init__.py"]
        )

    err = refused(lab, reseal(lab.pack(FIX), edit_files=boom), target.greet, target)
    assert "RuntimeError" in err.message and "not today" in err.message


def test_replacement_with_a_syntax_error(lab, target):
    def broken(files):
        files["payload/__init__.py"] = files["payload/__init__.py"].replace(
            b'return "hi " + name', b"return ("
        )

    err = refused(lab, reseal(lab.pack(FIX), edit_files=broken), target.greet, target)
    assert "syntax error" in err.message and "payload/__init__.py" in err.message


def test_name_must_match_the_manifest(lab, target):
    with pytest.raises(LivepatchError) as err:
        lab.engine.upload("other-name", lab.pack(FIX))
    assert err.value.code == "invalid-payload" and "fix-greet" in err.value.message


def test_missing_target_module_and_function(lab, target):
    def retarget(t):
        def edit(d):
            d["funcs"][0]["target"] = t
            d["objects"] = {}

        return edit

    err = refused(
        lab,
        reseal(lab.pack(FIX), retarget("no_such_module_xyz:greet")),
        target.greet,
        code="not-found",
    )
    assert "no_such_module_xyz" in err.message
    err = refused(
        lab,
        reseal(lab.pack(FIX), retarget(f"{lab.name('greet_mod')}:nope")),
        target.greet,
        code="not-found",
    )
    assert "'nope'" in err.message


def test_payload_for_another_interpreter_is_refused_unless_no_expect(lab, target):
    def elsewhere(d):
        d["python"] = ["3.99"]
        d["funcs"][0]["expect"] = {"3.99": "0" * 64}
        d["objects"] = {}

    data = reseal(lab.pack(FIX), elsewhere)
    err = refused(lab, data, target.greet, target, code="expectation-failed")
    assert "3.99" in err.message and python_tag() in err.message
    lab.engine.upload("fix-greet", data, no_expect=True)
    lab.engine.apply("fix-greet")
    assert target.greet("x") == "hi x"


@pytest.mark.parametrize(
    "field,value,fragment",
    [
        ("name", "bad name!", "'name'"),
        ("format", 2, "'format'"),
        ("depends", "main", "'depends'"),
        ("consistency", "eventually", "'consistency'"),
        ("python", ["three"], "'python[0]'"),
        ("metadata", {"k": 5}, "'metadata.k'"),
        ("hooks", {"on_tuesday": "f"}, "'hooks.on_tuesday'"),
        ("states", [{"id": 0, "version": 1}], "'states[0].id'"),
    ],
)
def test_manifest_validation_names_the_field(field, value, fragment):
    doc = {
        "format": 1,
        "name": "p",
        "build_id": "0" * 64,
        "python": ["3.11"],
        "hooks": {"apply": "f"},
    }
    doc[field] = value
    with pytest.raises(LivepatchError) as err:
        manifest.parse(doc)
    assert err.value.code == "invalid-payload" and fragment in err.value.message


def test_nothing_to_patch():
    with pytest.raises(LivepatchError) as err:
        manifest.parse({"format": 1, "name": "p", "build_id": "0" * 64, "python": ["3.11"]})
    assert "nothing to patch" in err.value.message


def test_patch_authoring_api_checks_early():
    patch = Patch("ok-name")
    with pytest.raises(ValueError):
        Patch("bad name")
    patch.data("m:X", 1)
    with pytest.raises(ValueError):
        patch.data("m:X", 2)
    with pytest.raises(ValueError):
        patch.function("not a target")

    @patch.pre_apply
    def ready(ctx):
        return None

    assert patch.hooks == {"pre_apply": ready}
    with pytest.raises(ValueError):
        patch.pre_apply(ready)


RICH_TARGET = """
    import functools
    from typing import overload

    RATE = 3

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            return fn(*a, **k)
        return wrapper

    class Shop:
        class Inner:
            def deep(self):
                return [lambda: i for i in range(3)]

        @property
        def size(self):
            return 1

        @size.setter
        def size(self, value):
            self._size = value

        @staticmethod
        def fmt(x):
            return f"{x:.2f}"

        @deco
        def total(self, items):
            def add(a, b):
                return a + b
            return functools.reduce(add, items, 0)

    @overload
    def conv(x: int) -> int: ...
    @overload
    def conv(x: str) -> str: ...
    def conv(x):
        return x
"""

RICH_FIX = """
    import pylivepatch as lp
    patch = lp.Patch("rich")

    @patch.function("{m}rich:Shop.Inner.deep")
    def deep(self):
        return []

    @patch.function("{m}rich:Shop.size.setter")
    def size_setter(self, value):
        self._size = value * 2

    @patch.function("{m}rich:Shop.fmt")
    def fmt(x):
        return str(x)

    @patch.function("{m}rich:Shop.total")
    def total(self, items):
        return sum(items)

    @patch.function("{m}rich:conv")
    def conv(x):
        return x
"""


def test_pack_from_source_equals_pack_from_the_live_process(lab):
    """Expectations and object build ids are the same whether computed by compiling a
    source tree (--against) or from the live, imported module."""
    lab.module("rich", RICH_TARGET)
    live = archive.read(lab.pack(RICH_FIX)).manifest
    tree = lab.root / "tree"
    tree.mkdir()
    (tree / f"{lab.name('rich')}.py").write_text((lab.root / f"{lab.name('rich')}.py").read_text())
    source = archive.read(lab.pack(RICH_FIX, against=str(tree))).manifest
    assert [f.expect for f in live.funcs] == [f.expect for f in source.funcs]
    assert live.objects == source.objects
    # and the engine computes the same module build id inside the process
    lab.engine.upload("rich", lab.pack(RICH_FIX, against=str(tree)))
    assert lab.engine.status("rich").state == "CHECKED"
