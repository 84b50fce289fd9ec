"""Faults around the agent (spec §9): an unexpected exception out of an engine call is
answered ``internal`` and the agent serves on; a client that leaves in the middle of an
action does not cancel it, and the audit log says the reply was lost; half messages
are discarded."""

from __future__ import annotations

import base64
import errno
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pylivepatch import Client, LivepatchError
from pylivepatch.agent import protocol, store
from test_persist import FIX, SHOP, finish, run_app

# The target program, run under `pylivepatch run --app`. Its own code (not
# pylivepatch's) wraps the engine's apply so that applying the payloads named in
# FAULTS fails with that exception, and it can park a thread inside shop.price.
PROGRAM = """
import functools, sys, threading
import pylivepatch
import MODULE as shop

engine = pylivepatch.engine()
real_apply = engine.apply
FAULTS = {"boom": lambda: RuntimeError("boom"), "exits": lambda: SystemExit(3)}

@functools.wraps(real_apply)
def apply(name, **options):
    if name in FAULTS:
        raise FAULTS[name]()
    return real_apply(name, **options)

engine.apply = apply
inside, release = threading.Event(), threading.Event()

class Parked:
    def __mul__(self, other):
        inside.set()
        release.wait(30)
        return 0

print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "park":
        threading.Thread(target=shop.price, args=(Parked(),), daemon=True).start()
        print("parked" if inside.wait(10) else "not parked", flush=True)
    elif line.strip() == "release":
        release.set()
        print("released", flush=True)
    else:
        print(shop.price(2), flush=True)
"""

SLOW = """
    import time
    import pylivepatch as lp
    patch = lp.Patch("slow-fix", consistency="atomic")

    @patch.pre_apply
    def pre_apply(ctx):
        time.sleep(0.5)

    @patch.function("{m}shop:price")
    def price(x):
        return x * 3
"""

BOOM = """
    import pylivepatch as lp
    patch = lp.Patch("NAME", consistency="atomic")

    @patch.function("{m}shop:price")
    def price(x):
        return x * 5
"""

LOST = "the client disconnected before the reply; the action stands as recorded above"


@dataclass
class Target:
    proc: subprocess.Popen[str]
    app: str
    stderr: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ask(self, line: str = "x") -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def audit(self) -> list[dict[str, Any]]:
        return [r for r in store.read_audit(self.app) if r["pid"] == self.pid]

    def stop(self) -> str:
        """End the program; its stderr."""
        if self.stderr is None:
            try:
                self.stderr = finish(self.proc)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.stderr = self.proc.communicate(timeout=10)[1]
        return self.stderr


@pytest.fixture
def app_target(lab: Any) -> Iterator[Target]:
    lab.module("shop", SHOP)
    app = f"faults-{lab.prefix}"
    target = Target(run_app(lab, app, PROGRAM.replace("MODULE", lab.name("shop"))), app)
    try:
        assert target.proc.stdout is not None
        assert target.proc.stdout.readline().strip() == "ready", target.stop()
        yield target
    finally:
        target.stop()


def _send_and_leave(pid: int, verb: str, **args: Any) -> None:
    """A client that sends one request and closes its socket at once."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(protocol.socket_path(pid)))
        sock.sendall(protocol.encode({"verb": verb, "args": args}))


def _wait_for(what: str, probe: Callable[[], Any], seconds: float = 30.0) -> Any:
    """Poll ``probe`` until it returns something true (bounded in count and time)."""
    deadline = time.monotonic() + seconds
    for _ in range(10_000):
        value = probe()
        if value or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert value, f"gave up waiting for {what}"
    return value


def _records(target: Target, payload: str) -> list[tuple[str, str, str, int]]:
    return [
        (r["action"], r.get("event", ""), r["result"], r["rc"])
        for r in target.audit()
        if r["payload"] == payload
    ]


def test_an_unexpected_exception_is_answered_internal_and_the_agent_serves_on(
    lab: Any, app_target: Target
) -> None:
    client = Client(app_target.pid)
    client.upload("boom", lab.pack(BOOM.replace("NAME", "boom")))
    with pytest.raises(LivepatchError) as err:
        client.apply("boom")
    assert err.value.code == "internal" and err.value.errno == errno.EIO
    assert "RuntimeError" in err.value.message and "boom" in err.value.message
    assert "undone" in err.value.message and "audit log" in err.value.message
    assert client.ping()["pid"] == app_target.pid, "the agent serves the next request"
    assert [(s.name, s.state) for s in client.list()] == [("boom", "CHECKED")]
    # not even a SystemExit ends the connection without an answer
    client.upload("exits", lab.pack(BOOM.replace("NAME", "exits")))
    with pytest.raises(LivepatchError) as err:
        client.apply("exits")
    assert err.value.code == "internal" and "SystemExit" in err.value.message
    assert app_target.ask() == "4", "nothing was applied"
    stderr = app_target.stop()
    assert "Exception in thread" not in stderr, "a connection thread died"
    assert "pylivepatch agent: apply boom: failed inside pylivepatch" in stderr
    assert "RuntimeError: boom" in stderr, "logged with its traceback"
    # the engine never saw these applies: the agent audited them itself
    for name in ("boom", "exits"):
        assert _records(app_target, name) == [
            ("upload", "finished", "ok", 0),
            ("apply", "", "internal", errno.EIO),
        ]


def test_a_client_gone_during_an_apply_does_not_cancel_it_and_the_lost_reply_is_audited(
    lab: Any, app_target: Target
) -> None:
    client = Client(app_target.pid)
    client.upload("slow-fix", lab.pack(SLOW))
    _send_and_leave(app_target.pid, "apply", name="slow-fix")
    _wait_for("the apply", lambda: client.status("slow-fix").state == "APPLIED")
    assert app_target.ask() == "6", "the patched function runs the new code"
    _wait_for("the lost reply", lambda: len(_records(app_target, "slow-fix")) >= 3)
    assert _records(app_target, "slow-fix") == [
        ("upload", "finished", "ok", 0),
        ("apply", "finished", "ok", 0),
        ("apply", "reply-lost", "ok", 0),
    ]
    lost = app_target.audit()[-1]
    assert lost["message"] == LOST
    assert lost["peer"]["via"] == "socket" and lost["peer"]["pid"] != app_target.pid
    assert client.status("slow-fix").rc == 0
    assert "Exception in thread" not in app_target.stop()


def test_a_client_gone_during_a_blocked_atomic_apply_leaves_it_to_time_out(
    lab: Any, app_target: Target
) -> None:
    client = Client(app_target.pid)
    client.upload("fix-price", lab.pack(FIX))
    assert app_target.ask("park") == "parked"
    try:
        _send_and_leave(app_target.pid, "apply", name="fix-price", timeout=0.5)
        st = _wait_for(
            "the timeout",
            lambda: (s := client.status("fix-price")).rc == errno.ETIMEDOUT and s,
        )
        assert (st.state, st.error) == ("CHECKED", "timeout")
        assert app_target.ask() == "4", "the function still runs the old code"
    finally:
        assert app_target.ask("release") == "released"
    _wait_for("the lost reply", lambda: len(_records(app_target, "fix-price")) >= 3)
    assert _records(app_target, "fix-price") == [
        ("upload", "finished", "ok", 0),
        ("apply", "finished", "timeout", errno.ETIMEDOUT),
        ("apply", "reply-lost", "timeout", errno.ETIMEDOUT),
    ]
    assert app_target.audit()[-1]["message"] == LOST
    assert "Exception in thread" not in app_target.stop()


#: FIX, slow enough to apply that its client has surely left when the reply is sent
#: (a quick load could answer before the client's close and the reply would not be lost)
SLOW_FIX = (
    FIX
    + """
    @patch.pre_apply
    def pre_apply(ctx):
        __import__("time").sleep(0.5)
"""
)


def test_a_lost_load_reply_is_audited_under_the_payload_name(lab: Any, app_target: Target) -> None:
    data = base64.b64encode(lab.pack(SLOW_FIX)).decode()
    _send_and_leave(app_target.pid, "load", data=data)
    _wait_for("the lost reply", lambda: len(_records(app_target, "fix-price")) >= 3)
    assert _records(app_target, "fix-price") == [
        ("upload", "finished", "ok", 0),
        ("apply", "finished", "ok", 0),
        ("load", "reply-lost", "ok", 0),
    ]
    assert app_target.ask() == "6"


def test_half_messages_are_discarded_and_the_next_client_is_served(
    lab: Any, app_target: Target
) -> None:
    path = str(protocol.socket_path(app_target.pid))
    whole = protocol.encode({"verb": "list", "args": {}})
    for partial in (whole[: len(whole) // 2], struct.pack(">I", 64), whole[:2]):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            sock.sendall(partial)
        assert Client(app_target.pid).ping()["pid"] == app_target.pid
    client = Client(app_target.pid)
    assert client.load(lab.pack(FIX)).state == "APPLIED", "and acted for"
    assert app_target.ask() == "6"
    assert "Exception in thread" not in app_target.stop()
    assert [r["action"] for r in app_target.audit()] == ["upload", "apply"], "no record"
