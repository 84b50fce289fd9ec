"""A real gunicorn (4 sync workers) started under `pylivepatch run`: a payload loaded
to the whole app under HTTP load reaches every worker, a revert reaches every worker,
no request fails, and a worker killed and respawned by gunicorn comes back patched
(it is forked from the patched master)."""

from __future__ import annotations

# Loaded here, before client threads: a first lookup of the idna codec racing in several
# threads can leave it cached as unknown for the whole process (LookupError).
import encodings.idna  # noqa: F401
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.system  # starts servers, gdb or namespaces: not in the fast lane

pytest.importorskip("gunicorn")
SRC = str(Path(__file__).resolve().parents[2] / "src")
_BESIDE = Path(sys.executable).with_name("gunicorn")  # the venv's own, if any
GUNICORN = str(_BESIDE) if _BESIDE.exists() else shutil.which("gunicorn")

APP = """
    import os

    def version():
        return "v1"

    def app(environ, start_response):
        body = f"{version()} {os.getpid()}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
"""

FIX = """
    import pylivepatch as lp
    patch = lp.Patch("wsgi-v2", consistency="atomic")

    @patch.function("{m}wsgiapp:version")
    def version():
        return "v2"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pylivepatch", *args], cwd=cwd, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=SRC), timeout=120,
    )  # fmt: skip


def agents(lab, app: str) -> list[dict]:
    out = cli("ps", "--json", cwd=lab.root)
    return [p for p in json.loads(out.stdout) if p["app"] == app]


@pytest.mark.skipif(GUNICORN is None, reason="no gunicorn command")
def test_gunicorn_workers_patched_together_and_respawned_patched(lab):
    lab.module("wsgiapp", APP)
    port, app = free_port(), f"g-{lab.prefix}"
    server = subprocess.Popen(
        [sys.executable, "-m", "pylivepatch", "run", "--app", app, "--", str(GUNICORN), "-w", "4",
         "-b", f"127.0.0.1:{port}", "--chdir", str(lab.root), f"{lab.name('wsgiapp')}:app"],
        env=dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{lab.root}"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(500):
            if len(agents(lab, app)) == 5:  # the master and 4 workers
                break
            time.sleep(0.05)
        assert len(agents(lab, app)) == 5
        stop, answers, failures = threading.Event(), [], []

        def client():
            while not stop.is_set():
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
                        answers.append(r.read().decode().split())
                except Exception as exc:  # noqa: BLE001 - counted, must stay empty
                    failures.append((time.monotonic(), repr(exc)))

        clients = [threading.Thread(target=client) for _ in range(4)]
        for c in clients:
            c.start()
        (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
        out = cli("load", "fix.lpz", "--app", app, "--json", cwd=lab.root)
        assert out.returncode == 0, out.stdout + out.stderr
        assert len(json.loads(out.stdout)["processes"]) == 5
        time.sleep(0.3)
        mark = len(answers)
        time.sleep(0.5)
        after = answers[mark:]
        assert after and {v for v, _ in after} == {"v2"}, "every worker answers with the new code"
        # a worker killed and respawned by gunicorn comes back patched
        victim = int(after[-1][1])
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        for _ in range(500):
            pids = {a["pid"] for a in agents(lab, app)}
            if len(pids) == 5 and victim not in pids:
                break
            time.sleep(0.05)
        respawned_at = time.monotonic()
        time.sleep(0.3)
        mark = len(answers)
        time.sleep(0.5)
        assert {v for v, _ in answers[mark:]} == {"v2"}
        out = cli("revert", "wsgi-v2", "--app", app, cwd=lab.root)
        assert out.returncode == 0, out.stdout + out.stderr
        time.sleep(0.3)
        mark = len(answers)
        time.sleep(0.5)
        assert {v for v, _ in answers[mark:]} == {"v1"}, "every worker answers with the old code"
        stop.set()
        for c in clients:
            c.join(10)
        # only the request the killed worker was serving may fail
        assert [f for t, f in failures if not killed_at <= t <= respawned_at + 0.2] == []
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)
