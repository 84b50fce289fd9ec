"""Transitions under load: how long ``apply``/``revert`` take with 8 to 512 busy threads,
beside how long the engine's thread waits for the GIL alone, in one run.

    python benchmarks/bench_transition.py [--threads 8,32,128,512] [--rounds N] [--timeout S] [--quick]

For each thread count, that many threads call a patched pair of functions
(``outer`` calls ``leaf``) without pause, and the main thread applies and reverts the
payload with ``consistency="transition"`` ``--rounds`` times. Reported per count:

- *completion*: the wall time of each ``apply`` and ``revert`` (median, p99, max), and
  how each ended (completed, reversed on timeout, stuck), beside the timeout;
- *blocked: over the timeout*: a thread parked in old code blocks the transition for
  good, and ``apply(timeout=1)`` must come back reversed (``timeout``); how long after
  the timeout it came back (the margin), worst of ``rounds / 5`` tries;
- *GIL round*: the same main thread's wait to get the GIL back after giving it up
  (``time.sleep(0)``), at the transition's switch interval and with the same threads
  spinning, measured between the actions: what any check of the stacks pays once.

The machine is shared and noisy: the two are interleaved, and the ratio of the
completion median to the GIL round median is what carries over to another machine.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pylivepatch as lp
from pylivepatch import LivepatchError
from pylivepatch.builder.pack import pack
from pylivepatch.engine.base import TRANSITION_SWITCH_INTERVAL

TARGET = """
def leaf(x):
    return x + 1

def outer(x):
    return leaf(x) + 1

def hold(event):
    event.wait()
"""

FIX = """
import pylivepatch as lp
patch = lp.Patch("bench-load", consistency="transition")

@patch.function("bench_load:leaf")
def leaf(x):
    return x + 1

@patch.function("bench_load:outer")
def outer(x):
    return leaf(x) + 1

@patch.function("bench_load:hold")
def hold(event):
    event.wait()
"""


BOUND_TIMEOUT = 1.0  # seconds: the timeout of the blocked applies


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def gil_round() -> float:
    """Seconds this thread waits to run again after giving the GIL up once."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(min(saved, TRANSITION_SWITCH_INTERVAL))
    try:
        t0 = time.perf_counter()
        time.sleep(0)
        return time.perf_counter() - t0
    finally:
        sys.setswitchinterval(saved)


def run(
    n: int, rounds: int, timeout: float, mod: object, e: object, each: bool = False
) -> dict[str, object]:
    stop, go = threading.Event(), threading.Event()

    def spin() -> None:
        f = mod.outer  # type: ignore[attr-defined]
        go.wait()  # all started first: each start waits for a GIL round of the spinning
        while not stop.is_set():
            f(1)

    workers = [threading.Thread(target=spin, daemon=True) for _ in range(n)]
    for w in workers:
        w.start()
    go.set()
    times: list[float] = []
    gil: list[float] = []
    ends: dict[str, int] = {}
    try:
        for _ in range(rounds):
            for action in (e.apply, e.revert):  # type: ignore[attr-defined]
                gil.append(gil_round())
                t0 = time.perf_counter()
                try:
                    action("bench-load", timeout=timeout)
                    end = "completed"
                except LivepatchError as exc:
                    end = exc.code
                times.append(time.perf_counter() - t0)
                ends[end] = ends.get(end, 0) + 1
                if each:
                    print(
                        f"  {n} threads: {action.__name__} {end} in {times[-1]:.2f} s", flush=True
                    )
                if end == "transition-stuck":  # end it, so the next round starts clean
                    e.revert("bench-load", force=True)  # type: ignore[attr-defined]
        # The timeout as a bound: a thread parked in old code blocks the transition for
        # good; apply must come back reversed (`timeout`) after the timeout plus a margin.
        over: list[float] = []
        for _ in range(max(1, rounds // 5)):
            event = threading.Event()
            parked = threading.Thread(target=mod.hold, args=(event,))  # type: ignore[attr-defined]
            parked.start()
            t0 = time.perf_counter()
            try:
                e.apply("bench-load", timeout=BOUND_TIMEOUT)  # type: ignore[attr-defined]
                end = "completed"
            except LivepatchError as exc:
                end = exc.code
            over.append(time.perf_counter() - t0 - BOUND_TIMEOUT)
            if each:
                print(f"  {n} threads: blocked apply {end}, {over[-1]:.2f} s over", flush=True)
            ends[f"blocked: {end}"] = ends.get(f"blocked: {end}", 0) + 1
            event.set()
            parked.join()
            if end == "transition-stuck":  # its way back did not end in time either
                e.revert("bench-load", force=True)  # type: ignore[attr-defined]
    finally:
        stop.set()
        for w in workers:
            w.join()
    return {"times": times, "gil": gil, "ends": ends, "over": over}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="8,32,128,512")
    ap.add_argument("--rounds", type=int, default=25, help="apply+revert pairs per count")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--each", action="store_true", help="print every action as it ends")
    ap.add_argument("--quick", action="store_true", help="8 and 32 threads, 3 rounds")
    args = ap.parse_args()
    counts = [int(x) for x in args.threads.split(",")]
    rounds = args.rounds
    if args.quick:
        counts, rounds = [8, 32], 3
    root = Path(tempfile.mkdtemp(prefix="bench-load-"))
    (root / "bench_load.py").write_text(textwrap.dedent(TARGET))
    (root / "bench_load_fix.py").write_text(textwrap.dedent(FIX))
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    mod = importlib.import_module("bench_load")
    e = lp.engine()
    e.upload("bench-load", pack(root / "bench_load_fix.py").data)
    print(
        f"Python {sys.version.split()[0]}, {rounds} apply+revert per count, timeout {args.timeout:g} s"
    )
    print(
        f"{'threads':>7} | {'median':>8} {'p99':>8} {'max':>8} | {'GIL round':>9} "
        f"{'ratio':>6} | {'blocked: over the timeout':>25} | ends"
    )
    for n in counts:
        r = run(n, rounds, args.timeout, mod, e, args.each)
        times, gil = r["times"], r["gil"]
        med, g = statistics.median(times), statistics.median(gil)  # type: ignore[arg-type]
        ends = ", ".join(f"{k} {v}" for k, v in sorted(r["ends"].items()))  # type: ignore[attr-defined]
        print(
            f"{n:>7} | {med * 1e3:>6.1f}ms {pct(times, 99) * 1e3:>6.0f}ms "  # type: ignore[arg-type]
            f"{max(times) * 1e3:>6.0f}ms | {g * 1e3:>7.1f}ms {med / max(g, 1e-6):>6.1f} | "  # type: ignore[arg-type]
            f"{'max ' + format(max(r['over']) * 1e3, '.0f') + ' ms':>25} | {ends}",  # type: ignore[arg-type]
            flush=True,
        )
    e.unload("bench-load")
    return 0


if __name__ == "__main__":
    sys.exit(main())
