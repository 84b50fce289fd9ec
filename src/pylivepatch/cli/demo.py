"""``pylivepatch demo``: a running HTTP service with a pricing bug, fixed live.

The demo writes a small service module and a fix to a temporary directory, starts the
service (a real ``ThreadingHTTPServer`` on 127.0.0.1, in this process, with a thread
per connection and a background client hammering it), shows a request hitting the
bug, packs the fix with ``pack``, applies it with the engine while requests keep
flowing, shows the fixed answer, reverts, and stops everything it started.
"""

from __future__ import annotations

# Loaded here, before client threads: a first lookup of the idna codec racing in several
# threads can leave it cached as unknown for the whole process (LookupError).
import encodings.idna  # noqa: F401
import importlib
import json
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

SERVICE = '''
"""demo_shop: a tiny price service. Bug: a discount code is applied twice."""

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CODES = {"SAVE10": 10, "SAVE25": 25}


def discount_percent(code):
    return CODES.get(code.upper(), 0)


def quote(cents, code=""):
    pct = discount_percent(code)
    price = cents - cents * pct // 100
    price = price - price * pct // 100          # BUG: the discount is applied twice
    return {"list": cents, "code": code, "price": price}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        _, _, query = self.path.partition("?")
        args = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        body = json.dumps(quote(int(args.get("cents", "0")), args.get("code", ""))).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve():
    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)
'''

FIX = '''
"""Fix for demo_shop: apply the discount once (ticket SHOP-42)."""

import pylivepatch as lp

patch = lp.Patch("fix-double-discount", version="1", consistency="atomic",
                 metadata={"ticket": "SHOP-42"})


@patch.function("demo_shop:quote")
def quote(cents, code=""):
    pct = discount_percent(code)
    price = cents - cents * pct // 100
    return {"list": cents, "code": code, "price": price}
'''


def run_demo(json_lines: bool = False) -> int:
    import pylivepatch as lp
    from pylivepatch.build.pack import pack

    def say(step: str, **info: Any) -> None:
        if json_lines:
            print(json.dumps({"step": step, **info}), flush=True)
        else:
            extra = "  ".join(f"{k}={v}" for k, v in info.items())
            print(f"== {step}" + (f"  {extra}" if extra else ""), flush=True)

    with tempfile.TemporaryDirectory(prefix="pylivepatch-demo-") as tmp:
        root = Path(tmp)
        (root / "demo_shop.py").write_text(textwrap.dedent(SERVICE))
        (root / "fix_double_discount.py").write_text(textwrap.dedent(FIX))
        sys.path.insert(0, str(root))
        importlib.invalidate_caches()
        shop = importlib.import_module("demo_shop")
        server = shop.serve()
        port = server.server_address[1]
        serving = threading.Thread(target=server.serve_forever, name="demo-http", daemon=True)
        serving.start()
        stop = threading.Event()
        answers: list[int] = []
        failures: list[str] = []

        def get(cents: int, code: str) -> dict[str, Any]:
            url = f"http://127.0.0.1:{port}/quote?cents={cents}&code={code}"
            with urllib.request.urlopen(url, timeout=5) as resp:
                return dict(json.loads(resp.read()))

        def load() -> None:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    answers.append(get(10000, "SAVE10")["price"])
                except Exception as exc:  # noqa: BLE001 - counted and shown
                    failures.append(repr(exc))

        client = threading.Thread(target=load, name="demo-client", daemon=True)
        client.start()
        engine = lp.engine()

        def wait_for(n: int) -> None:  # let the client's traffic flow for a while
            deadline = time.monotonic() + 10
            while len(answers) < n and time.monotonic() < deadline:
                time.sleep(0.005)

        try:
            say("service started", url=f"http://127.0.0.1:{port}/quote?cents=10000&code=SAVE10")
            wait_for(25)
            before = get(10000, "SAVE10")
            say("before the patch", answer=json.dumps(before), expected_price=9000)
            packed = pack(root / "fix_double_discount.py")
            say(
                "packed fix",
                name=packed.manifest["name"],
                build_id=packed.manifest["build_id"][:16],
            )
            result = engine.load(packed.data)
            say(
                "applied live",
                pause_us=f"{result.pause_ns / 1000:.1f}",
                requests_so_far=len(answers),
            )
            wait_for(len(answers) + 25)
            after = get(10000, "SAVE10")
            say("after the patch", answer=json.dumps(after))
            status = engine.status(result.name)
            say(
                "status",
                name=status.name,
                state=status.state,
                rc=status.rc,
                ticket=status.metadata.get("ticket"),
            )
            reverted = engine.revert(result.name)
            wait_for(len(answers) + 25)
            again = get(10000, "SAVE10")
            say("reverted", pause_us=f"{reverted.pause_ns / 1000:.1f}", answer=json.dumps(again))
            engine.unload(result.name)
            ok = before["price"] == 8100 and after["price"] == 9000 and again["price"] == 8100
        finally:
            stop.set()
            client.join(timeout=10)
            server.shutdown()
            server.server_close()
            sys.path.remove(str(root))
            sys.modules.pop("demo_shop", None)
        say(
            "done",
            requests=len(answers),
            failed_requests=len(failures),
            answers_seen=",".join(str(p) for p in sorted(set(answers))),
        )
        return 0 if ok and not failures else 1
