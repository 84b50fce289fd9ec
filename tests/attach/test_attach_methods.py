"""Attach's methods and what they must not change: CPython 3.14+'s ``sys.remote_exec``
(from every suite: a 3.14+ target is started with the newest interpreter here when the
suite's own is older, and attach calls ``sys.remote_exec`` from the target's
interpreter), its fall back to gdb for a main thread that runs no bytecode or has no
Python state, its failures (each its own code, never ``internal``), thread ids, and the
signal masks and handlers gdb's calls must leave as they found them."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from attach_support import (
    GDB,
    Target,
    attach_json,
    cli,
    interpreters,
    target_env,
    with_remote_exec,
)
from pylivepatch import Client, LivepatchError

pytestmark = [
    pytest.mark.system,  # starts servers, gdb or namespaces: not in the fast lane
    pytest.mark.skipif(GDB is None, reason="gdb is not installed (.ci/run installs it)"),
]


def refused(pid: int, code: str, *args: str, env: dict[str, str] | None = None) -> str:
    r = cli("attach", str(pid), *args, env=env)
    assert r.returncode == (2 if code == "timeout" else 1), (r.returncode, r.stdout, r.stderr)
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"pylivepatch: {code}: "), r.stderr
    assert "Traceback" not in r.stderr
    return line


def no_agent(t: Target) -> None:
    after = t.alive_and_sound()
    assert "pylivepatch-agent" not in after["threads"], after
    with pytest.raises(LivepatchError) as exc:
        Client(t.pid).ping()
    assert exc.value.code == "not-found"


# -- 3.14+: sys.remote_exec, and gdb where it cannot serve -------------------------------


def test_main_returned_remote_exec_refuses_with_its_code_then_auto_attaches(tmp_path: Path) -> None:  # fmt: skip
    """The main module returned while a thread runs on: the main thread has no Python
    state, sys.remote_exec cannot reach it (before: ``internal``); auto goes on with gdb."""
    t = Target(tmp_path, "returned", python=with_remote_exec())
    try:
        t.ready()
        line = refused(t.pid, "wrong-state", "--method", "remote-exec")
        assert "Can't find the main thread" in line and "use --method gdb" in line, line
        no_agent(t)
        r = attach_json(t.pid)
        assert r["result"] == "pending", r
        assert t.alive_and_sound()["threads"].count("pylivepatch-agent") == 1
    finally:
        t.stop()


def test_main_returned_on_3_12_is_refused_naming_why(tmp_path: Path) -> None:
    """CPython 3.12 (only) starts no thread once the main module has returned: the
    bootstrap runs, cannot start the agent's thread, and says so (before: a timeout
    saying the bootstrap was still queued)."""
    python = interpreters().get("3.12")
    if python is None:  # CI has it (.ci/run requires 3.12): never skipped there
        pytest.skip("no CPython 3.12 on this machine")
    t = Target(tmp_path, "returned", python=python)
    try:
        t.ready()
        line = refused(t.pid, "wrong-state")
        assert "could not start the agent's thread" in line, line
        assert "can't create new thread at interpreter shutdown" in line, line
        assert "CPython 3.12 starts no thread once the main module has returned" in line
        no_agent(t)
    finally:
        t.stop()


@pytest.mark.parametrize("mode", ["sleep", "wait", "accept", "asyncio", "pause"])
def test_idle_main_thread_remote_exec_times_out_and_auto_attaches_once(
    tmp_path: Path, mode: str
) -> None:
    """An idle main thread never runs the script sys.remote_exec queues (before: auto
    timed out on every idle server); auto enters by gdb after the grace, and the two
    queued copies of the bootstrap start one agent."""
    t = Target(tmp_path, mode, python=with_remote_exec())
    try:
        t.ready()
        line = refused(t.pid, "timeout", "--method", "remote-exec", "--timeout", "1")
        assert "the bootstrap is queued (remote-exec)" in line, line
        assert "without --method remote-exec attach goes on with gdb" in line, line
        from pylivepatch.agent import protocol

        ours = protocol.socket_dir()
        first = set(ours.glob(f"attach-{t.pid}-*.py"))  # still queued: it may run later
        r = attach_json(t.pid)
        assert r["result"] in ("direct", "pending"), r
        assert r["gdb_ms"] > 0
        after = t.alive_and_sound()
        assert after["threads"].count("pylivepatch-agent") == 1, after
        time.sleep(0.5)  # any other copy of the bootstrap would start its thread by now
        assert t.alive_and_sound()["threads"].count("pylivepatch-agent") == 1
        # the second attach's script, overtaken by gdb, was made harmless
        for script in set(ours.glob(f"attach-{t.pid}-*.py")) - first:
            assert "start_new_thread" not in script.read_text()
    finally:
        t.stop()


def test_busy_main_thread_needs_no_gdb(tmp_path: Path) -> None:
    """A main thread that runs bytecode takes sys.remote_exec's script at once: no
    debugger is started (gdb is not even on the PATH here)."""
    t = Target(tmp_path, "busy", python=with_remote_exec())
    try:
        t.ready()
        env = dict(os.environ, PATH=str(tmp_path))  # no gdb on it
        r = cli("attach", str(t.pid), "--json", "--timeout", "60", env=env)
        assert r.returncode == 0, r.stderr
        assert '"result": "remote-exec"' in r.stdout and '"gdb_ms": 0.0' in r.stdout, r.stdout
        assert t.alive_and_sound()["threads"].count("pylivepatch-agent") == 1
    finally:
        t.stop()


def test_idle_main_thread_without_gdb_times_out_naming_it(tmp_path: Path) -> None:
    t = Target(tmp_path, "sleep", python=with_remote_exec())
    try:
        t.ready()
        env = dict(os.environ, PATH=str(tmp_path))
        line = refused(t.pid, "timeout", "--timeout", "2", env=env)
        assert "queued (remote-exec); the main thread is blocked in clock_nanosleep" in line
        assert "needs gdb installed" in line
    finally:
        t.stop()


@pytest.mark.parametrize("method", ["auto", "remote-exec"])
def test_remote_debugging_turned_off_is_respected(tmp_path: Path, method: str) -> None:
    env = dict(target_env(), PYTHON_DISABLE_REMOTE_DEBUG="1")
    t = Target(tmp_path, "busy", python=with_remote_exec(), env=env)
    try:
        t.ready()
        line = refused(t.pid, "remote-debug-disabled", "--method", method)
        assert "not enabled in the remote process" in line and "pylivepatch run" in line
        no_agent(t)
    finally:
        t.stop()


#: what sys.remote_exec says (CPython 3.14/3.15: Python/remote_debug.h, sysmodule.c)
#: -> the code attach gives it; none is ``internal``
MESSAGES = [
    ("PermissionError", 1, "[Errno 1] Operation not permitted", "permission-denied"),
    ("ProcessLookupError", 3, "[Errno 3] No such process", "no-such-process"),
    (
        "RuntimeError",
        None,
        "Remote debugging is not enabled in the remote process",
        "remote-debug-disabled",
    ),  # fmt: skip
    ("RuntimeError", None, "Remote debugging is not enabled", "remote-debug-disabled"),
    (
        "RuntimeError",
        None,
        "Remote debugging support has not been compiled in",
        "remote-debug-disabled",
    ),  # fmt: skip
    (
        "RuntimeError",
        None,
        "Remote debugging is not supported on this platform",
        "remote-debug-disabled",
    ),  # fmt: skip
    ("RuntimeError", None, "Can't find the main thread in the remote process", "wrong-state"),
    (
        "RuntimeError",
        None,
        "Can't find a running interpreter in the remote process",
        "not-initialized",
    ),  # fmt: skip
    (
        "RuntimeError",
        None,
        "Failed to find the PyRuntime section in the process.",
        "not-cpython",
    ),  # fmt: skip
    (
        "RuntimeError",
        None,
        "Can't send commands to a process with a different Python version",
        "version-mismatch",
    ),  # fmt: skip
    (
        "RuntimeError",
        None,
        "Cannot send commands from a free-threaded build",
        "version-mismatch",
    ),  # fmt: skip
    ("ValueError", None, "Debugger script path is too long", "remote-exec-failed"),
    ("FileNotFoundError", 2, "Script file does not exist", "remote-exec-failed"),
    ("OSError", 5, "[Errno 5] Input/output error", "remote-exec-failed"),
    ("SystemError", None, "something new", "remote-exec-failed"),
]


@pytest.mark.parametrize(("kind", "number", "text", "code"), MESSAGES)
def test_every_remote_exec_failure_has_its_code(
    kind: str, number: int | None, text: str, code: str
) -> None:
    """The failures that cannot be caused here on purpose, as data (the reachable ones
    are caused for real above)."""
    from pylivepatch.attach import procfs, remote
    from pylivepatch.attach.preflight import Target as Found

    found = Found(
        pid=4242, uid=0, version=(3, 14, 0), api_file="/usr/bin/python3.14", root=Path("/"),
        other_namespace=False, main_thread=procfs.Parked(4242, None), functions={},
    )  # fmt: skip
    error = remote.mapped(found, kind, number, text)
    assert error.code == code, error
    assert text in error.message and "4242" in error.message


# -- thread ids ----------------------------------------------------------------------------


def test_a_thread_id_is_refused_naming_its_process(tmp_path: Path) -> None:
    """/proc answers for a thread id as for a process; attach given one names the process
    it belongs to (before: it started an agent, then timed out)."""
    t = Target(tmp_path, "sleep")
    try:
        t.ready()
        tids = [int(p.name) for p in Path(f"/proc/{t.pid}/task").iterdir()]
        tid = next(x for x in tids if x != t.pid)
        line = refused(tid, "no-such-process")
        assert line.startswith(f"pylivepatch: no-such-process: {tid} is a thread of process {t.pid} (")  # fmt: skip
        assert line.endswith(f"not a process: attach {t.pid}"), line
        no_agent(t)
    finally:
        t.stop()


# -- gdb leaves signals as it found them ---------------------------------------------------


def signal_state(pid: int) -> dict[int, tuple[str, str, str]]:
    """Each thread's blocked, ignored and caught signals (/proc/PID/task/TID/status)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = dict(
            line.split(":\t", 1) for line in (task / "status").read_text().splitlines() if ":\t" in line
        )  # fmt: skip
        out[int(task.name)] = (fields["SigBlk"], fields["SigIgn"], fields["SigCgt"])
    return out


@pytest.mark.parametrize("mode", ["sleep", "wait", "cpu"])
def test_gdb_leaves_every_signal_mask_and_handler_as_found(tmp_path: Path, mode: str) -> None:
    """A target that blocks every signal in every thread and has faulthandler's SIGSEGV
    handler: gdb's calls return through a SIGSEGV the kernel forces, which used to
    unblock it in the calling thread and reset the handler to the default (faulthandler
    silently off). Compared: every thread that existed before (the agent's thread is
    new), and every handler's address and flags."""
    t = Target(tmp_path, mode, extra=["--block-signals"])
    try:
        before_status = t.ready()
        assert before_status["handlers"][str(int(signal.SIGSEGV))][0] > 1  # faulthandler's
        before = signal_state(t.pid)
        r = attach_json(t.pid, "--method", "gdb")
        assert r["result"] in ("direct", "pending"), r
        after_status = t.alive_and_sound()
        assert "pylivepatch-agent" in after_status["threads"]
        after = signal_state(t.pid)
        assert {tid: after[tid] for tid in before} == before
        assert after_status["handlers"] == before_status["handlers"]
    finally:
        t.stop()
