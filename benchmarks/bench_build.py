"""How fast the builder is (spec §8), measured in one run.

    python benchmarks/bench_build.py [--quick] [--cache DIR]

(a) ``pylivepatch build`` on real release pairs: the largest pair of the corpus and a
    Django security release (goal: <= 5 s each), split into comparing the trees and
    packing (fingerprints against OLD);
(b) builds per second on a small change (one function of a 40-module package), beside
    the time to start the interpreter and import the builder.

The sdists are downloaded from PyPI once into ``--cache`` (default ``.corpus/bench``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pylivepatch.builder.build import BuildOptions, build, compare_trees  # noqa: E402
from pylivepatch.builder.sources import materialize  # noqa: E402

PAIRS = [
    ("starlette", "0.49.0", "0.49.1"),  # the corpus pair with the most source
    ("urllib3", "2.0.6", "2.0.7"),
    ("django", "4.2.15", "4.2.16"),  # a Django security release
]


def sdist(cache: Path, name: str, version: str) -> Path:
    found = sorted(cache.glob(f"{name}-{version}.tar.gz")) + sorted(
        cache.glob(f"{name.capitalize()}-{version}.tar.gz")
    )
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
             f"{name}=={version}", "-d", str(cache)],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        found = sorted(
            p
            for p in cache.glob("*.tar.gz")
            if f"-{version}.tar" in p.name and p.name.lower().startswith(name)
        )
    return found[0]


def release_pairs(cache: Path, rounds: int) -> None:
    print("(a) pylivepatch build on release pairs (median of", rounds, "runs)")
    print(f"  {'pair':28} {'py lines':>9} {'compare':>9} {'build':>9}  goal <= 5 s")
    for name, old, new in PAIRS:
        try:
            a, b = sdist(cache, name, old), sdist(cache, name, new)
        except (subprocess.SubprocessError, IndexError) as exc:
            print(f"  {name} {old} -> {new}: could not download ({exc})")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            old_tree = materialize(str(a), Path(tmp), "old")
            new_tree = materialize(str(b), Path(tmp), "new")
            compares, builds = [], []
            result = None
            for _ in range(rounds):
                t0 = time.perf_counter()
                compare_trees(old_tree, new_tree)
                compares.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                result = build(
                    str(a),
                    str(b),
                    BuildOptions(
                        name="bench",
                        allow=frozenset(
                            {
                                "side-effect",
                                "computed-data",
                                "mutable-data",
                                "captured-constant",
                                "instance-state",
                                "decorator",
                            }
                        ),
                    ),
                )
                builds.append(time.perf_counter() - t0)
            assert result is not None
            what = f"{len(result.changes)} changes" + (
                f", {len(result.refusals)} refused" if result.refusals else ""
            )
            print(
                f"  {name + ' ' + old + ' -> ' + new:28} {sum(old_tree.read(r).count(chr(10)) for r in old_tree.modules().values()):>9,} "
                f"{statistics.median(compares):>8.2f}s {statistics.median(builds):>8.2f}s  "
                f"({what}; {'met' if statistics.median(builds) <= 5 else 'MISSED'})"
            )


def small_changes(rounds: int) -> None:
    print("(b) builds per second on a small change (40 modules x 30 functions, one changed)")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for side, tail in (("old", "return x + 1"), ("new", "return x + 2")):
            pkg = base / side / "benchpkg"
            pkg.mkdir(parents=True)
            (pkg / "__init__.py").write_text("")
            for m in range(40):
                body = "\n".join(
                    f"def f{i}(x):\n    y = x * {i}\n    return y + {i}\n" for i in range(30)
                )
                if m == 7:
                    body += f"\ndef target(x):\n    {tail}\n"
                (pkg / f"m{m}.py").write_text(textwrap.dedent(body))
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            result = build(str(base / "old"), str(base / "new"), BuildOptions(name="small"))
            times.append(time.perf_counter() - t0)
            assert result.data, result.refusals
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import pylivepatch.builder.build"], check=True,
                       env={"PYTHONPATH": str(ROOT / "src")})  # fmt: skip
        start = time.perf_counter() - t0
        best = min(times)
        print(
            f"  in process: {1 / statistics.median(times):.1f} builds/s (median {statistics.median(times) * 1000:.0f} ms, best {best * 1000:.0f} ms)"
        )
        print(
            f"  a fresh `pylivepatch build` adds interpreter start and imports: {start * 1000:.0f} ms"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cache", default=str(ROOT / ".corpus" / "bench"))
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    release_pairs(cache, 1 if args.quick else 3)
    small_changes(5 if args.quick else 20)


if __name__ == "__main__":
    main()
