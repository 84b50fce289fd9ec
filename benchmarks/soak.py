"""A soak of real services under load: many apply/revert cycles, no failed request, no
request that mixes versions, flat memory.

    python benchmarks/soak.py                      # 10,000 cycles, gunicorn and uvicorn
    python benchmarks/soak.py --cycles 300 --warmup 3000 --server gunicorn

gunicorn (gthread, 4 workers) and uvicorn (2 workers) run under ``pylivepatch run`` on
127.0.0.1. A bounded load generator (a fixed number of keep-alive connections, each
capped in requests per second) asks every worker for a quote computed by two
cooperating functions, ``outer`` and ``inner``; each puts its version into the answer,
so an answer with ``outer=2 inner=1`` is a request that saw both versions. Meanwhile
one driver thread per process of the service applies and reverts a payload that
changes both functions, alternately in ``atomic`` and ``transition`` mode: one cycle is
one apply and one revert in every process. Resident memory of every process is read
at the end of the warm-up and every few cycles after it.

The warm-up must cover the process reaching its steady state. The engine's history
keeps the last 10,000 events (10 per cycle on average), so memory grows until about
1,000 cycles. After that, gunicorn workers on CPython 3.10 and 3.13 and uvicorn workers
on 3.11 still take one step of up to 0.55 MB somewhere before cycle 2,600, then stay
flat (docs/benchmarks.md (i)); the warm-up is therefore 3,000 cycles.

Exit status 0 when every request succeeded, none mixed versions and no worker's
resident memory grew by ``--max-growth`` (1 %) or more after the warm-up; the figures
are printed and, with ``--out DIR``, written as CSV (and PNG plots if matplotlib is
installed).
"""

from __future__ import annotations

import argparse
import csv
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)

from pylivepatch import Client, LivepatchError  # noqa: E402
from pylivepatch.agent import protocol  # noqa: E402
from pylivepatch.builder.pack import pack  # noqa: E402

# Between outer's own version and its call of inner the request sleeps (letting go of
# the GIL): a swap that is not atomic for the request lands there and shows as an
# answer that mixes versions (``--modes immediate`` shows them).
LOGIC = """
import time


def inner(n):
    return "1"


def outer(n):
    mine = "1"
    time.sleep(n)
    return f"outer={mine} inner={inner(n)}"
"""

# A process that hangs can be asked for every thread's stack (faulthandler writes it from
# the signal handler, even while a thread holds the GIL): the soak does so for a process
# whose action takes longer than HANG seconds.
DUMP = """
import faulthandler
import signal

faulthandler.register(signal.SIGRTMIN + 2, all_threads=True)
"""
DUMP_SIGNAL = signal.SIGRTMIN + 2
HANG = 20.0

WSGI = (
    LOGIC
    + DUMP
    + """

import os


def app(environ, start_response):
    body = f"{outer(0.001)} pid={os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""
)

ASGI = (
    LOGIC
    + DUMP
    + """

import os


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = f"{outer(0.001)} pid={os.getpid()}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""
)

FIX = """
import pylivepatch as lp

patch = lp.Patch("soak-fix", consistency="atomic")


@patch.function("{module}:inner")
def inner(n):
    return "2"


@patch.function("{module}:outer")
def outer(n):
    mine = "2"
    time.sleep(n)
    return f"outer={mine} inner={inner(n)}"
"""

PAYLOAD = "soak-fix"
_runs = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status(pid: int) -> dict[str, int]:
    """The numeric fields of /proc/PID/status (VmRSS in kB, Threads, ...)."""
    found = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            first = value.split()[:1]
            if first and first[0].isdigit():
                found[key] = int(first[0])
    except OSError:
        pass
    return found


def agents(app: str) -> list[int]:
    """Pids of the live processes of ``app`` that have an agent."""
    found = []
    directory = protocol.socket_dir()
    for path in sorted(directory.glob("*.sock")) if directory.is_dir() else []:
        try:
            info = Client(int(path.stem), timeout=5).ping()
        except (ValueError, LivepatchError):
            continue
        if info.get("app") == app:
            found.append(int(info["pid"]))
    return found


def wait_until(condition: Any, what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def serving(port: int) -> bool:
    """The server answers (agents start with the interpreter, before it listens)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/quote")
            return conn.getresponse().status == 200
        finally:
            conn.close()
    except OSError:
        return False


# --- the load generator --------------------------------------------------------------


@dataclass
class Load:
    """``connections`` threads, each one keep-alive connection (renewed every
    ``per_connection`` requests, so that the kernel spreads them over the workers), each
    at most ``rate`` requests per second, until stopped (never longer than ``limit`` s)."""

    port: int
    connections: int = 8
    rate: float = 100.0
    limit: float = 7200.0
    per_connection: int = 20  # requests before a new connection (spreads them over workers)
    stop: threading.Event = field(default_factory=threading.Event)
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    mixed: list[str] = field(default_factory=list)
    by_pid: dict[int, dict[str, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.threads = [
            threading.Thread(target=self.run, name=f"load-{i}", daemon=True)
            for i in range(self.connections)
        ]
        for t in self.threads:
            t.start()

    def run(self) -> None:
        period = 1.0 / self.rate if self.rate > 0 else 0.0
        deadline = time.monotonic() + self.limit
        conn: http.client.HTTPConnection | None = None
        next_at = time.monotonic()
        sent = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            if period:
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_at = max(next_at + period, time.monotonic() - 1.0)
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("GET", "/quote")
                response = conn.getresponse()
                body = response.read().decode()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {body[:80]}")
                sent += 1
                closing = response.getheader("connection", "").lower() == "close"
                if closing or sent % self.per_connection == 0:
                    conn.close()
                    conn = None
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                if conn is not None:
                    conn.close()
                    conn = None
                with self.lock:
                    self.failed.append(f"{time.time():.3f} {exc!r}")
                continue
            fields = dict(part.split("=", 1) for part in body.split())
            with self.lock:
                self.ok += 1
                counts = self.by_pid.setdefault(int(fields["pid"]), {"1": 0, "2": 0})
                if fields["outer"] != fields["inner"]:
                    self.mixed.append(body)
                else:
                    counts[fields["outer"]] = counts.get(fields["outer"], 0) + 1
        if conn is not None:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


# --- the drivers ----------------------------------------------------------------------


@dataclass
class Driver:
    """Applies and reverts the payload in one process, ``cycles`` times after
    ``warmup`` cycles, reading its resident memory as it goes."""

    pid: int
    data: bytes
    warmup: int
    cycles: int
    modes: tuple[str, ...] = ("atomic", "transition")
    samples: int = 20
    pauses_ns: list[int] = field(default_factory=list)
    rss: list[tuple[int, int]] = field(default_factory=list)  # (cycle, kB)
    threads: list[int] = field(default_factory=list)  # the process's threads, per rss sample
    error: str | None = None
    done: int = 0
    seconds: float = 0.0
    since: float = 0.0  # time.monotonic() at the start of the current cycle
    dumped: bool = False

    def run(self) -> None:
        try:
            # one kept connection, as a controller would hold: the agent serves all
            # the cycles with one thread instead of starting one per request
            with Client(self.pid, timeout=120) as client:
                client.upload(PAYLOAD, self.data)
                total = self.warmup + self.cycles
                every = max(1, self.cycles // self.samples)
                t0 = time.perf_counter()
                for n in range(total):
                    mode = self.modes[n % len(self.modes)]
                    self.since = time.monotonic()
                    a = client.apply(PAYLOAD, consistency=mode, timeout=60)
                    r = client.revert(PAYLOAD, consistency=mode, timeout=60)
                    if n >= self.warmup:
                        self.pauses_ns += [a.pause_ns, r.pause_ns]
                        k = n - self.warmup
                        if k % every == 0 or k == self.cycles - 1:
                            self.sample(k + 1)
                    elif n == self.warmup - 1:
                        self.sample(0)
                    self.done = n + 1
                self.seconds = time.perf_counter() - t0
                client.unload(PAYLOAD)
        except Exception as exc:  # noqa: BLE001 - reported with the pid
            self.error = f"process {self.pid}: {exc!r}"
        finally:
            self.since = 0.0

    def sample(self, cycle: int) -> None:
        now = status(self.pid)
        self.rss.append((cycle, now.get("VmRSS", 0)))
        self.threads.append(now.get("Threads", 0))


# --- one service ---------------------------------------------------------------------


def _executable(name: str) -> str | None:
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


def service_command(server: str, module: str, port: int, root: Path) -> list[str]:
    if server == "gunicorn":
        gunicorn = _executable("gunicorn")
        if gunicorn is None:
            raise RuntimeError("gunicorn is not installed (pip install -e '.[bench]')")
        return [
            gunicorn, "-w", "4", "-k", "gthread", "--threads", "4", "--keep-alive", "30",
            "-b", f"127.0.0.1:{port}", "--chdir", str(root), f"{module}:app",
        ]  # fmt: skip
    return [
        sys.executable, "-m", "uvicorn", f"{module}:app", "--workers", "2", "--host",
        "127.0.0.1", "--port", str(port), "--app-dir", str(root), "--log-level", "warning",
    ]  # fmt: skip


@dataclass
class Outcome:
    server: str
    processes: int
    workers: int
    cycles: int
    warmup: int
    seconds: float
    requests: int
    failed: list[str]
    mixed: list[str]
    errors: list[str]
    pause_p50_us: float
    pause_p99_us: float
    pause_max_us: float
    growth: dict[int, float]  # worker pid -> growth after warm-up, %
    rss: dict[int, list[tuple[int, int]]]
    answered: dict[int, dict[str, int]]
    log_tail: list[str] = field(default_factory=list)  # the server's own output
    threads: dict[int, list[int]] = field(default_factory=dict)  # per rss sample

    @property
    def max_growth(self) -> float:
        return max(self.growth.values(), default=0.0)

    def passed(self, max_growth: float) -> bool:
        return (
            not self.failed
            and not self.mixed
            and not self.errors
            and self.requests > 0
            and bool(self.growth)
            and self.max_growth < max_growth
        )

    def summary(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "processes": self.processes,
            "workers": self.workers,
            "cycles": self.cycles,
            "warmup": self.warmup,
            "seconds": round(self.seconds, 1),
            "requests": self.requests,
            "failed": len(self.failed),
            "mixed": len(self.mixed),
            "pause_p50_us": round(self.pause_p50_us, 1),
            "pause_p99_us": round(self.pause_p99_us, 1),
            "pause_max_us": round(self.pause_max_us, 1),
            "max_rss_growth_pct": round(self.max_growth, 3),
        }


def _log_tail(text: str) -> list[str]:
    """The server's last lines, and every stack that faulthandler wrote (a crash, or a
    hang the soak asked about)."""
    lines = text.splitlines()
    marks = ("Fatal Python error", "Current thread", "Thread 0x", '  File "', "Stack (most")
    return [line for line in lines[:-40] if line.startswith(marks)] + lines[-40:]


def percentile(values: list[int], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def soak(
    server: str,
    cycles: int,
    warmup: int,
    connections: int = 8,
    rate: float = 100.0,
    workers_only: bool = False,
    modes: tuple[str, ...] = ("atomic", "transition"),
    log: Any = print,
) -> Outcome:
    """Start ``server`` under ``pylivepatch run``, load it, cycle the payload, stop it
    (``workers_only``: cycle only the processes that answer requests, not the master)."""
    with tempfile.TemporaryDirectory(prefix="lp-soak-") as tmp:
        root = Path(tmp)
        module = f"soak_{server}_{os.getpid()}_{next(_runs)}"
        (root / f"{module}.py").write_text(WSGI if server == "gunicorn" else ASGI)
        (root / "fix.py").write_text(textwrap.dedent(FIX).replace("{module}", module))
        sys.path.insert(0, tmp)
        try:
            data = pack(root / "fix.py").data
        finally:
            sys.path.remove(tmp)
            sys.modules.pop(module, None)  # pack imported it to fingerprint it
        port, app = free_port(), f"soak-{server}-{os.getpid()}"
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([SRC, tmp]),
            PYLIVEPATCH_STATE_DIR=str(root / "state"),
            PYTHONFAULTHANDLER="1",  # a crash shows every thread's stack in the server's log
        )
        server_log = (root / "server.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "pylivepatch", "run", "--app", app, "--",
             *service_command(server, module, port, root)],
            env=env, cwd=root, stdout=server_log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        load: Load | None = None
        try:
            expected = 5 if server == "gunicorn" else 3
            wait_until(lambda: len(agents(app)) >= expected, f"{server}: agents", 90)
            wait_until(lambda: serving(port), f"{server}: listening", 90)
            load = Load(port, connections=connections, rate=rate)
            load.start()
            workers_expected = 4 if server == "gunicorn" else 2
            wait_until(
                lambda: len(load.by_pid) >= workers_expected, f"{server}: answers of every worker"
            )
            workers = sorted(load.by_pid)
            pids = workers if workers_only else agents(app)
            log(
                f"{server}: {len(pids)} processes with an agent, workers {workers}; "
                f"{warmup} warm-up + {cycles} cycles each"
            )
            drivers = [Driver(pid, data, warmup, cycles, modes) for pid in pids]
            threads = [threading.Thread(target=d.run, name=f"driver-{d.pid}") for d in drivers]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                time.sleep(5)
                for d in drivers:  # a hung process: ask it for its threads' stacks
                    if d.since and not d.dumped and time.monotonic() - d.since > HANG:
                        d.dumped = True
                        log(f"  {server}: process {d.pid} hangs; its stacks go to the log")
                        try:
                            os.kill(d.pid, DUMP_SIGNAL)
                        except ProcessLookupError:
                            pass
                done = min(d.done for d in drivers)
                errors = [d.error for d in drivers if d.error]
                log(
                    f"  {server}: {done}/{warmup + cycles} cycles, {load.ok} requests, "
                    f"{len(load.failed)} failed, {len(load.mixed)} mixed, "
                    f"{time.perf_counter() - t0:.0f} s" + (f"; errors: {errors}" if errors else ""),
                )
            seconds = time.perf_counter() - t0
            load.close()
            pauses = [p for d in drivers for p in d.pauses_ns]
            growth = {}
            for d in drivers:
                if d.pid in load.by_pid and d.rss:
                    base, last = d.rss[0][1], d.rss[-1][1]
                    growth[d.pid] = (last - base) / base * 100 if base else 0.0
            return Outcome(
                server=server,
                processes=len(pids),
                workers=len(workers),
                cycles=cycles,
                warmup=warmup,
                seconds=seconds,
                requests=load.ok,
                failed=load.failed,
                mixed=load.mixed,
                errors=[d.error for d in drivers if d.error],
                pause_p50_us=statistics.median(pauses) / 1e3 if pauses else 0.0,
                pause_p99_us=percentile(pauses, 0.99) / 1e3,
                pause_max_us=max(pauses, default=0) / 1e3,
                growth=growth,
                rss={d.pid: d.rss for d in drivers},
                threads={d.pid: d.threads for d in drivers},
                answered={pid: dict(v) for pid, v in load.by_pid.items()},
                log_tail=_log_tail((root / "server.log").read_text(errors="replace")),
            )
        finally:
            if load is not None:
                load.close()
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            server_log.close()


def write(out: Path, outcomes: list[Outcome]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "soak_summary.csv").open("w", newline="") as f:
        rows = [o.summary() for o in outcomes]
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with (out / "soak_rss.csv").open("w", newline="") as f:
        w2 = csv.writer(f)
        w2.writerow(["server", "pid", "worker", "cycle", "rss_kb", "threads"])
        for o in outcomes:
            for pid, samples in o.rss.items():
                threads = o.threads.get(pid, [])
                for i, (cycle, kb) in enumerate(samples):
                    n = threads[i] if i < len(threads) else ""
                    w2.writerow([o.server, pid, pid in o.growth, cycle, kb, n])
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(outcomes), figsize=(6 * len(outcomes), 4), squeeze=False)
    for ax, o in zip(axes[0], outcomes, strict=True):
        for pid, samples in o.rss.items():
            if not samples:
                continue
            base = samples[0][1]
            kind = "worker" if pid in o.growth else "master/supervisor"
            ax.plot(
                [c for c, _ in samples],
                [(kb - base) / base * 100 for _, kb in samples],
                label=f"{kind} {pid}",
            )
        ax.axhline(1.0, color="red", linestyle="--", linewidth=1, label="1 % bound")
        ax.set_title(f"{o.server}: resident memory after the warm-up")
        ax.set_xlabel("apply/revert cycles after the warm-up")
        ax.set_ylabel("growth since the warm-up (%)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "soak_rss.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=10_000, help="cycles after the warm-up")
    ap.add_argument("--warmup", type=int, default=3_000, help="cycles before memory is read")
    ap.add_argument("--server", choices=["gunicorn", "uvicorn", "both"], default="both")
    ap.add_argument("--connections", type=int, default=8, help="keep-alive connections")
    ap.add_argument("--rate", type=float, default=100.0, help="requests/s cap per connection")
    ap.add_argument("--max-growth", type=float, default=1.0, help="%% RSS growth allowed")
    ap.add_argument(
        "--modes", default="atomic,transition",
        help="consistency modes, alternated (immediate: no consistency, shows mixed answers)",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, help="directory for CSV and PNG")
    args = ap.parse_args(argv)
    servers = ["gunicorn", "uvicorn"] if args.server == "both" else [args.server]
    outcomes = []
    for server in servers:
        outcomes.append(
            soak(
                server,
                args.cycles,
                args.warmup,
                args.connections,
                args.rate,
                modes=tuple(args.modes.split(",")),
                log=print,
            )  # fmt: skip
        )
    ok = True
    print()
    for o in outcomes:
        passed = o.passed(args.max_growth)
        ok &= passed
        print(json.dumps({**o.summary(), "passed": passed}))
        for pid, g in sorted(o.growth.items()):
            counts = o.threads.get(pid) or [0]
            print(
                f"  worker {pid}: RSS {o.rss[pid][0][1]} -> {o.rss[pid][-1][1]} kB "
                f"({g:+.2f} %), threads {min(counts)}-{max(counts)}"
            )
        for line in o.failed[:5] + o.mixed[:5] + o.errors[:5]:
            print(f"  {line}")
        if not passed:
            print("  the server's last lines:", *o.log_tail, sep="\n    ")
    if args.out:
        write(args.out, outcomes)
        print(f"written: {args.out}/soak_summary.csv, soak_rss.csv, soak_rss.png")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
