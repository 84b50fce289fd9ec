"""Attach: success rate and freeze, ours side by side with pyrasite's recipe.

For every interpreter here (CPython 3.10-3.13 under pyenv, 3.14 and 3.15 where
``.ci/cpython-sid`` installs them, and Debian's stripped /usr/bin/python3; found as the
tests find them) and every main-thread state of ``tests/attach_target.py``, a fresh
target is started, left to run, and entered either by ``pylivepatch attach`` or by the
recipe pyrasite uses (gdb with its defaults, then ``PyGILState_Ensure()``,
``PyRun_SimpleString(...)``, ``PyGILState_Release()`` on whatever thread gdb stopped)
delivering the same bootstrap. A trial succeeds when the agent answers a ping within
10 s; the target reports its own longest freeze, whether it is still alive and running
(heartbeat), and whether any of its checks went wrong. pyrasite's recipe is a measured
peer here, not code we ship.

    python benchmarks/bench_attach.py                # 3 trials per cell
    python benchmarks/bench_attach.py --trials 1 --quick
    python benchmarks/bench_attach.py --pythons 3.11,3.13,3.14,3.15 --recipes pylivepatch
    python benchmarks/bench_attach.py --csv benchmarks/results/attach.csv

On 3.14+ ``pylivepatch attach`` (method auto) queues the bootstrap with sys.remote_exec
and enters by gdb only if the main thread has not run it within half a second; the
``note`` column says which way it went in (``remote-exec``, ``pending``, ``direct``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from attach_support import MODES, Target, interpreters  # noqa: E402
from pylivepatch import Client, LivepatchError  # noqa: E402
from pylivepatch.agent import protocol  # noqa: E402
from pylivepatch.attach import attach, bootstrap  # noqa: E402

GDB_LIMIT = 15.0
AGENT_LIMIT = 10.0


def pyrasite_recipe(pid: int) -> tuple[bool, str]:
    """gdb with its defaults (every symbol loaded), three calls on the stopped thread."""
    directory = protocol.socket_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    library = bootstrap.library(directory)
    once = directory / f"bench-{pid}.once"  # the bootstrap runs if it can remove this
    once.write_bytes(b"")
    boot = bootstrap.render(
        channel=str(directory / "nobody-listens.sock"), fallback="/dev/null",
        library=str(library), socket_dir=str(directory), state_dir="", app="",
        public_pid=pid, once=str(once),
    )  # fmt: skip
    with tempfile.NamedTemporaryFile("wb", suffix=".py", delete=False) as fh:
        fh.write(boot)
    code = f'exec(open(\\"{fh.name}\\").read())'
    command = [
        "gdb", "-p", str(pid), "-batch",
        "-eval-command=call (void *) PyGILState_Ensure()",
        f'-eval-command=call (int) PyRun_SimpleString("{code}")',
        "-eval-command=call (void) PyGILState_Release($1)",
    ]  # fmt: skip
    gdb = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        gdb.wait(timeout=GDB_LIMIT)
        return True, ""
    except subprocess.TimeoutExpired:
        # only the gdb this trial started, by its pid (and its process group)
        os.killpg(gdb.pid, signal.SIGKILL)
        gdb.wait()
        return False, "gdb hung"
    finally:
        os.unlink(fh.name)
        once.unlink(missing_ok=True)


def trial(python: str, mode: str, recipe: str, tmp: Path) -> dict[str, object]:
    t = Target(tmp, mode, python=python)
    row: dict[str, object] = {"python": "", "mode": mode, "recipe": recipe}
    try:
        t.ready()
        time.sleep(0.5)
        started = time.monotonic()
        note = ""
        if recipe == "pylivepatch":
            try:
                done = attach(t.pid, timeout=AGENT_LIMIT)
                note = done.via
            except LivepatchError as exc:
                note = exc.code
        else:
            _, note = pyrasite_recipe(t.pid)
        up = None
        end = started + GDB_LIMIT + AGENT_LIMIT
        while time.monotonic() < end:
            try:
                Client(t.pid, timeout=1).ping()
                up = time.monotonic() - started
                break
            except LivepatchError:
                time.sleep(0.05)
        time.sleep(1.0)
        s = t.status()
        alive = t.proc.poll() is None and time.time() - float(s.get("beat", 0)) < 2.0
        row.update(
            python=s.get("python", ""), ok=up is not None and alive, agent_ms=round(up * 1000) if up else "",
            freeze_ms=s.get("max_gap_ms", ""), alive=alive, wrong=s.get("mismatches", ""), note=note,
        )  # fmt: skip
    finally:
        t.stop()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3.11 and Debian's only")
    parser.add_argument("--csv", type=Path, help="also write every trial here")
    parser.add_argument("--recipes", default="pylivepatch,pyrasite")
    parser.add_argument("--pythons", help="minor versions to run, e.g. 3.11,3.14 (default: all)")
    parser.add_argument("--modes", help=f"main-thread states (default: {','.join(MODES)})")
    args = parser.parse_args()
    pythons = dict(interpreters())
    if Path("/usr/bin/python3").exists():
        pythons["debian"] = "/usr/bin/python3"
    if args.quick:
        pythons = {k: v for k, v in pythons.items() if k in ("3.11", "debian")}
    if args.pythons:
        pythons = {k: v for k, v in pythons.items() if k in args.pythons.split(",")}
    modes = args.modes.split(",") if args.modes else list(MODES)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for _name, exe in sorted(pythons.items()):
            for mode in modes:
                for _ in range(args.trials):
                    for recipe in args.recipes.split(","):
                        row = trial(exe, mode, recipe, Path(tmp))
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print()
    print(f"{'python':<7} {'recipe':<12} {'state':<9} {'ok':>7} {'freeze median':>14} {'freeze max':>11} {'agent median':>13}")  # fmt: skip
    summary: dict[str, list[float]] = {}
    minors = sorted({".".join(str(r["python"]).split(".")[:2]) for r in rows}) + ["all"]
    cells = [
        (recipe, minor, mode)
        for recipe in args.recipes.split(",")
        for minor in minors
        for mode in [*modes, "all"]
    ]
    for recipe, minor, mode in cells:
        cell = [
            r
            for r in rows
            if r["recipe"] == recipe
            and (mode == "all" or r["mode"] == mode)
            and (minor == "all" or str(r["python"]).startswith(minor + "."))
        ]
        if not cell:
            continue
        ok = [r for r in cell if r["ok"]]
        freezes = [float(r["freeze_ms"]) for r in cell if r["freeze_ms"] != ""]
        agents = [float(r["agent_ms"]) for r in ok if r["agent_ms"] != ""]
        if mode == "all" and minor == "all":
            summary[recipe] = [
                len(ok) / len(cell),
                statistics.median(freezes) if freezes else 0,
            ]
        print(
            f"{minor:<7} {recipe:<12} {mode:<9} {len(ok):>3}/{len(cell):<3} "
            f"{statistics.median(freezes) if freezes else 0:>12.0f}ms "
            f"{max(freezes) if freezes else 0:>9.0f}ms "
            f"{statistics.median(agents) if agents else 0:>11.0f}ms"
        )
    if "pylivepatch" in summary and "pyrasite" in summary:
        ours, theirs = summary["pylivepatch"], summary["pyrasite"]
        print(
            f"\nsuccess: pylivepatch {ours[0]:.0%}, pyrasite's recipe {theirs[0]:.0%}; "
            f"median freeze ratio pylivepatch/pyrasite = {ours[1] / theirs[1]:.2f}"
            if theirs[1]
            else ""
        )


if __name__ == "__main__":
    main()
