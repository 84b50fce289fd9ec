"""How pack, upload, apply and revert grow with the number of functions, in one run.

    python benchmarks/bench_scale.py [--sizes 625,1250,2500,5000,10000] [--repeat N]
        [--consistency transition] [--heap OBJECTS] [--quick]

For each size, a target of that many one-line functions (100 a module) and a payload
that replaces every one of them: pack it, upload, apply and revert it. Each measurement
runs in a fresh interpreter (so no size pays for the heap another one left), the sizes
interleaved, ``--repeat`` rounds; each step's CPU time is taken (``time.process_time``:
on a shared machine the wall time mostly measures the other processes) and the median
of the rounds kept. Then the growth factor of each step from one size to the next,
per doubling of the functions: linear growth is x2.0 (goal: at most x2.2 at every step
up to 10,000 functions). The garbage collector stays on, as in a service; ``--heap``
gives the process that many more GC-tracked objects first (a service's own heap).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = ("pack", "upload", "apply", "revert")
GOAL = 2.2  # growth per doubling of the functions


def measure(root: Path, n: int, consistency: str, heap: int) -> dict[str, float]:
    """One size in this process: CPU seconds of each step, and (``gc:STEP``) the wall
    seconds (CPU) the garbage collector's collections took inside it."""
    import gc

    import pylivepatch as lp
    from pylivepatch.builder.pack import pack

    ballast = [[i] for i in range(heap)]  # a service's heap: GC-tracked, long-lived
    name = f"scale_{n}"
    mods = [f"{name}_{m}" for m in range((n + 99) // 100)]
    body = ["import pylivepatch as lp", f"patch = lp.Patch({name!r}, consistency={consistency!r})"]
    for m, mod in enumerate(mods):
        count = min(100, n - 100 * m)
        (root / f"{mod}.py").write_text(
            "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(count))
        )
        for i in range(count):
            body += [f"@patch.function('{mod}:f{i}')", f"def f{m}_{i}(x):", f"    return x - {i}"]
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    for mod in mods:
        importlib.import_module(mod)
    src = root / f"{name}_fix.py"
    src.write_text("\n".join(body) + "\n")
    e = lp.engine()
    t: dict[str, float] = {}
    in_gc = [0.0, 0.0]  # total, start of the running collection

    def collection(phase: str, info: dict[str, int]) -> None:
        now = time.process_time()
        if phase == "start":
            in_gc[1] = now
        else:
            in_gc[0] += now - in_gc[1]

    gc.callbacks.append(collection)
    steps = {
        "pack": lambda: pack(src).data,
        "upload": lambda: e.upload(name, data),
        "apply": lambda: e.apply(name),
        "revert": lambda: e.revert(name),
    }
    data = b""
    for step, run in steps.items():
        in_gc[0] = 0.0
        t0 = time.process_time()
        out = run()
        t[step] = time.process_time() - t0
        t[f"gc:{step}"] = in_gc[0]
        if step == "pack":
            data = out
    gc.callbacks.remove(collection)
    if sys.modules[mods[0]].f1(1) != 2:  # x + 1 again, not x - 1
        raise SystemExit("the revert did not put the old code back")
    e.unload(name)
    del ballast
    return t


def run_one(n: int, consistency: str, heap: int) -> dict[str, float]:
    """:func:`measure` in a fresh interpreter."""
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as root:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(n), root, consistency, str(heap)],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
            check=False,
        )
    if proc.returncode != 0:
        raise SystemExit(f"bench_scale: size {n} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def growth(times: dict[int, dict[str, float]], sizes: list[int]) -> dict[str, list[float]]:
    """Per step, the growth per doubling from each size to the next."""
    out: dict[str, list[float]] = {k: [] for k in STEPS}
    for a, b in zip(sizes, sizes[1:], strict=False):
        for k in STEPS:
            out[k].append((times[b][k] / times[a][k]) ** (1 / math.log2(b / a)))
    return out


def fitted(times: dict[int, dict[str, float]], sizes: list[int], step: str) -> float:
    """The growth per doubling of a power law fitted (least squares, log-log) to every
    size at once: steadier on a loaded machine than any one step."""
    xs = [math.log2(n) for n in sizes]
    ys = [math.log2(times[n][step]) for n in sizes]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    return float(2**slope)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        n, root, consistency, heap = sys.argv[2:6]
        print(json.dumps(measure(Path(root), int(n), consistency, int(heap))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="625,1250,2500,5000,10000")
    ap.add_argument("--consistency", default="transition")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the median is kept")
    ap.add_argument("--heap", type=int, default=0, help="GC-tracked objects made first")
    ap.add_argument("--quick", action="store_true", help="sizes 250,500,1000, one round")
    args = ap.parse_args()
    sizes = sorted({int(x) for x in args.sizes.split(",")})
    repeat = max(1, args.repeat)
    if args.quick:
        sizes, repeat = [250, 500, 1000], 1
    runs: dict[int, dict[str, list[float]]] = {
        n: {k: [] for s in STEPS for k in (s, f"gc:{s}")} for n in sizes
    }
    for _ in range(repeat):  # interleaved: a change in the machine's load hits every size
        for n in sizes:
            for k, v in run_one(n, args.consistency, args.heap).items():
                runs[n][k].append(v)
    med = {n: {k: statistics.median(v) for k, v in runs[n].items()} for n in sizes}
    print(
        f"Python {sys.version.split()[0]}, consistency {args.consistency}, "
        f"heap +{args.heap:,} objects, CPU time, median of {repeat}"
    )
    print(f"{'functions':>9} | " + " | ".join(f"{k:>16}" for k in STEPS))
    g = growth(med, sizes)
    for i, n in enumerate(sizes):
        cells = []
        for k in STEPS:
            step = "" if i == 0 else f"x{g[k][i - 1]:.2f}"
            cells.append(f"{med[n][k] * 1e3:>8.0f}ms {step:>6}")
        print(f"{n:>9} | " + " | ".join(cells), flush=True)
    if len(sizes) > 1:
        print(f"growth per doubling (goal <= x{GOAL}):")
        for k in STEPS:
            worst = max(g[k])
            print(
                f"  {k:>6}: " + ", ".join(f"x{x:.2f}" for x in g[k])
                + f"  worst x{worst:.2f} {'ok' if worst <= GOAL else 'OVER'}"
                + f"; fitted over all sizes x{fitted(med, sizes, k):.2f}"
            )  # fmt: skip
    print("time in garbage collections inside each step (CPU, median; share of the step):")
    for n in sizes:
        print(
            f"{n:>9} | "
            + " | ".join(
                f"{med[n][f'gc:{k}'] * 1e3:>6.0f}ms {med[n][f'gc:{k}'] / med[n][k]:>5.0%}"
                for k in STEPS
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
