"""An asyncio service under uvicorn ``--workers 4`` (``pylivepatch run``): a coroutine
patched in transition mode while requests are in flight, suspended in it (each request
awaits between two calls of a patched function inside the patched coroutine). A load
and a revert app-wide never mix versions within a request, every worker answers with
the new code after the load and the old after the revert, and no request fails.

docs/frameworks.md, "uvicorn with workers"."""

from __future__ import annotations

import json
import sys

import pytest

from frameworks.pairs import Load, settle
from test_services import agents, cli, free_port, run_service, serving, stop, wait_until

pytestmark = pytest.mark.system  # starts servers, gdb or namespaces: not in the fast lane

uvicorn = pytest.importorskip("uvicorn")

APP = """
    import asyncio
    import os

    def version():
        return "v1"

    async def handler():
        first = version()
        await asyncio.sleep(0.02)  # suspended here, in the patched coroutine
        return f"{first},{version()}"

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = f"{await handler()} {os.getpid()}".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})
"""

FIX = """
    import pylivepatch as lp
    patch = lp.Patch("asgi-v2", consistency="transition")

    @patch.function("{m}asgiapp:version")
    def version():
        return "v2"

    @patch.function("{m}asgiapp:handler")
    async def handler():
        import asyncio

        first = version()
        await asyncio.sleep(0.02)
        return f"{first},{version()}"
"""


def test_uvicorn_four_workers_coroutine_transition(lab):
    lab.module("asgiapp", APP)
    port, app = free_port(), f"uvt-{lab.prefix}".rstrip("_")
    server = run_service(lab, app, [
        sys.executable, "-m", "uvicorn", f"{lab.name('asgiapp')}:app", "--workers", "4",
        "--host", "127.0.0.1", "--port", str(port), "--app-dir", str(lab.root),
        "--log-level", "warning",
    ])  # fmt: skip
    load = None
    try:
        wait_until(lambda: len(agents(lab, app)) >= 5, "the supervisor and 4 workers")
        wait_until(lambda: serving(port), "listening")
        load = Load(port, threads=8)
        wait_until(lambda: len({pid for _, pid in load.since(0)}) == 4, "answers from 4 workers")
        workers = {pid for _, pid in load.since(0)}
        (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
        out = cli("load", "fix.lpz", "--app", app, "--json", cwd=lab.root)
        assert out.returncode == 0, out.stdout + out.stderr
        results = json.loads(out.stdout)["processes"]
        assert all(r.startswith("applied") for r in results.values()), results
        settle(load, "v2", workers, "after load")
        out = cli("revert", "asgi-v2", "--app", app, cwd=lab.root)
        assert out.returncode == 0, out.stdout + out.stderr
        settle(load, "v1", workers, "after revert")
        load.close()
        mixed = [pair for _, pair, _ in load.answers if pair[0] != pair[1]]
        assert mixed == [], f"{len(mixed)} of {len(load.answers)} answers mixed versions"
        assert load.failures == [], load.failures[:3]
    finally:
        if load is not None:
            load.close()
        stop(server)
