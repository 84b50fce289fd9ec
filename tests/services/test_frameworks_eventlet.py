"""eventlet's own WSGI server (``eventlet.monkey_patch()`` then ``eventlet.wsgi.server``,
as eventlet's documentation starts one) under ``pylivepatch run``, under HTTP load whose
requests sleep cooperatively between two calls of a patched function, inside another
patched function: a load and a revert in transition mode never mix versions within a
request (a green thread suspended in old code is a call chain in flight), the process
answers with the new code after the load and the old after the revert, and no request
fails. The agent serves on real OS threads with plain sockets although eventlet patched
``threading`` and ``socket`` (before the fix, its connection threads were green threads
of a hub that never ran, and every request to it hung).

gunicorn 23 and later have no eventlet worker class, so a gunicorn ``-k eventlet`` is not
tested: docs/frameworks.md, "eventlet"."""

from __future__ import annotations

import sys
from importlib.util import find_spec

import pytest

from frameworks.pairs import load_and_revert_twice
from test_services import agents, free_port, run_service, stop, wait_until

pytestmark = [
    pytest.mark.system,  # starts servers, gdb or namespaces: not in the fast lane
    # found, not imported: the test process stays without eventlet
    pytest.mark.skipif(find_spec("eventlet") is None, reason="eventlet is not installed"),
]

APP = """
    import os

    import eventlet

    def version():
        return "v1"

    def handler():
        first = version()
        eventlet.sleep(0.02)  # suspended here, in the middle of the call chain
        return f"{first},{version()}"

    def app(environ, start_response):
        body = f"{handler()} {os.getpid()}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
"""

SERVE = """
    import sys
    import warnings

    warnings.simplefilter("ignore")  # eventlet warns that it is deprecated
    import eventlet

    eventlet.monkey_patch()
    import eventlet.wsgi

    import {m}evapp as evapp

    eventlet.wsgi.server(eventlet.listen(("127.0.0.1", int(sys.argv[1]))), evapp.app, log_output=False)
"""

FIX = """
    import pylivepatch as lp
    patch = lp.Patch("eventlet-v2", consistency="transition")

    @patch.function("{m}evapp:version")
    def version():
        return "v2"

    @patch.function("{m}evapp:handler")
    def handler():
        import eventlet

        first = version()
        eventlet.sleep(0.02)
        return f"{first},{version()}"
"""


def test_eventlet_wsgi_transition_never_mixes_versions(lab):
    # written, not imported here: the test process stays without eventlet
    lab.write(f"{lab.name('evapp')}.py", APP)
    serve = lab.write("evserve.py", SERVE.replace("{m}", lab.prefix))
    port, app = free_port(), f"ev-{lab.prefix}".rstrip("_")
    server = run_service(lab, app, [sys.executable, str(serve), str(port)])
    try:
        wait_until(lambda: len(agents(lab, app)) == 1, "the server's agent")
        load_and_revert_twice(
            lab, port, app, FIX, "eventlet-v2", 1, serving_pids=set(agents(lab, app))
        )
    finally:
        stop(server)
