"""Drive gdb (CPython 3.10–3.13, and 3.14+ when ``sys.remote_exec`` cannot serve): attach, run ``gdb_inject.py``, detach — bounded.

gdb is started with every default that can stall or surprise a production host turned
off: no debuginfod (it may try the network), no auto-loaded scripts, no pagination or
confirmation, only libc's and the loader's symbols (loading every library's symbols
froze a process with large native libraries for seconds; libpython's debug information
alone held a process for 0.3 s: its C API is called by address), and ``unwindonsignal`` so
that an interrupted call is unwound instead of left on the target's stack. gdb is
given a time limit; past it, it is interrupted (the call unwinds), then killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LivepatchError

SCRIPT = Path(__file__).resolve().parent / "gdb_inject.py"

#: gdb settings given before it attaches (-iex) and after (-ex)
EARLY = (
    "set debuginfod enabled off",
    "set auto-load off",
    "set pagination off",
    "set confirm off",
    "set unwindonsignal on",
    "set auto-solib-add off",
    "set debug-file-directory /dev/null",  # separate debug files (libc6-dbg) took 0.4-1 s
    "set print thread-events off",
)
LATE = (
    "set scheduler-locking off",  # calls let other threads run: one may hold the GIL
    "sharedlibrary libc.so",
    "sharedlibrary libc.musl",
    "sharedlibrary ld-linux",
)

#: environment variables of ours that must not reach gdb's embedded Python
_PYTHON_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "PYTHONUSERBASE")


@dataclass
class Outcome:
    """What gdb did."""

    ok: bool
    plan: str = ""  # "pending" or "direct"
    code: str = ""
    message: str = ""
    held_ms: float = 0.0  # the script's time inside the stopped process
    wall_ms: float = 0.0  # gdb's whole run: attach, the script, detach
    interrupted: bool = False  # the main thread's lock wait was woken with EINTR
    main: dict[str, Any] = field(default_factory=dict)


def find_gdb() -> str:
    gdb = shutil.which("gdb")
    if gdb is None:
        raise LivepatchError(
            "gdb-missing",
            "attach to CPython 3.10-3.13 (and to a 3.14+ process whose main thread does "
            "not run bytecode) needs gdb, which is not installed: "
            "`apt-get install gdb` (Debian/Ubuntu), `dnf install gdb` (Fedora/RHEL)",
        )
    return gdb


def _check_python(gdb: str) -> None:
    probe = subprocess.run(
        [gdb, "-nx", "-batch", "-ex", "python print(6 * 7)"],
        capture_output=True, text=True, timeout=30, env=_environment({}),
    )  # fmt: skip
    if "42" not in probe.stdout:
        raise LivepatchError(
            "gdb-no-python",
            f"{gdb} has no Python scripting, which attach needs: install a gdb built with "
            f"Python (Debian's `gdb` package, not `gdb-minimal`); gdb said: "
            f"{(probe.stderr or probe.stdout).strip()[:200]}",
        )


def _environment(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PYTHON_ENV}
    env.update(extra)
    return env


def inject(
    pid: int,
    boot: bytes,
    functions: dict[str, tuple[int, bytes]],
    plan: str = "auto",
    limit: float = 30.0,
) -> Outcome:
    """Run the bootstrap in ``pid`` through gdb; ``functions`` are the C API's addresses
    in the process and the first bytes of their code; ``limit`` bounds gdb's run."""
    gdb = find_gdb()
    with tempfile.TemporaryDirectory(prefix="pylivepatch-gdb-") as tmp:
        boot_file, result_file = Path(tmp) / "boot.py", Path(tmp) / "result.json"
        boot_file.write_bytes(boot)
        command = [gdb, "-p", str(pid), "-batch", "-nx", "-q"]
        for setting in EARLY:
            command += ["-iex", setting]
        for setting in LATE:
            command += ["-ex", setting]
        command += ["-x", str(SCRIPT)]
        env = _environment(
            {
                "PYLIVEPATCH_ATTACH_BOOT": str(boot_file),
                "PYLIVEPATCH_ATTACH_RESULT": str(result_file),
                "PYLIVEPATCH_ATTACH_PLAN": plan,
                "PYLIVEPATCH_ATTACH_API": json.dumps(
                    {name: [address, code.hex()] for name, (address, code) in functions.items()}
                ),
            }
        )
        started = time.monotonic()
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
        try:
            output, _ = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            output = _stop(proc)
            resumed = _resume_if_left_stopped(pid)
            done = _outcome(result_file)
            if done.get("ok"):
                # The interrupt came too late to stop anything: the bootstrap ran (gdb
                # can defer an interrupt until its script is done). Say what happened.
                return _from_doc(done, (time.monotonic() - started) * 1000)
            raise LivepatchError(
                "attach-hung",
                f"gdb did not finish within {limit:g} s and was stopped (a call it was "
                f"making in process {pid} is unwound){resumed}. Look at the process with "
                f"`py-spy dump --pid {pid}` or `cat /proc/{pid}/task/*/syscall` before "
                f"trying again; gdb said: {_tail(output)}",
            ) from None
        wall = (time.monotonic() - started) * 1000
        text = output.decode(errors="replace")
        if not result_file.exists():
            raise _failure(gdb, pid, text)
        doc = json.loads(result_file.read_text())
    return _from_doc(doc, wall)


def _outcome(result_file: Path) -> dict[str, Any]:
    """What gdb's script wrote, if it wrote anything readable."""
    try:
        doc = json.loads(result_file.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _from_doc(doc: dict[str, Any], wall: float) -> Outcome:
    return Outcome(
        ok=bool(doc.get("ok")),
        plan=str(doc.get("plan", "")),
        code=str(doc.get("code", "")),
        message=str(doc.get("message", "")),
        held_ms=float(doc.get("held_ms", 0.0)),
        wall_ms=round(wall, 1),
        interrupted=bool(doc.get("interrupted")),
        main=dict(doc.get("main") or {}),
    )


def _stop(proc: subprocess.Popen[bytes]) -> bytes:
    """Interrupt gdb (an inferior call in progress is unwound), then kill it."""
    # gdb killed inside a call would leave the call's frame on the target's stack: give
    # the interrupt time to unwind it and detach before killing.
    for sig, wait in ((signal.SIGINT, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            out, _ = proc.communicate(timeout=wait)
            return out or b""
        except subprocess.TimeoutExpired:
            continue
    return b""


def _resume_if_left_stopped(pid: int) -> str:
    """A tracer that dies while attaching can leave its stop pending: the process
    would stay stopped (state T) with no tracer. Resume it; say so."""
    from . import procfs

    for _ in range(50):
        st = procfs.status(pid)
        if st is None or st.state != "T" or st.tracer:
            return ""
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.01)
    return "; it was left stopped and SIGCONT did not resume it"


def _tail(output: bytes | str, n: int = 300) -> str:
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    text = " | ".join(line.strip() for line in text.strip().splitlines()[-4:])
    return text[-n:] or "nothing"


def _failure(gdb: str, pid: int, output: str) -> LivepatchError:
    """The error for a gdb run that ended before the script wrote its result."""
    if "ptrace: Operation not permitted" in output:
        return LivepatchError(
            "permission-denied",
            f"the kernel refused to let gdb trace process {pid} (ptrace: Operation not "
            "permitted): run attach as the process's user or root with CAP_SYS_PTRACE (in a "
            "container: --cap-add SYS_PTRACE); check kernel.yama.ptrace_scope",
        )
    if "No such process" in output:
        return LivepatchError("no-such-process", f"process {pid} exited while attaching")
    _check_python(gdb)  # raises gdb-no-python if that is why
    return LivepatchError(
        "internal",
        f"gdb ended without running the attach script in process {pid}: {_tail(output)}",
    )
