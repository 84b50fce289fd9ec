"""Trust under attack, the agent's side (issue 21): malformed, hostile and slow
requests against a real target process get an error reply with its own code
(``bad-request``), never a closed connection, an ``internal`` error, a traceback on
the target's stderr or an action left without its end; nothing is armed for them."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pylivepatch import Client
from pylivepatch.agent import protocol, store
from pylivepatch.agent.audit import Audit, requested_by

SRC = str(Path(__file__).resolve().parents[2] / "src")

PROGRAM = """
import sys
sys.path[:0] = [{root!r}]
import pylivepatch
from pylivepatch.agent import protocol
protocol.READ_TIMEOUT = {read_timeout!r}  # the whole-request deadline, short for the test
import {module} as shop
pylivepatch.start()
print("ready", flush=True)
for line in sys.stdin:
    print(shop.price(2), flush=True)
"""

FIX = """
    import pylivepatch as lp
    patch = lp.Patch("fix-price", consistency="transition")

    @patch.function("{m}shop:price")
    def price(x):
        return x * 3
"""


class Target:
    def __init__(self, lab: Any, read_timeout: float = 10.0, **env: str) -> None:
        lab.module("shop", "def price(x):\n    return x * 2\n")
        self.stderr = lab.root / "target.err"
        program = PROGRAM.format(
            root=str(lab.root), module=lab.name("shop"), read_timeout=read_timeout
        )
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", program],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                env=dict(os.environ, PYTHONPATH=SRC, **env),
            )  # fmt: skip
        assert self.proc.stdout.readline().strip() == "ready"
        self.path = str(protocol.socket_path(self.proc.pid))

    def raw(self, body: bytes) -> dict[str, Any] | None:
        """Send one frame of exactly ``body``; the reply (None: closed without one)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.path)
            s.sendall(struct.pack(">I", len(body)) + body)
            return protocol.receive(s)

    def request(self, verb: Any, args: Any) -> dict[str, Any] | None:
        return self.raw(json.dumps({"v": 1, "verb": verb, "args": args}).encode())

    def call(self) -> str:
        self.proc.stdin.write("x\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def peak_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def stop(self) -> str:
        self.proc.stdin.close()
        self.proc.wait(30)
        return self.stderr.read_text()


@pytest.fixture
def target(lab):
    t = Target(lab)
    try:
        yield t
    finally:
        if t.proc.poll() is None:
            t.stop()


BAD = {
    "string timeout": ("apply", {"name": "fix-price", "timeout": "10"}),
    "huge timeout": ("apply", {"name": "fix-price", "timeout": 10**400}),
    "negative timeout": ("apply", {"name": "fix-price", "timeout": -1}),
    "bool timeout": ("apply", {"name": "fix-price", "timeout": True}),
    "string force": ("apply", {"name": "fix-price", "force": "yes"}),
    "unknown mode": ("apply", {"name": "fix-price", "consistency": "later"}),
    "number name": ("apply", {"name": 5}),
    "list name": ("revert", {"name": ["fix-price"]}),
    "object name": ("status", {"name": {}}),
    "no name": ("unload", {}),
    "unknown argument": ("apply", {"name": "fix-price", "sudo": True}),
    "unknown verb": ("reboot", {}),
    "verb not a string": (["apply"], {}),
    "args not an object": ("apply", ["fix-price"]),
    "since a string": ("log", {"since": "0"}),
    "since a float": ("log", {"since": 1.5}),
    "data not base64": ("upload", {"name": "x", "data": "%%%"}),
    "data a number": ("load", {"data": 5}),
}

RAW = {
    "NaN timeout": b'{"v":1,"verb":"apply","args":{"name":"fix-price","timeout":NaN}}',
    "Infinity since": b'{"v":1,"verb":"log","args":{"since":Infinity}}',
    "-Infinity timeout": b'{"v":1,"verb":"apply","args":{"name":"fix-price","timeout":-Infinity}}',
    "nested 1,001 deep": b'{"v":1,"verb":"ping","args":{},"x":' + b"[" * 1001 + b"]" * 1001 + b"}",
    "nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "not JSON": b"nope!",
    "not UTF-8": b'{"v":1,"verb":"\xff"}',
    "not an object": b"[1,2,3]",
    "no version": b'{"verb":"ping","args":{}}',
}


def test_malformed_requests_get_bad_request_and_arm_nothing(lab, target):
    """Issue 21 items 3 and 8: every malformed request is answered ``bad-request`` (not
    a closed connection, not ``internal``, not ``invalid-payload``), nothing starts,
    the payload stays CHECKED and the process runs the old code, and the target's
    stderr has no traceback."""
    client = Client(target.proc.pid)
    client.upload("fix-price", lab.write("fix.lpz", "") and _packed(lab))
    since = client.log()[-1]["seq"]
    replies = {what: target.request(*req) for what, req in BAD.items()}
    replies.update({what: target.raw(body) for what, body in RAW.items()})
    for what, reply in replies.items():
        assert reply is not None, f"{what}: the connection closed without a reply"
        assert not reply["ok"], what
        assert reply["error"]["code"] == "bad-request", (what, reply["error"])
        assert "Traceback" not in reply["error"]["message"]
    assert client.status("fix-price").state == "CHECKED"
    assert target.call() == "4", "the old code runs: nothing was armed"
    events = [ev for ev in client.log(since) if ev["seq"] > since]
    assert not [ev for ev in events if ev["event"] == "started"], "no action started"
    refused = [r for r in store.read_audit(None) if r.get("pid") == target.proc.pid]
    assert {r["result"] for r in refused if r["action"] == "apply"} == {"bad-request"}
    assert Client(target.proc.pid).ping()["pid"] == target.proc.pid, "the agent serves on"
    stderr = target.stop()
    assert "Traceback" not in stderr and "internal" not in stderr, stderr


def _packed(lab: Any) -> Path:
    path = lab.root / "fix.lpz"
    path.write_bytes(lab.pack(FIX))
    return path


def test_every_started_action_over_the_socket_has_its_end(lab, target):
    """A request whose action starts (a good one, then ones refused by the engine)
    leaves a ``finished`` for every ``started`` in the history."""
    client = Client(target.proc.pid)
    client.upload("fix-price", _packed(lab))
    for verb, args in [
        ("apply", {"name": "fix-price", "timeout": 0}),
        ("revert", {"name": "nothing-here"}),
        ("apply", {"name": "fix-price", "consistency": "immediate"}),
        ("revert", {"name": "fix-price", "consistency": "immediate"}),
    ]:
        reply = target.request(verb, args)
        assert reply is not None and reply.get("error", {}).get("code") != "internal", reply
    events = client.log()
    started = [ev["seq"] for ev in events if ev["event"] == "started"]
    finished = [ev for ev in events if ev["event"] == "finished"]
    assert len(started) == len(finished)


def test_a_slow_client_gets_no_more_than_the_request_deadline(lab):
    """Issue 21 item 9: the read limit is for the whole request, not for each read: a
    client sending a byte every 1.5 s (under the 2 s limit of this target) is answered
    ``bad-request`` and disconnected once 2 s have passed, before its frame is done
    (before, each byte gave it another second: one byte every 8 s held a slot for
    ever)."""
    target = Target(lab, read_timeout=2.0)
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(target.path)
            frame = struct.pack(">I", 20) + b'{"v":1,"verb":"ping"}'
            head = b""
            # One byte every 1.5 s (under the 2 s limit between two bytes): the reply
            # must come before the frame is complete, however late the loaded machine
            # lets the agent's thread run (the frame's 24 bytes give it 36 s).
            for byte in frame[:-1]:
                try:
                    s.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # answered and closed: the reply waits in our buffer
                time.sleep(1.5)
                s.setblocking(False)
                try:
                    head = s.recv(4)
                except BlockingIOError:
                    head = b""
                s.setblocking(True)
                if head:
                    break
            assert head, "no answer before the frame was complete: a limit per read"
            while len(head) < 4:
                more = s.recv(4 - len(head))
                assert more
                head += more
            (length,) = struct.unpack(">I", head)
            body = b""
            while len(body) < length:
                chunk = s.recv(length - len(body))
                assert chunk
                body += chunk
            reply = json.loads(body)
            assert reply["error"]["code"] == "bad-request"
            assert "within 2s" in reply["error"]["message"]
        assert "Traceback" not in target.stop()
    finally:
        if target.proc.poll() is None:
            target.stop()


def test_a_frame_of_many_small_objects_is_refused_before_it_is_parsed(lab, target):
    """Issue 21 item 9: a 24 MiB frame of ``[{},{},...]`` (it would cost hundreds of MB
    once parsed) is refused ``bad-request`` from its shape, without parsing it."""
    before = target.peak_kib()
    body = b'{"v":1,"verb":"ping","args":{},"x":[' + b"{}," * (8 * 1024 * 1024 - 20) + b"{}]}"
    assert len(body) <= protocol.MAX_MESSAGE
    reply = target.raw(body)
    assert reply is not None and reply["error"]["code"] == "bad-request"
    assert target.peak_kib() - before < 100 * 1024, "far less than the 668 MB a parse costs"


def test_every_attempt_is_audited_with_its_requester_mode_and_flags(lab, target):
    """Issue 21 item 6: a ``load`` of bytes that are not a zip is audited (before, only
    an upload of the same was), and every record names the requester (pid and uid of
    the peer), the mode asked for (``immediate`` too) and the flags."""
    client = Client(target.proc.pid)
    reply = target.request("load", {"data": base64.b64encode(b"not a zip").decode(), "force": True})
    assert reply is not None and reply["error"]["code"] == "invalid-payload"
    client.upload("fix-price", _packed(lab))
    reply = target.request(
        "apply", {"name": "fix-price", "consistency": "immediate", "force": True, "timeout": 3}
    )
    assert reply is not None and reply["ok"], reply
    assert target.call() == "6"
    records = [r for r in store.read_audit(None) if r.get("pid") == target.proc.pid]
    (load,) = [r for r in records if r["action"] == "load"]
    assert load["result"] == "invalid-payload" and load["flags"] == ["force"]
    assert load["peer"] == {"via": "socket", "uid": os.getuid(), "pid": os.getpid()}
    (apply,) = [r for r in records if r["action"] == "apply"]
    assert apply["result"] == "ok" and apply["mode"] == "immediate"
    assert apply["flags"] == ["force"] and apply["timeout"] == 3
    assert apply["peer"]["pid"] == os.getpid()


def test_a_revert_asked_during_a_transition_is_recorded_with_who_asked(lab, tmp_path):
    """Issue 21 item 6: a revert asked for while the payload's apply is in its
    transition is in the audit log, with the peer that asked (before: not at all)."""
    mod = lab.module("shop", "def price(x):\n    return x * 2\n")
    lab.engine.upload("fix-price", lab.pack(FIX))
    audit = Audit(None)
    lab.engine.add_listener(audit)
    inside, release = threading.Event(), threading.Event()

    class Parked:
        def __mul__(self, other: Any) -> int:
            inside.set()
            release.wait(60)
            return 0

    parked = threading.Thread(target=mod.price, args=(Parked(),), daemon=True)
    parked.start()
    assert inside.wait(30)
    outcome: dict[str, Any] = {}

    def apply() -> None:
        try:
            lab.engine.apply("fix-price", timeout=600)
        except Exception as exc:  # noqa: BLE001 - checked below
            outcome["error"] = exc

    applier = threading.Thread(target=apply, daemon=True)
    try:
        applier.start()
        for _ in range(6000):
            if (lab.engine.status("fix-price").in_progress or {}).get("blockers"):
                break
            time.sleep(0.005)
        with requested_by("socket", 4242, 4343):
            result = lab.engine.revert("fix-price", timeout=30)
        assert result.state == "CHECKED"
        applier.join(60)
        assert outcome["error"].code == "vetoed"
    finally:
        release.set()
        parked.join(60)
        lab.engine.remove_listener(audit)
    asked = [
        r for r in store.read_audit(None)
        if r["action"] == "revert" and r["payload"] == "fix-price" and r["event"] == "requested"
        and r["peer"] == {"via": "socket", "uid": 4242, "pid": 4343}
    ]  # fmt: skip
    assert asked and all(r["timeout"] == 30 for r in asked)


def test_an_audit_log_that_cannot_be_written_is_reported_and_can_refuse(lab, tmp_path):
    """Issue 21 item 6: when the audit log cannot be written (here: its file is a
    directory) the reply of each action says so (``audit_error``), and with
    ``PYLIVEPATCH_AUDIT=require`` the agent refuses the action (``audit-failed``)."""
    for policy, state in (("", "best-effort"), ("require", "require")):
        state_dir = tmp_path / state
        (state_dir / "apps" / store.NO_APP).mkdir(parents=True, mode=0o700)
        os.chmod(state_dir, 0o700)
        os.chmod(state_dir / "apps", 0o700)
        (state_dir / "apps" / store.NO_APP / "audit.jsonl").mkdir()
        target = Target(lab, PYLIVEPATCH_STATE_DIR=str(state_dir), PYLIVEPATCH_AUDIT=policy)
        try:
            client = Client(target.proc.pid)
            client.upload("fix-price", _packed(lab)) if not policy else None
            if policy:
                reply = target.request(
                    "upload",
                    {
                        "name": "fix-price",
                        "data": base64.b64encode(_packed(lab).read_bytes()).decode(),
                    },
                )
                assert reply is not None and reply["error"]["code"] == "audit-failed", reply
                assert "audit.jsonl" in reply["error"]["message"]
                assert client.list() == [], "refused: nothing uploaded"
            else:
                reply = target.request("apply", {"name": "fix-price"})
                assert reply is not None and reply["ok"], reply
                assert "audit.jsonl" in reply["audit_error"]
                assert target.call() == "6"
        finally:
            target.stop()


def test_the_client_and_the_command_line_say_when_the_audit_log_was_not_written(lab, tmp_path):
    """Issue 21 item 6, the caller's side: ``Client.audit_error`` carries the agent's
    ``audit_error`` (and ``on_audit_error`` is told), and ``pylivepatch load`` prints a
    warning naming the process and the log while the action itself succeeds."""
    state_dir = tmp_path / "state"
    (state_dir / "apps" / store.NO_APP).mkdir(parents=True, mode=0o700)
    os.chmod(state_dir, 0o700)
    os.chmod(state_dir / "apps", 0o700)
    (state_dir / "apps" / store.NO_APP / "audit.jsonl").mkdir()  # cannot be written
    target = Target(lab, PYLIVEPATCH_STATE_DIR=str(state_dir))
    told: list[tuple[int, str]] = []
    try:
        client = Client(target.proc.pid)
        saved = Client.on_audit_error
        Client.on_audit_error = lambda pid, text: told.append((pid, text))
        try:
            client.upload("fix-price", _packed(lab))
        finally:
            Client.on_audit_error = saved
        assert client.audit_error is not None and "audit.jsonl" in client.audit_error
        assert told and told[0][0] == target.proc.pid
        out = subprocess.run(
            [sys.executable, "-m", "pylivepatch", "apply", "fix-price", "-p", str(target.proc.pid)],
            capture_output=True, text=True, env=dict(os.environ, PYLIVEPATCH_STATE_DIR=str(state_dir)),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert f"warning: process {target.proc.pid} could not write its audit log" in out.stderr
        assert "audit.jsonl" in out.stderr and "Traceback" not in out.stderr
        assert target.call() == "6"  # the action ran
    finally:
        target.stop()


def test_the_agent_never_chmods_or_binds_through_a_planted_link(tmp_path):
    """A socket directory that is a symlink (another user may plant
    /tmp/pylivepatch-<uid> pointing at a directory of the victim's) is refused: the agent
    neither chmods the directory it points at nor binds its socket there."""
    from pylivepatch import LivepatchError
    from pylivepatch.agent import server

    victim = tmp_path / "home"
    victim.mkdir()
    os.chmod(victim, 0o755)
    link = tmp_path / "pylivepatch-link"
    link.symlink_to(victim)
    with pytest.raises(LivepatchError) as err:
        server._prepare_dir(link)
    assert err.value.code == "permission-denied" and "not a directory" in str(err.value)
    assert os.stat(victim).st_mode & 0o777 == 0o755, "the linked directory was chmodded"
    own = tmp_path / "own"
    own.mkdir()
    os.chmod(own, 0o755)
    server._prepare_dir(own)  # our own plain directory: made private, as before
    assert os.stat(own).st_mode & 0o777 == 0o700


HALF_IMPORTED = """
import sys, types
sys.path[:0] = [{root!r}]
import pylivepatch
from pylivepatch.agent import protocol
pylivepatch.start()
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "half":
        # green-thread libraries half imported by another thread: no function defined yet
        sys.modules["eventlet.patcher"] = types.ModuleType("eventlet.patcher")
        sys.modules["gevent.monkey"] = types.ModuleType("gevent.monkey")
    elif line.strip() == "broken":
        def broken(name):
            raise RuntimeError("a library's own bug")
        sys.modules["gevent.monkey"].is_module_patched = broken
    else:
        sys.modules.pop("eventlet.patcher", None)
        sys.modules.pop("gevent.monkey", None)
    print("done", flush=True)
"""


def test_a_connection_that_cannot_be_served_never_ends_the_agent(lab):
    """A connection accepted while a green-thread library is half imported by another
    thread is served as usual (the library has patched nothing yet); one that fails
    inside the agent before its thread starts is closed, logged, and the agent goes on
    serving (before: the listener thread died on the AttributeError, under eventlet,
    and every later request hung)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HALF_IMPORTED.format(root=str(lab.root))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=SRC),
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready"

        def step(command: str) -> None:
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "done"

        step("half")
        assert Client(proc.pid).list() == []
        step("broken")
        with pytest.raises(Exception):  # noqa: B017 - closed without an answer, any client error
            Client(proc.pid).list()
        step("clean")
        assert Client(proc.pid).list() == []
    finally:
        proc.stdin.close()
        proc.wait(30)
    assert "a control connection could not be served" in proc.stderr.read()


PATCHED_AFTER_START = """
import gc, sys, threading
sys.path[:0] = [{root!r}]
import pylivepatch
pylivepatch.start()  # as in a gunicorn gevent worker: the agent first (at fork), then
from gevent import monkey  # the worker patches everything
monkey.patch_all()
import gevent.hub
print("ready", flush=True)
for line in sys.stdin:
    main = threading.main_thread().ident
    hubs = [h for h in gc.get_objects() if isinstance(h, gevent.hub.Hub)]
    print(sum(1 for h in hubs if h.thread_ident != main),
          sorted(t.name for t in threading.enumerate() if t.name.startswith("pylivepatch")),
          flush=True)
"""


def test_an_agent_started_before_gevent_patches_never_runs_gevent_in_its_threads(lab):
    """Issue 20: a gunicorn gevent worker starts its agent at the fork and then patches
    everything. The agent's connections are plain sockets made from the listening
    socket's class, served on OS threads that are not ``threading`` threads, counted
    under an OS lock: no gevent hub starts in the agent's threads (before: a connection
    accepted after the patch was a gevent socket, whose hub's imports took the patched
    import locks; the agent's thread died of a RecursionError, or hung with the worker,
    now and then, in about one start of ten)."""
    pytest.importorskip("gevent")
    proc = subprocess.Popen(
        [sys.executable, "-c", PATCHED_AFTER_START.format(root=str(lab.root))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=SRC),
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(5):
            assert Client(proc.pid).list() == []
        proc.stdin.write("count\n")
        proc.stdin.flush()
        assert proc.stdout.readline().split(" ", 1) == ["0", "['pylivepatch-agent']\n"]
    finally:
        proc.stdin.close()
        proc.wait(30)
    err = proc.stderr.read()
    assert "Traceback" not in err and "Exception ignored" not in err, err
