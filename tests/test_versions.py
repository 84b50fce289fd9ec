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
from pylivepatch.build.pack import find_interpreter
from pylivepatch.payload import archive
from pylivepatch.payload.fingerprint import python_tag

SRC = str(Path(__file__).resolve().parents[1] / "src")
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
