"""Core costs of pylivepatch, measured side by side in one run.

    python benchmarks/bench_engine.py [--quick]

(a) call cost of a patched function / the same function never patched (goal <= 1.02),
    beside a plain wrapper function, a wrapt monkeypatch and a trampoline;
(b) pause length of apply and revert for payloads of 1, 100 and 1,000 functions
    (goal <= 1 ms for 1,000);
(c) the longest stall another running thread sees while those pauses happen, beside
    the longest stall it sees while the main thread just runs Python code.

The machine is shared and noisy: every figure is taken in the same run as what it is
compared with, interleaved, and summarised by minimum (call costs) or median/max.
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
import timeit
from pathlib import Path

import pylivepatch as lp
from pylivepatch.builder.pack import pack


def write_module(root: Path, name: str, source: str) -> object:
    (root / f"{name}.py").write_text(textwrap.dedent(source))
    importlib.invalidate_caches()
    return importlib.import_module(name)


def load(root: Path, name: str, source: str) -> str:
    path = root / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return lp.engine().load(pack(path).data).name


# --- (a) call cost -------------------------------------------------------------------


def call_costs(root: Path, rounds: int, number: int) -> dict[str, float]:
    mod = write_module(
        root,
        "bench_calls",
        """
        def plain(x):
            return x + 1

        def patched(x):
            return x + 2          # replaced by 'return x + 1': same work as plain

        def make():
            a, b = 1, 0
            def closure(x):
                return x + a + b
            return closure

        tramp = make()           # replaced by code using only 'a': goes through a trampoline

        def wrapper(x):
            return plain(x)
        """,
    )
    load(
        root,
        "bench_calls_fix",
        """
        import pylivepatch as lp
        patch = lp.Patch("bench-calls", consistency="atomic")

        @patch.function("bench_calls:patched")
        def patched(x):
            return x + 1

        @patch.function("bench_calls:tramp")
        def tramp(x):
            return x + a
        """,
    )
    variants: dict[str, object] = {
        "never patched": mod.plain,
        "patched in place": mod.patched,
        "plain wrapper function": mod.wrapper,
        "trampoline (free variables changed)": mod.tramp,
    }
    try:
        import wrapt

        variants["wrapt FunctionWrapper"] = wrapt.FunctionWrapper(
            mod.plain, lambda wrapped, instance, args, kwargs: wrapped(*args, **kwargs)
        )
    except ImportError:
        print("wrapt: not installed, its row is skipped")
    assert all(f(1) == 2 for f in variants.values())
    timers = {k: timeit.Timer("f(1)", globals={"f": f}) for k, f in variants.items()}
    best = {k: float("inf") for k in variants}
    for _ in range(rounds):  # interleaved: A B C D A B C D ...
        for k, t in timers.items():
            best[k] = min(best[k], t.timeit(number) / number * 1e9)
    return best


# --- (b) + (c) pauses and the stall another thread sees --------------------------------


class Ticker(threading.Thread):
    """Runs Python code in a tight loop and keeps every gap over 0.2 ms between iterations."""

    def __init__(self) -> None:
        super().__init__(name="ticker", daemon=True)
        self.stop = threading.Event()
        self.gaps: list[tuple[int, int]] = []

    def run(self) -> None:
        last = time.perf_counter_ns()
        while not self.stop.is_set():
            now = time.perf_counter_ns()
            if now - last > 200_000:
                self.gaps.append((last, now))
            last = now

    def longest(self, start: int, end: int) -> int:
        """Longest gap that overlaps [start, end]."""
        return max((b - a for a, b in self.gaps if a <= end and b >= start), default=0)


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


def pauses(
    root: Path, sizes: list[int], repeats: int
) -> tuple[dict[int, dict[str, list[int]]], dict[str, int]]:
    results: dict[int, dict[str, list[int]]] = {}
    payloads = {}
    for n in sizes:
        name = f"bench_many_{n}"
        write_module(root, name, "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(n)))
        body = ["import pylivepatch as lp", f"patch = lp.Patch('many-{n}', consistency='atomic')"]
        for i in range(n):
            body += [f"@patch.function('{name}:f{i}')", f"def f{i}(x):", f"    return x - {i}"]
        src = root / f"{name}_fix.py"
        src.write_text("\n".join(body) + "\n")
        payloads[n] = pack(src).data
    e = lp.engine()
    ticker = Ticker()
    ticker.start()
    stall = {"gap containing a pause": 0, "gap during the actions": 0, "gap, main thread busy": 0}
    for n in sizes:
        e.upload(f"many-{n}", payloads[n])
        rec: dict[str, list[int]] = {"apply": [], "revert": [], "apply_wall": []}
        for _ in range(repeats):
            since = e.history()[-1].seq
            t0 = time.perf_counter_ns()
            a = e.apply(f"many-{n}")
            t1 = time.perf_counter_ns()
            r = e.revert(f"many-{n}")
            t2 = time.perf_counter_ns()
            for ev in e.history(since):
                if ev.kind == "swapped":
                    start = ev.detail["pause_start_ns"]
                    gap = ticker.longest(start, start + ev.detail["pause_ns"])
                    stall["gap containing a pause"] = max(stall["gap containing a pause"], gap)
            stall["gap during the actions"] = max(
                stall["gap during the actions"], ticker.longest(t0, t2)
            )
            rec["apply"].append(a.pause_ns)
            rec["revert"].append(r.pause_ns)
            rec["apply_wall"].append(t1 - t0)
            # Baseline: the main thread runs plain Python for as long as the actions took.
            t3 = time.perf_counter_ns()
            busy((t2 - t0) / 1e9)
            stall["gap, main thread busy"] = max(
                stall["gap, main thread busy"], ticker.longest(t3, time.perf_counter_ns())
            )
        e.unload(f"many-{n}")
        results[n] = rec
    ticker.stop.set()
    ticker.join()
    return results, stall


# --- (d) transitions -------------------------------------------------------------------


def transitions(root: Path, threads: int, rounds: int, number: int) -> dict[str, float]:
    """Time to complete a transition under load, and call costs during and after it."""
    mod = write_module(
        root,
        "bench_tr",
        """
        def leaf(x):
            return x + 1

        def outer(x):
            return leaf(x) + 1

        def hold():
            yield 1
            yield 2
        """,
    )
    body = """
        import pylivepatch as lp
        patch = lp.Patch("{name}")

        @patch.function("bench_tr:leaf")
        def leaf(x):
            return x + 1

        @patch.function("bench_tr:outer")
        def outer(x):
            return leaf(x) + 1
        """
    hold = """
        @patch.function("bench_tr:hold")
        def hold():
            yield 1
            yield 2
        """
    src = root / "bench_tr_fix.py"
    src.write_text(textwrap.dedent(body).replace("{name}", "bench-tr"))
    held = root / "bench_tr_held.py"
    held.write_text(
        textwrap.dedent(body).replace("{name}", "bench-tr-held") + textwrap.dedent(hold)
    )
    data = pack(src).data
    e = lp.engine()
    out: dict[str, float] = {}

    # Completion time with `threads` threads calling the patched functions non-stop.
    stop = threading.Event()

    def spin() -> None:
        f = mod.outer
        while not stop.is_set():
            f(1)

    workers = [threading.Thread(target=spin, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    times = []
    e.upload("bench-tr", data)
    for _ in range(rounds):
        since = e.history()[-1].seq
        e.apply("bench-tr", timeout=60)
        done = [ev for ev in e.history(since) if ev.kind == "transition-complete"]
        times.append(done[-1].detail["elapsed_ns"])
        e.revert("bench-tr", timeout=60)
    stop.set()
    for w in workers:
        w.join()
    out["completion median ms"] = statistics.median(times) / 1e6
    out["completion max ms"] = max(times) / 1e6

    # Call cost during a transition (held open by a generator suspended in old code)
    # and after it completed, against a function never patched.
    plain = write_module(
        root,
        "bench_tr_plain",
        "def leaf(x):\n    return x + 1\n\ndef outer(x):\n    return leaf(x) + 1\n",
    ).outer
    e.unload("bench-tr")
    e.upload("bench-tr-held", pack(held).data)
    g = mod.hold()
    next(g)
    applier = threading.Thread(target=lambda: e.apply("bench-tr-held", timeout=60))
    applier.start()
    while not (e.status("bench-tr-held").in_progress or {}).get("blockers"):
        time.sleep(0.001)

    def timer(f: object) -> float:
        best = min(timeit.repeat("f(1)", globals={"f": f}, number=number, repeat=rounds))
        return best / number * 1e9

    out["call during transition ns"] = timer(mod.outer)
    out["call never patched ns"] = timer(plain)
    list(g)
    applier.join()
    best_after, best_plain = float("inf"), float("inf")
    for _ in range(rounds):
        best_after = min(best_after, timer(mod.outer))
        best_plain = min(best_plain, timer(plain))
    out["call after completion ns"] = best_after
    out["call never patched (again) ns"] = best_plain
    e.revert("bench-tr-held", consistency="immediate")
    e.unload("bench-tr-held")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about 15 s)")
    args = parser.parse_args()
    rounds, number, repeats = (7, 200_000, 5) if args.quick else (25, 500_000, 20)
    print(
        f"pylivepatch {lp.__version__} on Python {sys.version.split()[0]}, switch interval "
        f"{sys.getswitchinterval() * 1000:.1f} ms\n"
    )
    with tempfile.TemporaryDirectory(prefix="lp-bench-") as tmp:
        root = Path(tmp)
        sys.path.insert(0, tmp)
        try:
            costs = call_costs(root, rounds, number)
            base = costs["never patched"]
            print("(a) call cost, best of interleaved rounds")
            for k, ns in costs.items():
                print(f"    {k:<38} {ns:7.1f} ns/call   x{ns / base:5.2f}")
            table, stall = pauses(root, [1, 100, 1000], repeats)
            print("\n(b) pause length (one C-level call; no other thread runs during it)")
            print(
                f"    {'functions':>9} {'apply median':>13} {'apply max':>10} {'revert median':>14} {'revert max':>11} {'apply wall':>11}"
            )
            for n, rec in table.items():
                print(
                    f"    {n:>9} {statistics.median(rec['apply']) / 1e3:>10.1f} us {max(rec['apply']) / 1e3:>7.1f} us"
                    f" {statistics.median(rec['revert']) / 1e3:>11.1f} us {max(rec['revert']) / 1e3:>8.1f} us"
                    f" {statistics.median(rec['apply_wall']) / 1e6:>8.2f} ms"
                )
            print("\n(c) longest gap seen by another thread running Python in a loop")
            for k, ns in stall.items():
                print(f"    {k:<38} {ns / 1e6:7.2f} ms")
            print(
                "    (a thread that wants the GIL gets it after at most the switch interval, unless the\n"
                "     holder is inside one long C call; a pause is one C call, so it can add at most its\n"
                "     own length to the switch interval. Gaps during the actions also include garbage\n"
                "     collections that the actions' allocations trigger.)"
            )
            tr = transitions(root, 32, 5 if args.quick else 15, number // 10)
            print("\n(d) transitions (32 threads calling the patched functions in a tight loop)")
            print(
                f"    completion, median / max             {tr['completion median ms']:.1f} / {tr['completion max ms']:.1f} ms"
            )
            print(
                f"    a call during a transition           {tr['call during transition ns']:.0f} ns (never patched: {tr['call never patched ns']:.0f} ns)"
            )
            print(
                f"    a call after it completed            {tr['call after completion ns']:.1f} ns (never patched: {tr['call never patched (again) ns']:.1f} ns)"
            )
        finally:
            sys.path.remove(tmp)
    ratio = costs["patched in place"] / base
    p1000 = max(table[1000]["apply"] + table[1000]["revert"])
    print("\nsummary")
    print(
        f"    patched / never patched      x{ratio:.3f}   goal <= 1.02   {'PASS' if ratio <= 1.02 else 'MISS'}"
    )
    print(
        f"    pause, 1,000 functions (max) {p1000 / 1e6:.3f} ms  goal <= 1 ms   {'PASS' if p1000 <= 1e6 else 'MISS'}"
    )
    after = tr["call after completion ns"] / tr["call never patched (again) ns"]
    print(
        f"    transition completion (median) {tr['completion median ms']:.1f} ms  goal <= 100 ms {'PASS' if tr['completion median ms'] <= 100 else 'MISS'}"
    )
    print(
        f"    after completion / never       x{after:.3f}   goal <= 1.02   {'PASS' if after <= 1.02 else 'MISS'}"
    )
    extra = stall["gap containing a pause"] - stall["gap, main thread busy"]
    print(
        f"    extra stall from a pause     {max(extra, 0) / 1e6:.2f} ms  (gap with a pause - gap without)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
