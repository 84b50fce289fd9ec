"""How pack, upload, apply and revert grow with the number of functions, in one run.

    python benchmarks/bench_scale.py [--sizes 1250,2500,5000,10000] [--consistency transition] [--repeat N]

For each size, a target of that many one-line functions (100 a module) and a payload
that replaces every one of them; each step's CPU time is taken (``time.process_time``: on a
shared machine the wall time mostly measures the other processes; best of ``--repeat``)
and the
growth factor from the previous size is printed: linear growth is x2.0 per doubling
(goal <= x2.2). The garbage collector stays on, as in a service.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import tempfile
import time
from pathlib import Path

import pylivepatch as lp
from pylivepatch.build.pack import pack

STEPS = ("pack", "upload", "apply", "revert")


def one(root: Path, n: int, consistency: str, tag: str) -> dict[str, float]:
    name = f"scale_{tag}_{n}"
    mods = [f"{name}_{m}" for m in range((n + 99) // 100)]
    body = ["import pylivepatch as lp", f"patch = lp.Patch({name!r}, consistency={consistency!r})"]
    for m, mod in enumerate(mods):
        count = min(100, n - 100 * m)
        (root / f"{mod}.py").write_text(
            "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(count))
        )
        for i in range(count):
            body += [f"@patch.function('{mod}:f{i}')", f"def f{m}_{i}(x):", f"    return x - {i}"]
    importlib.invalidate_caches()
    for mod in mods:
        importlib.import_module(mod)
    src = root / f"{name}_fix.py"
    src.write_text("\n".join(body) + "\n")
    e = lp.engine()
    t: dict[str, float] = {}
    t0 = time.process_time()
    data = pack(src).data
    t["pack"] = time.process_time() - t0
    t0 = time.process_time()
    e.upload(name, data)
    t["upload"] = time.process_time() - t0
    t0 = time.process_time()
    e.apply(name)
    t["apply"] = time.process_time() - t0
    t0 = time.process_time()
    e.revert(name)
    t["revert"] = time.process_time() - t0
    e.unload(name)
    for mod in mods:
        sys.modules.pop(mod, None)
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1250,2500,5000,10000")
    ap.add_argument("--consistency", default="transition")
    ap.add_argument("--repeat", type=int, default=2, help="best of N per size")
    ap.add_argument("--quick", action="store_true", help="sizes 250,500,1000, once")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    repeat = args.repeat
    if args.quick:
        sizes, repeat = [250, 500, 1000], 1
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    sys.path.insert(0, str(root))
    print(f"Python {sys.version.split()[0]}, consistency {args.consistency}, best of {repeat}")
    print(f"{'functions':>9} | " + " | ".join(f"{s:>16}" for s in STEPS))
    prev: dict[str, float] | None = None
    prev_n = 0
    worst: dict[str, float] = dict.fromkeys(STEPS, 0.0)
    for n in sizes:
        best = dict.fromkeys(STEPS, float("inf"))
        for r in range(repeat):
            for k, v in one(root, n, args.consistency, f"r{r}").items():
                best[k] = min(best[k], v)
        cells = []
        for k in STEPS:
            growth = ""
            if prev is not None:
                g = (best[k] / prev[k]) ** (1 / math.log2(n / prev_n))  # per doubling
                worst[k] = max(worst[k], g)
                growth = f"x{g:.2f}"
            cells.append(f"{best[k] * 1e3:>8.0f}ms {growth:>6}")
        print(f"{n:>9} | " + " | ".join(cells), flush=True)
        prev, prev_n = best, n
    print("worst growth per doubling: " + ", ".join(f"{k} x{v:.2f}" for k, v in worst.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
