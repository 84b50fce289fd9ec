"""``pylivepatch run [--app NAME] -- CMD…``: every Python process CMD starts gets an
agent, without changing the program (like ``ddtrace-run``).

It puts a directory holding a ``sitecustomize`` module first on ``PYTHONPATH`` and sets
``PYLIVEPATCH_APP``, then replaces itself with CMD. Python imports ``sitecustomize`` at
start-up, in CMD and in every Python process CMD spawns (they inherit the
environment); processes forked from one (gunicorn workers) get their own agent through
the at-fork hook.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..errors import LivepatchError

BOOT = Path(__file__).resolve().parent / "boot"
SRC = Path(__file__).resolve().parents[2]  # so the boot module can import pylivepatch


def environment(app: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    paths = [str(BOOT), str(SRC)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if app:
        env["PYLIVEPATCH_APP"] = app
    return env


def run(app: str | None, command: Sequence[str]) -> int:
    if app:
        from .store import check_app

        check_app(app)
    if not command:
        raise LivepatchError("invalid-payload", "run needs a command: pylivepatch run -- CMD ...")
    exe = shutil.which(command[0])
    if exe is None:
        raise LivepatchError("not-found", f"command {command[0]!r} not found")
    os.execve(exe, list(command), environment(app))
    return 0  # pragma: no cover - execve does not return
