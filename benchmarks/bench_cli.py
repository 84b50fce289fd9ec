"""What the agent and the command line cost, measured side by side in one run.

    python benchmarks/bench_cli.py [--quick]

(a) ``pylivepatch load FILE -p PID`` from the shell to the payload applied in a live
    process started by the benchmark (goal <= 150 ms; each load is reverted and
    unloaded), beside ``python -c pass`` (interpreter start) and ``pylivepatch --help``
    (start + parser), rounds interleaved, in two settings: bytecode cached (as pip
    installs a package: its .pyc files written at install) and no bytecode written
    (``PYTHONDONTWRITEBYTECODE=1``, a source checkout run as CI runs it: every module of
    pylivepatch is compiled at every start); the load with its table drawn by rich (as
    on a terminal when the ``cli`` extra is installed), when rich is; and
    ``Client(pid).load`` from a running Python, which pays no start-up;
(b) ``pylivepatch load FILE --app NAME`` to 16 worker processes (goal <= 1 s), and the
    revert;
(c) an idle agent: CPU wake-ups of its threads over a few seconds (goal: none);
(d) an idle agent's memory (goal <= 3 MB): a plain idle Python process beside the same
    with an agent (``pylivepatch run --app``, ``pylivepatch.start()``), the floor any
    agent pays (a thread blocked in ``accept`` on a Unix socket, with the modules that
    takes), from /proc/PID/smaps_rollup (RSS; PSS; USS = Private_Clean + Private_Dirty,
    what the process alone holds); and where an agent's Python allocations go
    (tracemalloc, by the line of pylivepatch that led to them: its imports).
"""

from __future__ import annotations

import argparse
import importlib.util
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
from pylivepatch.builder.pack import pack  # noqa: E402

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
GOAL_LOAD_MS = 150.0
#: load -p with its table drawn by rich, as on a terminal when the cli extra is installed
RICH = "load -p, rich table"
GOAL_AGENT_MB = 3.0


def env(tmp: Path, bytecode: str = "as-is", **more: str) -> dict[str, str]:
    """The environment of a process of the benchmark. ``bytecode``: ``cached`` (.pyc
    files read from and written to a directory of this run, as an installed package
    has them), ``none`` (``PYTHONDONTWRITEBYTECODE=1``: modules without a .pyc are
    compiled at every start), ``as-is`` (as this benchmark was started)."""
    e = dict(
        os.environ, PYTHONPATH=os.pathsep.join([SRC, str(tmp)]),
        PYLIVEPATCH_STATE_DIR=str(tmp / "state"), XDG_RUNTIME_DIR=str(tmp / "run"),
    )  # fmt: skip
    e.pop("PYLIVEPATCH_SOCKET_DIR", None)
    if bytecode == "cached":
        e.pop("PYTHONDONTWRITEBYTECODE", None)
        e["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    elif bytecode == "none":
        e.pop("PYTHONPYCACHEPREFIX", None)
        e["PYTHONDONTWRITEBYTECODE"] = "1"
    e.update(more)
    return e


def start(tmp: Path, app: str, n: int, agent: bool = True) -> list[subprocess.Popen[str]]:
    procs = []
    for _ in range(n):
        cmd = [sys.executable, "-c", PROGRAM]
        if agent:
            cmd = [sys.executable, "-m", "pylivepatch", "run", "--app", app, "--", *cmd]
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=env(tmp, "cached"), cwd=tmp)  # fmt: skip
        procs.append(p)
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    if agent:
        for p in procs:
            deadline = time.monotonic() + 30
            while True:
                try:
                    Client(p.pid, timeout=5).ping()
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
    return procs


def stop(procs: list[subprocess.Popen[str]]) -> None:
    """End the processes this benchmark started: close their stdin (they exit), and
    kill one that does not, by its own Popen."""
    for p in procs:
        try:
            assert p.stdin is not None
            p.stdin.close()
            p.wait(10)
        except Exception:  # noqa: BLE001
            p.kill()
            p.wait(10)


def timed(cmd: list[str], tmp: Path, bytecode: str = "as-is", **more: str) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env(tmp, bytecode, **more), cwd=tmp, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    dt = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(f"{cmd}: {out.stdout} {out.stderr}")
    return dt


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pylivepatch", *args]


def one_process(tmp: Path, rounds: int) -> dict[str, float]:
    (proc,) = start(tmp, "bench-one", 1)
    pid = str(proc.pid)
    settings = {"cached": "bytecode cached (installed)",
                "none": "no bytecode written (PYTHONDONTWRITEBYTECODE=1)"}  # fmt: skip
    rows: dict[tuple[str, str], list[float]] = {}
    inproc: list[float] = []
    rich = importlib.util.find_spec("rich") is not None
    try:
        data = (tmp / "fix.lpz").read_bytes()
        for bytecode in settings:  # once each, unmeasured: the cache is written
            timed(cli("--help"), tmp, bytecode)
        for _ in range(rounds):  # interleaved, so that load on the machine hits all alike
            for bytecode in settings:
                for name, cmd in (("python -c pass", [sys.executable, "-c", "pass"]),
                                  ("pylivepatch --help", cli("--help")),
                                  ("pylivepatch load -p", cli("load", "fix.lpz", "-p", pid))):  # fmt: skip
                    rows.setdefault((bytecode, name), []).append(timed(cmd, tmp, bytecode))
                timed(cli("revert", "bench-fix", "-p", pid), tmp, bytecode)
                timed(cli("unload", "bench-fix", "-p", pid), tmp, bytecode)
                if bytecode == "cached" and rich:  # the table as a terminal shows it
                    rows.setdefault((bytecode, RICH), []).append(
                        timed(
                            cli("load", "fix.lpz", "-p", pid), tmp, bytecode, PYLIVEPATCH_RICH="1"
                        )
                    )
                    timed(cli("revert", "bench-fix", "-p", pid), tmp, bytecode)
                    timed(cli("unload", "bench-fix", "-p", pid), tmp, bytecode)
            t0 = time.perf_counter()
            Client(proc.pid).load(data)
            inproc.append(time.perf_counter() - t0)
            Client(proc.pid).revert("bench-fix")
            Client(proc.pid).unload("bench-fix")
    finally:
        stop([proc])
    print(f"(a) one live process, median of {rounds} interleaved rounds "
          f"(goal: load -p <= {GOAL_LOAD_MS:.0f} ms)")  # fmt: skip
    if (ROOT / "src" / "pylivepatch" / "__pycache__").is_dir():
        print("  note: src/pylivepatch/__pycache__ exists: 'no bytecode written' reads it")
    out: dict[str, float] = {}
    for bytecode, label in settings.items():
        base = statistics.median(rows[(bytecode, "python -c pass")])
        print(f"  {label}")
        for name in ("python -c pass", "pylivepatch --help", "pylivepatch load -p", RICH):
            if (bytecode, name) not in rows:
                continue
            values = rows[(bytecode, name)]
            med = statistics.median(values)
            print(f"    {name:22} {med * 1000:7.1f} ms  (min {min(values) * 1000:6.1f})  "
                  f"x{med / base:4.1f} of python -c pass, +{(med - base) * 1000:5.1f} ms")  # fmt: skip
            out[f"{bytecode} {name}"] = med * 1000
        load = statistics.median(rows[(bytecode, "pylivepatch load -p")]) * 1000
        verdict = "met" if load <= GOAL_LOAD_MS else "NOT met"
        print(f"    load -p <= {GOAL_LOAD_MS:.0f} ms: {verdict} ({load:.1f} ms)")
    print(f"  Client(pid).load in-process  {statistics.median(inproc) * 1000:7.1f} ms")
    return out


def many_processes(tmp: Path, n: int, rounds: int) -> None:
    procs = start(tmp, "bench-many", n)
    loads, reverts = [], []
    try:
        for _ in range(rounds):
            loads.append(timed(cli("load", "fix.lpz", "--app", "bench-many"), tmp, "cached"))
            reverts.append(timed(cli("revert", "bench-fix", "--app", "bench-many"), tmp, "cached"))
            timed(cli("unload", "bench-fix", "--app", "bench-many"), tmp, "cached")
    finally:
        stop(procs)
    print(f"(b) {n} processes of one app, median of {rounds} rounds, bytecode cached "
          "(goal: load <= 1 s)")  # fmt: skip
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


def idle(tmp: Path, seconds: float) -> None:
    (with_agent,) = start(tmp, "bench-idle", 1)
    try:
        time.sleep(0.5)
        before = _threads(with_agent.pid)
        time.sleep(seconds)
        after = _threads(with_agent.pid)
    finally:
        stop([with_agent])
    print(f"(c) an idle process with an agent, over {seconds:.0f} s (goal: no wake-ups)")
    for key in sorted(after):
        if key in before:
            ds = after[key][0] - before[key][0]
            dt = after[key][1] - before[key][1]
            print(f"  thread {key:28} {ds:4d} wake-ups  {dt:3d} CPU ticks")


# --- (d) memory -----------------------------------------------------------------------

IDLE = "import sys\nprint('ready', flush=True)\nsys.stdin.readline()\n"
#: what any agent holds at least: a thread blocked in accept on a Unix socket, and the
#: stdlib modules that takes (socket, threading) and its protocol needs (json)
FLOOR = """
import json, os, socket, threading
path = os.path.join(os.environ["XDG_RUNTIME_DIR"], f"floor-{os.getpid()}.sock")
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
s.listen(64)
threading.Thread(target=s.accept, daemon=True).start()
os.unlink(path)
"""
#: where an agent's Python allocations go: each block is charged to the line of
#: pylivepatch's own code that led to it (an ``import`` statement, for what a module
#: costs with everything it imports), found from the innermost frame outward
TRACE = """
import sys, tracemalloc
tracemalloc.start(100)
import pylivepatch
pylivepatch.start(sys.argv[1] or None)
snap = tracemalloc.take_snapshot()
import json, linecache, os  # not before: json is one of the agent's imports
root = os.path.dirname(pylivepatch.__file__) + os.sep
by, total = {}, 0
for trace in snap.traces:
    total += trace.size
    where = "elsewhere (the interpreter, the script)"
    for frame in reversed(trace.traceback):  # most recent first
        if frame.filename.startswith(root):
            line = linecache.getline(frame.filename, frame.lineno).strip()
            where = f"{frame.filename[len(root):]}:{frame.lineno}  {line}"
            break
    by[where] = by.get(where, 0) + trace.size
top = sorted(by.items(), key=lambda kv: -kv[1])[:10]
print(json.dumps({"total": total, "lines": top}))
"""


def _memory(pid: int) -> dict[str, int]:
    """kB: Rss, Pss and USS (Private_Clean + Private_Dirty) of a process."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            fields[parts[0].rstrip(":")] = int(parts[1])
    return {"RSS": fields["Rss"], "PSS": fields["Pss"],
            "USS": fields["Private_Clean"] + fields["Private_Dirty"]}  # fmt: skip


def _idle_memory(tmp: Path, cmd: list[str], **more: str) -> dict[str, int]:
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env=env(tmp, "cached", **more), cwd=tmp)  # fmt: skip
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # the agent's thread is in accept
        return _memory(p.pid)
    finally:
        stop([p])


def memory(tmp: Path, n: int) -> dict[str, float]:
    (tmp / "run").mkdir(mode=0o700, exist_ok=True)
    py = sys.executable
    cases = {
        "plain python (baseline)": ([py, "-c", IDLE], {}),
        "floor: a thread in accept": ([py, "-c", FLOOR + IDLE], {}),
        "pylivepatch run --app": (
            [py, "-m", "pylivepatch", "run", "--app", "bench-mem", "--", py, "-c", IDLE],
            {},
        ),
        "pylivepatch.start()": (
            [py, "-c", "import pylivepatch; pylivepatch.start()\n" + IDLE],
            {},
        ),
        "start(), no XDG_RUNTIME_DIR": (
            [py, "-c", "import pylivepatch; pylivepatch.start()\n" + IDLE],
            {"XDG_RUNTIME_DIR": "", "TMPDIR": str(tmp)},  # the socket in TMPDIR/pylivepatch-UID
        ),
    }
    for cmd, more in cases.values():  # once each, unmeasured: the bytecode cache is written
        _idle_memory(tmp, cmd, **more)
    samples: dict[str, list[dict[str, int]]] = {name: [] for name in cases}
    for _ in range(n):  # interleaved
        for name, (cmd, more) in cases.items():
            samples[name].append(_idle_memory(tmp, cmd, **more))
    med = {name: {k: statistics.median(s[k] for s in runs) for k in ("RSS", "PSS", "USS")}
           for name, runs in samples.items()}  # fmt: skip
    base = med["plain python (baseline)"]
    print(f"(d) an idle process's memory, median of {n} processes each, bytecode cached "
          f"(goal: an agent adds <= {GOAL_AGENT_MB:.0f} MB)")  # fmt: skip
    print(f"  {'process':30} {'RSS':>8} {'PSS':>8} {'USS':>8}   added to the baseline")
    out: dict[str, float] = {}
    for name, m in med.items():
        added = "" if m is base else "   +" + "  +".join(
            f"{(m[k] - base[k]) / 1024:.2f} {k}" for k in ("RSS", "PSS", "USS"))  # fmt: skip
        print(f"  {name:30} " + " ".join(f"{m[k] / 1024:6.2f} M" for k in ("RSS", "PSS", "USS"))
              + added)  # fmt: skip
        if m is not base:
            out[name] = (m["USS"] - base["USS"]) / 1024
    worst = max(out["pylivepatch run --app"], out["pylivepatch.start()"])
    verdict = "met" if worst <= GOAL_AGENT_MB else "NOT met"
    print(f"  an agent adds <= {GOAL_AGENT_MB:.0f} MB (USS): {verdict} (+{worst:.2f} MB; the floor "
          f"alone +{out['floor: a thread in accept']:.2f} MB)")  # fmt: skip
    for app in ("", "bench-mem"):
        traced = subprocess.run([py, "-c", TRACE, app], env=env(tmp, "cached"), cwd=tmp,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        if traced.returncode:
            raise RuntimeError(traced.stderr)
        doc = json.loads(traced.stdout.splitlines()[-1])
        what = f"start({app!r})" if app else "start()"
        print(f"  tracemalloc, import pylivepatch; {what}: {doc['total'] / 1024:.0f} kB allocated "
              "by Python, by the line of pylivepatch that led to it:")  # fmt: skip
        for where, size in doc["lines"]:
            print(f"    {size / 1024:7.1f} kB  {where[:100]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        root = Path(tmp)
        (root / "run").mkdir(mode=0o700)
        os.environ["XDG_RUNTIME_DIR"] = str(root / "run")  # Client looks where agents are
        os.environ.pop("PYLIVEPATCH_SOCKET_DIR", None)
        (root / "bench_shop.py").write_text(TARGET)
        (root / "fix.py").write_text(textwrap.dedent(FIX.format(mode="atomic")))
        sys.path.insert(0, str(root))
        (root / "fix.lpz").write_bytes(pack(root / "fix.py").data)
        times = one_process(root, 5 if args.quick else 15)
        many_processes(root, 16, 2 if args.quick else 5)
        idle(root, 2 if args.quick else 5)
        mem = memory(root, 3 if args.quick else 7)
        print(json.dumps({"python": sys.version.split()[0],
                          "ms": {k: round(v, 1) for k, v in times.items()},
                          "agent_uss_mb": {k: round(v, 2) for k, v in mem.items()}}))  # fmt: skip


if __name__ == "__main__":
    main()
