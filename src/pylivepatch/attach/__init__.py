"""``pylivepatch attach PID``: start the agent in a CPython process that was started
without pylivepatch (spec §9), safely.

The order of an attach:

1. An agent that already answers is left alone (attach is idempotent: exit 0).
2. Pre-flight without ptrace (:mod:`.preflight`): the process exists (a process, not
   one of its threads), is not a zombie, stopped or traced, we may trace it, and it is
   CPython 3.10–3.15.
3. A lock per target (two attaches at once: the second waits, then finds the agent).
4. A side channel and the bootstrap (:mod:`.bootstrap`), then the injection: gdb
   (:mod:`.gdbrun`, 3.10–3.13); on 3.14+ ``sys.remote_exec`` (:mod:`.remote`) first,
   then gdb if the main thread has not run the bootstrap within ``REMOTE_GRACE``
   seconds (it runs it only when it next executes bytecode: an idle main thread never
   does) or has no Python state (the main module returned). Both carry the same
   bootstrap, which runs once: the first copy to run removes the attach's token file.
5. The handshake: the target's new thread reports on the side channel (its pid checked
   with ``SO_PEERCRED``), and the agent answers a ping on its control socket.

Every wait is bounded: gdb by ``gdb_limit`` (then interrupted, its call unwound), the
whole attach by ``timeout`` (exit 2: ``timeout``, with what was done).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal as signals
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..agent import protocol, store
from ..client import Client
from ..errors import LivepatchError
from . import bootstrap, preflight, procfs

METHODS = ("auto", "gdb", "remote-exec")


@dataclass
class Attached:
    """The outcome of one attach."""

    pid: int
    python: str
    via: str  # "pending" or "direct" (gdb), "remote-exec", or "already" (had an agent)
    socket: str
    total_ms: float  # from the start of attach to the agent answering
    gdb_ms: float  # gdb's whole run; the process is stopped for part of it (0 without gdb)
    main_thread: str  # what the main thread was doing: "running", "futex", ...
    agent_package: str = ""  # where the target imported pylivepatch from
    app: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _ping(pid: int) -> dict[str, Any] | None:
    try:
        return Client(pid, timeout=5).ping()
    except LivepatchError:
        return None


def attach(
    pid: int,
    *,
    app: str | None = None,
    timeout: float = 10.0,
    method: str = "auto",
    plan: str = "auto",
    wake: int | None = None,
    gdb_limit: float = 30.0,
) -> Attached:
    """Start an agent in process ``pid`` and return once it answers.

    ``method``: auto (``sys.remote_exec`` on 3.14+, gdb before), gdb or remote-exec;
    ``plan`` (gdb): auto, pending or direct; ``wake``: a signal the program handles in
    Python, sent after queuing the bootstrap so that a main thread blocked in a system
    call runs it at once.
    """
    started = time.monotonic()
    deadline = started + timeout
    if method not in METHODS:
        raise LivepatchError("invalid-payload", f"--method {method!r}: use one of {METHODS}")
    if app:
        store.check_app(app)
    info = _ping(pid)
    if info is not None:
        return _already(pid, info, started)
    # A wrong pid is told at once, not after the lock; traced or stopped only under it
    # (another attach's gdb holds the process so meanwhile: test_attach, two at once).
    preflight.check_process(pid, only_gone=True)
    directory = protocol.socket_dir()  # where this command line looks for agents
    _prepare(directory)
    with _lock(directory, pid, deadline):
        info = _ping(pid)
        if info is not None:  # another attach finished while we waited for the lock
            return _already(pid, info, started)
        target = preflight.find_target(pid)
        if target.uid != os.getuid():
            raise LivepatchError(
                "permission-denied",
                f"process {pid} belongs to uid {target.uid}: run attach as that user "
                f"(sudo -u '#{target.uid}' pylivepatch attach {pid}); its agent serves that "
                "user (and root), and later commands find it in that user's socket directory",
            )
        if wake is not None:
            _check_wake(target, wake)
        here_dir = target.here(directory)
        if target.other_namespace:
            _prepare(here_dir)
        library = bootstrap.library(here_dir)
        bootstrap.sweep(here_dir)
        channel = bootstrap.Channel(here_dir, str(directory), pid)
        try:
            boot = bootstrap.render(
                channel=channel.target_channel,
                fallback=channel.target_fallback,
                library=str(directory / library.relative_to(here_dir)),
                socket_dir=str(directory),
                # a container keeps its own state directory: ours is not in its files
                state_dir="" if target.other_namespace else str(store.state_dir()),
                app=app or "",
                public_pid=pid,
                once=channel.target_once,
            )
            use = method if method != "auto" else (
                "both" if target.version[:2] >= (3, 14) else "gdb"
            )  # fmt: skip
            via, held = _inject(
                target, use, plan, boot, here_dir, str(directory), gdb_limit, channel, deadline
            )
            if wake is not None:
                os.kill(pid, wake)
            report = channel.wait(pid, deadline)
        finally:
            channel.close()
        if report is None:
            raise _timed_out(target, via, timeout)
        bootstrap.raise_for(report, pid)
        described = json.loads(report.text)
        reported = target.here(described["socket"])
        if reported != directory / f"{pid}.sock":
            # A container's socket is in its own file system; an agent that was already
            # running (started with another socket directory) is where it was.
            _link(directory, pid, reported)
        if _ping(pid) is None:
            raise LivepatchError(
                "internal",
                f"process {pid}: the agent reported its start at {described['socket']} but "
                "does not answer there",
            )
    return Attached(
        pid=pid,
        python=str(described.get("python") or target.python),
        via=via,
        socket=str(protocol.socket_path(pid)),
        total_ms=round((time.monotonic() - started) * 1000, 1),
        gdb_ms=held,
        main_thread=target.main_thread.name,
        agent_package=str(described.get("package", "")),
        app=str(described.get("app", "")),
    )


def _already(pid: int, info: dict[str, Any], started: float) -> Attached:
    return Attached(
        pid=pid,
        python=str(info.get("python", "")),
        via="already",
        socket=str(protocol.socket_path(pid)),
        total_ms=round((time.monotonic() - started) * 1000, 1),
        gdb_ms=0.0,
        main_thread="",
        app=str(info.get("app", "")),
    )


#: seconds a main thread gets to run the bootstrap queued by sys.remote_exec before
#: ``auto`` enters by gdb (a main thread running bytecode takes milliseconds)
REMOTE_GRACE = 0.5


def _inject(
    target: preflight.Target,
    use: str,
    plan: str,
    boot: bytes,
    here_dir: Path,
    directory: str,
    gdb_limit: float,
    channel: bootstrap.Channel,
    deadline: float,
) -> tuple[str, float]:
    """Run or queue the bootstrap; (how, ms gdb ran). ``use``: gdb, remote-exec, or
    both (3.14+: remote-exec, then gdb unless the bootstrap ran within the grace)."""
    if use == "both" and target.other_namespace:
        # sys.remote_exec checks the script's path in the caller's own file system: a
        # container's files are not there under the paths the target knows
        use = "gdb"
    if use in ("remote-exec", "both"):
        if target.version[:2] < (3, 14):
            raise LivepatchError(
                "unsupported-version",
                f"--method remote-exec needs CPython 3.14+ in the target; process "
                f"{target.pid} runs {target.python} (use gdb, the default)",
            )
        from . import remote

        try:
            script = remote.inject(target, boot, here_dir, directory, channel.name)
        except LivepatchError as exc:
            # No Python state in the main thread (its module returned): gdb can still
            # queue a pending call there. Any other refusal stands for both paths.
            if use == "remote-exec" or exc.code != "wrong-state" or not _gdb_usable(target):
                raise
            return _gdb(target, plan, boot, gdb_limit, channel)
        channel.queued = True
        if use == "remote-exec":
            return "remote-exec", 0.0
        grace = min(time.monotonic() + REMOTE_GRACE, deadline)
        while time.monotonic() < grace:
            if channel.claimed():
                return "remote-exec", 0.0
            time.sleep(0.005)
        if channel.claimed() or not _gdb_usable(target):
            return "remote-exec", 0.0  # no gdb here: the queued bootstrap is all there is
        try:
            via, held = _gdb(target, plan, boot, gdb_limit, channel)
        except LivepatchError:
            if channel.claimed():  # the main thread got to it meanwhile
                return "remote-exec", 0.0
            raise
        remote.disarm(script, directory)  # its bootstrap would only find the token gone
        return via, held
    return _gdb(target, plan, boot, gdb_limit, channel)


def _gdb_usable(target: preflight.Target) -> bool:
    """Whether the gdb path can serve as the fallback of a 3.14+ attach here."""
    import platform
    import shutil

    return shutil.which("gdb") is not None and platform.machine() in ("x86_64", "AMD64")


def _gdb(
    target: preflight.Target, plan: str, boot: bytes, gdb_limit: float, channel: bootstrap.Channel
) -> tuple[str, float]:
    try:
        done = _gdb_inject(target, plan, boot, gdb_limit)
    except LivepatchError as exc:
        if exc.code == "attach-hung":  # the bootstrap may have been queued: its token stays
            channel.queued = True
        raise
    channel.queued = True
    return done


def _gdb_inject(
    target: preflight.Target, plan: str, boot: bytes, gdb_limit: float
) -> tuple[str, float]:
    from . import gdbrun

    for attempt in range(4):
        outcome = gdbrun.inject(target.pid, boot, target.functions, plan=plan, limit=gdb_limit)
        if outcome.ok:
            return outcome.plan, round(outcome.wall_ms, 1)
        if outcome.code != "retry" or attempt == 3:
            break
        time.sleep(0.05 * (attempt + 1))
    if outcome.code == "retry":
        raise LivepatchError(
            "timeout",
            f"process {target.pid}: {outcome.message} at every try; nothing was changed; try again",
        )
    if outcome.code == "direct-impossible":
        raise LivepatchError(
            "wrong-state",
            f"--plan direct: {outcome.message} in process {target.pid}; nothing was "
            "changed (the default plan queues the bootstrap instead)",
        )
    if outcome.code == "signal-ignored":
        raise LivepatchError(
            "wrong-state",
            f"process {target.pid}: {outcome.message}; nothing was called, the process was "
            "detached unchanged"
            + ("" if target.version[:2] < (3, 14) else " (--method remote-exec needs no gdb)"),
        )
    if outcome.code in ("not-initialized", "not-cpython"):
        raise LivepatchError(outcome.code, f"process {target.pid}: {outcome.message}")
    if outcome.code == "binary-changed":
        raise LivepatchError(
            "unreadable-binary",
            f"process {target.pid}: {outcome.message} ({target.api_file}): the interpreter "
            "was replaced on disk since the process started (an upgrade?), so attach cannot "
            "find its functions; nothing was called, the process was detached unchanged",
        )
    raise LivepatchError(
        "internal",
        f"gdb could not inject into process {target.pid}: {outcome.message}; the target was "
        "detached unchanged",
    )


def _check_wake(target: preflight.Target, sig: int) -> None:
    st = procfs.status(target.pid)
    if st is None or not (st.caught_signals >> (sig - 1)) & 1:
        name = signals.Signals(sig).name if sig in signals.Signals.__members__.values() else sig
        raise LivepatchError(
            "wrong-state",
            f"process {target.pid} has no handler for {name}: sending it could stop or kill "
            "the program; --signal takes only a signal the program handles in Python",
        )


def _timed_out(target: preflight.Target, via: str, timeout: float) -> LivepatchError:
    main = procfs.thread_syscall(target.pid).name
    if via == "direct":
        detail = "the bootstrap ran in the main thread but the agent did not report"
    elif main == "running":
        detail = (
            f"the bootstrap is queued ({via}) and the main thread is running: the agent is "
            "most likely still starting (a busy or loaded process can take longer than "
            "--timeout); run attach again in a moment to see it"
        )
    else:
        detail = (
            f"the bootstrap is queued ({via}); the main thread is blocked in {main}, and it "
            "starts when the main thread next runs Python code"
        )
        if via in ("pending", "remote-exec"):
            detail += (
                "; if the program handles a signal in Python (e.g. SIGUSR1, SIGHUP), "
                "`--signal SIG` sends it to wake the main thread"
            )
        if via == "remote-exec":
            detail += (
                " (sys.remote_exec runs only when the main thread next executes bytecode; "
                "without --method remote-exec attach goes on with gdb, which needs gdb "
                "installed and x86-64)"
            )
    return LivepatchError(
        "timeout",
        f"process {target.pid}: no agent within {timeout:g} s: {detail}. Nothing else was "
        "changed; run attach again later (it is idempotent)",
    )


def _prepare(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = directory.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise LivepatchError(
            "permission-denied",
            f"socket directory {directory} must belong to uid {os.getuid()} with mode 0700",
        )


class _lock:
    """``flock`` on ``attach-PID.lock``: one attach per target at a time."""

    def __init__(self, directory: Path, pid: int, deadline: float) -> None:
        self.path = directory / f"attach-{pid}.lock"
        self.pid = pid
        self.deadline = deadline
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > self.deadline:
                    os.close(self.fd)
                    raise LivepatchError(
                        "timeout",
                        f"another attach to process {self.pid} holds {self.path}; "
                        "nothing was done; try again",
                    ) from None
                time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        try:
            self.path.unlink()  # still ours: a waiter that got the old file pings first
        except OSError:
            pass
        os.close(self.fd)


def _link(directory: Path, pid: int, socket: Path) -> None:
    """A link in our socket directory to an agent's socket elsewhere, so that every
    later command reaches it by pid."""
    link = directory / f"{pid}.sock"
    try:
        link.unlink()
    except FileNotFoundError:
        pass
    link.symlink_to(socket)
