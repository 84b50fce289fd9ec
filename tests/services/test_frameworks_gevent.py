"""gunicorn with gevent workers (``-k gevent``) under ``pylivepatch run``, under HTTP
load whose requests sleep cooperatively between two calls of a patched function, inside
another patched function: a load and a revert in transition mode never mix versions
within a request (a request suspended in old code is a call chain in flight:
engine/greenlets.py), every worker
answers with the new code after the load and the old after the revert, and no request
fails.

docs/frameworks.md, "gunicorn with gevent workers"."""

from __future__ import annotations

import sys

import pytest

from attach_support import GDB
from frameworks.pairs import load_and_revert_twice
from test_attach_services import attach_app, start
from test_services import GUNICORN, agents, free_port, run_service, serving, stop, wait_until

pytest.importorskip("gevent")
pytestmark = [
    pytest.mark.system,  # starts servers, gdb or namespaces: not in the fast lane
    pytest.mark.skipif(GUNICORN is None, reason="gunicorn is not installed"),
]

APP = """
    import os

    import gevent

    def version():
        return "v1"

    def handler():
        first = version()
        gevent.sleep(0.02)  # suspended here, in the middle of the call chain
        return f"{first},{version()}"

    def app(environ, start_response):
        body = f"{handler()} {os.getpid()}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
"""

FIX = """
    import pylivepatch as lp
    patch = lp.Patch("gevent-v2", consistency="transition")

    @patch.function("{m}gvapp:version")
    def version():
        return "v2"

    @patch.function("{m}gvapp:handler")
    def handler():
        import gevent

        first = version()
        gevent.sleep(0.02)
        return f"{first},{version()}"
"""


def test_gunicorn_gevent_transition_never_mixes_versions(lab):
    lab.module("gvapp", APP)
    port, app = free_port(), f"gv-{lab.prefix}".rstrip("_")
    server = run_service(lab, app, [
        str(GUNICORN), "-w", "2", "-k", "gevent", "-b", f"127.0.0.1:{port}",
        "--chdir", str(lab.root), f"{lab.name('gvapp')}:app",
    ])  # fmt: skip
    try:
        wait_until(lambda: len(agents(lab, app)) == 3, "the master and 2 workers")
        load_and_revert_twice(lab, port, app, FIX, "gevent-v2", 2)
    finally:
        stop(server)


@pytest.mark.skipif(
    GDB is None and sys.version_info < (3, 14), reason="attach needs gdb before 3.14"
)
def test_gunicorn_gevent_started_plainly_and_attached(lab):
    """The same gunicorn started without pylivepatch, then attached app-wide once gevent
    has patched the workers (the agent still serves on OS threads, with plain sockets)."""
    lab.module("gvapp", APP)
    port, app = free_port(), f"gva-{lab.prefix}".rstrip("_")
    server = start(lab, [
        str(GUNICORN), "-w", "2", "-k", "gevent", "-b", f"127.0.0.1:{port}",
        "--chdir", str(lab.root), f"{lab.name('gvapp')}:app",
    ])  # fmt: skip
    try:
        wait_until(lambda: serving(port), "listening")
        attach_app(lab, server.pid, app, 3, "auto")
        load_and_revert_twice(lab, port, app, FIX, "gevent-v2", 2)
    finally:
        stop(server)
