"""The longest wait another thread sees because of pauses, side by side in one run.

    python benchmarks/bench_latency.py [--pauses N] [--funcs N] [--quick]

A second thread runs a loop of Python and a system call (``time.sleep(0)``, as a
thread doing I/O: it gives the GIL up and asks for it again at every iteration) and
records every gap between its iterations; the main thread is a busy service thread: it runs Python code between
pauses. Three kinds of round alternate in blocks of 1500 (the main thread sleeps 20 ms
between blocks, so a wait begun in one block does not end in another), and the
machine's noise falls on all of them:

- *control*: the main thread only runs its Python code (no pause);
- *pause*: one pause (``pause.run``) of ``--funcs`` ``__code__`` assignments, then the
  same Python code;
- *pause, no hand-over*: the same, with :func:`pause.hand_round` disabled (the engine
  before the fix: a thread that began waiting for the GIL inside the pause kept the
  raised 1 s switch interval as its timed wait).

Reported per kind: the longest gap, the number of gaps over 50 ms and over 500 ms.

Then the audit-hook case: a Python audit hook is installed (it runs inside the pause at
every ``__code__`` assignment) and reads the other thread's iteration counter at the
first and the last assignment of each pause; the other thread ran inside the pause when
the two differ; the hook does some work (about 15 us per assignment, so a pause of 200
functions lasts a few milliseconds). Reported: pauses entered by the other thread, out of
all, and its longest gap, with the raised interval (the engine) and with the interval
left at 5 ms (what the raise protects from).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import types

from pylivepatch.engine import pause


class Ticker(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="ticker", daemon=True)
        self.stop = threading.Event()
        self.gaps: list[tuple[int, int]] = []
        self.count = 0

    def run(self) -> None:
        last = time.perf_counter_ns()
        while not self.stop.is_set():
            now = time.perf_counter_ns()
            if now - last > 1_000_000:
                self.gaps.append((last, now))
            last = now
            self.count += 1
            time.sleep(0.0002)  # as a thread waiting for I/O: it gives the GIL up


HOOK_WORK = 300  # loop iterations of the audit hook per assignment (about 15 us)
BLOCK = 1500  # rounds of one kind in a row (about 2 s): the kinds alternate by block


def busy(n: int) -> None:
    x = 0
    while x < n:
        x += 1


def functions(
    n: int,
) -> tuple[list[types.FunctionType], list[types.CodeType], list[types.CodeType]]:
    ns: dict[str, object] = {}
    exec("".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(n)), ns)
    funcs = [ns[f"f{i}"] for i in range(n)]
    old = [f.__code__ for f in funcs]  # type: ignore[attr-defined]
    new = [f.__code__.replace(co_consts=(None, -i)) for i, f in enumerate(funcs)]  # type: ignore[attr-defined]
    return funcs, old, new  # type: ignore[return-value]


def gaps(rounds: int, n: int, work: int) -> dict[str, list[int]]:
    funcs, old, new = functions(n)
    kinds = ("control", "pause", "pause, no hand-over")
    spans: dict[str, list[tuple[int, int]]] = {k: [] for k in kinds}
    ticker = Ticker()
    ticker.start()
    real = pause.hand_round
    try:
        for b in range(0, rounds, BLOCK):
            for kind in kinds:
                pause.hand_round = real if kind == "pause" else (lambda: None)
                t0 = time.perf_counter_ns()
                for r in range(b, min(b + BLOCK, rounds)):
                    if kind != "control":
                        codes = new if r % 2 == 0 else old
                        ops = pause.Ops(
                            func_attrs=list(zip(funcs, ["__code__"] * n, codes, strict=True))
                        )
                        pause.run(ops, None)
                    busy(work)
                spans[kind].append((t0, time.perf_counter_ns()))
                # the main thread waits: the other thread runs, and starts afresh
                time.sleep(0.02)
    finally:
        pause.hand_round = real
        ticker.stop.set()
        ticker.join()
    found: dict[str, list[int]] = {k: [] for k in kinds}
    for kind, ss in spans.items():
        for a, b in ticker.gaps:
            # each gap is charged to the block of rounds it starts in
            if any(s <= a < e for s, e in ss):
                found[kind].append(b - a)
    return found


def audit_case(rounds: int, n: int, work: int) -> dict[str, tuple[int, int, int]]:
    funcs, old, new = functions(n)
    ticker = Ticker()
    seen: list[int] = []
    armed = [False]

    def hook(event: str, args: tuple[object, ...]) -> None:
        if armed[0] and event == "object.__setattr__":
            seen.append(ticker.count)
            busy(HOOK_WORK)  # a hook that does some work: the pause lasts milliseconds

    sys.addaudithook(hook)  # stays for the rest of this process: this is the last case
    ticker.start()
    result: dict[str, tuple[int, int, int]] = {}
    saved = pause.PAUSE_SWITCH_INTERVAL
    try:
        for label, raised in (
            ("raised interval (engine)", saved),
            ("interval left at 5 ms", 0.005),
        ):
            pause.PAUSE_SWITCH_INTERVAL = raised
            entered = 0
            t0 = time.perf_counter_ns()
            for r in range(rounds):
                codes = new if r % 2 == 0 else old
                seen.clear()
                armed[0] = True
                pause.run(
                    pause.Ops(func_attrs=list(zip(funcs, ["__code__"] * n, codes, strict=True))),
                    None,
                )
                armed[0] = False
                if seen and seen[0] != seen[-1]:
                    entered += 1
                busy(work)
            longest = max((b - a for a, b in ticker.gaps if a >= t0), default=0)
            result[label] = (entered, rounds, longest)
            time.sleep(0.02)
    finally:
        pause.PAUSE_SWITCH_INTERVAL = saved
        ticker.stop.set()
        ticker.join()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pauses", type=int, default=4500, help="rounds of each kind")
    ap.add_argument("--funcs", type=int, default=200, help="functions swapped per pause")
    ap.add_argument("--quick", action="store_true", help="1500 rounds (a smoke test)")
    args = ap.parse_args()
    rounds = 1500 if args.quick else args.pauses
    work = 20_000  # about 1 ms of Python between pauses
    print(f"Python {sys.version.split()[0]}, switch interval {sys.getswitchinterval() * 1e3:g} ms")
    print(
        f"\n(1) gaps another thread sees, {rounds} rounds of each kind, {args.funcs} functions per pause"
    )
    print(f"    {'kind':<22} {'longest':>10} {'> 50 ms':>8} {'> 500 ms':>9}")
    for kind, gs in gaps(rounds, args.funcs, work).items():
        longest = max(gs, default=0) / 1e6
        print(
            f"    {kind:<22} {longest:>7.1f} ms {sum(g > 50e6 for g in gs):>8} "
            f"{sum(g > 500e6 for g in gs):>9}"
        )
    n_audit = max(rounds // 10, 50)
    print("\n(2) a Python audit hook inside the pause: pauses another running thread entered")
    for label, (entered, total, longest) in audit_case(n_audit, args.funcs, work).items():
        print(f"    {label:<26} {entered} of {total}, longest gap {longest / 1e6:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
