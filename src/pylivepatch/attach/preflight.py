"""Attach's pre-flight: is this a live, untraced CPython 3.10–3.15 that we may trace?

Everything is decided from ``/proc`` and the target's binaries before any debugger
touches the process, so a wrong PID, a zombie, a stopped or traced process, a missing
permission or a program that is not CPython is refused at once with its own code, and
never becomes a hung or crashed target.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import LivepatchError
from . import elf, procfs

#: what attach calls in the target through gdb (3.10-3.15; on 3.14+ when
#: sys.remote_exec cannot serve)
C_API = frozenset(
    {
        "Py_IsInitialized",
        "Py_AddPendingCall",
        "PyRun_SimpleString",
        "PyGILState_Ensure",
        "PyGILState_Release",
        "PyGILState_Check",
    }
)
WANTED = C_API | {"Py_Version"}

OLDEST, NEWEST = (3, 10), (3, 15)

_LIBPYTHON = re.compile(r"/libpython(\d+)\.(\d+)(t?)(?:d?m?u?)\.so")
_EXT_TAG = re.compile(r"\.cpython-(\d)(\d+)(t?)-")
_EXE = re.compile(r"/python(\d+)\.(\d+)(t?)$")


@dataclass(frozen=True)
class Target:
    """A CPython process attach may start an agent in."""

    pid: int
    uid: int
    version: tuple[int, int, int]  # major, minor, micro (micro 0 when unknown)
    api_file: str  # the file that defines the C API (libpython or the executable)
    root: Path  # prefix that reaches the target's files from here ("/" or /proc/PID/root)
    other_namespace: bool
    main_thread: procfs.Parked
    functions: dict[str, tuple[int, bytes]]  # C API name -> (address in the process, code)

    @property
    def python(self) -> str:
        return ".".join(map(str, self.version))

    def here(self, path: str | os.PathLike[str]) -> Path:
        """A path of the target's file system, as this process reaches it."""
        return self.root / str(path).lstrip("/") if self.other_namespace else Path(path)


def check_process(pid: int, only_gone: bool = False) -> procfs.Status:
    """Refuse a process that is gone, a zombie, stopped or traced by someone else; with
    ``only_gone``, only one that is gone or a zombie (or a thread id): what ``attach``
    says at once, before it waits for the target's lock. Traced or stopped is decided
    under the lock: another attach to the same process holds it traced and stopped
    while its gdb runs, and this one then finds the agent it started."""
    st = procfs.status(pid)
    if st is None:
        raise LivepatchError("no-such-process", f"there is no process {pid}")
    if st.tgid and st.tgid != pid:
        # /proc answers for a thread id too; an agent is named after its process
        raise LivepatchError(
            "no-such-process",
            f"{pid} is a thread of process {st.tgid} ({st.name}), not a process: attach {st.tgid}",
        )
    if st.state in ("Z", "X"):
        raise LivepatchError(
            "no-such-process",
            f"process {pid} ({st.name}) has exited (a zombie not yet reaped by its parent "
            f"{st.ppid}); there is nothing left to attach to",
        )
    if only_gone:
        return st
    if st.tracer:
        raise LivepatchError(
            "already-traced",
            f"process {pid} ({st.name}) is traced by process {st.tracer} "
            f"({procfs.comm(st.tracer)}); a process has one tracer at a time: detach that "
            "debugger first",
        )
    if st.state in ("T", "t"):
        raise LivepatchError(
            "target-stopped",
            f"process {pid} ({st.name}) is stopped ({st.state_text}); an inferior call in a "
            f"stopped process can crash it: resume it first with `kill -CONT {pid}`",
        )
    return st


def check_permission(
    st: procfs.Status, privileges: procfs.Privileges, dumpable: bool, is_ancestor: bool
) -> None:
    """Refuse what the kernel would refuse ``ptrace(PTRACE_ATTACH)``, naming the cause
    and the fix (a pure function of what ``/proc`` said)."""
    pid, me = st.pid, privileges.uid
    cap = privileges.cap_sys_ptrace
    fix = (
        f"run attach as that user (sudo -u '#{st.uid}' pylivepatch attach {pid}) or with "
        "CAP_SYS_PTRACE (in a container: --cap-add SYS_PTRACE; Kubernetes: "
        "securityContext.capabilities.add [SYS_PTRACE])"
    )
    if privileges.ptrace_scope == 3:
        raise LivepatchError(
            "permission-denied",
            "kernel.yama.ptrace_scope is 3: no process may be traced until the next boot; "
            "attach is impossible on this host (start services under `pylivepatch run`)",
        )
    if (st.uid != me or st.euid != me) and not cap:
        raise LivepatchError(
            "permission-denied",
            f"process {pid} ({st.name}) belongs to uid {st.uid} and you are uid {me} "
            f"without CAP_SYS_PTRACE: {fix}",
        )
    if not dumpable and not cap:
        raise LivepatchError(
            "permission-denied",
            f"process {pid} ({st.name}) is not dumpable (prctl PR_SET_DUMPABLE 0, or it "
            f"changed credentials): only CAP_SYS_PTRACE may trace it: {fix}",
        )
    if privileges.ptrace_scope == 2 and not cap:
        raise LivepatchError(
            "permission-denied",
            "kernel.yama.ptrace_scope is 2: only CAP_SYS_PTRACE may trace; run attach as "
            "root or with CAP_SYS_PTRACE",
        )
    if privileges.ptrace_scope == 1 and not cap and not is_ancestor:
        raise LivepatchError(
            "permission-denied",
            f"kernel.yama.ptrace_scope is 1: only an ancestor of process {pid} (or "
            "CAP_SYS_PTRACE) may trace it; run attach with sudo, or set "
            "`sysctl kernel.yama.ptrace_scope=0`",
        )


def parse_version(
    libpython: str | None, py_version: int | None, paths: list[str]
) -> tuple[tuple[int, int, int] | None, bool]:
    """(major, minor, micro) and whether the build is free-threaded, from ``Py_Version``
    (3.11+), else the libpython name, the tags of mapped extension modules or the
    executable's name."""
    free = False
    for path in paths:
        m = _LIBPYTHON.search(path) or _EXT_TAG.search(path) or _EXE.search(path)
        if m and m.group(3) == "t":
            free = True
    if py_version:
        return (
            (py_version >> 24) & 0xFF,
            (py_version >> 16) & 0xFF,
            (py_version >> 8) & 0xFF,
        ), free
    for pattern in (_LIBPYTHON, _EXT_TAG, _EXE):
        for path in [libpython] if pattern is _LIBPYTHON and libpython else paths:
            m = pattern.search(path)
            if m:
                return (int(m.group(1)), int(m.group(2)), 0), free
    return None, free


def find_target(pid: int, privileges: procfs.Privileges | None = None) -> Target:
    """Every check of the pre-flight, in order; the target if all pass."""
    st = check_process(pid)
    privileges = privileges or procfs.privileges()
    try:
        dumpable = procfs.owner(pid) == st.uid or st.uid == 0
    except FileNotFoundError:
        raise LivepatchError("no-such-process", f"process {pid} has exited") from None
    check_permission(st, privileges, dumpable, pid in procfs.descendants(os.getpid()))
    try:
        maps = procfs.mapped_files(pid)
        exe = procfs.exe(pid)
    except FileNotFoundError:
        raise LivepatchError("no-such-process", f"process {pid} has exited") from None
    except PermissionError:
        raise LivepatchError(
            "permission-denied",
            f"cannot read /proc/{pid}/maps: the kernel does not let uid {privileges.uid} "
            f"inspect process {pid} ({st.name}); run attach as its user or with CAP_SYS_PTRACE",
        ) from None
    other_ns = not procfs.same_mount_namespace(pid)
    root = procfs.root(pid) if other_ns else Path("/")

    def here(path: str) -> str:
        return str(root / path.lstrip("/")) if other_ns else path

    paths = [m.path for m in maps]
    libs = [p for p in paths if _LIBPYTHON.search(p)]
    candidates = libs + [exe]
    found: elf.Symbols | None = None
    unreadable: list[str] = []
    for path in candidates:
        try:
            symbols = elf.read(here(path), WANTED)
        except PermissionError:
            unreadable.append(path)
            continue
        except (OSError, ValueError):
            continue
        if symbols.defined >= C_API:
            found = symbols
            api_file = path
            break
    if found is None:
        if unreadable:
            raise LivepatchError(
                "unreadable-binary",
                f"cannot read {', '.join(unreadable)} of process {pid} as uid "
                f"{privileges.uid}: the debugger needs to read the interpreter's binary "
                "(its exported symbols); run attach as the process's user or as root",
            )
        raise _not_cpython(pid, st, exe)
    version, free = parse_version(libs[0] if libs else None, found.py_version, [exe, *paths])
    if version is None:
        raise LivepatchError(
            "unsupported-version",
            f"process {pid} ({exe}) runs CPython, but its version cannot be told (no "
            "Py_Version, no versioned libpython or extension module mapped); attach "
            "supports CPython 3.10-3.15",
        )
    if not OLDEST <= version[:2] <= NEWEST:
        raise LivepatchError(
            "unsupported-version",
            f"process {pid} runs CPython {'.'.join(map(str, version))}; attach (and "
            "pylivepatch) support CPython 3.10-3.15",
        )
    if free:
        raise LivepatchError(
            "unsupported-build",
            f"process {pid} runs a free-threaded CPython {version[0]}.{version[1]}t: "
            "attach is not tested on free-threaded builds yet",
        )
    import platform

    if platform.machine() not in ("x86_64", "AMD64") and version[:2] < (3, 14):
        raise LivepatchError(
            "unsupported-build",
            f"attach to CPython {version[0]}.{version[1]} drives gdb with x86-64 system "
            f"call numbers; this machine is {platform.machine()} (CPython 3.14's "
            "sys.remote_exec works on any machine)",
        )
    mapping = next(m for m in maps if m.path == api_file) if api_file in paths else None
    if mapping is None:
        raise _not_cpython(pid, st, exe)
    bias = found.bias(mapping.start, mapping.offset)
    return Target(
        pid=pid,
        uid=st.uid,
        version=version,
        api_file=api_file,
        root=root,
        other_namespace=other_ns,
        main_thread=procfs.thread_syscall(pid),
        functions={name: (found.values[name] + bias, found.code[name]) for name in C_API},
    )


def _not_cpython(pid: int, st: procfs.Status, exe: str) -> LivepatchError:
    """``not-cpython``, or ``pyinstaller-bootloader`` naming the child that is."""
    for child in procfs.descendants(pid):
        try:
            child_paths = [m.path for m in procfs.mapped_files(child)]
        except OSError:
            continue
        if any(_LIBPYTHON.search(p) for p in child_paths):
            frozen = any("/_MEI" in p for p in child_paths)
            if frozen:
                return LivepatchError(
                    "pyinstaller-bootloader",
                    f"process {pid} ({st.name}) is the bootloader of a PyInstaller app: the "
                    f"Python program runs in its child process {child}; attach to {child}",
                )
            return LivepatchError(
                "not-cpython",
                f"process {pid} ({exe}) is not a CPython interpreter, but its child "
                f"process {child} is: attach to {child}",
            )
    return LivepatchError(
        "not-cpython",
        f"process {pid} ({exe}) is not a CPython interpreter: neither it nor a library it "
        "loaded exports the C API attach needs (Py_AddPendingCall, PyRun_SimpleString, "
        "PyGILState_Ensure)",
    )
