"""Celery with its prefork pool and a real broker (redis-server, started by the test),
under ``pylivepatch run``: a task function patched app-wide while a stream of tasks
runs reaches every pool process, the pool processes Celery replaces after
``--max-tasks-per-child`` come up patched (billiard forks them from the patched main
process), the revert reaches every one, and no task is lost or fails.

docs/frameworks.md, "Celery"."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pylivepatch.control.targets import EXITED
from test_services import agents, cli, free_port, stop, wait_until

pytest.importorskip("celery")
pytest.importorskip("redis")
REDIS = shutil.which("redis-server")
pytestmark = [
    pytest.mark.system,  # starts servers, gdb or namespaces: not in the fast lane
    pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (.ci/run installs it)"),
]
SRC = str(Path(__file__).resolve().parents[2] / "src")

TASKS = """
    import os
    import time

    from celery import Celery

    app = Celery(__name__, broker=os.environ["BROKER"], backend=os.environ["BROKER"])

    def version():
        return "v1"

    def work(i):
        time.sleep(0.01)
        return [version(), os.getpid(), i]

    # the task runs the module's own function (patched in place: the task runs the new code)
    work_task = app.task(name=f"{__name__}.work")(work)
"""

FIX = """
    import pylivepatch as lp
    patch = lp.Patch("task-v2")

    @patch.function("{m}tasks:work")
    def work(i):
        import os
        import time
        time.sleep(0.01)
        return ["v2", os.getpid(), i]
"""


class Stream:
    """Client threads sending tasks and waiting for each result, until stopped."""

    def __init__(self, task, threads: int = 4) -> None:
        self.task = task
        self.stop = threading.Event()
        self.results: list[tuple[float, str, int]] = []
        self.failures: list[str] = []
        self.sent = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def run(self) -> None:
        deadline = time.monotonic() + 300
        while not self.stop.is_set() and time.monotonic() < deadline:
            with self.lock:
                self.sent += 1
                i = self.sent
            sent = time.monotonic()
            try:
                version, pid, echoed = self.task.delay(i).get(timeout=60)
                assert echoed == i
                self.results.append((sent, version, pid))
            except Exception as exc:  # noqa: BLE001 - counted, must stay empty
                self.failures.append(repr(exc))

    def since(self, mark: float) -> list[tuple[str, int]]:
        return [(v, pid) for t, v, pid in self.results if t >= mark]

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(70)


def settle(stream: Stream, expect: str, what: str, count: int = 40) -> set[int]:
    """From some moment on, every task returns ``expect``; the pool processes that ran them."""
    mark = time.monotonic()
    wait_until(lambda: len(stream.since(mark)) >= count, f"{what}: {count} tasks")
    seen = stream.since(mark)
    assert {v for v, _ in seen} == {expect}, (what, seen)
    return {pid for _, pid in seen}


def test_celery_prefork_task_patched_in_every_pool_process(lab, tmp_path):
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    redis = subprocess.Popen(
        [str(REDIS), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.environ["BROKER"] = broker
    worker = stream = None
    try:
        tasks = lab.module("tasks", TASKS)
        app = f"cel-{lab.prefix}".rstrip("_")
        worker = subprocess.Popen(
            [sys.executable, "-m", "pylivepatch", "run", "--app", app, "--",
             sys.executable, "-m", "celery", "-A", lab.name("tasks"), "worker", "--pool",
             "prefork", "--concurrency", "3", "--max-tasks-per-child", "5", "--loglevel",
             "warning", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            env=dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, str(lab.root)]), BROKER=broker),
            cwd=lab.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # the main process and its 3 pool processes
        wait_until(lambda: len(agents(lab, app)) >= 4, "the worker and its pool with agents")
        stream = Stream(tasks.work_task)
        before = settle(stream, "v1", "before load", count=20)
        (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
        out = cli("load", "fix.lpz", "--app", app, "--json", cwd=lab.root)
        assert out.returncode == 0, out.stdout + out.stderr
        results = json.loads(out.stdout)["processes"]
        # a pool process retired between the listing and the action has nothing to change
        assert all(r.endswith(("applied", EXITED)) for r in results.values()), results
        assert any(r.endswith("applied") for r in results.values()), results
        loaded = set(agents(lab, app))
        # 40 tasks at 5 per child in 3 processes: the pool was replaced at least once
        after = settle(stream, "v2", "after load", count=40)
        assert after - loaded, "pool processes forked after the load ran tasks, patched"
        for pid, applied in agents(lab, app).items():
            assert applied == ["task-v2"], (pid, applied)
        out = cli("revert", "task-v2", "--app", app, cwd=lab.root)
        assert out.returncode == 0, out.stdout + out.stderr
        settle(stream, "v1", "after revert", count=30)
        stream.close()
        assert stream.failures == [], stream.failures[:3]
        assert len(stream.results) == stream.sent, "every task sent returned its result"
        assert before
    finally:
        if stream is not None:
            stream.close()
        if worker is not None:
            # Celery's warm shutdown; then its pool processes are gone too
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
        stop(redis)
        os.environ.pop("BROKER", None)
