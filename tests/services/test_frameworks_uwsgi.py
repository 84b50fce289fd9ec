"""uWSGI (built from its sdist: PyPI has no wheels) with a master and 3 workers, which
its master forks in C: Python's at-fork hooks never run in them, and the agent starts
there through uWSGI's ``post_fork_hook`` (agent/cforks.py).

- Under ``pylivepatch run``: every worker has an agent, the fix loaded app-wide under
  HTTP load reaches every worker, a worker killed and respawned by the master comes
  back patched with an agent, the revert reaches every worker, no request fails but
  those the killed worker held; a program setting its own ``post_fork_hook``
  (``uwsgidecorators`` does) keeps the agent's.
- Attached to a plainly started master (``attach --app``): the same.
- A worker without an agent (the master alone attached) makes ``load --tree`` fail,
  naming it, and nothing changes anywhere.

docs/frameworks.md, "uWSGI"."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attach_support import GDB, target_env
from test_services import (
    FIX,
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

_BESIDE = Path(sys.executable).with_name("uwsgi")  # the venv's own (pip install uwsgi)
UWSGI = str(_BESIDE) if _BESIDE.exists() else None
pytestmark = [
    pytest.mark.system,  # starts servers, gdb or namespaces: not in the fast lane
    pytest.mark.skipif(
        UWSGI is None, reason="uwsgi is not installed in this venv (the frameworks extra)"
    ),
]

#: the app, with a post-fork hook of its own, set the way uwsgidecorators sets it
APP = (
    WSGI
    + """
    HOOKED = []

    def _mine():
        HOOKED.append(os.getpid())

    try:
        import uwsgi
    except ImportError:  # packed outside uWSGI
        pass
    else:
        uwsgi.post_fork_hook = _mine

    _app = app

    def app(environ, start_response):
        if environ.get("PATH_INFO") == "/hooked":
            body = f"{HOOKED} {os.getpid()}".encode()
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [body]
        return _app(environ, start_response)
"""
)


def command(lab, port: int) -> list[str]:
    """uWSGI as its docs start it: a master, 3 preforked workers, an HTTP socket."""
    return [
        str(UWSGI), "--master", "--processes", "3", "--http-socket", f"127.0.0.1:{port}",
        "--module", f"{lab.name('svcapp')}:app", "--pythonpath", str(lab.root),
        "--need-app", "--die-on-term", "--disable-logging",
    ]  # fmt: skip


def hooked(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/hooked", timeout=10) as r:
        return r.read().decode()


def test_uwsgi_under_run_every_worker_has_an_agent(lab):
    lab.write(f"{lab.name('svcapp')}.py", APP)
    port, app = free_port(), f"uw-{lab.prefix}".rstrip("_")
    server = subprocess.Popen(
        [sys.executable, "-m", "pylivepatch", "run", "--app", app, "--", *command(lab, port)],
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src")),
        cwd=lab.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    load = None
    try:
        wait_until(lambda: serving(port), "uWSGI listening")
        wait_until(lambda: len(agents(lab, app)) == 4, "the master and 3 workers with agents")
        # run turns on uWSGI's fork hooks, which the master's agent needs (fork_hazard)
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        assert b"UWSGI_PY_CALL_UWSGI_FORK_HOOKS=1" in environ
        # the program's own hook still runs in each worker, after the agent's
        mine, pid = hooked(port).rsplit(" ", 1)
        assert mine == f"[{pid}]"
        load = Load(port, threads=4)
        wait_until(lambda: len(load.workers_saying("v1", 0)) == 3, "answers from 3 workers")
        workers = load.workers_saying("v1", 0)
        assert workers | {server.pid} == set(agents(lab, app))
        exercise(lab, app, load, workers, expected_agents=4)
    finally:
        if load is not None:
            load.close()
        stop(server)


needs_attach = pytest.mark.skipif(
    GDB is None and sys.version_info < (3, 14), reason="gdb is not installed (.ci/run installs it)"
)


def start_plain(lab, port: int, fork_hooks: bool = True) -> subprocess.Popen[bytes]:
    """uWSGI started without pylivepatch; by default with --py-call-uwsgi-fork-hooks, which
    an agent in the master needs (docs/frameworks.md)."""
    env = target_env()
    env["PYTHONPATH"] = str(lab.root)
    hooks = ["--py-call-uwsgi-fork-hooks"] if fork_hooks else []
    return subprocess.Popen(
        command(lab, port) + hooks, env=env, cwd=lab.root,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


@needs_attach
def test_uwsgi_attached_every_worker_and_respawns(lab):
    """Started with --py-call-uwsgi-fork-hooks (as docs/frameworks.md says): the master
    takes Python's lock before each fork, so a worker it forks while the master's agent
    answers the test's requests starts (without it, one in two such workers hung)."""
    lab.write(f"{lab.name('svcapp')}.py", WSGI)
    port, app = free_port(), f"uwa-{lab.prefix}".rstrip("_")
    server = start_plain(lab, port)
    load = None
    try:
        wait_until(lambda: serving(port), "uWSGI listening")
        load = Load(port, threads=4)
        wait_until(lambda: len(load.workers_saying("v1", 0)) == 3, "answers from 3 workers")
        workers = load.workers_saying("v1", 0)
        out = cli("attach", str(server.pid), "--app", app, "--json", cwd=lab.root)
        assert out.returncode == 0, out.stdout + out.stderr
        assert set(agents(lab, app)) == workers | {server.pid}
        # a worker the attached master forks later gets its agent from the hook
        exercise(lab, app, load, workers, expected_agents=4)
    finally:
        if load is not None:
            load.close()
        stop(server)


@needs_attach
def test_uwsgi_worker_without_agent_fails_the_action_and_is_named(lab):
    """The master alone attached (no --tree): its workers, forked before, have no
    agent; an action on the master's tree refuses, names them, and changes nothing."""
    lab.write(f"{lab.name('svcapp')}.py", WSGI)
    port = free_port()
    server = start_plain(lab, port)
    try:
        wait_until(lambda: serving(port), "uWSGI listening")
        out = cli("attach", str(server.pid), "--json", cwd=lab.root)
        assert out.returncode == 0, out.stdout + out.stderr
        kids = [
            int(p)
            for p in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        ]
        assert len(kids) == 3
        (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
        out = cli("load", "fix.lpz", "--tree", str(server.pid), "--json", cwd=lab.root)
        assert out.returncode != 0, out.stdout + out.stderr
        for kid in kids:
            assert str(kid) in out.stdout + out.stderr, (kid, out.stdout + out.stderr)
        status = cli("status", "-p", str(server.pid), "--json", cwd=lab.root)
        assert "svc-v2" not in status.stdout, status.stdout
    finally:
        stop(server)


@needs_attach
def test_uwsgi_master_without_fork_hooks_is_refused_and_keeps_forking(lab):
    """A uWSGI master started without --py-call-uwsgi-fork-hooks: attach refuses it with
    ``fork-unsafe`` and starts no agent there (its thread would make the workers forked
    later hang); the workers forked since still start and serve."""
    lab.write(f"{lab.name('svcapp')}.py", WSGI)
    port = free_port()
    server = start_plain(lab, port, fork_hooks=False)
    load = None
    try:
        wait_until(lambda: serving(port), "uWSGI listening")
        load = Load(port, threads=4)
        wait_until(lambda: len(load.workers_saying("v1", 0)) == 3, "answers from 3 workers")
        out = cli("attach", str(server.pid), "--json", cwd=lab.root)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "fork-unsafe" in out.stdout + out.stderr, out.stdout + out.stderr
        assert "--py-call-uwsgi-fork-hooks" in out.stdout + out.stderr
        listed = cli("ps", "--json", cwd=lab.root)
        assert server.pid not in {p["pid"] for p in json.loads(listed.stdout or "[]")}
        seen, live = load.workers_saying("v1", 0), load.workers_saying("v1", 0)
        for _ in range(3):  # each replacement starts and answers
            victim = max(live)
            os.kill(victim, signal.SIGKILL)
            live.discard(victim)
            mark = time.monotonic()

            def replaced(mark: float = mark, seen: set[int] = seen) -> bool:
                return bool(load.workers_saying("v1", mark) - seen)

            wait_until(replaced, "the replacement answering")
            live |= load.workers_saying("v1", mark) - seen
            seen = seen | live
    finally:
        if load is not None:
            load.close()
        stop(server)
