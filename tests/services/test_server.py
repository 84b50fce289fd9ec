"""A real asyncio web server (uvicorn) serving requests while a payload is applied and
reverted again and again: no request fails, and every response comes from one version
of the payload's functions (spec §5, transition)."""

from __future__ import annotations

# Loaded here, before client threads: a first lookup of the idna codec racing in several
# threads can leave it cached as unknown for the whole process (LookupError).
import encodings.idna  # noqa: F401
import json
import threading
import time
import urllib.request

import pytest

pytestmark = pytest.mark.system  # starts servers, gdb or namespaces: not in the fast lane

uvicorn = pytest.importorskip("uvicorn")

APP = """
    import asyncio
    import json

    async def render(part):
        await asyncio.sleep(0.001)     # a slow step: requests overlap the transition
        return "v1"

    async def page():
        parts = [await render(i) for i in range(4)]
        return {"page": "v1", "parts": parts}

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = json.dumps(await page()).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
"""

FIX = """
    import pylivepatch as lp
    patch = lp.Patch("page-v2")

    @patch.function("{m}webapp:render")
    async def render(part):
        await asyncio.sleep(0.001)
        return "v2"

    @patch.function("{m}webapp:page")
    async def page():
        parts = [await render(i) for i in range(4)]
        return {"page": "v2", "parts": parts}
"""


def test_uvicorn_serves_through_repeated_apply_and_revert(lab):
    mod = lab.module("webapp", APP)
    data = lab.pack(FIX)
    config = uvicorn.Config(mod.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    stop = threading.Event()
    answers: list[dict] = []
    failures: list[str] = []

    def client():
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
                    answers.append(json.loads(resp.read()))
            except Exception as exc:  # noqa: BLE001 - counted: must stay zero
                failures.append(repr(exc))

    clients = [threading.Thread(target=client, name=f"client-{i}") for i in range(4)]
    for c in clients:
        c.start()
    try:
        lab.engine.upload("page-v2", data)
        for _ in range(5):
            time.sleep(0.05)
            lab.engine.apply("page-v2", timeout=20)
            time.sleep(0.05)
            lab.engine.revert("page-v2", timeout=20)
        time.sleep(0.05)
    finally:
        stop.set()
        for c in clients:
            c.join(30)
        server.should_exit = True
        thread.join(30)
    assert failures == []
    assert {a["page"] for a in answers} == {"v1", "v2"}, "both versions served"
    mixed = [a for a in answers if set(a["parts"]) != {a["page"]}]
    assert mixed == [], mixed[:3]
    assert len(answers) > 50
