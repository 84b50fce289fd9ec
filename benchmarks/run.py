"""pylivepatch against the tools people use, measured side by side in one run.

    pip install -e '.[bench]'
    python benchmarks/run.py            # the full run (about an hour on a shared 2-core VM)
    python benchmarks/run.py --quick    # a short run (a few minutes), smaller heaps
    python benchmarks/run.py --smoke    # every section, tiny (under a minute): CI's smoke
                                        # test; results go to a temporary directory

Sections (each tool where it applies; see docs/benchmarks.md for what drives each ratio):

calls        steady-state cost of a call of a changed one-line function: never changed,
             pylivepatch (in place; trampoline), jurigged, IPython autoreload, a plain
             wrapper function, a wrapt FunctionWrapper (benchmarks/peers.py calls)
versions     the same for each interpreter found (3.10-3.13): patched in place vs the
             other ways to reach new code; the CPython 3.13 cost (call_versions.py)
update       time to change 1, 100, 1,000 and 5,000 functions (100 a module) with a heap
             of 0.2, 2 and 6 million objects, and the longest stall another thread sees
             meanwhile (benchmarks/peers.py update, one process per tool and heap)
latency      a change made outside the process until the process runs it: `pylivepatch
             load -p PID` vs jurigged's file watcher; then 16 processes at once
transitions  pylivepatch's transition mode with 32 busy threads (bench_engine.py; with 8
             to 512 threads: bench_transition.py)
latency-gaps the longest wait of another thread around pauses, beside a control
             (bench_latency.py; run by itself, not by this script)

Writes results.csv and PNG plots to --out (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SRC = str(ROOT / "src")
sys.path.insert(0, SRC)
sys.path.insert(0, str(HERE))

import peers  # noqa: E402

Row = dict[str, Any]
PY = sys.version.split()[0]


def row(section: str, tool: str, metric: str, value: float, unit: str, **more: Any) -> Row:
    return {
        "section": section, "tool": tool, "python": more.pop("python", PY), "heap": "",
        "functions": "", "metric": metric, "value": value, "unit": unit, "note": "", **more,
    }  # fmt: skip


def worker(args: list[str], python: str = sys.executable, timeout: float = 7200) -> Any:
    out = subprocess.run(
        [python, *args], capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ, PYTHONPATH=SRC), cwd=tempfile.gettempdir(),
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{args[:3]}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- calls and versions -------------------------------------------------------------


def calls(quick: bool, smoke: bool = False) -> list[Row]:
    # Many short rounds: on a busy machine the minimum needs clean windows to land in.
    rounds, number = (20, 100_000) if quick else (100, 100_000)
    if smoke:
        rounds, number = 2, 2_000
    out = worker(
        [str(HERE / "peers.py"), "calls", "--rounds", str(rounds), "--number", str(number)]
    )
    base = out["ns"]["never patched"]
    print(
        f"\n== calls: a changed one-line function, best of {rounds} interleaved rounds (Python {PY})"
    )
    rows = []
    for k, ns in out["ns"].items():
        print(f"   {k:<44} {ns:7.1f} ns   x{ns / base:5.2f}")
        rows.append(row("calls", k, "ns per call", ns, "ns", note=f"x{ns / base:.2f}"))
    for tool, why in out["notes"].items():
        print(f"   {tool}: {why}")
    return rows


def interpreters() -> list[str]:
    found = []
    for v in ("3.10", "3.11", "3.12", "3.13", "3.14", "3.15"):
        cands = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{v}.*/bin/python{v}")))
        sid = f"/opt/cpython-sid/usr/bin/python{v}"  # .ci/cpython-sid: 3.14 and 3.15
        path = cands[-1] if cands else sid if os.path.exists(sid) else shutil.which(f"python{v}")
        if path and "/shims/" not in path:
            found.append(path)
    return found


def versions(quick: bool, pythons: list[str], smoke: bool = False) -> list[Row]:
    rows = []
    print("\n== versions: ways to reach new code, per interpreter (call_versions.py)")
    for py in pythons:
        try:
            out = worker(
                [
                    str(HERE / "call_versions.py"),
                    "--json",
                    *(["--smoke"] if smoke else ["--quick"] if quick else []),
                ],  # fmt: skip
                python=py,
            )
        except Exception as exc:  # noqa: BLE001 - an interpreter without what it needs
            print(f"   {py}: skipped ({str(exc).splitlines()[-1][:100]})")
            continue
        ns = out["ns"]
        base, loop = ns["never patched"], ns["5-item loop, never patched"]
        print(f"   Python {out['python']}")
        for k, v in ns.items():
            ref = loop if k.startswith("5-item") else base
            print(f"     {k:<46} {v:7.1f} ns  x{v / ref:5.2f}")
            rows.append(
                row(
                    "versions",
                    k,
                    "ns per call",
                    v,
                    "ns",
                    python=out["python"],
                    note=f"x{v / ref:.2f}",
                )
            )
    return rows


# --- update and stall ------------------------------------------------------------------


def update(quick: bool, heaps: list[int], sizes: list[int], budget: float) -> list[Row]:
    rows = []
    print(f"\n== update: change N functions (100 a module); heap sizes {heaps}")
    for heap in heaps:
        for tool in peers.TOOLS:
            if not peers.available(tool):
                print(f"   {tool}: not installed, skipped")
                continue
            t0 = time.monotonic()
            try:
                out = worker(
                    [str(HERE / "peers.py"), "update", "--tool", tool, "--heap", str(heap),
                     "--sizes", ",".join(map(str, sizes)), "--budget", str(budget)],
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                print(f"   {tool} heap {heap:,}: FAILED {str(exc)[-300:]}")
                continue
            desc = []
            for r in out["rows"]:
                note = f"extrapolated from {r['measured_functions']}" if r["extrapolated"] else ""
                if not r["applied"] or r["undone"] is False:
                    note += " WRONG RESULT"
                common = {"heap": heap, "functions": r["functions"]}
                rows.append(row("update", tool, "seconds", r["seconds"], "s", note=note, **common))
                rows.append(row("update", tool, "stall", r["stall_ms"], "ms", **common))
                rows.append(row("update", tool, "held reference runs new code",
                                int(bool(r["alias_runs_new_code"])), "bool", **common))  # fmt: skip
                if r.get("pack_seconds") is not None:
                    rows.append(row("update", "pylivepatch pack (build side)", "seconds",
                                    r["pack_seconds"], "s", **common))  # fmt: skip
                desc.append(
                    f"{r['functions']}: {r['seconds'] * 1000:.0f} ms{'*' if r['extrapolated'] else ''}"
                    f" (stall {r['stall_ms']:.0f} ms)"
                )
            rows.append(
                row("update", tool, "baseline stall", out["baseline_gap_ms"], "ms", heap=heap)
            )
            print(f"   {tool:<13} heap {heap:>9,} ({out['gc_objects']:,} tracked): " + "; ".join(desc)
                  + f"  [baseline stall {out['baseline_gap_ms']:.0f} ms, {time.monotonic() - t0:.0f} s]")  # fmt: skip
    return rows


# --- latency: from outside the process to running the new code ------------------------------

TARGET = "def version():\n    return 1\n"
WATCHER = """
import os, sys, threading, time
sys.path.insert(0, os.getcwd())
import lpb_lat
if sys.argv[1] == "jurigged":
    import jurigged
    jurigged.watch(os.path.join(os.getcwd(), "lpb_lat.py"), logger=lambda *a: None)
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
print("ready", flush=True)
last = lpb_lat.version()
while not done.is_set():
    v = lpb_lat.version()
    if v != last:
        print(f"changed {v} {time.monotonic()}", flush=True)
        last = v
    time.sleep(float(sys.argv[2]))
"""
LAT_FIX = """
import pylivepatch as lp
patch = lp.Patch("lat-fix", consistency="atomic")

@patch.function("lpb_lat:version")
def version():
    return 2
"""


class Targets:
    """``n`` processes polling ``lpb_lat.version()``; each reports when it changes."""

    def __init__(self, root: Path, tool: str, n: int, poll: float) -> None:
        self.app = f"lpb-lat-{os.getpid()}-{tool}"
        cmd = [sys.executable, str(root / "watcher.py"), tool, str(poll)]
        if tool == "pylivepatch":
            cmd = [sys.executable, "-m", "pylivepatch", "run", "--app", self.app, "--", *cmd]
        env = dict(os.environ, PYTHONPATH=SRC, PYLIVEPATCH_STATE_DIR=str(root / "state"))
        self.procs = [
            subprocess.Popen(
                cmd, cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            for _ in range(n)
        ]
        for p in self.procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"

    def changed(self) -> list[float]:
        """Wait for every process to report a change: the times (time.monotonic)."""
        times = []
        for p in self.procs:
            assert p.stdout is not None
            line = p.stdout.readline().split()
            times.append(float(line[2]))
        return times

    def close(self) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.close()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def cli(root: Path, *args: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pylivepatch", *args], cwd=root, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=SRC, PYLIVEPATCH_STATE_DIR=str(root / "state")), timeout=120,
    )  # fmt: skip
    if out.returncode:
        raise RuntimeError(out.stdout + out.stderr)


def latency(quick: bool, smoke: bool = False) -> list[Row]:
    from pylivepatch.builder.pack import pack

    rounds = 1 if smoke else 3 if quick else 7
    rows = []
    print(f"\n== latency: a change made outside the process until it runs (median of {rounds})")
    with tempfile.TemporaryDirectory(prefix="lpb-lat-") as tmp:
        root = Path(tmp)
        (root / "watcher.py").write_text(textwrap.dedent(WATCHER))
        (root / "lpb_lat.py").write_text(TARGET)
        (root / "fix.py").write_text(textwrap.dedent(LAT_FIX))
        sys.path.insert(0, tmp)
        try:
            (root / "fix.lpz").write_bytes(pack(root / "fix.py").data)
        finally:
            sys.path.remove(tmp)
            sys.modules.pop("lpb_lat", None)
        for n, poll in ((1, 0.001),) if smoke else ((1, 0.001), (16, 0.002)):
            for tool in ("pylivepatch", "jurigged"):
                if not peers.available(tool):
                    continue
                if tool == "pylivepatch":
                    time.sleep(0.2)
                targets = Targets(root, tool, n, poll)
                time.sleep(0.5 if tool == "jurigged" else 0.2)  # jurigged's observer starts
                all_in, cli_s = [], []
                try:
                    for _ in range(rounds):
                        t0 = time.monotonic()
                        if tool == "pylivepatch":
                            # `pylivepatch run` execs the command: the pid is the target's
                            where = (
                                ["-p", str(targets.procs[0].pid)]
                                if n == 1
                                else ["--app", targets.app]
                            )
                            cli(root, "load", "fix.lpz", *where)
                            cli_s.append(time.monotonic() - t0)
                            all_in.append(max(targets.changed()) - t0)
                            cli(root, "revert", "lat-fix", *where)
                            targets.changed()
                            cli(root, "unload", "lat-fix", *where)
                        else:
                            peers.write(root / "lpb_lat.py", TARGET.replace("1", "2"))
                            all_in.append(max(targets.changed()) - t0)
                            peers.write(root / "lpb_lat.py", TARGET)
                            targets.changed()
                        time.sleep(0.2)
                finally:
                    targets.close()
                label = "one process" if n == 1 else f"{n} processes"
                med = statistics.median(all_in) * 1000
                extra = (
                    f" (the command itself: {statistics.median(cli_s) * 1000:.0f} ms)"
                    if cli_s
                    else ""
                )
                print(
                    f"   {tool:<12} {label:<13} {med:7.0f} ms until every process runs the new code{extra}"
                )
                rows.append(row("latency", tool, f"until applied, {label}", med, "ms", functions=n))
                if cli_s:
                    rows.append(
                        row(
                            "latency",
                            tool,
                            f"command, {label}",
                            statistics.median(cli_s) * 1000,
                            "ms",
                            functions=n,
                        )
                    )
    return rows


# --- transitions ----------------------------------------------------------------------


def transitions(quick: bool, smoke: bool = False) -> list[Row]:
    import bench_engine

    threads = 8 if smoke else 32
    print(f"\n== transitions: {threads} threads calling the patched functions in a tight loop")
    with tempfile.TemporaryDirectory(prefix="lpb-tr-") as tmp:
        sys.path.insert(0, tmp)
        try:
            if smoke:
                out = bench_engine.transitions(Path(tmp), threads, 2, 2_000)
            else:
                out = bench_engine.transitions(
                    Path(tmp), threads, 5 if quick else 15, 20_000 if quick else 50_000
                )
        finally:
            sys.path.remove(tmp)
    for k, v in out.items():
        print(f"   {k:<36} {v:9.1f}")
    return [
        row("transitions", "pylivepatch", k, v, "ms" if k.endswith("ms") else "ns")
        for k, v in out.items()
    ]


# --- output ---------------------------------------------------------------------------


def write_csv(out: Path, rows: list[Row]) -> None:
    fields = ["section", "tool", "python", "heap", "functions", "metric", "value", "unit", "note"]
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in fields})


def kept(out: Path, sections: list[str]) -> list[Row]:
    """Rows of an earlier run's results.csv for the sections not run now (so that one
    section can be measured again)."""
    path = out / "results.csv"
    if not path.exists():
        return []
    with path.open() as f:
        old = [r for r in csv.DictReader(f) if r["section"] not in sections]
    for r in old:
        r["value"] = float(r["value"])
        for key in ("heap", "functions"):
            r[key] = int(r[key]) if r[key] else ""
    return old


def plots(out: Path, rows: list[Row]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install -e '.[bench]')")
        return []
    made = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append(name)

    cr = [r for r in rows if r["section"] == "calls"]
    if cr:
        fig, ax = plt.subplots(figsize=(9, 4))
        names, values = [r["tool"] for r in cr], [r["value"] for r in cr]
        bars = ax.barh(
            names,
            values,
            color=["#888"] + ["#2a7" if "pylivepatch" in n else "#c63" for n in names[1:]],
        )
        for b, r in zip(bars, cr, strict=True):
            ax.text(
                b.get_width(),
                b.get_y() + b.get_height() / 2,
                f" {r['value']:.0f} ns {r['note']}",
                va="center",
                fontsize=8,
            )
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel("ns per call (log)")
        ax.set_title(f"Steady-state call cost of a changed one-line function (Python {PY})")
        save(fig, "calls.png")

    vr = [r for r in rows if r["section"] == "versions" and not r["tool"].startswith("5-item")]
    if vr:
        pys = sorted({r["python"] for r in vr}, key=lambda v: tuple(map(int, v.split("."))))
        kinds = list(dict.fromkeys(r["tool"] for r in vr))
        fig, ax = plt.subplots(figsize=(10, 4.5))
        width = 0.8 / len(pys)
        for i, py in enumerate(pys):
            base = next(
                r["value"] for r in vr if r["python"] == py and r["tool"] == "never patched"
            )
            ys = [
                next((r["value"] / base for r in vr if r["python"] == py and r["tool"] == k), 0)
                for k in kinds
            ]
            ax.bar([x + i * width for x in range(len(kinds))], ys, width, label=f"Python {py}")
        ax.axhline(1.02, color="red", linestyle="--", linewidth=1, label="x1.02")
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(kinds))])
        ax.set_xticklabels([k.strip(" .") for k in kinds], rotation=20, ha="right", fontsize=7)
        ax.set_ylabel("call cost / never patched")
        ax.set_title("Reaching new code: call cost by interpreter")
        ax.legend(fontsize=7)
        save(fig, "call_versions.png")

    ur = [r for r in rows if r["section"] == "update" and r["metric"] == "seconds"]
    if ur:
        heaps = sorted({r["heap"] for r in ur})
        tools = list(dict.fromkeys(r["tool"] for r in ur))
        fig, axes = plt.subplots(
            1, len(heaps), figsize=(5 * len(heaps), 4.2), squeeze=False, sharey=True
        )
        for ax, heap in zip(axes[0], heaps, strict=True):
            for tool in tools:
                pts = [r for r in ur if r["tool"] == tool and r["heap"] == heap]
                if not pts:
                    continue
                xs, ys = [r["functions"] for r in pts], [max(r["value"], 1e-5) for r in pts]
                (line,) = ax.plot(xs, ys, marker="o", label=peers.LABELS.get(tool, tool))
                for r in pts:
                    if "extrapolated" in r["note"]:
                        ax.plot(
                            [r["functions"]],
                            [r["value"]],
                            marker="o",
                            mfc="white",
                            color=line.get_color(),
                        )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"heap {heap / 1e6:g} M objects")
            ax.set_xlabel("functions changed")
            ax.grid(alpha=0.3, which="both")
        axes[0][0].set_ylabel("seconds (log); hollow: extrapolated")
        axes[0][-1].legend(fontsize=7)
        fig.suptitle("Time to change N functions (100 a module)")
        save(fig, "update.png")

        sr = [r for r in rows if r["section"] == "update" and r["metric"] == "stall"]
        base = {(r["tool"], r["heap"]): r["value"] for r in rows if r["metric"] == "baseline stall"}
        fig, axes = plt.subplots(
            1, len(heaps), figsize=(5 * len(heaps), 4.2), squeeze=False, sharey=True
        )
        for ax, heap in zip(axes[0], heaps, strict=True):
            for tool in tools:
                pts = [r for r in sr if r["tool"] == tool and r["heap"] == heap]
                if pts:
                    ax.plot([r["functions"] for r in pts], [max(r["value"], 0.1) for r in pts], marker="o",
                            label=peers.LABELS.get(tool, tool))  # fmt: skip
            b = [v for (t, h), v in base.items() if h == heap]
            if b:
                ax.axhline(
                    statistics.median(b), color="gray", linestyle=":", label="no update (median)"
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"heap {heap / 1e6:g} M objects")
            ax.set_xlabel("functions changed")
            ax.grid(alpha=0.3, which="both")
        axes[0][0].set_ylabel("longest gap another thread saw (ms, log)")
        axes[0][-1].legend(fontsize=7)
        fig.suptitle("The longest stall a running thread sees during the update")
        save(fig, "stall.png")

    lr = [r for r in rows if r["section"] == "latency" and r["metric"].startswith("until")]
    if lr:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        labels = [f"{r['tool']}, {r['metric'].split(', ')[1]}" for r in lr]
        bars = ax.barh(
            labels,
            [r["value"] for r in lr],
            color=["#2a7" if r["tool"] == "pylivepatch" else "#c63" for r in lr],
        )
        for b, r in zip(bars, lr, strict=True):
            ax.text(
                b.get_width(),
                b.get_y() + b.get_height() / 2,
                f" {r['value']:.0f} ms",
                va="center",
                fontsize=8,
            )
        ax.invert_yaxis()
        ax.set_xlabel("ms from the change made outside the process until every process runs it")
        ax.set_title("pylivepatch load (CLI) vs jurigged (file watcher)")
        save(fig, "latency.png")
    return made


def tables(out: Path) -> str:
    """Markdown tables of a run's results.csv (what docs/benchmarks.md shows)."""
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    text: list[str] = []

    def table(head: list[str], body: list[list[str]]) -> None:
        text.append("| " + " | ".join(head) + " |")
        text.append("|" + "---|" * len(head))
        text.extend("| " + " | ".join(r) + " |" for r in body)
        text.append("")

    calls_rows = [r for r in rows if r["section"] == "calls"]
    if calls_rows:
        table(["variant", f"ns per call (Python {calls_rows[0]['python']})", "ratio"],
              [[r["tool"], f"{float(r['value']):.1f}", r["note"]] for r in calls_rows])  # fmt: skip
    vr = [r for r in rows if r["section"] == "versions"]
    if vr:
        pys = list(dict.fromkeys(r["python"] for r in vr))
        kinds = list(dict.fromkeys(r["tool"] for r in vr))
        body = []
        for k in kinds:
            cells = []
            for py in pys:
                m = [r for r in vr if r["python"] == py and r["tool"] == k]
                cells.append(f"{float(m[0]['value']):.1f} ns ({m[0]['note']})" if m else "—")
            body.append([k.strip(" .")] + cells)
        table(["way to reach the new code"] + [f"Python {p}" for p in pys], body)
    ur = [r for r in rows if r["section"] == "update"]
    if ur:
        tools = list(dict.fromkeys(r["tool"] for r in ur if r["metric"] == "seconds"))
        for heap in sorted({int(r["heap"]) for r in ur}):
            sizes = sorted({int(r["functions"]) for r in ur if r["functions"]})
            body = []
            for tool in tools:
                cells = []
                for n in sizes:
                    sec = [r for r in ur if r["tool"] == tool and r["heap"] == str(heap)
                           and r["functions"] == str(n) and r["metric"] == "seconds"]  # fmt: skip
                    st = [r for r in ur if r["tool"] == tool and r["heap"] == str(heap)
                          and r["functions"] == str(n) and r["metric"] == "stall"]  # fmt: skip
                    if not sec:
                        cells.append("—")
                        continue
                    v = float(sec[0]["value"])
                    mark = "*" if "extrapolated" in sec[0]["note"] else ""
                    mark += " WRONG" if "WRONG" in sec[0]["note"] else ""
                    stall = f" / {float(st[0]['value']):.0f} ms" if st else ""
                    shown = (
                        f"{v * 1000:.2f} ms"
                        if v < 0.01
                        else f"{v * 1000:.0f} ms"
                        if v < 10
                        else f"{v:.0f} s"
                    )
                    cells.append(shown + mark + stall)
                held = [r for r in ur if r["tool"] == tool and r["heap"] == str(heap)
                        and r["metric"] == "held reference runs new code"]  # fmt: skip
                base = [r for r in ur if r["tool"] == tool and r["heap"] == str(heap)
                        and r["metric"] == "baseline stall"]  # fmt: skip
                body.append([peers.LABELS.get(tool, tool)] + cells + [
                    ("yes" if held and held[0]["value"] == "1" else "no") if held else "—",
                    f"{float(base[0]['value']):.0f} ms" if base else "—",
                ])  # fmt: skip
            table([f"heap {heap / 1e6:g} M: time / longest stall"] + [f"{n:,} functions" for n in sizes]
                  + ["held references see it", "stall, no update"], body)  # fmt: skip
    lr = [r for r in rows if r["section"] == "latency"]
    if lr:
        table(
            ["tool", "measure", "ms"],
            [[r["tool"], r["metric"], f"{float(r['value']):.0f}"] for r in lr],
        )
    tr = [r for r in rows if r["section"] == "transitions"]
    if tr:
        table(
            ["transition, 32 busy threads", "value"],
            [[r["metric"], f"{float(r['value']):.1f}"] for r in tr],
        )
    return "\n".join(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short run: smaller heaps, fewer rounds")
    ap.add_argument(
        "--smoke", action="store_true", help="every section, tiny (a smoke test, under a minute)"
    )
    ap.add_argument("--out", type=Path, help="where CSV and PNG go (default benchmarks/results)")
    ap.add_argument("--sections", default="calls,versions,update,latency,transitions")
    ap.add_argument(
        "--budget", type=float, help="seconds one update may take before it is extrapolated"
    )
    ap.add_argument("--tables", action="store_true", help="print --out's results as Markdown")
    args = ap.parse_args()
    if args.out is None:  # a smoke test's figures mean nothing: never over the real ones
        args.out = Path(tempfile.mkdtemp(prefix="lpb-smoke-")) if args.smoke else HERE / "results"
    if args.tables:
        print(tables(args.out))
        return 0
    sections = args.sections.split(",")
    smoke = args.smoke
    heaps = [200_000, 2_000_000] if args.quick else [200_000, 2_000_000, 6_000_000]
    sizes = [1, 100, 1000] if args.quick else [1, 100, 1000, 5000]
    budget = args.budget or (5.0 if args.quick else 120.0)
    if smoke:
        heaps, sizes, budget = [20_000], [1, 100], args.budget or 2.0
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"pylivepatch benchmarks on Python {PY}, {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.1f} at the start")  # fmt: skip
    t0 = time.monotonic()
    rows: list[Row] = []
    if "calls" in sections:
        rows += calls(args.quick, smoke)
    if "versions" in sections:
        rows += versions(args.quick, [sys.executable] if smoke else interpreters(), smoke)
    if "update" in sections:
        rows += update(args.quick, heaps, sizes, budget)
    if "latency" in sections:
        rows += latency(args.quick, smoke)
    if "transitions" in sections:
        rows += transitions(args.quick, smoke)
    rows = kept(args.out, sections) + rows
    write_csv(args.out, rows)
    made = plots(args.out, rows)
    print(f"\nwritten: {args.out / 'results.csv'}" + "".join(f", {m}" for m in made))
    print(f"{time.monotonic() - t0:.0f} s; load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
