"""The command line as a user runs it: a real subprocess, its text and its --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pylivepatch.payload import archive
from pylivepatch.payload.fingerprint import python_tag

SRC = str(Path(__file__).resolve().parents[2] / "src")

TARGET = """
    def greet(name):
        return "hello " + name
"""
FIX = """
    import pylivepatch as lp
    patch = lp.Patch("fix-greet", version="3", metadata={"cve": "CVE-2026-0001"})

    @patch.function("{m}cli_mod:greet")
    def greet(name):
        return "hi " + name
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, str(cwd)]))
    return subprocess.run(
        [sys.executable, "-m", "pylivepatch", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_pack_and_inspect_transcript(lab):
    lab.module("cli_mod", TARGET)
    lab.write("fix.py", FIX.replace("{m}", lab.prefix))
    out = cli("pack", "fix.py", "-o", "fix.lpz", cwd=lab.root)
    assert out.returncode == 0, out.stderr
    man = archive.read((lab.root / "fix.lpz").read_bytes()).manifest
    tag = python_tag()
    assert out.stdout == (
        f"packed fix-greet -> fix.lpz: 1 functions, 0 data, python {tag}, build id {man.build_id[:16]}\n"
    )
    out = cli("inspect", "fix.lpz", cwd=lab.root)
    assert out.returncode == 0, out.stderr
    exp = man.funcs[0].expect[tag]
    obj = man.objects[lab.name("cli_mod")][tag]
    size = len(archive.read((lab.root / "fix.lpz").read_bytes()).files["payload/__init__.py"])
    assert out.stdout.splitlines() == [
        "name         fix-greet",
        "version      3",
        "description  -",
        f"build id     {man.build_id}",
        "depends      none (independent)",
        f"python       {tag}",
        "consistency  transition",
        "replace      no",
        "signature    unsigned",
        "metadata     cve=CVE-2026-0001",
        "metadata     packed-by=pylivepatch pack",
        f"object       {lab.name('cli_mod')}  {tag}:{obj[:12]}",
        f"function     {lab.name('cli_mod')}:greet <- greet  expect {tag}:{exp[:12]}",
        f"file         payload/__init__.py ({size} bytes)",
    ]


def test_json_output_parses(lab):
    lab.module("cli_mod", TARGET)
    lab.write("fix.py", FIX.replace("{m}", lab.prefix))
    out = cli("pack", "fix.py", "-o", "fix.lpz", "--json", cwd=lab.root)
    assert out.returncode == 0, out.stderr
    packed = json.loads(out.stdout)
    out = cli("inspect", "fix.lpz", "--json", cwd=lab.root)
    shown = json.loads(out.stdout)
    assert shown["build_id"] == packed["build_id"] and shown["signed"] is False
    assert shown["files"] == {"payload/__init__.py": len((lab.root / "fix.py").read_bytes())}


def test_errors_are_one_line_with_the_code_and_no_traceback(lab):
    (lab.root / "junk.lpz").write_bytes(b"not a zip")
    out = cli("inspect", "junk.lpz", cwd=lab.root)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("pylivepatch: invalid-payload: ")
    assert "Traceback" not in out.stderr
    out = cli("inspect", "missing.lpz", cwd=lab.root)
    assert (out.returncode, out.stderr.split(":")[1].strip()) == (1, "not-found")
    lab.write("fix.py", FIX.replace("{m}", "nowhere_"))
    out = cli("pack", "fix.py", "-o", "x.lpz", cwd=lab.root)
    assert out.returncode == 1 and out.stderr.startswith(
        "pylivepatch: not-found: cannot import target module"
    )
    out = cli("inspect", "junk.lpz", "--json", cwd=lab.root)
    assert json.loads(out.stdout)["error"]["code"] == "invalid-payload"


def test_demo_runs_the_main_job(tmp_path):
    out = cli("demo", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    steps = {s["step"]: s for s in map(json.loads, out.stdout.splitlines())}
    assert json.loads(steps["before the patch"]["answer"])["price"] == 8100
    assert json.loads(steps["after the patch"]["answer"])["price"] == 9000
    assert json.loads(steps["reverted"]["answer"])["price"] == 8100
    assert steps["done"]["failed_requests"] == 0
    # a real service: a master and 3 forked workers, every worker seen in every phase
    for step, price in (("before the patch", 8100), ("after the patch", 9000), ("reverted", 8100)):
        assert list(steps[step]["workers"].values()) == [price] * 3, step
    assert set(steps["load result"]["processes"].values()) == {"applied"}
    assert len(steps["load result"]["processes"]) == 4
    assert set(steps["revert result"]["processes"].values()) == {"reverted"}


def test_pack_warns_about_closures(lab):
    lab.module(
        "clos",
        """
        def make(rate):
            def price(x):
                return x * rate
            return price

        price = make(2)
        """,
    )
    lab.write(
        "fix.py",
        f"""
import pylivepatch as lp
patch = lp.Patch("fix-clos")

@patch.function("{lab.prefix}clos:price")
def price(x):
    return x * rate + 1
""",
    )
    out = cli("pack", "fix.py", "-o", "fix.lpz", cwd=lab.root)
    assert out.returncode == 0, out.stderr
    assert out.stderr == (
        f"warning: {lab.prefix}clos:price is a closure: this function object is patched; other "
        "functions made by the same enclosing function keep their old code\n"
    )
