"""Helpers of the attach tests: real target programs started without pylivepatch, the
real command line, and a payload for ``attach_app``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pylivepatch.builder.pack import pack

TESTS = Path(__file__).resolve().parent
TARGET = TESTS / "attach_target.py"
MODES = ("busy", "cpu", "sleep", "accept", "wait", "asyncio", "contended", "pause", "returned")
#: where CI installs CPython 3.14 and 3.15 (.ci/cpython-sid: Debian unstable's packages)
SID = Path("/opt/cpython-sid/usr/bin")
GDB = shutil.which("gdb")

PAYLOAD_SOURCE = """\
import pylivepatch as lp

patch = lp.Patch("attach-fix", version="1")


@patch.function("attach_app:answer")
def answer():
    return "new"
"""


def payload(tmp: Path) -> bytes:
    path = tmp / "attach_fix.py"
    path.write_text(PAYLOAD_SOURCE)
    import attach_app  # noqa: F401 - the target module, as the targets import it

    return pack(path).data


def target_env() -> dict[str, str]:
    """The test's environment without anything that would start an agent."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYLIVEPATCH_APP") and not k.startswith("PYLIVEPATCH_TEST")
    }


class Target:
    """A running ``attach_target.py`` in one main-thread mode."""

    def __init__(
        self,
        tmp: Path,
        mode: str,
        python: str = sys.executable,
        flags: Sequence[str] = (),
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
        **popen: Any,
    ) -> None:
        self.status_path = tmp / f"status-{mode}-{time.monotonic_ns()}.json"
        self.err_path = tmp / f"stderr-{mode}-{time.monotonic_ns()}.txt"
        self.err = open(self.err_path, "wb")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            [python, *flags, str(TARGET), mode, str(self.status_path), *extra],
            env=target_env() if env is None else env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=self.err, cwd="/", **popen,
        )  # fmt: skip
        self.pid = self.proc.pid
        self.mode = mode

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status_path.read_text()))
        except (OSError, ValueError):
            return {}

    def wait(self, what: str, check: Callable[[dict[str, Any]], bool], limit: float = 60) -> dict[str, Any]:  # fmt: skip
        """Poll the target's status until ``check`` holds (bounded: a hung target fails
        the test with what it last said, it does not hang it)."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            s = self.status()
            if s and check(s):
                return s
            if self.proc.poll() is not None:
                raise AssertionError(f"target {self.pid} died ({self.proc.returncode}): {self.stderr()}")  # fmt: skip
            time.sleep(0.02)
        raise AssertionError(f"target {self.pid} never got to {what}: {self.status()} {self.stderr()}")  # fmt: skip

    def ready(self) -> dict[str, Any]:
        if self.mode == "nothreads":
            return self.wait("running", lambda s: s.get("main_loops", 0) > 0)
        # the workers ran and the monitor wrote after its warm-up
        return self.wait("running", lambda s: s["checks"] > 20 and s["max_gap_ms"] > 0)

    def alive_and_sound(self) -> dict[str, Any]:
        """Still running, its checks passing, its heartbeat fresh."""
        before = self.status()
        after = self.wait("a fresh heartbeat", lambda s: s["beat"] > before.get("beat", 0) + 0.1)
        assert self.proc.poll() is None
        assert after["mismatches"] == 0, after
        return after

    def stderr(self) -> str:
        self.err.flush()
        return self.err_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.err.close()


def cli(*args: str, env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [*prefix, sys.executable, "-m", "pylivepatch", *args],
        capture_output=True, text=True, timeout=180, env=env,
    )  # fmt: skip


#: the tests' patience for an agent to answer (the command's default is 10 s; a loaded
#: CI machine starting the agent in a busy target can take longer)
PATIENCE = "60"


def attach_json(pid: int, *args: str) -> dict[str, Any]:
    if "--timeout" not in args:
        args = (*args, "--timeout", PATIENCE)
    r = cli("attach", str(pid), "--json", *args)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    doc = json.loads(r.stdout)
    assert doc["ok"], doc
    return dict(doc["results"][0])


def interpreters() -> dict[str, str]:
    """Every supported CPython here (pyenv's, and 3.14/3.15 where .ci/cpython-sid puts
    them), by minor version."""
    root = Path(os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))) / "versions"
    found: dict[str, str] = {}
    for minor in ("3.10", "3.11", "3.12", "3.13", "3.14", "3.15"):
        for exe in sorted(root.glob(f"{minor}.*/bin/python{minor}")):
            found[minor] = str(exe)
        if (SID / f"python{minor}").exists():
            found[minor] = str(SID / f"python{minor}")
    found["{}.{}".format(*sys.version_info[:2])] = sys.executable
    return found


def with_remote_exec() -> str:
    """An interpreter that has sys.remote_exec (3.14+) for a target: this one if it
    has, else the newest here (CI installs 3.14 and 3.15 for every suite)."""
    if sys.version_info >= (3, 14):
        return sys.executable
    newer = [exe for minor, exe in sorted(interpreters().items()) if minor >= "3.14"]
    if not newer:  # CI installs them for every suite (.ci/run): never skipped there
        import pytest

        pytest.skip("no CPython 3.14+ on this machine (.ci/cpython-sid installs it)")
    return newer[-1]


def without_remote_exec() -> str:
    """An interpreter older than 3.14 for a target (this one if it is)."""
    if sys.version_info < (3, 14):
        return sys.executable
    older = [exe for minor, exe in sorted(interpreters().items()) if minor < "3.14"]
    if not older:
        import pytest

        pytest.skip("no CPython 3.10-3.13 on this machine")
    return older[-1]
