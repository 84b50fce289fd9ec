"""The agent and the Python bindings against a real target process (spec §9, §10)."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pylivepatch import Client, LivepatchError
from pylivepatch.agent import protocol

SRC = str(Path(__file__).resolve().parents[2] / "src")

TARGET_PROGRAM = """
import sys
sys.path[:0] = [{root!r}]
import pylivepatch
import {module} as shop
pylivepatch.start()
print("ready", flush=True)
import os, time
for line in sys.stdin:
    if line.strip() == "fork":
        child = os.fork()
        if child == 0:  # the child serves its own socket until killed
            while True:
                time.sleep(0.1)
        print(child, flush=True)
        continue
    print(shop.price(2), flush=True)
"""

FIX = """
    import pylivepatch as lp
    patch = lp.Patch("fix-price", consistency="atomic")

    @patch.function("{m}shop:price")
    def price(x):
        return x * 3
"""


@pytest.fixture
def target(lab):
    lab.module("shop", "def price(x):\n    return x * 2\n")
    program = TARGET_PROGRAM.format(root=str(lab.root), module=lab.name("shop"))
    proc = subprocess.Popen(
        [sys.executable, "-c", program],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=SRC),
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"

    def call() -> str:
        proc.stdin.write("x\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    try:
        yield proc, call
    finally:
        proc.stdin.close()
        proc.wait(10)


def test_load_status_revert_through_the_socket(lab, target):
    proc, call = target
    client = Client(proc.pid)
    assert client.ping()["pid"] == proc.pid
    assert call() == "4"
    result = client.load(lab.pack(FIX))
    assert result.state == "APPLIED" and result.pause_ns > 0
    assert call() == "6"
    (st,) = client.list()
    assert (st.name, st.state, st.rc) == ("fix-price", "APPLIED", 0)
    assert client.status("fix-price").funcs[0].active
    client.action("fix-price", "revert")
    assert call() == "4"
    assert any(ev["event"] == "swapped" for ev in client.log())


def test_errors_cross_the_socket_as_livepatch_errors(lab, target):
    proc, _ = target
    client = Client(proc.pid)
    with pytest.raises(LivepatchError) as err:
        client.apply("nope")
    assert err.value.code == "not-found" and "nope" in err.value.message
    with pytest.raises(LivepatchError) as err:
        client.upload("fix-price", b"not a zip")
    assert err.value.code == "invalid-payload"
    with pytest.raises(LivepatchError) as err:
        Client(999_999_999).ping()
    assert err.value.code == "not-found"


def test_socket_directory_and_socket_modes(target):
    proc, _ = target
    path = protocol.socket_path(proc.pid)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.parent.stat().st_uid == os.getuid()


def test_oversized_and_stalled_clients_do_not_block_others(target):
    proc, _ = target
    path = str(protocol.socket_path(proc.pid))
    big = socket.socket(socket.AF_UNIX)
    big.connect(path)
    big.sendall(struct.pack(">I", protocol.MAX_MESSAGE + 1))
    reply = protocol.receive(big)
    assert reply and not reply["ok"] and "cap" in reply["error"]["message"]
    big.close()
    stalled = socket.socket(socket.AF_UNIX)
    stalled.connect(path)
    stalled.sendall(b"\x00\x00")  # half a header, then nothing
    garbage = socket.socket(socket.AF_UNIX)
    garbage.connect(path)
    garbage.sendall(struct.pack(">I", 5) + b"nope!")
    reply = protocol.receive(garbage)
    assert reply and reply["error"]["code"] == "bad-request"
    assert Client(proc.pid).ping()["pid"] == proc.pid, "others are served meanwhile"
    stalled.close()
    garbage.close()


def connections(pid: int) -> set[str]:
    """The sockets process ``pid`` holds open, named by inode: its agent's listening
    socket and one per open control connection (the target has no other)."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:"):
            found.add(link)
    return found


def settled_connections(pid: int, count: int) -> set[str]:
    """The target's sockets once it holds ``count`` of them (a closed connection is
    closed by the agent's thread a moment after the reply)."""
    deadline = time.monotonic() + 30
    while len(found := connections(pid)) != count and time.monotonic() < deadline:
        time.sleep(0.01)
    return found


def test_a_client_in_a_with_block_keeps_one_connection(lab, target):
    proc, call = target
    listening = settled_connections(proc.pid, 1)
    # control: without ``with`` each request has a connection of its own, closed after it
    client = Client(proc.pid)
    client.ping()
    assert settled_connections(proc.pid, 1) == listening
    with Client(proc.pid) as kept:
        kept.ping()
        first = connections(proc.pid)
        assert len(first) == 2
        kept.load(lab.pack(FIX))
        assert call() == "6"
        kept.revert("fix-price")
        assert kept.status("fix-price").state == "CHECKED"
        assert connections(proc.pid) == first, "every request went over the first connection"
        with kept:  # nested: still the same connection
            kept.ping()
        assert connections(proc.pid) == first
    assert settled_connections(proc.pid, 1) == listening, "closed at the end of the block"
    assert call() == "4"


def test_a_kept_connection_is_renewed_when_idle_or_closed_by_the_agent(target):
    proc, _ = target
    listening = settled_connections(proc.pid, 1)
    with Client(proc.pid) as kept:
        kept.KEEP_IDLE = 0.0  # renewed before every request
        kept.ping()
        first = connections(proc.pid) - listening
        kept.ping()
        assert len(second := settled_connections(proc.pid, 2) - listening) == 1
        assert second != first
        # the agent closes a connection idle for protocol.READ_TIMEOUT; a client that
        # does not renew it in time sends its next request over a new one
        kept.KEEP_IDLE = float("inf")
        assert settled_connections(proc.pid, 1) == listening
        assert kept.ping()["pid"] == proc.pid
        assert len(connections(proc.pid)) == 2


def _python_for_nobody() -> str | None:
    """An interpreter another user can run (pyenv's under /root may not be)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.mark.skipif(
    os.getuid() != 0 or not shutil.which("setpriv") or _python_for_nobody() is None,
    reason="needs root, setpriv and a system python3 another user can run",
)
def test_another_user_cannot_reach_the_agent(target):
    proc, _ = target
    probe = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX)\n"
        f"try:\n    s.connect({str(protocol.socket_path(proc.pid))!r})\n"
        "except PermissionError:\n    print('refused')\nelse:\n    print('connected')\n"
    )
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", _python_for_nobody(), "-c", probe],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.stdout.strip() == "refused", out.stderr


def test_a_forked_child_keeps_the_payload_and_gets_its_own_socket(lab, target):
    import signal

    proc, call = target
    Client(proc.pid).load(lab.pack(FIX))
    proc.stdin.write("fork\n")
    proc.stdin.flush()
    child = int(proc.stdout.readline())
    try:
        client = Client(child)
        deadline = time.monotonic() + 60  # the child's agent starts in its own time
        while True:
            try:
                pong = client.ping()
                break
            except LivepatchError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert pong["pid"] == child
        (st,) = client.list()
        assert (st.name, st.state) == ("fix-price", "APPLIED")
        assert Client(proc.pid).ping()["pid"] == proc.pid, "the parent still serves its own socket"
    finally:
        os.kill(child, signal.SIGKILL)  # the target reaps it when it exits
        protocol.socket_path(child).unlink(missing_ok=True)


@pytest.mark.skipif(
    os.getuid() != 0 or not shutil.which("setpriv") or _python_for_nobody() is None,
    reason="needs root, setpriv and a system python3 another user can run",
)
def test_a_peer_of_another_uid_is_refused_by_the_agent_and_audited(lab, monkeypatch):
    """Behind the file modes, the agent checks SO_PEERCRED itself: open the directory
    and socket to everyone, and another user still gets only `permission-denied`."""
    import json
    import tempfile

    from pylivepatch.agent import store

    runtime = Path(tempfile.mkdtemp(prefix="lp-runtime-"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    lab.module("shop", "def price(x):\n    return x * 2\n")
    program = TARGET_PROGRAM.format(root=str(lab.root), module=lab.name("shop"))
    proc = subprocess.Popen(
        [sys.executable, "-c", program], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env=dict(os.environ, PYTHONPATH=SRC),
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready"
        sock = protocol.socket_path(proc.pid)
        runtime.chmod(0o711)
        sock.parent.chmod(0o711)
        sock.chmod(0o666)
        probe = (
            "import json, socket, struct\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            f"s.connect({str(sock)!r})\n"
            "body = json.dumps({'v': 1, 'verb': 'list', 'args': {}}).encode()\n"
            "try:\n"
            "    s.sendall(struct.pack('>I', len(body)) + body)\n"
            "except BrokenPipeError:\n"
            "    pass  # refused and closed before our request was read: its reply waits\n"
            "def read(n):\n"
            "    data = b''\n"
            "    while len(data) < n:\n"
            "        chunk = s.recv(n - len(data))\n"
            "        assert chunk, data\n"
            "        data += chunk\n"
            "    return data\n"
            "print(read(struct.unpack('>I', read(4))[0]).decode())\n"
        )
        out = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             _python_for_nobody(), "-c", probe],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out.returncode == 0, out
        reply = json.loads(out.stdout)
        assert reply["ok"] is False and reply["error"]["code"] == "permission-denied", out
        assert "uid 65534 may not control this process" in reply["error"]["message"]
        sock.parent.chmod(0o700)  # the client refuses an open directory (untrusted-socket)
        assert Client(proc.pid).list() == [], "the owner is still served"
    finally:
        proc.stdin.close()
        proc.wait(10)
        shutil.rmtree(runtime, ignore_errors=True)
    (refused,) = [r for r in store.read_audit(None) if r["pid"] == proc.pid]
    assert (refused["action"], refused["result"]) == ("connect", "permission-denied")
    assert refused["peer"]["uid"] == 65534 and refused["peer"]["via"] == "socket"


def test_a_fork_during_an_import_of_the_agent_waits_for_it(tmp_path):
    """The program forks while an agent thread imports a module (the engine, at a first
    request): the fork waits for the import, so the child's agent can import too (it
    used to wait for good on the module's import lock, held by a thread the child does
    not have)."""
    (tmp_path / "slowmod.py").write_text(
        "import builtins, time\nbuiltins._plp_importing.set()\ntime.sleep(0.5)\nVALUE = 42\n"
    )
    code = textwrap.dedent(
        """
        import builtins, os, sys, threading
        from pylivepatch import process_engine

        builtins._plp_importing = threading.Event()
        t = threading.Thread(target=process_engine.imported, args=("slowmod",))
        t.start()
        builtins._plp_importing.wait(10)
        pid = os.fork()  # in the middle of the import
        if pid == 0:
            out = []
            child = threading.Thread(
                target=lambda: out.append(process_engine.imported("slowmod").VALUE), daemon=True
            )
            child.start()
            child.join(20)
            os._exit(0 if out == [42] else 3)
        t.join()
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert r.returncode == 0, r.stderr
