"""What ``/proc`` tells about a process, read without ptrace (attach's pre-flight).

Everything here reads files; nothing stops or traces the target. A file the kernel
refuses (another user's ``maps`` without ``CAP_SYS_PTRACE``) raises ``PermissionError``
for the caller to turn into a clear error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")

#: x86-64 system call numbers a parked thread may sit in (for plans and messages)
SYSCALL_NAMES = {
    0: "read", 7: "poll", 19: "readv", 23: "select", 34: "pause", 35: "nanosleep",
    43: "accept", 45: "recvfrom", 73: "flock", 47: "recvmsg", 61: "wait4", 128: "rt_sigtimedwait",
    130: "rt_sigsuspend", 202: "futex", 230: "clock_nanosleep", 232: "epoll_wait",
    247: "waitid", 270: "pselect6", 271: "ppoll", 281: "epoll_pwait", 288: "accept4",
    441: "epoll_pwait2",
}  # fmt: skip

CAP_SYS_PTRACE = 19


@dataclass(frozen=True)
class Status:
    """The fields of ``/proc/PID/status`` that attach needs."""

    pid: int
    name: str
    state: str  # the letter: R S D T t Z X I
    state_text: str
    ppid: int
    tracer: int
    uid: int  # real uid
    euid: int
    caught_signals: int  # SigCgt: signals with a handler
    threads: int
    tgid: int = 0  # the process a thread id belongs to (== pid for a process)


def status(pid: int) -> Status | None:
    """The status of ``pid``, or None if there is no such process."""
    try:
        text = (PROC / str(pid) / "status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    state = fields.get("State", "?")
    uids = fields.get("Uid", "0 0").split()
    return Status(
        pid=pid,
        name=fields.get("Name", ""),
        state=state[:1],
        state_text=state[1:].strip(" ()"),
        ppid=int(fields.get("PPid", "0")),
        tracer=int(fields.get("TracerPid", "0")),
        uid=int(uids[0]),
        euid=int(uids[1]),
        caught_signals=int(fields.get("SigCgt", "0"), 16),
        threads=int(fields.get("Threads", "1")),
        tgid=int(fields.get("Tgid", str(pid))),
    )


def comm(pid: int) -> str:
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"


def owner(pid: int) -> int:
    """The owner of ``/proc/PID``: root for a process that is not dumpable
    (``prctl(PR_SET_DUMPABLE, 0)``, set-uid programs), else its uid."""
    return (PROC / str(pid)).stat().st_uid


@dataclass(frozen=True)
class Mapping:
    path: str
    start: int
    offset: int


def mapped_files(pid: int) -> list[Mapping]:
    """The files mapped into ``pid`` (``/proc/PID/maps``), first mapping of each."""
    seen: dict[str, Mapping] = {}
    with open(PROC / str(pid) / "maps") as fh:
        for line in fh:
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or not parts[5].startswith("/"):
                continue
            path = parts[5].rstrip("\n")
            if path.endswith(" (deleted)"):
                path = path[: -len(" (deleted)")]
            if path not in seen:
                start = int(parts[0].split("-")[0], 16)
                seen[path] = Mapping(path, start, int(parts[2], 16))
    return list(seen.values())


def exe(pid: int) -> str:
    return os.readlink(PROC / str(pid) / "exe")


def root(pid: int) -> Path:
    """The target's root directory as seen from here: paths the target opens are
    reached through it when it lives in another mount namespace (a container)."""
    return PROC / str(pid) / "root"


def same_mount_namespace(pid: int) -> bool:
    try:
        return (
            os.stat(PROC / str(pid) / "ns" / "mnt").st_ino
            == os.stat(PROC / "self" / "ns" / "mnt").st_ino
        )
    except OSError:
        return True  # no namespaces to tell apart


@dataclass(frozen=True)
class Parked:
    """What one thread is doing, from ``/proc/PID/task/TID/syscall``."""

    tid: int
    syscall: int | None  # None: running in user space

    @property
    def name(self) -> str:
        if self.syscall is None:
            return "running"
        return SYSCALL_NAMES.get(self.syscall, f"syscall {self.syscall}")


def thread_syscall(pid: int, tid: int | None = None) -> Parked:
    """The system call thread ``tid`` (default: the main thread) is blocked in."""
    tid = pid if tid is None else tid
    try:
        text = (PROC / str(pid) / "task" / str(tid) / "syscall").read_text().split()
    except OSError:
        return Parked(tid, None)
    if not text or text[0] in ("running", "-1"):
        return Parked(tid, None)
    return Parked(tid, int(text[0]))


def children() -> dict[int, list[int]]:
    """Parent pid -> its child pids, for every process visible here."""
    kids: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def descendants(pid: int) -> list[int]:
    """``pid``'s descendants, parents before children."""
    kids = children()
    out: list[int] = []
    todo = sorted(kids.get(pid, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(sorted(kids.get(p, [])))
    return out


@dataclass(frozen=True)
class Privileges:
    """What this process may trace."""

    uid: int
    cap_sys_ptrace: bool
    ptrace_scope: int | None  # Yama's kernel.yama.ptrace_scope; None: no Yama


def privileges() -> Privileges:
    cap = 0
    for line in (PROC / "self" / "status").read_text().splitlines():
        if line.startswith("CapEff:"):
            cap = int(line.split()[1], 16)
    try:
        scope: int | None = int(Path("/proc/sys/kernel/yama/ptrace_scope").read_text())
    except (OSError, ValueError):
        scope = None
    return Privileges(os.getuid(), bool(cap >> CAP_SYS_PTRACE & 1), scope)
