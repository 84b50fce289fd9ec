"""CPython 3.14+: ``sys.remote_exec`` (PEP 768) queues the bootstrap, no debugger needed.

The interpreter itself writes a script path into the target's main thread state and
trips its eval breaker; the main thread runs the file at its next check, that is when
it next executes bytecode (a main thread asleep, blocked in ``accept`` or waiting on a
lock does not check: attach's ``auto`` method then goes on with gdb, see
:func:`pylivepatch.attach.attach`). The call must come from an interpreter of the same
minor version and build (the command line's own if it matches and has remote debugging
on, else the target's executable), and the file must be readable by the target's user
until it runs: it removes itself first thing.

Every failure of ``sys.remote_exec`` becomes its own error code (:func:`mapped`).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

from ..errors import LivepatchError
from .preflight import Target

_SELF_REMOVE = "try:\n    __import__('os').unlink({path!r})\nexcept BaseException:\n    pass\n"

#: how long the helper interpreter may take to write into the target (normal: 50 ms)
HELPER_LIMIT = 30.0


def inject(target: Target, boot: bytes, directory: Path, target_directory: str, name: str) -> Path:
    """Queue the bootstrap in ``target``; returns the script file (as reached from
    here), which removes itself when it runs."""
    here = directory / f"{name}.py"
    there = f"{target_directory.rstrip('/')}/{name}.py"
    here.write_bytes(_SELF_REMOVE.format(path=there).encode() + boot)
    here.chmod(0o644)  # the target's user reads it (the folder is ours, 0700)
    try:
        _send(target, there)
    except BaseException:
        here.unlink(missing_ok=True)
        raise
    return here


def disarm(script: Path, target_directory: str) -> None:
    """Make a queued script that was overtaken (gdb ran the bootstrap) do nothing but
    remove itself, whenever the target gets to it. Atomic: the target reads either the
    old file (whose bootstrap finds its token gone) or the new one."""
    there = f"{target_directory.rstrip('/')}/{script.name}"
    tmp = script.with_name(script.name + ".tmp")
    try:
        tmp.write_text(_SELF_REMOVE.format(path=there))
        tmp.chmod(0o644)
        os.replace(tmp, script)
    except OSError:
        tmp.unlink(missing_ok=True)


def _local_remote_exec_usable(target: Target) -> bool:
    if sys.version_info[:2] != target.version[:2] or not hasattr(sys, "remote_exec"):
        return False
    if bool(getattr(sys, "_is_gil_enabled", lambda: True)()) is False:
        return False  # a free-threaded command line cannot write into a GIL build
    enabled = getattr(sys, "is_remote_debug_enabled", None)
    return enabled is None or bool(enabled())


def _send(target: Target, there: str) -> None:
    if _local_remote_exec_usable(target):
        try:
            sys.remote_exec(target.pid, there)  # type: ignore[attr-defined]
        except (OSError, RuntimeError, ValueError) as exc:
            raise mapped(target, type(exc).__name__, getattr(exc, "errno", None), str(exc)) from None  # fmt: skip
        return
    exe = str(target.here(os.readlink(f"/proc/{target.pid}/exe")))
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_DISABLE_REMOTE_DEBUG"}
    code = (
        "import sys\n"
        "try:\n"
        f"    sys.remote_exec({target.pid}, {there!r})\n"
        "except BaseException as e:\n"
        "    print(type(e).__name__, getattr(e, 'errno', None) or 0, e, sep='\\t'); sys.exit(4)\n"
    )
    try:
        proc = subprocess.run(
            [exe, "-I", "-c", code],
            capture_output=True, text=True, timeout=HELPER_LIMIT, env=env,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise LivepatchError(
            "attach-hung",
            f"the helper interpreter ({exe}) calling sys.remote_exec for process "
            f"{target.pid} did not finish within {HELPER_LIMIT:g} s and was killed; the "
            "bootstrap may or may not be queued: run attach again (it is idempotent)",
        ) from None
    except OSError as exc:
        raise LivepatchError(
            "unreadable-binary",
            f"cannot run the target's interpreter {exe} to call sys.remote_exec ({exc}); "
            "run attach from a CPython of the target's version",
        ) from None
    if proc.returncode == 0:
        return
    kind, _, rest = proc.stdout.strip().partition("\t")
    number, _, text = rest.partition("\t")
    if not kind:  # it did not even get to the call
        kind, number, text = "Error", "0", (proc.stderr.strip()[-300:] or f"exit {proc.returncode}")  # fmt: skip
    raise mapped(target, kind, int(number) if number.isdigit() else None, text)


def mapped(target: Target, kind: str, number: int | None, text: str) -> LivepatchError:
    """The error for a failed ``sys.remote_exec`` (``kind``: the exception's type name,
    ``number``: its errno, ``text``: its message)."""
    pid = target.pid
    lower = text.lower()
    said = f"sys.remote_exec into process {pid} said: {text}"
    if kind == "PermissionError" or number in (errno.EPERM, errno.EACCES):
        return LivepatchError(
            "permission-denied",
            f"{said}: run attach as the process's user or with CAP_SYS_PTRACE (containers: "
            "--cap-add SYS_PTRACE); check kernel.yama.ptrace_scope",
        )
    if kind == "ProcessLookupError" or number == errno.ESRCH:
        return LivepatchError("no-such-process", f"process {pid} exited while attaching ({text})")
    if "not enabled" in lower or "not supported on this platform" in lower or "compiled in" in lower:  # fmt: skip
        return LivepatchError(
            "remote-debug-disabled",
            f"{said}: remote debugging is turned off in the process (-X disable_remote_debug, "
            "PYTHON_DISABLE_REMOTE_DEBUG, or a build --without-remote-debug); an "
            "administrator chose that, so attach does not work around it: start the "
            "service under `pylivepatch run` instead",
        )
    if "main thread" in lower:
        return LivepatchError(
            "wrong-state",
            f"{said}: the main thread has no Python state any more (the main module has "
            "returned and the interpreter waits for other threads to end); sys.remote_exec "
            "can only run code in the main thread: use --method gdb (or auto, the default, "
            "which does)",
        )
    if "running interpreter" in lower:
        return LivepatchError(
            "not-initialized",
            f"{said}: the interpreter is not initialized (starting up or shutting down); "
            "try again once it runs",
        )
    if "pyruntime" in lower:
        return LivepatchError("not-cpython", f"{said}: process {pid} is not a CPython interpreter we can read")  # fmt: skip
    if "version" in lower or "free-threaded" in lower or "offsets" in lower:
        return LivepatchError(
            "version-mismatch",
            f"{said}; process {pid} runs CPython {target.python}: sys.remote_exec must be "
            "called from the same version and build (attach uses the target's own "
            "interpreter when the command line's differs)",
        )
    if "too long" in lower:
        return LivepatchError(
            "remote-exec-failed",
            f"{said}: CPython takes a script path of at most 511 bytes; use a shorter "
            "socket directory (PYLIVEPATCH_SOCKET_DIR or XDG_RUNTIME_DIR)",
        )
    if kind == "FileNotFoundError" or number == errno.ENOENT:
        return LivepatchError(
            "remote-exec-failed",
            f"{said}: a file sys.remote_exec needs vanished (the bootstrap script attach "
            "wrote, or the target's /proc entries); nothing was queued; try again",
        )
    return LivepatchError(
        "remote-exec-failed",
        f"{said} ({kind}); nothing was queued, the process runs on unchanged; "
        "`--method gdb` enters it another way",
    )
