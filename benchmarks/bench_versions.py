"""The core costs on each CPython, side by side in one run.

    python benchmarks/bench_versions.py [--rounds N] [--pythons 3.11,3.13,3.14,3.15]

Runs ``bench_engine.py --quick`` under each interpreter in turn, round after round (so
that a noisy stretch of the shared machine falls on every version alike), and prints
per version the best round's call cost of a patched function (patched / never patched),
the pause of a 1,000-function apply (median and max), and the longest gap another thread
sees with pauses against the same thread's gap while the main thread is merely busy.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = str(HERE.parent / "src")


def find(version: str) -> str | None:
    """An interpreter of ``version``: pyenv's, the one .ci/cpython-sid unpacks, or PATH's."""
    cands = sorted(
        glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}"))
    )
    if cands:
        return cands[-1]
    sid = f"/opt/cpython-sid/usr/bin/python{version}"
    if os.path.exists(sid):
        return sid
    return None


def one(python: str) -> dict[str, float]:
    """One quick run of bench_engine.py: the figures this table reports."""
    out = subprocess.run(
        [python, str(HERE / "bench_engine.py"), "--quick"],
        capture_output=True, text=True, timeout=1800,
        env=dict(os.environ, PYTHONPATH=SRC), cwd="/tmp",
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-1000:])
    text = out.stdout

    def number(pattern: str) -> float:
        m = re.search(pattern, text, re.M)
        if m is None:
            raise RuntimeError(f"no {pattern!r} in bench_engine's output")
        return float(m.group(1))

    pause = re.search(r"^\s+1000\s+([\d.]+) us\s+([\d.]+) us", text, re.M)
    assert pause is not None, text
    return {
        "call": number(r"patched / never patched\s+x([\d.]+)"),
        "pause_median_us": float(pause.group(1)),
        "pause_max_us": float(pause.group(2)),
        "gap_pause_ms": number(r"gap containing a pause\s+([\d.]+) ms"),
        "gap_busy_ms": number(r"gap, main thread busy\s+([\d.]+) ms"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pythons", default="3.11,3.13,3.14,3.15")
    args = parser.parse_args()
    pythons = {v: find(v) for v in args.pythons.split(",")}
    results: dict[str, list[dict[str, float]]] = {v: [] for v, p in pythons.items() if p}
    for r in range(args.rounds):
        for v, py in pythons.items():
            if py is None:
                continue
            results[v].append(one(py))
            print(f"round {r + 1}: {v} done", file=sys.stderr)
    print(f"best of {args.rounds} interleaved rounds of bench_engine.py --quick")
    print(f"{'':34}" + "".join(f"{v:>10}" for v in results))

    def line(label: str, key: str, fmt: str, best: str) -> None:
        pick = min if best == "min" else max
        cells = "".join(f"{fmt.format(pick(x[key] for x in rs)):>10}" for rs in results.values())
        print(f"{label:<34}{cells}")

    line("call, patched / never patched", "call", "x{:.2f}", "min")
    line("pause 1,000 functions, median", "pause_median_us", "{:.0f} us", "min")
    line("pause 1,000 functions, max", "pause_max_us", "{:.0f} us", "min")
    line("longest gap with pauses", "gap_pause_ms", "{:.1f} ms", "min")
    line("longest gap, main thread busy", "gap_busy_ms", "{:.1f} ms", "min")


if __name__ == "__main__":
    main()
