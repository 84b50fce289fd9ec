"""Expectations per interpreter version: a payload carries one fingerprint per
version it was packed for, and another interpreter refuses a payload that has none
for it. Uses the real other interpreters this machine has (skipped when none)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pylivepatch import LivepatchError
from pylivepatch.builder.pack import find_interpreter
from pylivepatch.payload import archive
from pylivepatch.payload.fingerprint import python_tag

SRC = str(Path(__file__).resolve().parents[2] / "src")
HERE = python_tag()
OTHERS = [v for v in ("3.10", "3.11", "3.12", "3.13", "3.14") if v != HERE and find_interpreter(v)]

TARGET = """
    def area(w, h):
        return w * h
"""
FIX = """
    import pylivepatch as lp
    patch = lp.Patch("fix-area", consistency="atomic")

    @patch.function("{m}geo:area")
    def area(w, h):
        return abs(w * h)
"""

APPLY_THERE = """
import json, sys
sys.path[:0] = [sys.argv[1]]
import importlib, pylivepatch as lp
mod = importlib.import_module(sys.argv[2])
e = lp.engine()
try:
    e.load(sys.argv[3])
    print(json.dumps({"ok": mod.area(-2, 3)}))
except lp.LivepatchError as exc:
    print(json.dumps({"error": exc.code, "message": exc.message}))
"""


def run_there(version: str, lab, path: Path) -> dict:
    exe = find_interpreter(version)
    env = dict(os.environ, PYTHONPATH=SRC)
    out = subprocess.run(
        [exe, "-c", APPLY_THERE, str(lab.root), lab.name("geo"), str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not OTHERS, reason="no other CPython version is installed here")
def test_payload_for_other_versions_only_is_refused_here(lab):
    lab.module("geo", TARGET)
    data = lab.pack(FIX, pythons=[OTHERS[0]])
    assert archive.read(data).manifest.python == (OTHERS[0],)
    with pytest.raises(LivepatchError) as err:
        lab.engine.upload("fix-area", data)
    assert err.value.code == "expectation-failed" and HERE in err.value.message


@pytest.mark.skipif(not OTHERS, reason="no other CPython version is installed here")
@pytest.mark.parametrize("other", OTHERS)
def test_multi_version_payload_applies_on_each_interpreter(lab, other):
    mod = lab.module("geo", TARGET)
    data = lab.pack(FIX, pythons=[HERE, other])
    man = archive.read(data).manifest
    assert set(man.python) == {HERE, other}
    assert set(man.funcs[0].expect) == {HERE, other}
    assert set(man.objects[lab.name("geo")]) == {HERE, other}
    path = lab.root / "fix.lpz"
    path.write_bytes(data)
    lab.engine.load(path)
    assert mod.area(-2, 3) == 6
    assert run_there(other, lab, path) == {"ok": 6}
    # And a payload packed for this interpreter only is refused over there.
    only_here = lab.root / "here.lpz"
    only_here.write_bytes(lab.pack(FIX.replace("fix-area", "fix-area-2")))
    reply = run_there(other, lab, only_here)
    assert reply["error"] == "expectation-failed" and other in reply["message"]


def test_running_interpreter_is_the_default(lab):
    lab.module("geo", TARGET)
    assert archive.read(lab.pack(FIX)).manifest.python == (HERE,)
    assert sys.version_info >= (3, 10)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, str(cwd)]))
    return subprocess.run(
        [sys.executable, "-m", "pylivepatch", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.skipif(not OTHERS, reason="no other CPython version is installed here")
def test_cli_pack_for_several_versions_writes_an_expectation_for_each(lab):
    """``pylivepatch pack FILE -o OUT --python A,B`` (the real command) writes one
    expectation per function and one object build id per module for every version
    asked for, each the one packing for that version alone gives; ``inspect`` shows them."""
    lab.module("geo", TARGET)
    versions = [HERE, *OTHERS]
    lab.write("fix.py", FIX.replace("{m}", lab.prefix))
    out = cli("pack", "fix.py", "-o", "fix.lpz", "--python", ",".join(versions), cwd=lab.root)
    assert out.returncode == 0, out.stderr
    man = archive.read((lab.root / "fix.lpz").read_bytes()).manifest
    assert sorted(man.python) == sorted(versions)
    assert f"python {', '.join(man.python)}," in out.stdout
    (func,) = man.funcs
    assert sorted(func.expect) == sorted(versions)
    assert sorted(man.objects[lab.name("geo")]) == sorted(versions)
    for version in versions:  # the same digests as packing for that version alone
        alone = archive.read(lab.pack(FIX, pythons=[version])).manifest
        assert func.expect[version] == alone.funcs[0].expect[version], version
        assert man.objects[lab.name("geo")][version] == alone.objects[lab.name("geo")][version]

    shown = cli("inspect", "fix.lpz", "--json", cwd=lab.root)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["python"] == list(man.python)
    assert doc["funcs"][0]["expect"] == func.expect
    text = cli("inspect", "fix.lpz", cwd=lab.root)
    assert text.returncode == 0, text.stderr
    (line,) = [x for x in text.stdout.splitlines() if x.startswith("function ")]
    assert line.endswith(
        "expect " + "  ".join(f"{v}:{d[:12]}" for v, d in sorted(func.expect.items()))
    )
