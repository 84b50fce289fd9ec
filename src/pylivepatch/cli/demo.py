"""``pylivepatch demo``: a running multi-worker HTTP service with a pricing bug, fixed
live in every worker, then reverted.

The demo writes a small service and a fix to a temporary directory and starts the
service under ``pylivepatch run`` as its own process tree: a master that binds
127.0.0.1 and forks three workers serving the shared socket (the pre-fork model of
gunicorn, with the standard library only, so the demo runs right after ``pip
install``). It shows every worker answering with the bug, packs the fix, loads it into
the whole app with the real ``pylivepatch load --app`` while a client keeps sending
requests, shows every worker answering correctly, reverts, shows the audit log, and
stops everything it started. State (the audit log) stays in the temporary directory.
"""

from __future__ import annotations

import contextlib

# Loaded here, before client threads: a first lookup of the idna codec racing in several
# threads can leave it cached as unknown for the whole process (LookupError).
import encodings.idna  # noqa: F401
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..agent import protocol
from ..errors import LivepatchError
from .exits import EXIT_ERROR, EXIT_OK

WORKERS = 3

SERVICE = '''
"""demo_shop: a tiny pre-fork price service. Bug: a discount code is applied twice."""

import json
import os
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

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
        answer = quote(int(args.get("cents", "0")), args.get("code", ""))
        body = json.dumps({**answer, "worker": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main(workers):
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # a worker: serve the shared socket until told to stop
            signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
            server = HTTPServer(listener.getsockname(), Handler, bind_and_activate=False)
            server.socket.close()
            server.socket = listener
            server.serve_forever(poll_interval=0.5)
            os._exit(0)
        children.append(pid)

    def stop(*_):
        for pid in children:
            os.kill(pid, signal.SIGTERM)
        for pid in children:
            os.waitpid(pid, 0)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print("listening", listener.getsockname()[1], flush=True)
    while True:
        signal.pause()
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

URL = "http://127.0.0.1:{port}/quote?cents=10000&code=SAVE10"


def command(args: Any) -> int:
    """``pylivepatch demo [--json]``."""
    return run_demo(json_lines=args.json)


def run_demo(json_lines: bool = False) -> int:
    with tempfile.TemporaryDirectory(prefix="pylivepatch-demo-") as tmp:
        return _Demo(Path(tmp), json_lines).run()


class _Demo:
    def __init__(self, root: Path, json_lines: bool) -> None:
        self.root, self.json_lines = root, json_lines
        self.app = f"demo-{os.getpid()}"
        self.answers: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    # --- output ------------------------------------------------------------------

    def say(self, step: str, text: str = "", **info: Any) -> None:
        if self.json_lines:
            print(json.dumps({"step": step, **info}), flush=True)
        else:
            print(f"\n== {step}" + (f": {text}" if text else ""), flush=True)

    def command(self, *args: str) -> Any:
        """Run a real ``pylivepatch`` verb in this process and show it like a shell."""
        from . import main

        if self.json_lines:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                rc = main([*args, "--json"])
            return rc, json.loads(out.getvalue() or "null")
        print(f"$ pylivepatch {' '.join(args)}", flush=True)
        return main(list(args)), None

    # --- the service ---------------------------------------------------------------

    def get(self) -> dict[str, Any]:
        with urllib.request.urlopen(URL.format(port=self.port), timeout=10) as resp:
            return dict(json.loads(resp.read()))

    def by_worker(self) -> dict[int, int]:
        """Ask until every worker has answered: worker pid -> price."""
        seen: dict[int, int] = {}
        for _ in range(200):
            answer = self.get()
            seen[answer["worker"]] = answer["price"]
            if len(seen) == WORKERS:
                break
        return dict(sorted(seen.items()))

    def show_workers(self, step: str, seen: dict[int, int], expected: int) -> None:
        if self.json_lines:
            self.say(step, workers=seen, answer=json.dumps(self.get()))
            return
        self.say(step, f"GET /quote?cents=10000&code=SAVE10 (a 10% code; right price {expected})")
        for pid, price in seen.items():
            verdict = "right" if price == expected else "WRONG"
            print(f"   worker {pid}: price {price}  {verdict}", flush=True)

    def traffic(self) -> None:
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                self.answers.append(self.get())
            except Exception as exc:  # noqa: BLE001 - counted and shown
                self.failures.append(repr(exc))

    def wait_for_agents(self) -> None:
        from ..control.targets import discover

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if sum(1 for p in discover() if p["app"] == self.app) == WORKERS + 1:
                return
            time.sleep(0.025)
        raise LivepatchError(
            "timeout",
            f"the demo service's {WORKERS + 1} agents did not come up within 30 s in "
            f"{protocol.socket_dir()} (its stderr above says why)",
        )

    # --- the tour ------------------------------------------------------------------

    def run(self) -> int:
        from ..agent.run import environment
        from ..builder.pack import pack

        # the service's agents put their sockets there: one they would refuse is an
        # error now (untrusted-socket, with what to do), not a wait for agents
        protocol.prepare_dir(protocol.socket_dir())
        (self.root / "demo_shop.py").write_text(textwrap.dedent(SERVICE))
        (self.root / "fix_double_discount.py").write_text(textwrap.dedent(FIX))
        os.environ["PYLIVEPATCH_STATE_DIR"] = str(self.root / "state")
        env = environment(self.app)
        env["PYTHONPATH"] = os.pathsep.join([str(self.root), env["PYTHONPATH"]])
        service = subprocess.Popen(
            # imported, not run with -m: a module run as a script is __main__, not demo_shop
            [sys.executable, "-c", f"import demo_shop; demo_shop.main({WORKERS})"],
            env=env, cwd=self.root, stdout=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        client = threading.Thread(target=self.traffic, name="demo-client", daemon=True)
        ok = False
        try:
            assert service.stdout is not None
            line = service.stdout.readline().split()
            if line[:1] != ["listening"]:
                raise LivepatchError(
                    "internal", "the demo service did not start (its stderr above says why)"
                )
            self.port = int(line[1])
            self.wait_for_agents()
            self.say(
                "service started",
                f"pylivepatch run --app {self.app} -- python -c 'import demo_shop; "
                f"demo_shop.main({WORKERS})'  "
                f"(a master and {WORKERS} forked workers on 127.0.0.1:{self.port})",
                url=URL.format(port=self.port), app=self.app,
            )  # fmt: skip
            if not self.json_lines:
                self.command("ps")
            before = self.by_worker()
            self.show_workers("before the patch", before, 9000)
            packed = pack(self.root / "fix_double_discount.py", against=str(self.root))
            fix = self.root / "fix.lpz"
            fix.write_bytes(packed.data)
            self.say(
                "packed the fix",
                f"pylivepatch pack fix_double_discount.py -o fix.lpz  "
                f"(build id {packed.manifest['build_id'][:16]})",
                name=packed.manifest["name"], build_id=packed.manifest["build_id"][:16],
            )  # fmt: skip
            client.start()
            self._wait(lambda: len(self.answers) >= 20)
            self.say("applied live to every process of the app, under load")
            rc_load, loaded = self.command("load", str(fix), "--app", self.app)
            if loaded is not None:
                self.say("load result", **loaded)
            after = self.by_worker()
            self.show_workers("after the patch", after, 9000)
            if not self.json_lines:
                self.command("list", "--app", self.app)
            self._wait(lambda: len(self.answers) >= 60)
            self.say("reverted live")
            rc_revert, reverted = self.command("revert", "fix-double-discount", "--app", self.app)
            if reverted is not None:
                self.say("revert result", **reverted)
            again = self.by_worker()
            self.show_workers("reverted", again, 9000)
            if not self.json_lines:
                self.say("the audit log")
                self.command("log", "--app", self.app, "-n", str(2 * (WORKERS + 1) + WORKERS + 1))
            ok = (
                rc_load == 0 and rc_revert == 0
                and set(before.values()) == {8100} and set(after.values()) == {9000}
                and set(again.values()) == {8100} and len(after) == WORKERS
            )  # fmt: skip
            if loaded is not None:
                ok = ok and len(loaded["processes"]) == WORKERS + 1
        finally:
            self.stop.set()
            if client.is_alive():
                client.join(timeout=15)
            _stop(service)
        prices = sorted({a["price"] for a in self.answers})
        self.say(
            "done",
            f"{len(self.answers)} requests during the patch and the revert, "
            f"{len(self.failures)} failed; prices seen {prices}; service stopped",
            requests=len(self.answers), failed_requests=len(self.failures),
            answers_seen=",".join(map(str, prices)),
        )  # fmt: skip
        return EXIT_OK if ok and not self.failures else EXIT_ERROR

    def _wait(self, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.005)


def _stop(service: subprocess.Popen[str]) -> None:
    try:
        service.send_signal(signal.SIGTERM)
        service.wait(10)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(service.pid, signal.SIGKILL)  # anything left of its tree
    service.wait(10)
