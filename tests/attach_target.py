"""A program started without pylivepatch, for attach tests and benchmarks.

``python attach_target.py MODE STATUS_FILE [--usr1]`` runs:

- two worker threads that compute and check results (any wrong result is counted: an
  attach must not corrupt a running program) and call ``attach_app.answer()``,
  recording every distinct answer (so a payload applied through the attached agent
  shows up);
- a monitor thread that sleeps 1 ms at a time and records the longest gap between its
  wake-ups: how long the whole process was frozen;
- the main thread in MODE: ``busy`` (bytecode and short sleeps), ``cpu`` (a pure
  loop), ``sleep`` (one long sleep), ``accept`` (a blocked ``accept``), ``wait``
  (``threading.Event().wait()``), ``asyncio`` (an idle event loop), ``flock`` (blocked
  in ``flock`` on the file named by $ATTACH_TARGET_LOCK, a call attach cannot run
  Python in), ``pause`` (``signal.pause()``), ``returned`` (the main module ends; the
  interpreter's shutdown waits in the main thread for the monitor, not a daemon), ``nothreads`` (a pure loop, no other thread at all), ``contended`` (a
  pure loop, and the workers never sleep: the main thread is often parked in a futex
  waiting for the GIL, where pyrasite's recipe deadlocks).

Every 50 ms the monitor writes a JSON status to STATUS_FILE (atomically). With
``--usr1`` the program handles SIGUSR1 in Python; with ``--block-signals`` it enables
faulthandler and blocks every signal in every thread, and reports every signal's
handler (``handlers``). It never imports pylivepatch.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time

import attach_app

MODE, STATUS = sys.argv[1], sys.argv[2]
state = {
    "pid": os.getpid(),
    "mode": MODE,
    "python": sys.version.split()[0],
    "checks": 0,
    "mismatches": 0,
    "answers": [],
    "last_answer": "",
    "threads": [],
    "max_gap_ms": 0.0,
    "gaps_over_50ms": 0,
    "main_loops": 0,
    "usr1": 0,
    "beat": 0.0,
    "modules": [],
}
EXPECTED = hashlib.sha256(b"x" * 4096).hexdigest()


def work() -> None:
    data = b"x" * 4096
    spin = MODE == "contended"  # no sleeping: every thread fights for the GIL
    while True:
        ok = hashlib.sha256(data).hexdigest() == EXPECTED and sum(range(1000)) == 499500
        ok = ok and sorted([3, 1, 2]) == [1, 2, 3] and f"{7:d}-{'a'}" == "7-a"
        state["checks"] += 1
        if not ok:
            state["mismatches"] += 1
        answer = attach_app.answer()
        state["last_answer"] = answer
        if answer not in state["answers"]:
            state["answers"].append(answer)
        if spin:
            sum(i * i for i in range(2000))
        else:
            time.sleep(0.0005)


def monitor() -> None:
    last = time.monotonic()
    written = 0.0
    warm = last + 0.3  # start-up gaps (imports) do not count
    while True:
        time.sleep(0.001)
        now = time.monotonic()
        gap = (now - last) * 1000
        if now > warm:
            state["max_gap_ms"] = max(state["max_gap_ms"], round(gap, 2))
            if gap > 50:
                state["gaps_over_50ms"] += 1
        last = now
        if now - written >= 0.05:
            written = now
            state["beat"] = time.time()
            state["modules"] = sorted(m for m in sys.modules if m.startswith("pylivepatch"))[:3]
            state["threads"] = sorted(t.name for t in threading.enumerate())
            if "handlers" in state:
                state["handlers"] = handlers()
            tmp = STATUS + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(state, fh)
            os.replace(tmp, STATUS)


def on_usr1(signum: int, frame: object) -> None:
    state["usr1"] += 1


def handlers() -> dict[str, list[int]]:
    """Every signal's handler address and flags as the kernel has them (sigaction),
    C handlers included (faulthandler's), which the signal module cannot show."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    out = {}
    for sig in range(1, 32):
        buf = ctypes.create_string_buffer(256)  # struct sigaction, with room to spare
        if libc.sigaction(sig, None, buf) == 0:
            raw = buf.raw
            # x86-64 glibc: sa_handler (8 bytes), sa_mask (128), sa_flags (int)
            out[str(sig)] = [int.from_bytes(raw[:8], "little"), int.from_bytes(raw[136:140], "little")]  # fmt: skip
    return out


if "--usr1" in sys.argv:
    signal.signal(signal.SIGUSR1, on_usr1)
if "--block-signals" in sys.argv:
    # faulthandler's C handlers, and every signal blocked in every thread (the threads
    # below inherit the mask): what gdb's calls must leave as they found it
    import faulthandler

    faulthandler.enable()
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})
    state["handlers"] = handlers()
if MODE != "nothreads":
    for _ in range(2):
        threading.Thread(target=work, daemon=True).start()
    # "returned": the main thread ends while the monitor (not a daemon) runs on
    threading.Thread(target=monitor, daemon=MODE != "returned").start()

if MODE == "busy":
    while True:
        state["main_loops"] += 1
        _ = [i * i for i in range(200)]
        time.sleep(0.001)
elif MODE in ("cpu", "nothreads", "contended"):
    n = 0
    beat = time.monotonic()
    while True:
        n += 1
        if n % 100000 == 0:
            state["main_loops"] += 1
            if MODE == "nothreads" and time.monotonic() - beat > 0.05:
                beat = time.monotonic()
                state["beat"] = time.time()
                state["last_answer"] = attach_app.answer()
                state["answers"] = sorted({*state["answers"], state["last_answer"]})
                with open(STATUS + ".tmp", "w") as fh:
                    json.dump(state, fh)
                os.replace(STATUS + ".tmp", STATUS)
elif MODE == "sleep":
    time.sleep(3600)
elif MODE == "accept":
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.accept()
elif MODE == "wait":
    threading.Event().wait()
elif MODE == "asyncio":
    import asyncio

    asyncio.run(asyncio.sleep(3600))
elif MODE == "pause":
    signal.pause()
elif MODE == "returned":
    pass  # the interpreter's shutdown waits for the monitor, which never ends
elif MODE == "flock":
    import fcntl

    with open(os.environ["ATTACH_TARGET_LOCK"]) as fh:
        while True:
            fcntl.flock(fh, fcntl.LOCK_EX)  # held by the test: blocks
            fcntl.flock(fh, fcntl.LOCK_UN)
            time.sleep(0.01)
else:
    raise SystemExit(f"unknown mode {MODE}")
