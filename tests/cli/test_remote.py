"""The command line against real processes started under `pylivepatch run`: ps, list,
load to a whole app all or nothing, revert (spec §9, §10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")

PROGRAM = """
import sys
sys.path[:0] = [{root!r}]
import {module} as shop
print("ready", flush=True)
for line in sys.stdin:
    print(shop.price(2), flush=True)
"""

FIX = """
    import pylivepatch as lp
    patch = lp.Patch("fix-price", consistency="atomic")

    @patch.function("{m}shop:price")
    def price(x):
        return x * 3
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run(
        [sys.executable, "-m", "pylivepatch", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


class Proc:
    def __init__(self, lab, app: str, module: str) -> None:
        program = PROGRAM.format(root=str(lab.root), module=module)
        env = dict(os.environ, PYTHONPATH=SRC)
        self.p = subprocess.Popen(
            [sys.executable, "-m", "pylivepatch", "run", "--app", app, "--", sys.executable, "-c", program],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert self.p.stdout.readline().strip() == "ready"

    def call(self) -> str:
        self.p.stdin.write("x\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()

    def stop(self) -> None:
        self.p.stdin.close()
        self.p.wait(10)


def odd_process(lab, app: str) -> Proc:
    """A process of ``app`` whose module ``shop`` is other code (from ``odd/``): a
    payload for the real one is refused there."""
    (lab.root / "odd").mkdir()
    (lab.root / "odd" / f"{lab.name('shop')}.py").write_text(
        "def price(x):\n    return x * 2 + 0\n"
    )
    odd = Proc.__new__(Proc)
    program = PROGRAM.format(root=str(lab.root / "odd"), module=lab.name("shop"))
    odd.p = subprocess.Popen(
        [sys.executable, "-m", "pylivepatch", "run", "--app", app, "--", sys.executable, "-c", program],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=SRC),
    )  # fmt: skip
    assert odd.p.stdout.readline().strip() == "ready"
    return odd


@pytest.fixture
def procs(lab, request):
    started: list[Proc] = []

    def start(app: str, module: str) -> Proc:
        proc = Proc(lab, app, module)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def wait_for_agents(lab, app: str, n: int) -> list[dict]:
    for _ in range(300):
        out = cli("ps", "--json", cwd=lab.root)
        mine = [p for p in json.loads(out.stdout) if p["app"] == app]
        if len(mine) == n:
            return mine
        time.sleep(0.02)
    raise AssertionError(f"expected {n} agents for {app}")


def test_run_ps_load_revert_for_a_whole_app(lab, procs):
    lab.module("shop", "def price(x):\n    return x * 2\n")
    app = f"shop-{lab.prefix}"
    workers = [procs(app, lab.name("shop")) for _ in range(3)]
    agents = wait_for_agents(lab, app, 3)
    assert {a["pid"] for a in agents} == {w.p.pid for w in workers}
    (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
    out = cli("load", "fix.lpz", "--app", app, "--json", cwd=lab.root)
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(json.loads(out.stdout)["processes"].values()) == {"applied"}
    assert [w.call() for w in workers] == ["6", "6", "6"]
    out = cli("list", "--app", app, cwd=lab.root)
    rows = [line.split() for line in out.stdout.splitlines()]
    assert out.returncode == 0 and [r[1:3] for r in rows[1:]] == [["fix-price", "APPLIED"]] * 3
    out = cli("revert", "fix-price", "--app", app, cwd=lab.root)
    assert out.returncode == 0, out.stdout + out.stderr
    assert [w.call() for w in workers] == ["4", "4", "4"]


def test_one_refusing_process_leaves_none_patched(lab, procs):
    lab.module("shop", "def price(x):\n    return x * 2\n")
    other = lab.module("other_shop", "def price(x):\n    return x * 2 + 0\n")
    assert other
    app = f"mixed-{lab.prefix}"
    good = [procs(app, lab.name("shop")) for _ in range(3)]
    odd = odd_process(lab, app)  # the fourth runs other code under the same module name
    try:
        wait_for_agents(lab, app, 4)
        (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
        out = cli("load", "fix.lpz", "--app", app, "--json", cwd=lab.root)
        assert out.returncode == 1
        report = json.loads(out.stdout)
        assert report["ok"] is False
        assert any(
            "dependency-mismatch" in r or "expectation-failed" in r
            for r in report["processes"].values()
        )
        assert [w.call() for w in good] == ["4", "4", "4"], "nobody stays patched"
        assert odd.call() == "4"
    finally:
        odd.stop()


def test_errors_without_a_target_are_one_line(lab):
    out = cli("list", cwd=lab.root)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.splitlines()[-1].startswith("pylivepatch: usage: name the target")


def test_a_terminal_sees_a_progress_bar_for_many_processes(lab, procs):
    import pty
    import re

    pytest.importorskip("rich", reason="progress bars come with the cli extra")
    lab.module("shop", "def price(x):\n    return x * 2\n")
    app = f"bar-{lab.prefix}"
    workers = [procs(app, lab.name("shop")) for _ in range(2)]
    wait_for_agents(lab, app, 2)
    (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
    terminal, stderr = pty.openpty()
    out = subprocess.run(
        [sys.executable, "-m", "pylivepatch", "load", "fix.lpz", "--app", app],
        cwd=lab.root, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=SRC),
    )  # fmt: skip
    os.close(stderr)
    shown = b""
    while True:
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # the other side is closed: everything was read
            break
        if not chunk:
            break
        shown += chunk
    os.close(terminal)
    assert out.returncode == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode())  # without terminal codes
    for phase in ("upload fix-price", "apply fix-price"):
        assert re.search(phase + r" ━+ 2/2 processes", text), text
    assert "RESULT" not in text, "the table goes to stdout, the bar to the terminal's stderr"
    assert [w.call() for w in workers] == ["6", "6"]
