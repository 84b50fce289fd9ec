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
    # uWSGI (and only uWSGI) reads this as --py-call-uwsgi-fork-hooks: its master then
    # takes Python's lock before forking a worker, which an agent's thread in the
    # master needs (agent/cforks.py, fork_hazard). A value the user set is kept.
    env.setdefault("UWSGI_PY_CALL_UWSGI_FORK_HOOKS", "1")
    return env


def run(app: str | None, command: Sequence[str]) -> int:
    if app:
        from .store import check_app

        check_app(app)
    exe = shutil.which(command[0])
    if exe is None:
        raise LivepatchError("not-found", f"command {command[0]!r} not found")
    os.execve(exe, list(command), environment(app))
    return 0  # pragma: no cover - execve does not return


def test(payloads: Sequence[str], command: Sequence[str]) -> int:
    """Run ``command`` with ``payloads`` applied at the start of every Python process it
    starts; print whether they applied; return the command's exit code."""
    import subprocess
    import sys
    import tempfile

    from . import testing

    paths = []
    for p in payloads:
        path = Path(p).resolve()
        if not path.is_file():
            raise LivepatchError("not-found", f"payload file {p} does not exist")
        from ..payload import archive

        archive.read(path.read_bytes())  # a damaged payload is refused before CMD runs
        paths.append(str(path))
    exe = shutil.which(command[0])
    if exe is None:
        raise LivepatchError("not-found", f"command {command[0]!r} not found")
    with tempfile.TemporaryDirectory(prefix="pylivepatch-test-") as tmp:
        env = environment(None)
        env[testing.PAYLOADS] = os.pathsep.join(paths)
        env[testing.REPORT] = str(Path(tmp) / "report.jsonl")
        code = subprocess.run([exe, *command[1:]], env=env).returncode
        lines, _ = testing.summarize(env[testing.REPORT])
    for line in lines:
        print(line, file=sys.stderr)
    return code
