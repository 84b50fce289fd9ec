"""A frozen app (PyInstaller, one file): its bootloader is not Python, its child is.

Attach points from the bootloader to the child; in the child the agent comes from the
bundle (an app built with ``--collect-submodules pylivepatch``), and a payload loaded
through it patches the frozen code. Built once (about half a minute) where PyInstaller
is installed (the ``dev`` extra; CI's 3.11 run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attach_support import GDB, TESTS, attach_json, cli, payload
from pylivepatch import Client

pytestmark = [
    pytest.mark.system,  # starts servers, gdb or namespaces: not in the fast lane
    pytest.mark.skipif(GDB is None, reason="gdb is not installed (.ci/run installs it)"),
]

APP = """\
import sys, threading, time
import attach_app

def work():
    while True:
        with open(sys.argv[1] + ".tmp", "w") as fh:
            fh.write(attach_app.answer())
        __import__("os").replace(sys.argv[1] + ".tmp", sys.argv[1])
        time.sleep(0.02)

threading.Thread(target=work, daemon=True).start()
while True:
    time.sleep(0.01)
"""


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("PyInstaller", reason="PyInstaller is not installed (the dev extra)")
    work = tmp_path_factory.mktemp("frozen")
    (work / "frozen_app.py").write_text(APP)
    subprocess.run(
        [sys.executable, "-m", "PyInstaller", "--onefile", "--noconfirm", "--log-level", "ERROR",
         "--paths", str(TESTS), "--collect-submodules", "pylivepatch",
         "--distpath", str(work / "dist"), "--workpath", str(work / "build"),
         "--specpath", str(work), str(work / "frozen_app.py")],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return work / "dist" / "frozen_app"


def child_of(pid: int) -> int:
    for _ in range(3000):  # the bootloader unpacks the bundle first
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if kids:
            return int(kids[0])
        time.sleep(0.01)
    raise AssertionError(f"the bootloader {pid} started no child")


def test_pyinstaller_bootloader_points_to_the_child_which_gets_the_bundled_agent(
    frozen: Path, tmp_path: Path
) -> None:
    state = tmp_path / "answer"
    boot = subprocess.Popen([str(frozen), str(state)], stdin=subprocess.DEVNULL)
    child = 0
    try:
        child = child_of(boot.pid)
        for _ in range(3000):
            if state.exists():
                break
            time.sleep(0.01)
        r = cli("attach", str(boot.pid))
        assert r.returncode == 1
        assert r.stderr.strip() == (
            f"pylivepatch: pyinstaller-bootloader: process {boot.pid} (frozen_app) is the "
            "bootloader of a PyInstaller app: the Python program runs in its child process "
            f"{child}; attach to {child}"
        )
        done = attach_json(child)
        assert "/_MEI" in done["agent_package"], done  # the bundle's own pylivepatch
        Client(child).load(payload(tmp_path))
        for _ in range(3000):
            if state.read_text() == "new":
                break
            time.sleep(0.01)
        assert state.read_text() == "new"
        Client(child).revert("attach-fix")
        for _ in range(3000):
            if state.read_text() == "old":
                break
            time.sleep(0.01)
        assert state.read_text() == "old"
        assert boot.poll() is None
    finally:
        boot.kill()
        boot.wait()
        if child:  # the bootloader's child, by its pid (never by name)
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
