"""Real servers started *without* pylivepatch — gunicorn (2 sync workers) and uvicorn (2
workers) — attached with ``pylivepatch attach --app NAME`` while under HTTP load, then
patched and reverted app-wide through the attached agents. A worker killed afterwards
comes back patched: gunicorn forks it from the attached master (its agent starts at the
fork), uvicorn spawns it with the app's variables that ``--app`` set in the master. No
request fails except those in flight on the killed worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from attach_support import GDB, target_env
from test_services import (
    ASGI,
    GUNICORN,
    WSGI,
    Load,
    agents,
    cli,
    exercise,
    free_port,
    serving,
    stop,
    wait_until,
)

pytestmark = [
    pytest.mark.system,  # starts servers, gdb or namespaces: not in the fast lane
    pytest.mark.skipif(
        GDB is None and sys.version_info < (3, 14),
        reason="gdb is not installed (.ci/run installs it)",
    ),
]


def start(lab, command: list[str]) -> subprocess.Popen[bytes]:
    """A service started the way it was last month: no pylivepatch anywhere."""
    env = target_env()
    env["PYTHONPATH"] = str(lab.root)
    return subprocess.Popen(
        command, env=env, cwd=lab.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


NEW = sys.version_info >= (3, 14)
#: how each method may enter a process (3.14+: auto is sys.remote_exec, then gdb)
WAYS = {
    "gdb": {"pending", "direct"},
    "auto": {"pending", "direct", "remote-exec"} if NEW else {"pending", "direct"},
    "remote-exec": {"remote-exec"},
}


def attach_app(lab, pid: int, app: str, expected: int, method: str) -> dict[int, str]:
    out = cli("attach", str(pid), "--app", app, "--json", "--method", method, cwd=lab.root)
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads(out.stdout)["results"]
    attached = {r["pid"]: r["result"] for r in results if r["result"] != "skipped"}
    assert len(attached) == expected, results
    assert set(attached.values()) <= WAYS[method], results
    assert set(agents(lab, app)) == set(attached)
    return attached


@pytest.mark.skipif(GUNICORN is None, reason="gunicorn is not installed")
@pytest.mark.parametrize("method", ["gdb", "auto", *(["remote-exec"] if NEW else [])])
def test_gunicorn_started_without_pylivepatch(lab, method):
    """Every process of gunicorn's runs bytecode at least once a second (the master's
    and the workers' select timeouts): sys.remote_exec alone serves them too."""
    lab.module("svcapp", WSGI)
    port, app = free_port(), f"agu-{lab.prefix}".rstrip("_")
    server = start(lab, [
        str(GUNICORN), "-w", "2", "-k", "sync", "-b", f"127.0.0.1:{port}",
        "--chdir", str(lab.root), f"{lab.name('svcapp')}:app",
    ])  # fmt: skip
    load = None
    try:
        wait_until(lambda: serving(port), "gunicorn listening")
        load = Load(port, threads=4)
        wait_until(lambda: len(load.workers_saying("v1", 0)) == 2, "answers from 2 workers")
        workers = load.workers_saying("v1", 0)
        attached = attach_app(lab, server.pid, app, expected=3, method=method)  # master, 2 workers
        assert workers | {server.pid} == set(attached)
        exercise(lab, app, load, workers, expected_agents=3)
    finally:
        if load is not None:
            load.close()
        stop(server)


@pytest.mark.parametrize("method", ["gdb", "auto"])
def test_uvicorn_started_without_pylivepatch(lab, method):
    """(Not --method remote-exec: multiprocessing's helper process, if there is one,
    blocks in a read for good and never runs bytecode.)"""
    uvicorn = pytest.importorskip("uvicorn")
    if tuple(int(x) for x in uvicorn.__version__.split(".")[:2]) < (0, 30):
        pytest.skip("uvicorn < 0.30 does not restart a dead worker")
    lab.module("svcapp", ASGI)
    port, app = free_port(), f"auv-{lab.prefix}".rstrip("_")
    server = start(lab, [
        sys.executable, "-m", "uvicorn", f"{lab.name('svcapp')}:app", "--workers", "2",
        "--host", "127.0.0.1", "--port", str(port), "--app-dir", str(lab.root),
        "--log-level", "warning",
    ])  # fmt: skip
    load = None
    try:
        wait_until(lambda: serving(port), "uvicorn listening")
        load = Load(port, threads=4)
        wait_until(lambda: len(load.workers_saying("v1", 0)) == 2, "answers from 2 workers")
        workers = load.workers_saying("v1", 0)
        # the supervisor, the workers, and multiprocessing's helper if it has one
        out = cli("attach", str(server.pid), "--app", app, "--json", "--method", method, cwd=lab.root)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        results = json.loads(out.stdout)["results"]
        attached = {r["pid"] for r in results if r["ok"] and r["result"] != "skipped"}
        assert {r["result"] for r in results if r["pid"] in attached} <= WAYS[method], results
        assert workers | {server.pid} <= attached
        assert os.getpid() not in attached
        exercise(lab, app, load, workers, expected_agents=len(attached))
    finally:
        if load is not None:
            load.close()
        stop(server)
