"""Hostile input and concurrent clients (security issue, first part): the payload reader
and the protocol answer any bytes with a clear error and nothing else; an agent keeps
serving through garbage, half-closed sockets and a thousand connections; many clients
acting at once leave a state that some sequential order of their actions explains."""

from __future__ import annotations

import io
import json
import random
import socket
import struct
import threading
import time
import warnings
import zipfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pylivepatch import Client, LivepatchError
from pylivepatch.agent import protocol
from pylivepatch.payload import archive
from test_agent import FIX, target  # noqa: F401 - the fixture is used by name

# --- the payload reader ------------------------------------------------------------------


def _valid(lab) -> bytes:
    lab.module("shop", "def price(x):\n    return x * 2\n")
    return lab.pack(FIX)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=4096))
def test_random_bytes_are_invalid_payloads(data):
    try:
        archive.read(data)
    except LivepatchError as exc:
        assert exc.code in ("invalid-payload", "signature-invalid")


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_mutated_archives_are_refused_or_read_whole(lab, data):
    """Flip, cut and insert bytes of a real archive: the reader either refuses with a
    spec error or returns a payload whose build id still matches its content."""
    if not hasattr(lab, "_valid"):
        lab._valid = _valid(lab)
    raw = bytearray(lab._valid)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[at] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[at : at + data.draw(st.integers(1, 64))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=64))
        if not raw:
            raw = bytearray(b"x")
    try:
        payload = archive.read(bytes(raw))
    except LivepatchError as exc:
        assert exc.code == "invalid-payload"
        return
    assert payload.manifest.build_id == archive.content_build_id(
        payload.manifest.canonical(with_build_id=False), payload.files
    )


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["manifest.json", "payload/__init__.py", "payload/a.py", "../x",
                             "/abs", "payload/../../x", "SIGNATURE", "other.txt", "payload/"]),
            st.binary(max_size=200),
        ),
        max_size=6,
    )
)  # fmt: skip
def test_hand_made_zips_are_refused_with_the_member_named(members):
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore")  # duplicate names are made on purpose
        for name, content in members:
            zf.writestr(name, content)
    try:
        archive.read(buf.getvalue())
    except LivepatchError as exc:
        assert exc.code == "invalid-payload" and exc.message


# --- the protocol -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_the_protocol_reader_answers_any_bytes(data):
    a, b = socket.socketpair()
    try:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        b.settimeout(5)
        try:
            message = protocol.receive(b)
        except protocol.ProtocolError:
            return
        assert message is None or (isinstance(message, dict) and message.get("v") == 1)
    finally:
        a.close()
        b.close()


def test_an_agent_serves_through_a_thousand_connections_and_garbage(target):  # noqa: F811
    proc, call = target
    path = str(protocol.socket_path(proc.pid))
    opened = []
    try:
        for _ in range(1000):  # connect and say nothing
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            opened.append(s)
        try:  # with a thousand connections held open: an answer or busy, never a hang
            assert Client(proc.pid, timeout=30).ping()["pid"] == proc.pid
        except LivepatchError as exc:
            assert exc.code == "busy", exc
        for s in opened[:200]:  # garbage, half-closed, a header that lies
            try:
                s.sendall(random.choice([b"\xff" * 7, struct.pack(">I", 3) + b"{}]", b"\x00"]))
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the agent already answered busy and closed this one
    finally:
        for s in opened:
            s.close()
    assert Client(proc.pid).ping()["pid"] == proc.pid
    assert call() == "4", "the program itself kept running"


def test_many_clients_at_once_match_some_sequential_order(lab, target):  # noqa: F811
    """Eight clients send random actions (upload, load, apply, revert, replace, unload)
    on four payloads — atomic, transition and a cumulative one — at the same time. Every
    action either ran or was refused (busy, wrong state...), nothing hangs, the program
    keeps answering, and replaying the actions that succeeded, in the order the engine
    logged them, gives exactly the final states."""
    proc, call = target
    datas = {}
    factors = {"fix-0": 3, "fix-1": 4, "fix-2": 5, "fix-r": 7}
    for name, factor in factors.items():
        mode = "transition" if name in ("fix-1", "fix-r") else "atomic"
        datas[name] = lab.pack(
            f"""
            import pylivepatch as lp
            patch = lp.Patch("{name}", consistency="{mode}", replace={name == "fix-r"})

            @patch.function("{{m}}shop:price")
            def price(x):
                return x * {factor}
            """
        )
    verbs = ["upload", "load", "apply", "revert", "replace", "unload"]
    outcomes: list[tuple[str, str, str]] = []
    errors: list[BaseException] = []
    served: list[str] = []

    def client(seed: int) -> None:
        rnd = random.Random(seed)
        c = Client(proc.pid, timeout=60)
        for _ in range(25):
            name, verb = rnd.choice(sorted(datas)), rnd.choice(verbs)
            try:
                if verb == "upload":
                    c.upload(name, datas[name])
                elif verb == "load":
                    c.load(datas[name])
                else:
                    getattr(c, verb)(name)
                outcomes.append((name, verb, "ok"))
            except LivepatchError as exc:
                outcomes.append((name, verb, exc.code))
            except BaseException as exc:  # noqa: BLE001 - collected and asserted empty
                errors.append(exc)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        served.append(call())
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert errors == []
    assert len(outcomes) == 8 * 25
    assert {code for *_, code in outcomes} <= {
        "ok", "busy", "wrong-state", "not-found", "exists", "dependency-mismatch",
    }  # fmt: skip
    assert set(served) <= {"4", "6", "8", "10", "14"}
    # replay what succeeded, in the engine's order
    events = Client(proc.pid).log()
    model: dict[str, str] = {}
    stack: list[str] = []
    for ev in events:
        if ev["event"] != "finished" or ev.get("rc", 0) != 0 or ev["payload"] not in datas:
            continue
        name, action = ev["payload"], ev["action"]
        if action == "upload":
            model[name] = "CHECKED"
        elif (action == "replace" or (action == "apply" and name == "fix-r")) and model.get(
            name
        ) == "CHECKED":
            for other in stack:  # replaced: CHECKED
                model[other] = "CHECKED"
            model[name], stack[:] = "APPLIED", [name]
        elif action == "apply" and model.get(name) == "CHECKED":
            model[name] = "APPLIED"
            stack.append(name)
        elif action == "revert" and model.get(name) == "APPLIED":
            model[name] = "CHECKED"
            stack.remove(name)
        elif action == "unload":
            model.pop(name, None)
    final = {s.name: s.state for s in Client(proc.pid).list()}
    assert final == model
    expected = str(2 * factors[stack[-1]]) if stack else "4"
    assert call() == expected, "the function runs the code of the last payload applied"
    json.dumps(outcomes)  # the record of what happened is plain data


def test_an_archive_asking_for_a_newer_zip_version_is_an_invalid_payload(lab):
    """Found by fuzz/run.py: zipfile raises NotImplementedError for a member whose
    "version needed to extract" is too high."""
    raw = bytearray(_valid(lab))
    at = raw.index(b"PK\x01\x02")  # the first central directory entry
    raw[at + 6 : at + 8] = (255).to_bytes(2, "little")
    try:
        archive.read(bytes(raw))
    except LivepatchError as exc:
        assert exc.code == "invalid-payload" and "not a readable zip" in exc.message
    else:
        raise AssertionError("accepted")
