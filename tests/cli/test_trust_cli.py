"""The command line under bad luck and odd input (issue 21, items 4, 5 and 7; issue 20):
all or nothing and a report that is the truth, no traceback and no hang.

Real agents where the real engine can be brought to the case (a hook that vetoes a
revert); where it cannot be brought there on cue (an agent busy at the clean-up, a
reply of the wrong shape, one that trickles in), a scripted agent: a real process of
this user on a real socket, whose credentials pass the checks, answering from a script.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pylivepatch import Client, LivepatchError
from pylivepatch.agent import protocol

SRC = str(Path(__file__).resolve().parents[2] / "src")

PROGRAM = """
import sys
sys.path[:0] = [{root!r}]
import {module} as shop
print("ready", flush=True)
for line in sys.stdin:
    print(shop.price(2), flush=True)
"""

#: vetoes its apply where LPT_NO_APPLY is set and its revert where LPT_NO_REVERT is
FIX = """
    import os
    import pylivepatch as lp
    patch = lp.Patch("fix-price", consistency="atomic")

    @patch.function("{m}shop:price")
    def price(x):
        return x * 3

    @patch.pre_apply
    def refuse_apply(ctx):
        return not os.environ.get("LPT_NO_APPLY")

    @patch.pre_revert
    def refuse_revert(ctx):
        return not os.environ.get("LPT_NO_REVERT")
"""


def cli(*args: str, cwd: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pylivepatch", *args], cwd=cwd, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=SRC), timeout=120, **kw,
    )  # fmt: skip


class Proc:
    """A process under ``pylivepatch run --app APP`` that prints ``shop.price(2)``."""

    def __init__(self, lab, app: str, **env: str) -> None:
        program = PROGRAM.format(root=str(lab.root), module=lab.name("shop"))
        self.p = subprocess.Popen(
            [sys.executable, "-m", "pylivepatch", "run", "--app", app, "--",
             sys.executable, "-c", program],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONPATH=SRC, **env),
        )  # fmt: skip
        assert self.p.stdout is not None and self.p.stdout.readline().strip() == "ready"
        self.pid = self.p.pid

    def call(self) -> str:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write("x\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()

    def stop(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.close()
        self.p.wait(10)


@pytest.fixture
def procs(lab) -> Iterator[Any]:
    started: list[Proc] = []
    lab.module("shop", "def price(x):\n    return x * 2\n")

    def start(app: str, **env: str) -> Proc:
        proc = Proc(lab, app, **env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


# --- all or nothing, and the report is the truth ---------------------------------------


@pytest.mark.parametrize("form", ["text", "json"])
def test_a_rollback_that_cannot_revert_names_the_process_and_exits_3(lab, procs, form):
    """-p X -p Y: X applies, Y refuses, X's revert is vetoed: the report says X still
    has the payload APPLIED and how to revert it (exit 3), never "then reverted"; Y is
    left with nothing uploaded. The table and --json say the same."""
    app = f"rb-{lab.prefix}".rstrip("_")
    x = procs(app, LPT_NO_REVERT="1")
    y = procs(app, LPT_NO_APPLY="1")
    (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
    args = ["load", "fix.lpz", "-p", str(x.pid), "-p", str(y.pid)]
    out = cli(*args, *(["--json"] if form == "json" else []), cwd=lab.root)
    assert out.returncode == 3, out
    assert "Traceback" not in out.stderr
    hint = f"pylivepatch revert fix-price -p {x.pid}"
    if form == "json":
        doc = json.loads(out.stdout)
        assert doc["ok"] is False and doc["error"]["code"] == "vetoed"
        assert set(doc["left"]) == {str(x.pid)}
        assert "still APPLIED" in doc["left"][str(x.pid)] and hint in doc["left"][str(x.pid)]
        assert doc["processes"][str(x.pid)] == doc["left"][str(x.pid)]
        assert "then reverted" not in out.stdout
        y_result = doc["processes"][str(y.pid)]
    else:
        rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:] if line.strip()}
        assert "still APPLIED" in rows[str(x.pid)] and hint in rows[str(x.pid)]
        assert "then reverted" not in out.stdout
        assert f"left in process {x.pid}: " in out.stderr
        y_result = rows[str(y.pid)]
    assert "vetoed" in y_result and "unloaded again" in y_result
    assert x.call() == "6", "the report says X runs the new code: it does"
    assert y.call() == "4"
    listed = json.loads(cli("list", "-p", str(y.pid), "--json", cwd=lab.root).stdout)
    assert listed == {str(y.pid): []}, "nothing is left uploaded in Y"


def test_a_process_of_the_app_without_an_agent_fails_the_load_before_any_change(lab):
    """A master under `pylivepatch run --app` starts a worker of the same program
    without an agent (as uWSGI's C fork does): `load --app` names it and changes
    nothing, instead of reporting `applied` for the processes it reached."""
    lab.module("shop", "def price(x):\n    return x * 2\n")
    app = f"na-{lab.prefix}".rstrip("_")
    master, worker = _master_with_bare_worker(lab, app)
    try:
        assert master.stdin is not None
        (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
        for form in ([], ["--json"]):
            out = cli("load", "fix.lpz", "--app", app, *form, cwd=lab.root)
            assert out.returncode == 1, out
            assert f"{worker} (child of {master.pid})" in out.stderr + out.stdout
            assert "no pylivepatch agent" in out.stderr + out.stdout
            assert "applied" not in out.stdout
        master.stdin.write("x\n")
        master.stdin.flush()
        assert master.stdout.readline().strip() == "4", "nothing changed"
        listed = json.loads(cli("list", "--app", app, "--json", cwd=lab.root).stdout)
        assert listed == {str(master.pid): []}
    finally:
        if master.stdin is not None:
            master.stdin.close()
        master.wait(10)


# --- a scripted agent -----------------------------------------------------------------

#: Binds SOCKET_DIR/<its pid>.sock; SCRIPT maps a verb to a list of replies, used in
#: order (the last one again and again); a reply {"trickle": [seconds, reply]} is sent
#: one byte at a time. Each request's verb is appended to LOG.
SCRIPTED = textwrap.dedent(
    """
    import json, os, socket, struct, sys, time
    directory, script, log = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    path = os.path.join(directory, f"{os.getpid()}.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(16)
    print("ready", flush=True)
    used = {}
    while True:
        c, _ = s.accept()
        try:
            while True:
                head = c.recv(4)
                if len(head) < 4:
                    break
                (n,) = struct.unpack(">I", head)
                body = b""
                while len(body) < n:
                    body += c.recv(n - len(body))
                verb = json.loads(body)["verb"]
                with open(log, "a") as f:
                    f.write(verb + "\\n")
                replies = script.get(verb) or [{"ok": True, "result": None}]
                i = used.get(verb, 0)
                used[verb] = i + 1
                reply = replies[min(i, len(replies) - 1)]
                if "trickle" in reply:
                    pause, reply = reply["trickle"]
                    data = json.dumps({"v": 1, **reply}).encode()
                    for byte in struct.pack(">I", len(data)) + data:
                        c.sendall(bytes([byte]))
                        time.sleep(pause)
                    continue
                data = json.dumps({"v": 1, **reply}).encode()
                c.sendall(struct.pack(">I", len(data)) + data)
        except OSError:
            pass
        c.close()
    """
)

OK_UPLOAD = {"ok": True, "result": {"action": "upload", "name": "fix-price", "state": "CHECKED",
                                    "noop": False, "message": "uploaded"}}  # fmt: skip
OK_UNLOAD = {"ok": True, "result": {"action": "unload", "name": "fix-price", "state": None,
                                    "noop": False, "message": "unloaded"}}  # fmt: skip
BUSY = {"ok": False, "error": {"code": "busy", "errno": 16, "message": "another action runs"}}


@pytest.fixture
def scripted(tmp_path) -> Iterator[Any]:
    started: list[subprocess.Popen[str]] = []
    directory = protocol.socket_dir()
    protocol.prepare_dir(directory)

    def start(script: dict[str, list[dict[str, Any]]]) -> tuple[int, Path]:
        log = tmp_path / f"verbs-{len(started)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPTED, str(directory), json.dumps(script), str(log)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc.pid, log

    yield start
    for proc in started:
        proc.kill()
        proc.wait(10)
        protocol.socket_path(proc.pid).unlink(missing_ok=True)


def verbs(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


@pytest.mark.parametrize("busy_unloads", [3, 1000])
def test_a_failed_load_whose_clean_up_is_busy_retries_it_or_names_the_leftover(
    lab, scripted, busy_unloads
):
    """The apply gets busy and so does the clean-up unload: it is tried again while
    busy (bounded); if it never succeeds, the report names the payload left uploaded
    and the command that removes it (exit 3) instead of ignoring it."""
    lab.module("shop", "def price(x):\n    return x * 2\n")
    (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
    pid, log = scripted(
        {"upload": [OK_UPLOAD], "apply": [BUSY], "unload": [BUSY] * busy_unloads + [OK_UNLOAD]}
    )
    out = cli("load", "fix.lpz", "-p", str(pid), "--json", cwd=lab.root)
    doc = json.loads(out.stdout)
    assert verbs(log)[:2] == ["upload", "apply"]
    if busy_unloads == 3:
        assert out.returncode == 2, out  # busy: try again; nothing is left
        assert verbs(log)[2:] == ["unload"] * 4
        assert doc["processes"][str(pid)].endswith("; unloaded again")
        assert "left" not in doc
    else:
        assert out.returncode == 3, out
        assert len(verbs(log)) > 3, "the unload was tried again"
        left = doc["left"][str(pid)]
        assert "still uploaded (CHECKED)" in left
        assert f"pylivepatch unload fix-price -p {pid}" in left


@pytest.mark.parametrize(
    "verb, reply",
    [
        ("ping", {"ok": True, "result": {"pid": "1", "app": 2, "python": None, "applied": 3}}),
        ("ping", {"ok": True, "result": [1, 2]}),
        ("list", {"ok": True, "result": [{"name": 5}]}),
        ("list", {"ok": True, "result": {"not": "a list"}}),
        ("status", {"ok": True, "result": {"name": "fix-price", "funcs": 7}}),
        ("log", {"ok": True, "result": [1, "two"]}),
        ("unload", {"ok": True, "result": {"action": 1, "noop": "yes"}}),
        ("unload", {"ok": "yes"}),
        ("unload", {"ok": False, "error": "boom"}),
        ("unload", {"ok": False, "error": {"code": 5, "message": []}}),
        ("unload", {"ok": False, "error": {"code": "no-such-code", "message": "x"}}),
    ],
)
def test_a_malformed_reply_is_a_clear_error(lab, scripted, verb, reply):
    """Replies of the wrong shape or types: `internal`, naming a malformed reply (or
    the unknown code), never a TypeError; the command line prints one line."""
    pid, _ = scripted({verb: [reply]})
    client = Client(pid)
    call = {
        "ping": client.ping,
        "list": client.list,
        "status": lambda: client.status("fix-price"),
        "log": client.log,
        "unload": lambda: client.unload("fix-price"),
    }[verb]
    with pytest.raises(LivepatchError) as err:
        call()
    assert err.value.code == "internal", err.value
    assert "malformed reply" in err.value.message or "no-such-code" in err.value.message
    args = {"ping": ["ps", "-p"], "list": ["list", "-p"], "status": ["status", "fix-price", "-p"],
            "log": ["log", "--events", "-p"], "unload": ["unload", "fix-price", "-p"]}[verb]  # fmt: skip
    out = cli(*args, str(pid), cwd=lab.root)
    assert "Traceback" not in out.stderr, out.stderr
    if verb != "ping":  # ps lists what answers a ping well, and only that
        assert out.returncode == 1 and "pylivepatch: internal: " in out.stderr, out


def test_a_reply_that_trickles_in_meets_the_request_deadline(scripted):
    """One byte every 0.3 s: the client's timeout is for the whole request, not per
    read, so it ends in `timeout` instead of waiting as long as the bytes come."""
    ping = {"pid": 1, "app": "", "python": "3", "applied": []}
    pid, _ = scripted({"ping": [{"trickle": [0.3, {"ok": True, "result": ping}]}]})
    started = time.monotonic()
    with pytest.raises(LivepatchError) as err:
        Client(pid, timeout=1.5).ping()
    assert err.value.code == "timeout" and "no reply within 1.5 s" in err.value.message
    assert time.monotonic() - started < 10  # the reply would take 25 s


def test_refusals_of_a_full_agent_say_busy_never_broken_pipe(lab):
    """The agent's connection slots are full: it answers `busy` at once and closes,
    before reading a large request. Every refusal is `busy` (exit 2), not a broken
    pipe."""
    from pylivepatch.agent.server import MAX_CONNECTIONS

    lab.module("shop", "def price(x):\n    return x * 2\n")
    proc = Proc(lab, f"busy-{lab.prefix}".rstrip("_"))
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(protocol.socket_path(proc.pid)))
            held.append(s)
        for _ in range(200):  # until the agent has taken every one of them
            try:
                Client(proc.pid, timeout=5).ping()
            except LivepatchError as exc:
                if exc.code == "busy":
                    break
            time.sleep(0.01)
        big = os.urandom(3 * 1024 * 1024)  # 4 MiB of base64: more than a socket buffer
        codes = []
        for _ in range(36):
            try:
                Client(proc.pid, timeout=5).load(big)
                codes.append("ok")
            except LivepatchError as exc:
                codes.append(exc.code)
        assert codes == ["busy"] * 36, codes
        out = cli("status", "fix-price", "-p", str(proc.pid), cwd=lab.root)
        assert out.returncode == 2 and "pylivepatch: busy: " in out.stderr, out
    finally:
        for s in held:
            s.close()
        proc.stop()


# --- no traceback and no hang in the readers -------------------------------------------


def _archive(manifest: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("manifest.json", manifest)
        zf.writestr("payload/__init__.py", "")
    return buf.getvalue()


def test_a_manifest_nested_200000_deep_is_refused_before_it_is_parsed(lab, tmp_path):
    deep = tmp_path / "deep.lpz"
    deep.write_bytes(_archive(b"[" * 200_000 + b"]" * 200_000))
    obj = tmp_path / "deepobj.lpz"
    obj.write_bytes(_archive(b'{"name": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001))
    for path in (deep, obj):
        for args in (["inspect", str(path)], ["install", str(path), "--app", "deep"],
                     ["load", str(path), "-p", str(os.getpid())]):  # fmt: skip
            out = cli(*args, cwd=lab.root)
            assert out.returncode == 1, (args, out)
            assert "Traceback" not in out.stderr and "RecursionError" not in out.stderr
            assert "pylivepatch: invalid-payload: " in out.stderr
            assert "nests deeper than" in out.stderr, out.stderr


def test_a_fifo_or_a_device_as_the_payload_is_refused_at_once(lab, tmp_path):
    fifo = tmp_path / "payload.lpz"
    os.mkfifo(fifo)
    for args in (["inspect", str(fifo)], ["load", str(fifo), "-p", str(os.getpid())],
                 ["load", "/dev/zero", "-p", str(os.getpid())],
                 ["install", "/dev/zero", "--app", "z"], ["inspect", str(tmp_path)]):  # fmt: skip
        out = cli(*args, cwd=lab.root)
        assert out.returncode == 1, (args, out)
        assert "is not a regular file" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_a_closed_stdout_is_no_error(lab):
    """`pylivepatch log | head`: the reader went away; no "error: Broken pipe", no
    traceback, exit 141 (as a shell reports SIGPIPE)."""
    r, w = os.pipe()
    os.close(r)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pylivepatch", "completion", "bash"], stdout=w,
            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=SRC), timeout=60,
        )  # fmt: skip
    finally:
        os.close(w)
    assert out.stderr == "", out.stderr
    assert out.returncode == 141


def test_the_tests_never_use_the_callers_socket_directory(tmp_path):
    """A caller's PYLIVEPATCH_SOCKET_DIR is neither used nor made private by the
    suite (conftest drops it): a test that starts an agent leaves it as it was."""
    mine = tmp_path / "callers-sockets"
    mine.mkdir(mode=0o755)
    mine.chmod(0o755)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         str(Path(__file__).resolve().parents[1] / "agent" / "test_agent.py") + "::test_socket_directory_and_socket_modes"],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYLIVEPATCH_SOCKET_DIR=str(mine)),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert stat.S_IMODE(mine.stat().st_mode) == 0o755 and not list(mine.iterdir())


def test_the_readers_only_refuse_whatever_they_are_given():
    """Hypothesis over the command line's readers: payload bytes, nested JSON text,
    replies of any shape; only their own refusals come out."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    from pylivepatch.payload import archive

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
        max_leaves=20,
    )
    client = Client(1)

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(
        verb=st.sampled_from(["ping", "list", "status", "log", "load", "unload"]),
        ok=st.sampled_from([True, False, None, "yes"]),
        body=json_values,
    )
    def replies(verb: str, ok: Any, body: Any) -> None:
        try:
            client._answer(verb, {"ok": ok, "result": body, "error": body})
        except LivepatchError:
            pass

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(depth=st.integers(0, 3000), opener=st.sampled_from(["[", '{"a":']))
    def nested(depth: int, opener: str) -> None:
        closer = "]" if opener == "[" else "}"
        text = (opener * depth + "1" + closer * depth).encode()
        try:
            value = archive.loads_bounded(text)
        except ValueError:
            assert depth > archive.MAX_DEPTH
        else:
            assert depth <= archive.MAX_DEPTH and value is not None
        try:
            archive.read(_archive(text))
        except LivepatchError:
            pass

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(data=st.binary(max_size=2048))
    def payload_bytes(data: bytes) -> None:
        for blob in (data, _archive(data), base64.b64encode(data)):
            try:
                archive.read(blob)
            except LivepatchError:
                pass

    replies()
    nested()
    payload_bytes()


def test_a_socket_named_after_no_process_is_an_impostor(lab, scripted):
    """A socket in one's own directory named after a pid that does not exist, with a
    listener behind it: `untrusted-socket` naming the listener, and `ps` does not list
    it (before, `ps` listed what it answered)."""
    ping = {"pid": 999_999_998, "app": "ghost", "python": "3", "applied": []}
    pid, log = scripted({"ping": [{"ok": True, "result": ping}]})
    ghost = protocol.socket_path(999_999_998)
    ghost.symlink_to(protocol.socket_path(pid))
    try:
        with pytest.raises(LivepatchError) as err:
            Client(999_999_998).ping()
        assert err.value.code == "untrusted-socket"
        assert f"there is no process 999999998, and the process listening there is pid {pid}" in (
            err.value.message
        )
        out = cli("ps", "--json", cwd=lab.root)
        assert out.returncode == 0 and 999_999_998 not in [p["pid"] for p in json.loads(out.stdout)]
        assert "there is no process 999999998" in out.stderr
        assert verbs(log) == ["ping"], "only the scripted agent's own pid was asked (by ps)"
    finally:
        ghost.unlink()


def test_deep_json_in_a_signature_or_the_audit_log_is_no_traceback(lab, tmp_path):
    """A SIGNATURE member of 2,000 nested arrays (under the 4 KiB signature cap) is a
    malformed signature for `verify`; an audit log line nested as deep is skipped by
    `log` like a cut line."""
    from pylivepatch.agent import store

    lab.module("shop", "def price(x):\n    return x * 2\n")
    data = lab.pack(FIX)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    members["SIGNATURE"] = b"[" * 2000 + b"]" * 2000
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    signed = tmp_path / "signed.lpz"
    signed.write_bytes(buf.getvalue())
    assert cli("keygen", "-o", str(tmp_path / "k"), cwd=lab.root).returncode == 0
    out = cli("verify", str(signed), "--keys", str(tmp_path / "k.pub"), cwd=lab.root)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out
    assert "pylivepatch: signature-invalid: " in out.stderr and "malformed" in out.stderr
    app = f"deep-{lab.prefix}".rstrip("_")
    store.append_audit(app, {"action": "load", "payload": "ok-one", "result": "ok"})
    with open(store.audit_path(app), "a") as fh:
        fh.write("[" * 5000 + "]" * 5000 + "\n")
    out = cli("log", "--app", app, "--json", cwd=lab.root)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out
    assert [r["payload"] for r in json.loads(out.stdout)] == ["ok-one"]


PLAIN = """
    import pylivepatch as lp
    patch = lp.Patch("fix-price", consistency="atomic")

    @patch.function("{m}shop:price")
    def price(x):
        return x * 3
"""

CUMULATIVE = """
    import os
    import pylivepatch as lp
    patch = lp.Patch("fix-all", consistency="atomic", replace=True)

    @patch.function("{m}shop:price")
    def price(x):
        return x * 5

    @patch.pre_apply
    def refuse_apply(ctx):
        return not os.environ.get("LPT_NO_REPLACE")
"""


def test_a_replace_rolled_back_says_what_it_replaced_stays_reverted(lab, procs):
    """`replace` over -p X -p Y: X replaces fix-price with fix-all, Y refuses; the way
    back reverts fix-all in X, which leaves fix-price reverted there too: the report
    says so and how to apply it again (exit 3), not just "then reverted"."""
    app = f"rp-{lab.prefix}".rstrip("_")
    x, y = procs(app), procs(app, LPT_NO_REPLACE="1")
    (lab.root / "fix.lpz").write_bytes(lab.pack(PLAIN))
    (lab.root / "all.lpz").write_bytes(lab.pack(CUMULATIVE))
    targets = ["-p", str(x.pid), "-p", str(y.pid)]
    assert cli("load", "fix.lpz", *targets, cwd=lab.root).returncode == 0
    assert cli("upload", "all.lpz", *targets, cwd=lab.root).returncode == 0
    out = cli("replace", "fix-all", *targets, "--json", cwd=lab.root)
    assert out.returncode == 3, out
    doc = json.loads(out.stdout)
    assert doc["error"]["code"] == "vetoed"
    left = doc["left"][str(x.pid)]
    assert "then reverted" in left and "(fix-price) stay reverted" in left
    assert f"pylivepatch apply fix-price -p {x.pid}" in left
    assert x.call() == "4", "X runs the original code, as the report says"
    assert y.call() == "6"


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e400", "ten", "604801"])
def test_a_timeout_that_is_not_a_finite_number_in_range_is_a_usage_error(tmp_path, value):
    """Issue 21 item 3, the command line's side: ``--timeout`` is checked before anything
    is sent (the agent checks it again: ``bad-request``). Process 1 has no agent here, so
    a check made only after connecting would say ``not-found`` instead."""
    for verb in (["apply", "fix"], ["revert", "fix"], ["replace", "fix"]):
        out = cli(*verb, "-p", "1", "--timeout", value, cwd=tmp_path)
        assert out.returncode == 1, out
        assert "pylivepatch: usage: argument --timeout" in out.stderr, out.stderr
        assert "not-found" not in out.stderr and "Traceback" not in out.stderr
    out = cli("load", str(tmp_path / "none.lpz"), "-p", "1", "--timeout", value, cwd=tmp_path)
    assert out.returncode == 1 and "argument --timeout" in out.stderr, out.stderr


# --- review of the multi-process actions: rollback, late workers, newcomers, modules ----


def _master_with_bare_worker(lab, app: str) -> tuple[subprocess.Popen[str], str]:
    """A master under `pylivepatch run --app APP` (it prints ``shop.price(2)`` per line)
    with a worker of the same program that has no agent."""
    code = textwrap.dedent(
        f"""
        import os, subprocess, sys
        sys.path[:0] = [{str(lab.root)!r}]
        import {lab.name("shop")} as shop
        env = {{k: v for k, v in os.environ.items() if not k.startswith("PYLIVEPATCH")}}
        env["PYTHONPATH"] = ""
        worker = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                  stdin=subprocess.PIPE, env=env)
        print("ready", worker.pid, flush=True)
        for line in sys.stdin:
            print(shop.price(2), flush=True)
        worker.stdin.close()
        worker.wait()
        """
    )
    master = subprocess.Popen(
        [sys.executable, "-m", "pylivepatch", "run", "--app", app, "--",
         sys.executable, "-c", code],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=SRC),
    )  # fmt: skip
    assert master.stdout is not None
    ready, worker = master.stdout.readline().split()
    assert ready == "ready"
    return master, worker


def _call(master: subprocess.Popen[str]) -> str:
    assert master.stdin is not None and master.stdout is not None
    master.stdin.write("x\n")
    master.stdin.flush()
    return master.stdout.readline().strip()


def test_a_rollback_of_the_app_is_not_blocked_by_a_worker_without_an_agent(lab):
    """`revert --app` in an incident: a worker of the same program without an agent
    never had the payload; the revert still goes where it can (only load, apply and
    replace need every process)."""
    lab.module("shop", "def price(x):\n    return x * 2\n")
    app = f"rv-{lab.prefix}".rstrip("_")
    master, _worker = _master_with_bare_worker(lab, app)
    try:
        (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
        assert cli("load", "fix.lpz", "-p", str(master.pid), cwd=lab.root).returncode == 0
        assert _call(master) == "6"
        out = cli("revert", "fix-price", "--app", app, cwd=lab.root)
        assert out.returncode == 0, out
        assert _call(master) == "4"
        out = cli("apply", "fix-price", "--app", app, cwd=lab.root)
        assert out.returncode == 1 and "no pylivepatch agent" in out.stderr, out
        assert _call(master) == "4"
    finally:
        if master.stdin is not None:
            master.stdin.close()
        master.wait(10)


def test_a_worker_whose_agent_starts_during_the_wait_is_changed_too(lab):
    """A worker of the app whose agent starts while `replace --app` waits for it (a
    worker just spawned) is one of the processes the action changes: here it lacks the
    replacing payload, so the replace is refused and put back, where it once reported
    success for the master alone while the worker ran the old version."""
    lab.module("shop", "def price(x):\n    return x * 2\n")
    app = f"lw-{lab.prefix}".rstrip("_")
    go = lab.root / "go"
    worker_code = (
        f"import os, sys, time\nsys.path[:0] = [{str(lab.root)!r}, {SRC!r}]\n"
        f"import {lab.name('shop')}\n"
        f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.02)\n"
        "import pylivepatch\npylivepatch.start()\nsys.stdin.read()\n"
    )
    code = textwrap.dedent(
        f"""
        import os, subprocess, sys
        sys.path[:0] = [{str(lab.root)!r}]
        import {lab.name("shop")} as shop
        env = dict(os.environ, PYTHONPATH="")
        worker = subprocess.Popen([sys.executable, "-c", {worker_code!r}],
                                  stdin=subprocess.PIPE, env=env)
        print("ready", worker.pid, flush=True)
        for line in sys.stdin:
            print(shop.price(2), flush=True)
        worker.stdin.close()
        worker.wait()
        """
    )
    master = subprocess.Popen(
        [sys.executable, "-m", "pylivepatch", "run", "--app", app, "--",
         sys.executable, "-c", code],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=SRC),
    )  # fmt: skip
    try:
        assert master.stdout is not None
        ready, worker = master.stdout.readline().split()
        assert ready == "ready"
        (lab.root / "fix.lpz").write_bytes(lab.pack(PLAIN))
        (lab.root / "all.lpz").write_bytes(lab.pack(CUMULATIVE))
        mine = ["-p", str(master.pid)]
        assert cli("load", "fix.lpz", *mine, cwd=lab.root).returncode == 0
        assert cli("upload", "all.lpz", *mine, cwd=lab.root).returncode == 0
        run = subprocess.Popen(
            [sys.executable, "-m", "pylivepatch", "replace", "fix-all", "--app", app, "--json"],
            cwd=lab.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONPATH=SRC),
        )  # fmt: skip
        time.sleep(1.5)  # the command is waiting for the worker's agent (3 s at most)
        go.write_text("")
        stdout, stderr = run.communicate(timeout=120)
        assert run.returncode != 0, (stdout, stderr)
        doc = json.loads(stdout)
        assert str(worker) in doc["processes"], doc
        assert not doc["processes"][str(worker)].startswith("replaced"), doc
    finally:
        go.write_text("")
        if master.stdin is not None:
            master.stdin.close()
        master.wait(10)


#: applied in the first process, it starts a newcomer of the app (LPT_SPAWN: its argv)
#: and waits for the newcomer's agent, whose pid it writes to LPT_SPAWNED
SPAWNING = """
    import json, os, subprocess, sys, time
    import pylivepatch as lp
    patch = lp.Patch("fix-price", consistency="atomic")

    @patch.function("{m}shop:price")
    def price(x):
        return x * 3

    @patch.pre_apply
    def spawn(ctx):
        if os.environ.get("LPT_SPAWN"):
            from pylivepatch.agent import protocol
            p = subprocess.Popen(json.loads(os.environ.pop("LPT_SPAWN")),
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
            with open(os.environ["LPT_SPAWNED"], "w") as f:
                f.write(str(p.pid))
            for _ in range(600):
                if protocol.socket_path(p.pid).exists():
                    break
                time.sleep(0.05)
            time.sleep(0.5)
        return True
"""

OTHER_BUILD = """
    import pylivepatch as lp
    patch = lp.Patch("fix-price", consistency="atomic")

    @patch.function("{m}shop:price")
    def price(x):
        return x * 5
"""


def test_a_newcomer_holding_another_build_of_the_payload_is_not_called_applied(lab, procs):
    """A process of the app that appears during `load --app` with another build of the
    payload under the same name (installed for the app) is reported NOT changed (exit
    3), never "already applied"."""
    app = f"nb-{lab.prefix}".rstrip("_")
    spawned = lab.root / "spawned"
    program = PROGRAM.format(root=str(lab.root), module=lab.name("shop"))
    argv = [sys.executable, "-m", "pylivepatch", "run", "--app", app, "--",
            sys.executable, "-c", program]  # fmt: skip
    x = procs(app, LPT_SPAWN=json.dumps(argv), LPT_SPAWNED=str(spawned))
    (lab.root / "other.lpz").write_bytes(lab.pack(OTHER_BUILD))
    assert cli("install", "other.lpz", "--app", app, cwd=lab.root).returncode == 0
    try:
        (lab.root / "fix.lpz").write_bytes(lab.pack(SPAWNING))
        out = cli("load", "fix.lpz", "--app", app, "--json", cwd=lab.root)
        newcomer = spawned.read_text()
        assert out.returncode == 3, out
        doc = json.loads(out.stdout)
        assert "another build of fix-price" in doc["left"][newcomer], doc
        assert "already applied" not in doc["processes"][newcomer]
        assert x.call() == "6"
    finally:
        if spawned.exists():
            os.kill(int(spawned.read_text()), 15)


MISSPELT = """
    import pylivepatch as lp
    patch = lp.Patch("fix-price", consistency="atomic")

    @patch.function("{m}shop:price")
    def price(x):
        return x * 3

    @patch.function("{m}{module}:total")
    def total(x):
        return x
"""


def test_a_module_imported_in_no_process_of_the_app_is_refused_unless_importable(lab, procs):
    """`load --app` over several processes: a target module imported in none of them
    and importable nowhere (misspelt) is refused as in one process (exit 1, nothing
    left uploaded), not "applied; waits for the import"; one that exists but is not
    imported yet anywhere waits, as in one process."""
    app = f"mi-{lab.prefix}".rstrip("_")
    x, y = procs(app), procs(app)
    lab.module("shopp", "def total(x):\n    return x\n")  # only while it is built
    (lab.root / "bad.lpz").write_bytes(lab.pack(MISSPELT.replace("{module}", "shopp")))
    (lab.root / f"{lab.name('shopp')}.py").unlink()
    out = cli("load", "bad.lpz", "--app", app, "--json", cwd=lab.root)
    assert out.returncode == 1, out
    doc = json.loads(out.stdout)
    assert doc["error"]["code"] == "not-found", doc
    assert lab.name("shopp") in doc["error"]["message"], doc
    assert "imported in none" in doc["error"]["message"], doc
    listed = json.loads(cli("list", "--app", app, "--json", cwd=lab.root).stdout)
    assert listed == {str(x.pid): [], str(y.pid): []}, "nothing is left uploaded"
    assert x.call() == "4" and y.call() == "4"
    lab.module("later", "def total(x):\n    return x\n")
    (lab.root / "lazy.lpz").write_bytes(lab.pack(MISSPELT.replace("{module}", "later")))
    out = cli("load", "lazy.lpz", "--app", app, "--json", cwd=lab.root)
    assert out.returncode == 0, out
    assert x.call() == "6" and y.call() == "6"
