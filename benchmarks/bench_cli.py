"""What the agent and the command line cost, measured side by side in one run.

    python benchmarks/bench_cli.py [--quick]

(a) ``pylivepatch load FILE -p PID`` from the shell to the payload applied in a live
    process (goal <= 150 ms), beside ``python -c pass`` (interpreter start), ``pylivepatch
    --help`` (start + CLI import) and the same load through ``Client(pid)`` in-process;
(b) ``pylivepatch load FILE --app NAME`` to 16 worker processes (goal <= 1 s), and the
    revert;
(c) an idle agent: CPU wake-ups of its thread and of the whole process over a few
    seconds (goal: none), and the resident memory of a process with and without one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
sys.path.insert(0, SRC)

from pylivepatch import Client  # noqa: E402
from pylivepatch.build.pack import pack  # noqa: E402

TARGET = "def price(x):\n    return x * 2\n"
FIX = """
import pylivepatch as lp
patch = lp.Patch("bench-fix", consistency="{mode}")

@patch.function("bench_shop:price")
def price(x):
    return x * 3
"""
PROGRAM = """
import sys, time
import bench_shop
print("ready", flush=True)
sys.stdin.readline()
"""


def env(tmp: Path, **more: str) -> dict[str, str]:
    return dict(
        os.environ, PYTHONPATH=os.pathsep.join([SRC, str(tmp)]),
        PYLIVEPATCH_STATE_DIR=str(tmp / "state"), **more,
    )  # fmt: skip


def start(tmp: Path, app: str, n: int, agent: bool = True) -> list[subprocess.Popen[str]]:
    procs = []
    for _ in range(n):
        cmd = [sys.executable, "-c", PROGRAM]
        if agent:
            cmd = [sys.executable, "-m", "pylivepatch", "run", "--app", app, "--", *cmd]
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=env(tmp), cwd=tmp)  # fmt: skip
        procs.append(p)
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    if agent:
        for p in procs:
            path = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    Client(p.pid, timeout=5).ping()
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    time.sleep(0.01)
            del path
    return procs


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        try:
            assert p.stdin is not None
            p.stdin.close()
            p.wait(10)
        except Exception:  # noqa: BLE001
            p.kill()


def timed(cmd: list[str], tmp: Path) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env(tmp), cwd=tmp, capture_output=True, text=True, timeout=120)
    dt = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(f"{cmd}: {out.stdout} {out.stderr}")
    return dt


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pylivepatch", *args]


def one_process(tmp: Path, rounds: int) -> None:
    (proc,) = start(tmp, "bench-one", 1)
    pid = str(proc.pid)
    rows: dict[str, list[float]] = {k: [] for k in ("python -c pass", "pylivepatch --help",
                                                    "Client(pid).load", "pylivepatch load -p")}  # fmt: skip
    try:
        data = (tmp / "fix.lpz").read_bytes()
        for _ in range(rounds):  # interleaved, so that load on the machine hits all alike
            rows["python -c pass"].append(timed([sys.executable, "-c", "pass"], tmp))
            rows["pylivepatch --help"].append(timed(cli("--help"), tmp))
            t0 = time.perf_counter()
            Client(proc.pid).load(data)
            rows["Client(pid).load"].append(time.perf_counter() - t0)
            Client(proc.pid).revert("bench-fix")
            Client(proc.pid).unload("bench-fix")
            rows["pylivepatch load -p"].append(timed(cli("load", "fix.lpz", "-p", pid), tmp))
            timed(cli("revert", "bench-fix", "-p", pid), tmp)
            timed(cli("unload", "bench-fix", "-p", pid), tmp)
    finally:
        stop([proc])
    base = statistics.median(rows["python -c pass"])
    print(f"(a) one live process, median of {rounds} rounds (goal: load <= 150 ms)")
    for name, values in rows.items():
        med = statistics.median(values)
        print(f"  {name:22} {med * 1000:7.1f} ms   x{med / base:4.1f} of interpreter start")


def many_processes(tmp: Path, n: int, rounds: int) -> None:
    procs = start(tmp, "bench-many", n)
    loads, reverts = [], []
    try:
        for _ in range(rounds):
            loads.append(timed(cli("load", "fix.lpz", "--app", "bench-many"), tmp))
            reverts.append(timed(cli("revert", "bench-fix", "--app", "bench-many"), tmp))
            timed(cli("unload", "bench-fix", "--app", "bench-many"), tmp)
    finally:
        stop(procs)
    print(f"(b) {n} processes of one app, median of {rounds} rounds (goal: load <= 1 s)")
    print(f"  pylivepatch load --app   {statistics.median(loads) * 1000:7.1f} ms  "
          f"({statistics.median(loads) / n * 1000:.1f} ms per process)")  # fmt: skip
    print(f"  pylivepatch revert --app {statistics.median(reverts) * 1000:7.1f} ms")


def _threads(pid: int) -> dict[str, tuple[int, int]]:
    """thread name -> (context switches, CPU ticks)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        name = (task / "comm").read_text().strip()
        status = (task / "status").read_text()
        switches = sum(int(line.split()[1]) for line in status.splitlines()
                       if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))  # fmt: skip
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        out[f"{name}:{task.name}"] = (switches, int(fields[11]) + int(fields[12]))
    return out


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def idle(tmp: Path, seconds: float) -> None:
    (with_agent,) = start(tmp, "bench-idle", 1)
    (without,) = start(tmp, "bench-idle", 1, agent=False)
    try:
        time.sleep(0.5)
        before = _threads(with_agent.pid)
        time.sleep(seconds)
        after = _threads(with_agent.pid)
        rss_with, rss_without = rss_kb(with_agent.pid), rss_kb(without.pid)
    finally:
        stop([with_agent, without])
    print(f"(c) an idle process with an agent, over {seconds:.0f} s (goal: no wake-ups)")
    for key in sorted(after):
        if key in before:
            ds = after[key][0] - before[key][0]
            dt = after[key][1] - before[key][1]
            print(f"  thread {key:28} {ds:4d} wake-ups  {dt:3d} CPU ticks")
    print(f"  resident memory: {rss_with / 1024:.1f} MB with the agent, {rss_without / 1024:.1f} MB "
          f"without: +{(rss_with - rss_without) / 1024:.1f} MB (goal: a few MB)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        root = Path(tmp)
        (root / "bench_shop.py").write_text(TARGET)
        (root / "fix.py").write_text(textwrap.dedent(FIX.format(mode="atomic")))
        sys.path.insert(0, str(root))
        (root / "fix.lpz").write_bytes(pack(root / "fix.py").data)
        one_process(root, 5 if args.quick else 15)
        many_processes(root, 16, 2 if args.quick else 5)
        idle(root, 2 if args.quick else 5)
        print(json.dumps({"python": sys.version.split()[0]}))


if __name__ == "__main__":
    main()
