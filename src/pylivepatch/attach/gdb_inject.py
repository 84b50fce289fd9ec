"""Run by gdb's own Python (``gdb -x``) while gdb holds the target stopped: queue or run
the bootstrap, then detach. Not imported by pylivepatch.

Rules, each from a way targets were seen to hang or die (docs/operating.md, attach):

- Python code never runs at the instruction where gdb stopped a thread. The bootstrap
  is queued with ``Py_AddPendingCall(PyRun_SimpleString, page)`` and runs in the main
  thread at its next eval-breaker check; or, when the main thread is parked in a
  blocking system call of the allow-list without holding the GIL, it is run right
  there (``PyGILState_Ensure`` / ``PyRun_SimpleString`` / ``PyGILState_Release``), as
  the interpreter itself would from a signal handler.
- Never re-enter the GIL on a thread parked in a futex: it may be the hijacked waiter
  of the very condition variable the GIL holder is signalling (a deadlock, measured).
- No string literal is ever evaluated (gdb would ``malloc`` it in the target, possibly
  inside a thread that holds the allocator's lock): the bootstrap is written into a
  fresh ``mmap``'d page. No call is made on a thread stopped inside the allocator, the
  dynamic loader, ``fork``/``pthread_create`` or the pending-call machinery.
- Only exported (dynamic) symbols are used, so a stripped interpreter works; gdb reads
  the symbols of libc and the loader only (to name the frames of the checks above).
- Every thread's signal mask and every signal disposition is left as found: a call
  returns to gdb through a fault the kernel forces, which would unblock that signal
  and reset its handler if the thread blocked it; it is unblocked for the call only
  (``call``), and a process that ignores it is refused.

Inputs come from the environment (``PYLIVEPATCH_ATTACH_BOOT``: the bootstrap file;
``PYLIVEPATCH_ATTACH_API``: the C API's addresses and first code bytes;
``PYLIVEPATCH_ATTACH_PLAN``: auto, pending or direct); the outcome is a JSON object
written to ``PYLIVEPATCH_ATTACH_RESULT``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import gdb

#: blocking system calls (x86-64 numbers) where the main thread waits without the GIL
#: and may run the bootstrap directly: sleeps, ``signal.pause()``, socket waits, reads,
#: child waits
DIRECT_SYSCALLS = {
    230: "clock_nanosleep", 35: "nanosleep", 34: "pause", 23: "select", 270: "pselect6", 7: "poll",
    271: "ppoll", 232: "epoll_wait", 281: "epoll_pwait", 441: "epoll_pwait2",
    43: "accept", 288: "accept4", 0: "read", 45: "recvfrom", 47: "recvmsg",
    61: "wait4", 247: "waitid",
}  # fmt: skip
FUTEX = 202
#: -ERESTARTSYS, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK: the kernel will restart the
#: call; turning it into EINTR wakes a lock wait, which then runs pending calls
RESTARTABLE = {-512, -514, -516}
EINTR = -4

#: a thread stopped inside one of these must not run an inferior call
UNSAFE_EXACT = {
    "malloc", "free", "calloc", "realloc", "cfree", "memalign", "posix_memalign",
    "_int_malloc", "_int_free", "_int_realloc", "_int_memalign", "malloc_consolidate",
    "__libc_malloc", "__libc_free", "__libc_calloc", "__libc_realloc", "tcache_init",
    "pthread_create", "fork", "_Fork", "__libc_fork", "vfork", "clone", "clone3",
}  # fmt: skip
UNSAFE_PARTS = ("_dl_", "PendingCall", "pending_call", "ending_calls", "dlopen", "dlclose")
FRAMES = 12
PAGE = 4096


#: ptrace requests (Linux 3.11+) that read and set a stopped tracee's signal mask
PTRACE_GETSIGMASK, PTRACE_SETSIGMASK = 0x420A, 0x420B
#: signals through which an inferior call returns to gdb: the return address gdb
#: pushes is on the (non-executable) stack, so the call ends in SIGSEGV; a breakpoint
#: would be SIGTRAP. The kernel forces such a signal: if the thread blocks it (or the
#: process ignores it), it unblocks it for good and resets its handler to the default
#: (faulthandler and crash reporters silently switched off). So they are unblocked
#: for the call only, and the thread's mask is put back after it.
RETURN_SIGNALS = (1 << (11 - 1)) | (1 << (5 - 1))  # SIGSEGV, SIGTRAP


class _Ptrace:
    def __init__(self) -> None:
        import ctypes

        self.ctypes = ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]  # fmt: skip
        self.libc.ptrace.restype = ctypes.c_long

    def mask(self, tid: int) -> int:
        buf = self.ctypes.c_uint64(0)
        if self.libc.ptrace(PTRACE_GETSIGMASK, tid, 8, self.ctypes.byref(buf)) != 0:
            raise gdb.error(f"cannot read the signal mask of thread {tid} (errno {self.ctypes.get_errno()})")  # fmt: skip
        return int(buf.value)

    def set_mask(self, tid: int, mask: int) -> None:
        buf = self.ctypes.c_uint64(mask)
        if self.libc.ptrace(PTRACE_SETSIGMASK, tid, 8, self.ctypes.byref(buf)) != 0:
            raise gdb.error(f"cannot set the signal mask of thread {tid} (errno {self.ctypes.get_errno()})")  # fmt: skip


PTRACE = _Ptrace()


def call(expr: str) -> int:
    """Make an inferior call on the selected thread, with the signals it returns
    through unblocked for the call only (see RETURN_SIGNALS)."""
    tid = gdb.selected_thread().ptid[1]
    mask = PTRACE.mask(tid)
    if mask & RETURN_SIGNALS:
        PTRACE.set_mask(tid, mask & ~RETURN_SIGNALS)
    try:
        return int(gdb.parse_and_eval(expr))
    finally:
        if mask & RETURN_SIGNALS:
            PTRACE.set_mask(tid, mask)


def thread_facts(inferior: Any, thread: Any) -> dict[str, Any]:
    thread.switch()
    facts: dict[str, Any] = {"tid": thread.ptid[1], "parked": False, "syscall": None}
    pc = int(gdb.parse_and_eval("$pc"))
    try:
        facts["parked"] = bytes(inferior.read_memory(pc - 2, 2)) == b"\x0f\x05"
    except gdb.error:
        pass
    if facts["parked"]:
        facts["syscall"] = int(gdb.parse_and_eval("$orig_rax"))
        facts["rax"] = int(gdb.parse_and_eval("(long) $rax"))
    names = []
    unsafe = False
    try:
        frame = gdb.newest_frame()
        for _ in range(FRAMES):
            if frame is None:
                break
            name = frame.name() or ""
            names.append(name)
            if name in UNSAFE_EXACT or any(part in name for part in UNSAFE_PARTS):
                unsafe = True
            frame = frame.older()
    except gdb.error:
        pass  # an unwinder that gives up: judged by the frames it gave
    facts["frames"] = names
    facts["unsafe"] = unsafe
    return facts


def _ignored_signals(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("SigIgn:"):
                return int(line.split()[1], 16)
    return 0


STARTED = time.monotonic()


def main() -> None:
    started = STARTED
    result: dict[str, Any] = {"ok": False}
    try:
        inject(result)
    except (gdb.error, KeyboardInterrupt) as exc:  # an interrupt: gdb's time limit
        result.setdefault("code", "gdb-error")
        result.setdefault("message", str(exc) or type(exc).__name__)
    finally:
        result["held_ms"] = round((time.monotonic() - started) * 1000, 1)
        with open(os.environ["PYLIVEPATCH_ATTACH_RESULT"], "w") as fh:
            json.dump(result, fh)
        try:
            gdb.execute("detach", to_string=True)
        except gdb.error:
            pass


def inject(result: dict[str, Any]) -> None:
    plan_wanted = os.environ.get("PYLIVEPATCH_ATTACH_PLAN", "auto")
    with open(os.environ["PYLIVEPATCH_ATTACH_BOOT"], "rb") as fh:
        boot = fh.read() + b"\0"
    inferior = gdb.selected_inferior()
    pid = inferior.pid
    # The C API by address (read by the command line from the binary's dynamic symbols
    # and the process's mappings): gdb loads no symbols of libpython, whose debug
    # information can take seconds to read while the process is stopped. The code at
    # each address must be the code in the file: else the binary on disk is not the one
    # running (upgraded since the process started) and nothing is called.
    api = {}
    for name, (address, code) in json.loads(os.environ["PYLIVEPATCH_ATTACH_API"]).items():
        expected = bytes.fromhex(code)
        try:
            found = bytes(inferior.read_memory(address, len(expected)))
        except gdb.error:
            found = b""
        if found != expected:
            result.update(
                code="binary-changed",
                message=f"the code of {name} at {address:#x} is not the code in the interpreter's file",
            )
            return
        api[name] = address
    ignored = _ignored_signals(pid) & RETURN_SIGNALS
    if ignored:
        # A forced signal that is ignored is reset to the default: refuse, unchanged.
        result.update(
            code="signal-ignored",
            message="the process ignores SIGSEGV or SIGTRAP (SigIgn), through which gdb's "
            "calls return: the kernel would reset that disposition to the default",
        )
        return
    try:
        gdb.parse_and_eval("mmap")
    except gdb.error:
        result.update(code="not-cpython", message="no symbol mmap (libc) in the target")
        return
    threads = {t.ptid[1]: t for t in inferior.threads()}
    facts = {tid: thread_facts(inferior, t) for tid, t in threads.items()}
    result["facts_ms"] = round((time.monotonic() - STARTED) * 1000, 1)
    result["threads"] = list(facts.values())
    main_facts = facts.get(pid)
    if main_facts is None:
        result.update(code="not-initialized", message="the main thread has exited")
        return
    result["main"] = main_facts
    # The thread for the calls that take no interpreter lock: one parked in a system
    # call (the main thread first), else one stopped in plain code; never an unsafe one.
    order = sorted(facts.values(), key=lambda f: (not f["parked"], f["tid"] != pid))
    worker = next((f for f in order if not f["unsafe"]), None)
    if worker is None:
        result.update(code="retry", message="every thread is inside the allocator or the loader")
        return
    threads[worker["tid"]].switch()
    if call(f"((int (*)(void)) {api['Py_IsInitialized']})()") != 1:
        result.update(
            code="not-initialized",
            message="the interpreter is not initialized (starting up or shutting down)",
        )
        return
    size = (len(boot) + PAGE - 1) // PAGE * PAGE
    page = call(f"((void *(*)(void *, unsigned long, int, int, int, long)) mmap)(0, {size}, 3, 34, -1, 0)")  # fmt: skip
    if page in (-1, 0xFFFFFFFFFFFFFFFF, 0):
        result.update(code="gdb-error", message="mmap failed in the target")
        return
    # The page stays mapped: a queued call may read it after we are gone (4 KiB, once).
    inferior.write_memory(page, boot)
    result["page"] = page
    direct_ok = (
        main_facts["parked"]
        and main_facts["syscall"] in DIRECT_SYSCALLS
        and not main_facts["unsafe"]
    )
    if direct_ok and plan_wanted in ("auto", "direct"):
        threads[pid].switch()
        if call(f"((int (*)(void)) {api['PyGILState_Check']})()") == 0:
            state = call(f"((int (*)(void)) {api['PyGILState_Ensure']})()")
            try:
                rc = call(f"((int (*)(void *)) {api['PyRun_SimpleString']})({page})")
            finally:  # even if interrupted: the main thread must not keep the GIL
                call(f"((int (*)(int)) {api['PyGILState_Release']})({state})")
            result.update(ok=rc == 0, plan="direct", rc=rc)
            if rc != 0:
                result.update(code="gdb-error", message=f"PyRun_SimpleString returned {rc}")
            return
        result["gil_held_by_main"] = True
    if plan_wanted == "direct":
        why = (
            "the main thread holds the GIL"
            if result.get("gil_held_by_main")
            else f"the main thread is not parked in one of {sorted(DIRECT_SYSCALLS.values())}"
        )
        result.update(code="direct-impossible", message=why)
        return
    threads[worker["tid"]].switch()
    rc = call(f"((int (*)(void *, void *)) {api['Py_AddPendingCall']})((void *) {api['PyRun_SimpleString']}, {page})")  # fmt: skip
    if rc != 0:
        result.update(code="retry", message="the interpreter's pending-call queue is full")
        return
    result.update(ok=True, plan="pending", rc=0)
    if main_facts["syscall"] == FUTEX and main_facts.get("rax") in RESTARTABLE:
        # The main thread waits on a lock: wake it with EINTR so that the lock wait
        # runs pending calls (a sleep or accept would just be restarted, PEP 475).
        threads[pid].switch()
        gdb.execute(f"set var $rax = {EINTR}")
        result["interrupted"] = True


main()
