"""CPython 3.14+: ``sys.remote_exec`` (PEP 768) runs the bootstrap, no debugger needed.

The interpreter itself writes a script path into the target's main thread state and
trips its eval breaker; the main thread runs the file at its next check. The call must
come from an interpreter of the same minor version and build (the command line's own
if it matches, else the target's executable), and the file must be readable by the
target's user until it runs: it removes itself first thing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..errors import LivepatchError
from .preflight import Target

_SELF_REMOVE = "try:\n    __import__('os').unlink({path!r})\nexcept BaseException:\n    pass\n"


def inject(target: Target, boot: bytes, directory: Path, target_directory: str, name: str) -> str:
    """Queue the bootstrap in ``target``; returns how (``remote-exec``)."""
    here = directory / f"{name}.py"
    there = f"{target_directory.rstrip('/')}/{name}.py"
    here.write_bytes(_SELF_REMOVE.format(path=there).encode() + boot)
    here.chmod(0o644)  # the target's user reads it (the folder is ours, 0700)
    try:
        remote_exec = getattr(sys, "remote_exec", None)
        if sys.version_info[:2] == target.version[:2] and remote_exec is not None:
            try:
                remote_exec(target.pid, there)
            except PermissionError as exc:
                raise _permission(target.pid, exc) from None
            except (RuntimeError, OSError, ValueError) as exc:
                raise _mapped(target, str(exc)) from None
            return "remote-exec"
        exe = str(target.here(os.readlink(f"/proc/{target.pid}/exe")))
        env = {k: v for k, v in os.environ.items() if k != "PYTHON_DISABLE_REMOTE_DEBUG"}
        code = (
            "import sys\n"
            "try:\n"
            f"    sys.remote_exec({target.pid}, {there!r})\n"
            "except PermissionError as e:\n"
            "    print('PermissionError', e); sys.exit(3)\n"
            "except BaseException as e:\n"
            "    print(type(e).__name__, e); sys.exit(4)\n"
        )
        proc = subprocess.run(
            [exe, "-I", "-c", code], capture_output=True, text=True, timeout=30, env=env
        )
        if proc.returncode == 3:
            raise _permission(target.pid, proc.stdout.strip())
        if proc.returncode != 0:
            raise _mapped(target, (proc.stdout + proc.stderr).strip())
        return "remote-exec"
    except BaseException:
        here.unlink(missing_ok=True)
        raise


def _permission(pid: int, exc: object) -> LivepatchError:
    return LivepatchError(
        "permission-denied",
        f"sys.remote_exec may not write into process {pid} ({exc}): run attach as the "
        "process's user or with CAP_SYS_PTRACE (containers: --cap-add SYS_PTRACE)",
    )


def _mapped(target: Target, text: str) -> LivepatchError:
    if "not enabled" in text.lower():
        return LivepatchError(
            "remote-debug-disabled",
            f"process {target.pid} has remote debugging turned off (-X disable-remote-debug, "
            "PYTHON_DISABLE_REMOTE_DEBUG, or a build --without-remote-debug): an "
            "administrator chose that, so attach does not work around it; start the "
            "service under `pylivepatch run` instead",
        )
    if "Can't send commands" in text or "free-threaded" in text:
        return LivepatchError(
            "version-mismatch",
            f"sys.remote_exec refused: {text}; process {target.pid} runs CPython {target.python}",
        )
    if "PyRuntime" in text:
        return LivepatchError("not-cpython", f"process {target.pid}: {text}")
    return LivepatchError("internal", f"sys.remote_exec into process {target.pid} failed: {text}")
