"""``pylivepatch attach``: real targets started without pylivepatch, in every main-thread
state, on this interpreter (CI runs the suite on every interpreter it has), attached
through the real command line by each method the version has (gdb; sys.remote_exec on
3.14+; auto, which on 3.14+ combines both), then patched and reverted through the
attached agent. Each target checks its own results while being attached and stays alive; its
longest freeze is reported (``-rA`` or the summary at the end)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attach_support import (
    GDB,
    MODES,
    PATIENCE,
    TESTS,
    Target,
    attach_json,
    cli,
    interpreters,
    payload,
    target_env,
    without_remote_exec,
)
from pylivepatch import Client, LivepatchError

pytestmark = [
    pytest.mark.system,  # starts servers, gdb or namespaces: not in the fast lane
    pytest.mark.skipif(
        GDB is None and sys.version_info < (3, 14),
        reason="gdb is not installed (.ci/run installs it: attach needs it before 3.14)",
    ),
]

#: how gdb enters each main-thread state (auto plan): queued for the main thread, or
#: run on it while it waits in an allow-listed system call
PLANS = {
    "busy": {"pending", "direct"},  # bytecode with 1 ms sleeps: either, by the moment
    "cpu": {"pending"},
    "sleep": {"direct"},
    "accept": {"direct"},
    "wait": {"pending"},  # a futex: never direct; woken with EINTR
    "asyncio": {"direct"},
    "contended": {"pending"},  # often parked in a futex waiting for the GIL: never direct
    "pause": {"direct"},
    "returned": {"pending"},  # the interpreter's shutdown waits on a lock: EINTR
}
#: 3.14+, method auto: sys.remote_exec where the main thread runs bytecode (GIL-contended:
#: the main thread may not get the GIL within the grace on a loaded machine, then gdb);
#: gdb where it does not
AUTO_314 = {
    **PLANS,
    "busy": {"remote-exec"},
    "cpu": {"remote-exec"},
    "contended": {"remote-exec", "pending"},
}
#: the states where the main thread runs bytecode, which sys.remote_exec alone serves
RUNS_BYTECODE = ("busy", "cpu", "contended")
PYTHON = "{}.{}".format(*sys.version_info[:2])
NEW = sys.version_info >= (3, 14)


def _cases() -> list[tuple[str, str, set[str]]]:
    """(mode, method, the ways it may be entered) for this interpreter's methods."""
    out = []
    for mode in MODES:
        if mode == "returned" and PYTHON == "3.12":
            continue  # 3.12 starts no thread then: test_attach_methods.py checks the refusal
        out.append((mode, "gdb", PLANS[mode]))
        out.append((mode, "auto", AUTO_314[mode] if NEW else PLANS[mode]))
        if NEW and mode in RUNS_BYTECODE:
            out.append((mode, "remote-exec", {"remote-exec"}))
    return out


@pytest.fixture(scope="module")
def fix(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return payload(tmp_path_factory.mktemp("attach-payload"))


def patch_and_revert(t: Target, data: bytes) -> None:
    """Load the payload through the attached agent, see every worker run the new code,
    revert, see the old code again."""
    client = Client(t.pid)
    result = client.load(data)
    assert result.state == "APPLIED"
    t.wait("the new code", lambda s: s["last_answer"] == "new")
    assert client.revert("attach-fix").state == "CHECKED"
    t.wait("the old code again", lambda s: s["last_answer"] == "old")
    client.unload("attach-fix")


@pytest.mark.parametrize(("mode", "method", "ways"), _cases())
def test_attach_in_each_main_thread_state(
    tmp_path: Path,
    mode: str,
    method: str,
    ways: set[str],
    fix: bytes,
    record_property: pytest.RecordProperty,
) -> None:
    t = Target(tmp_path, mode)
    try:
        before = t.ready()
        r = attach_json(t.pid, "--method", method)
        assert r["result"] in ways, r
        assert r["python"] == sys.version.split()[0]
        after = t.alive_and_sound()
        assert "pylivepatch-agent" in after["threads"]
        assert Client(t.pid).ping()["pid"] == t.pid
        patch_and_revert(t, fix)
        final = t.alive_and_sound()
        record_property(
            "report",
            f"attach python {PYTHON} main thread {mode} --method {method}: via "
            f"{r['result']}, agent up in "
            f"{r['total_ms']:.0f} ms, gdb {r['gdb_ms']:.0f} ms, longest freeze "
            f"{final['max_gap_ms']:.0f} ms (before attach {before['max_gap_ms']:.0f} ms), "
            f"{final['checks']} checks, 0 wrong",
        )
    finally:
        t.stop()


def test_attach_brings_the_agent_by_path_when_the_target_cannot_import_it(
    tmp_path: Path, fix: bytes
) -> None:
    """-S: no site-packages, so no pylivepatch in the target: the agent comes from a
    private read-only copy owned by this user."""
    t = Target(tmp_path, "sleep", flags=["-S"])
    try:
        t.ready()
        r = attach_json(t.pid)
        package = Path(r["agent_package"])
        lib = package.parent
        assert lib.parent.name == "lib" and lib.parent.parent == Path(r["socket"]).parent
        for p in [lib, *lib.rglob("*")]:
            st = p.lstat()
            assert st.st_uid == os.getuid()
            assert st.st_mode & 0o222 == 0, f"{p} is writable"
        patch_and_revert(t, fix)
        t.alive_and_sound()
    finally:
        t.stop()


def test_attach_to_debians_stripped_interpreter(tmp_path: Path, fix: bytes) -> None:
    """Only dynamic symbols: Debian's /usr/bin/python3 has no debug information and a
    static libpython (.ci/run installs it)."""
    exe = Path("/usr/bin/python3")
    if not exe.exists():
        pytest.skip("no /usr/bin/python3 (Debian's python3 package)")
    version = subprocess.run(
        [str(exe), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not (3, 10) <= tuple(map(int, version.split("."))) <= (3, 14):
        pytest.skip(f"Debian's python3 is {version}")
    t = Target(tmp_path, "wait", python=str(exe))
    try:
        t.ready()
        r = attach_json(t.pid)
        assert r["result"] == "pending"
        assert "/lib/" in r["agent_package"]  # Debian's Python has no pylivepatch
        if version == PYTHON:  # the payload's fingerprints are this interpreter's
            patch_and_revert(t, fix)
        t.alive_and_sound()
    finally:
        t.stop()


def test_every_other_interpreter_here_in_two_states(tmp_path: Path) -> None:
    """The suite runs on one interpreter; every other CPython 3.10-3.15 here is attached
    too (by path: they have no pylivepatch), blocked and running bytecode: across
    versions, sys.remote_exec is called from the target's own interpreter."""
    others = {v: exe for v, exe in interpreters().items() if v != PYTHON}
    assert others, "no other CPython here (.ci/run installs 3.14 and 3.15)"
    for version, exe in sorted(others.items()):
        for mode in ("wait", "cpu"):
            t = Target(tmp_path, mode, python=exe)
            try:
                t.ready()
                r = attach_json(t.pid)
                assert r["python"].startswith(version + "."), r
                assert Client(t.pid).ping()["python"] == r["python"]
                t.alive_and_sound()
            finally:
                t.stop()


def test_attach_is_idempotent(tmp_path: Path) -> None:
    t = Target(tmp_path, "sleep")
    try:
        t.ready()
        first = attach_json(t.pid)
        assert first["result"] == "direct"
        again = cli("attach", str(t.pid))
        assert again.returncode == 0
        assert again.stdout == f"pid {t.pid}: already has an agent (python {first['python']}); nothing to do\n"  # fmt: skip
        after = t.alive_and_sound()
        assert after["threads"].count("pylivepatch-agent") == 1
    finally:
        t.stop()


def test_two_attaches_at_once_make_one_agent(tmp_path: Path) -> None:
    t = Target(tmp_path, "busy")
    try:
        t.ready()
        command = [sys.executable, "-m", "pylivepatch", "attach", str(t.pid), "--json"]
        both = [
            subprocess.Popen(
                [*command, "--timeout", PATIENCE],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        docs = []
        for p in both:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, (out, err)
            docs.append(json.loads(out)["results"][0]["result"])
        assert sorted(docs)[0] == "already", docs
        assert sorted(docs)[1] in ("pending", "direct", "remote-exec"), docs
        assert t.alive_and_sound()["threads"].count("pylivepatch-agent") == 1
    finally:
        t.stop()


def test_load_attach_attaches_then_loads(tmp_path: Path, fix: bytes) -> None:
    t = Target(tmp_path, "accept")
    try:
        t.ready()
        archive = tmp_path / "attach-fix.lpz"
        archive.write_bytes(fix)
        r = cli("load", str(archive), "-p", str(t.pid), "--attach")
        assert r.returncode == 0, r.stderr
        assert f"attached pid {t.pid}: python " in r.stderr
        t.wait("the new code", lambda s: s["last_answer"] == "new")
        # a second --attach finds the agent and only loads (here: already loaded)
        r = cli("revert", "attach-fix", "-p", str(t.pid))
        assert r.returncode == 0, r.stderr
        t.wait("the old code", lambda s: s["last_answer"] == "old")
        t.alive_and_sound()
    finally:
        t.stop()


# -- pre-flight: every refusal is immediate, named, and leaves the target alone ----------


def refused(pid: int, code: str, *args: str, **kw: object) -> str:
    r = cli("attach", str(pid), *args, **kw)  # type: ignore[arg-type]
    assert r.returncode == (2 if code == "timeout" else 1), (r.returncode, r.stdout, r.stderr)
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"pylivepatch: {code}: "), r.stderr
    assert "Traceback" not in r.stderr
    return line


def test_no_such_process() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    line = refused(p.pid, "no-such-process")
    assert line == f"pylivepatch: no-such-process: there is no process {p.pid}"


def test_zombie() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        for _ in range(500):
            if Path(f"/proc/{p.pid}/status").read_text().find("State:\tZ") >= 0:
                break
            time.sleep(0.01)
        line = refused(p.pid, "no-such-process")
        assert "has exited (a zombie not yet reaped by its parent" in line
    finally:
        p.wait()


def test_stopped_target_is_refused_then_attached_once_resumed(tmp_path: Path) -> None:
    t = Target(tmp_path, "sleep")
    try:
        t.ready()
        os.kill(t.pid, signal.SIGSTOP)
        for _ in range(500):
            if "State:\tT" in Path(f"/proc/{t.pid}/status").read_text():
                break
            time.sleep(0.01)
        line = refused(t.pid, "target-stopped")
        assert line.endswith(f"resume it first with `kill -CONT {t.pid}`")
        os.kill(t.pid, signal.SIGCONT)
        assert attach_json(t.pid)["result"] == "direct"
        t.alive_and_sound()
    finally:
        t.stop()


def test_already_traced_names_the_tracer(tmp_path: Path) -> None:
    t = Target(tmp_path, "busy")
    tracer = subprocess.Popen(
        [sys.executable, "-c",
         "import ctypes, sys, time\n"
         "libc = ctypes.CDLL(None, use_errno=True)\n"
         "print(libc.ptrace(0x4206, int(sys.argv[1]), 0, 0), flush=True)\n"  # PTRACE_SEIZE
         "time.sleep(120)\n", str(t.pid)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        t.ready()
        assert tracer.stdout is not None and tracer.stdout.readline().strip() == "0"
        line = refused(t.pid, "already-traced")
        assert f"is traced by process {tracer.pid} (python" in line
        tracer.kill()
        tracer.wait()
        t.alive_and_sound()  # seized, never stopped: it ran on all along
    finally:
        tracer.kill()
        tracer.wait()
        t.stop()


def test_not_cpython() -> None:
    p = subprocess.Popen(["sleep", "60"])
    try:
        line = refused(p.pid, "not-cpython")
        assert "(/usr/bin/sleep) is not a CPython interpreter" in line
    finally:
        p.kill()
        p.wait()


def test_unsupported_version(tmp_path: Path) -> None:
    root = Path(os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))) / "versions"
    old = sorted(root.glob("3.9.*/bin/python3.9"))
    if not old:
        pytest.skip("no CPython 3.9 here")
    p = subprocess.Popen([str(old[0]), "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)
        line = refused(p.pid, "unsupported-version")
        assert "runs CPython 3.9." in line and "support CPython 3.10-3.15" in line
    finally:
        p.kill()
        p.wait()


def test_another_user_without_cap_sys_ptrace(tmp_path: Path) -> None:
    """Root without CAP_SYS_PTRACE may not trace uid 12345's process: refused before
    gdb, naming the fix."""
    if os.getuid() != 0 or not Path("/usr/bin/setpriv").exists():
        pytest.skip("needs root and setpriv")
    exe = "/usr/bin/python3"
    if not Path(exe).exists():
        pytest.skip("no /usr/bin/python3 for another user to run")
    p = subprocess.Popen([exe, "-c", "import time; time.sleep(60)"], user=12345, cwd="/")
    try:
        time.sleep(0.3)
        line = refused(
            p.pid, "permission-denied", prefix=["setpriv", "--bounding-set=-sys_ptrace", "--"]
        )
        assert "belongs to uid 12345 and you are uid 0 without CAP_SYS_PTRACE" in line
        assert "--cap-add SYS_PTRACE" in line
    finally:
        p.kill()
        p.wait()


def test_agent_that_cannot_import_is_reported_and_the_target_runs_on(tmp_path: Path) -> None:
    """A module the agent needs is missing in the target (as in a frozen app that does
    not bundle it): its traceback comes back, the program is not disturbed."""
    p = subprocess.Popen(
        [sys.executable, "-S", "-c",
         "import sys, time\nsys.modules['json'] = None  # no json here\n"
         "while True:\n    time.sleep(0.01)\n"],
        cwd="/", env=target_env(),
    )  # fmt: skip
    try:
        time.sleep(0.5)
        r = cli("attach", str(p.pid))
        assert r.returncode == 1
        first = r.stderr.splitlines()[0]
        # CPython 3.15 words it "Standard library module 'json' was not found"
        assert first.startswith(
            f"pylivepatch: agent-import-failed: process {p.pid}: the agent could not start in "
            "the target: ModuleNotFoundError: "
        ), r.stderr
        assert (
            "import of json halted; None in sys.modules" in first
            or "Standard library module 'json' was not found" in first
        ), first
        assert "Traceback (most recent call last):" in r.stderr  # the target's, shown
        time.sleep(0.2)
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()


def test_not_initialized(tmp_path: Path) -> None:
    """A program that links libpython but has not initialized it (an embedding
    application starting up): refused by the check gdb makes before anything else."""
    import shutil
    import sysconfig

    ldlibrary = sysconfig.get_config_var("LDLIBRARY") or ""
    if not shutil.which("gcc") or not ldlibrary.endswith(".so"):
        pytest.skip("needs gcc and a shared libpython")
    # Debian's packages unpacked under a prefix (.ci/cpython-sid) keep LIBDIR's
    # configured /usr/lib/...: look under the interpreter's own prefix too
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = [
        Path(sysconfig.get_config_var("LIBDIR") or "/nonexistent"),
        Path(sys.base_prefix) / "lib" / multiarch,
        Path(sys.base_prefix) / "lib",
    ]
    libdir = str(next((d for d in dirs if (d / ldlibrary).exists()), dirs[0]))
    source = tmp_path / "embed.c"
    source.write_text(
        "#include <unistd.h>\nint Py_IsInitialized(void);\n"
        "int main(void) { (void)Py_IsInitialized; for (;;) sleep(1); }\n"
    )
    exe = tmp_path / "embed"
    lib = ldlibrary[3:].split(".so")[0]  # libpython3.11.so -> python3.11
    own_libc = []
    if (Path(libdir) / "ld-linux-x86-64.so.2").exists():
        # the prefix brings its own C library (newer than this system's): the program
        # runs with that loader, and the path reaches libpython's own dependencies too
        own_libc = ["-Wl,--disable-new-dtags", "-Wl,--allow-shlib-undefined",
                    f"-Wl,--dynamic-linker={libdir}/ld-linux-x86-64.so.2"]  # fmt: skip
    subprocess.run(
        ["gcc", "-o", str(exe), str(source), f"-L{libdir}", "-Wl,--no-as-needed",
         f"-l{lib}", f"-Wl,-rpath,{libdir}", *own_libc],
        check=True, capture_output=True,
    )  # fmt: skip
    p = subprocess.Popen([str(exe)])
    try:
        time.sleep(0.3)
        line = refused(p.pid, "not-initialized")
        # gdb's check (3.10-3.13), or what sys.remote_exec says (3.14+)
        assert "the interpreter is not initialized (starting up or shutting down)" in line
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()


def test_container_with_its_own_pid_and_mount_namespaces(tmp_path: Path, fix: bytes) -> None:
    """A target in its own pid and mount namespaces (a container) where our socket
    directory is another, empty directory: the files it opens are put in through
    /proc/PID/root, the agent takes the host's pid for its name, and a link in our
    socket directory lets every later command reach it by that pid."""
    if os.getuid() != 0 or not Path("/usr/bin/unshare").exists():
        pytest.skip("needs root and unshare")
    from pylivepatch.agent import protocol

    ours = protocol.socket_dir()
    ours.mkdir(mode=0o700, parents=True, exist_ok=True)
    shadowed = ours.parent  # the container gets an empty directory of its own there
    status = tmp_path / "status.json"
    script = (
        f"mount -t tmpfs -o mode=0700 tmpfs {shadowed} && exec {sys.executable} -S "
        f"{TESTS / 'attach_target.py'} sleep {status}"
    )
    p = subprocess.Popen(
        ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c", script],
        env=target_env(), cwd="/",
    )  # fmt: skip
    try:
        inner = None
        for _ in range(3000):
            kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
            if kids and status.exists():
                inner = int(kids[0])
                break
            time.sleep(0.01)
        assert inner is not None, "the container's python did not start"
        r = attach_json(inner)
        assert r["result"] == "direct"
        link = ours / f"{inner}.sock"
        assert link.is_symlink()
        assert os.readlink(link) == f"/proc/{inner}/root{ours}/{inner}.sock"
        assert Client(inner).ping()["pid"] == inner
        ps = json.loads(cli("ps", "--json").stdout)
        assert inner in [i["pid"] for i in ps]

        def answer() -> str:
            try:
                return str(json.loads(status.read_text())["last_answer"])
            except ValueError:  # between two writes
                return ""

        Client(inner).load(fix)
        for _ in range(1000):
            if answer() == "new":
                break
            time.sleep(0.01)
        assert answer() == "new"
        Client(inner).revert("attach-fix")
    finally:
        p.kill()
        p.wait()
        for path in ours.glob("*.sock"):
            if path.is_symlink():
                path.unlink()


def test_gdb_missing(tmp_path: Path) -> None:
    t = Target(tmp_path, "sleep")
    try:
        t.ready()
        env = dict(os.environ, PATH=str(tmp_path))  # no gdb on it
        line = refused(t.pid, "gdb-missing", "--method", "gdb", env=env)
        assert "`apt-get install gdb`" in line
        t.alive_and_sound()
    finally:
        t.stop()


@pytest.mark.parametrize("method", ["gdb", "auto", *(["remote-exec"] if NEW else [])])
def test_timeout_then_wake_with_a_handled_signal(tmp_path: Path, method: str) -> None:
    """A main thread blocked in flock (no allow-listed call, not a lock wait) runs the
    queued bootstrap only when it next runs Python: exit 2 with what was done; a
    signal the program handles wakes it."""
    queued = "remote-exec" if method == "remote-exec" else "pending"
    lock = tmp_path / "lock"
    lock.write_text("")
    with open(lock) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        env = dict(target_env(), ATTACH_TARGET_LOCK=str(lock))
        t = Target(tmp_path, "flock", extra=["--usr1"], env=env)
        try:
            t.ready()
            line = refused(t.pid, "timeout", "--timeout", "2", "--method", method)
            assert f"the bootstrap is queued ({queued}); the main thread is blocked in flock" in line  # fmt: skip
            assert "`--signal SIG`" in line
            r = attach_json(t.pid, "--signal", "USR1", "--method", method)
            assert r["result"] in (queued, "already"), r
            after = t.alive_and_sound()
            assert after["usr1"] >= 1
            assert after["threads"].count("pylivepatch-agent") == 1
        finally:
            t.stop()


def test_signal_without_a_handler_is_refused(tmp_path: Path) -> None:
    t = Target(tmp_path, "sleep")
    try:
        t.ready()
        line = refused(t.pid, "wrong-state", "--signal", "USR1")
        assert "has no handler for SIGUSR1" in line
        after = t.alive_and_sound()  # no signal was sent, nothing was injected
        assert "pylivepatch-agent" not in after["threads"]
        with pytest.raises(LivepatchError) as exc:
            Client(t.pid).ping()
        assert exc.value.code == "not-found"
    finally:
        t.stop()


def test_installed_payloads_of_the_app_apply_when_attached_with_app(
    tmp_path: Path, fix: bytes
) -> None:
    archive = tmp_path / "attach-fix.lpz"
    archive.write_bytes(fix)
    app = f"attached-{os.getpid()}"
    assert cli("install", str(archive), "--app", app).returncode == 0
    t = Target(tmp_path, "sleep")
    try:
        t.ready()
        r = attach_json(t.pid, "--app", app)
        assert r["app"] == app
        t.wait("the installed payload's code", lambda s: s["last_answer"] == "new")
        ps = json.loads(cli("ps", "--app", app, "--json").stdout)
        assert [(i["pid"], i["applied"]) for i in ps] == [(t.pid, ["attach-fix"])]
        log = cli("log", "--app", app).stdout
        assert "attach" in log and "load" in log, log
    finally:
        t.stop()
        cli("uninstall", "attach-fix", "--app", app)


@pytest.mark.parametrize(
    ("scope", "uid", "cap", "ancestor", "expected"),
    [
        (None, 0, True, False, None),
        (0, 1000, False, False, None),
        (1, 1000, False, True, None),  # an ancestor may
        (1, 1000, False, False, "kernel.yama.ptrace_scope is 1: only an ancestor"),
        (1, 1000, True, False, None),
        (2, 1000, False, True, "kernel.yama.ptrace_scope is 2: only CAP_SYS_PTRACE"),
        (2, 0, True, False, None),
        (3, 0, True, False, "kernel.yama.ptrace_scope is 3: no process may be traced"),
    ],
)
def test_permission_rules_name_their_cause(
    scope: int | None, uid: int, cap: bool, ancestor: bool, expected: str | None
) -> None:
    """What the kernel would refuse ptrace for, decided from /proc before any tracing
    (Yama's modes cannot be switched on this machine: the rules as data)."""
    from pylivepatch.attach import preflight, procfs

    st = procfs.Status(
        pid=4242, name="python", state="S", state_text="sleeping", ppid=1, tracer=0,
        uid=uid, euid=uid, caught_signals=0, threads=1,
    )  # fmt: skip
    privileges = procfs.Privileges(uid=uid, cap_sys_ptrace=cap, ptrace_scope=scope)
    if expected is None:
        preflight.check_permission(st, privileges, dumpable=True, is_ancestor=ancestor)
        return
    with pytest.raises(LivepatchError) as exc:
        preflight.check_permission(st, privileges, dumpable=True, is_ancestor=ancestor)
    assert exc.value.code == "permission-denied"
    assert expected in exc.value.message


def test_an_undumpable_process_of_your_own_needs_cap_sys_ptrace() -> None:
    from pylivepatch.attach import preflight, procfs

    st = procfs.Status(
        pid=4242, name="python", state="S", state_text="sleeping", ppid=1, tracer=0,
        uid=1000, euid=1000, caught_signals=0, threads=1,
    )  # fmt: skip
    mine = procfs.Privileges(uid=1000, cap_sys_ptrace=False, ptrace_scope=0)
    with pytest.raises(LivepatchError) as exc:
        preflight.check_permission(st, mine, dumpable=False, is_ancestor=False)
    assert "is not dumpable" in exc.value.message


def test_remote_exec_needs_3_14_in_the_target(tmp_path: Path) -> None:
    t = Target(tmp_path, "sleep", python=without_remote_exec())
    try:
        t.ready()
        line = refused(t.pid, "unsupported-version", "--method", "remote-exec")
        assert f"--method remote-exec needs CPython 3.14+ in the target; process {t.pid} runs" in line  # fmt: skip
        after = t.alive_and_sound()
        assert "pylivepatch-agent" not in after["threads"]
    finally:
        t.stop()


def test_an_agent_started_elsewhere_is_linked_where_we_look(tmp_path: Path) -> None:
    """A process started under `pylivepatch run` with another socket directory (a
    service manager's XDG_RUNTIME_DIR): attach finds its running agent and links it
    into our directory instead of starting a second one."""
    from pylivepatch.agent import protocol
    from pylivepatch.agent.run import environment

    elsewhere = tmp_path / "their-sockets"
    env = environment(None, base=target_env())
    env["PYLIVEPATCH_SOCKET_DIR"] = str(elsewhere)
    t = Target(tmp_path, "sleep", env=env)
    try:
        t.ready()
        t.wait("its own agent", lambda s: "pylivepatch-agent" in s["threads"])
        assert not protocol.socket_path(t.pid).exists()
        attach_json(t.pid)
        link = protocol.socket_path(t.pid)
        assert os.readlink(link) == str(elsewhere / f"{t.pid}.sock")
        assert Client(t.pid).ping()["pid"] == t.pid
        assert t.alive_and_sound()["threads"].count("pylivepatch-agent") == 1
    finally:
        t.stop()


def test_gdb_past_its_time_limit_is_stopped_and_the_target_runs_on(tmp_path: Path) -> None:
    """gdb is bounded: past its limit it is interrupted and stopped (attach-hung), and
    the target is left running, untraced and not stopped; attach then works. (The
    limit here is shorter than gdb's start, so the cut comes before any call: a call
    cut while it waits on a lock could hang the target, which is why the real limit is
    a generous last resort.) On a loaded machine gdb can get further than that before
    the interrupt takes effect (seen in CI): when its script reports the bootstrap done,
    attach says it attached, not that gdb was stopped before anything happened."""
    from pylivepatch.attach import attach

    t = Target(tmp_path, "busy")
    try:
        t.ready()
        try:
            first = attach(t.pid, gdb_limit=0.001, timeout=60, method="gdb")
        except LivepatchError as exc:
            assert exc.code == "attach-hung"
            assert exc.message.startswith("gdb did not finish within 0.001 s and was stopped")
            cut = True
        else:
            assert first.via in ("pending", "direct")
            cut = False
        status = Path(f"/proc/{t.pid}/status").read_text()
        assert "TracerPid:\t0\n" in status and "State:\tT" not in status, status
        t.alive_and_sound()
        again = attach_json(t.pid)["result"]
        # After a cut, the bootstrap may still have been queued (a pending call runs
        # once gdb has let go): the agent is then up already. Either way there is one.
        assert (
            again in ("pending", "direct", "remote-exec", "already") if cut else again == "already"
        )
        assert t.alive_and_sound()["threads"].count("pylivepatch-agent") == 1
    finally:
        t.stop()
