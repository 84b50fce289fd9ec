"""Longer fuzzing of what reads hostile bytes: the payload reader, the protocol reader,
and the command line's readers (a manifest's JSON, an agent's reply to each verb).

    python fuzz/run.py [--seconds 300] [--seed N]

Mutation-based, standard library only: inputs are real payload archives, protocol
messages and agents' replies with bytes flipped, cut, inserted or repeated, zip members
renamed, brackets nested deep, and plain random bytes. A *crash* is any exception other
than the reader's own refusal (``LivepatchError`` / ``ProtocolError``); a *hang* is an
input that takes more than two seconds. The same properties run briefly in CI (tests/agent/test_hostile.py, hypothesis);
this script runs them for as long as asked and prints the figures kept in
docs/security.md; fuzz/coverage_guided.py is the coverage-guided twin (atheris). Exit code 1 if anything crashed or hung; the offending inputs are
written to ``fuzz/findings/``.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import socket
import struct
import sys
import tempfile
import textwrap
import time
import warnings
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pylivepatch import Client, LivepatchError  # noqa: E402
from pylivepatch.agent import protocol  # noqa: E402
from pylivepatch.builder.pack import pack  # noqa: E402
from pylivepatch.payload import archive  # noqa: E402

HANG_SECONDS = 2.0


def seeds() -> list[bytes]:
    """Real archives: a one-function payload and a payload package of three modules."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "fuzz_target.py").write_text("def f(x):\n    return x + 1\n")
        sys.path.insert(0, str(root))
        fix = root / "fix.py"
        fix.write_text(textwrap.dedent("""
            import pylivepatch as lp
            patch = lp.Patch("fuzz-fix", version="1", metadata={"k": "v"})

            @patch.function("fuzz_target:f")
            def f(x):
                return x + 2
        """))  # fmt: skip
        out.append(pack(fix).data)
        pkg = root / "fixpkg"
        pkg.mkdir()
        (pkg / "__init__.py").write_text(
            fix.read_text().replace("fuzz-fix", "fuzz-pkg") + "from . import a, b\n"
        )
        (pkg / "a.py").write_text("A = 1\n")
        (pkg / "b.py").write_text("B = 'x' * 10\n")
        out.append(pack(pkg).data)
        sys.path.remove(str(root))
    return out


def mutate(data: bytes, rnd: random.Random) -> bytes:
    raw = bytearray(data)
    for _ in range(rnd.randint(1, 6)):
        op = rnd.choice(["flip", "cut", "insert", "repeat", "rename", "random"])
        if op == "random":
            return bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 512)))
        if op == "rename":
            try:
                with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
                    members = {i.filename: zf.read(i) for i in zf.infolist()}
            except Exception:  # noqa: BLE001 - already broken: mutate bytes instead
                continue
            names = list(members)
            if not names:
                continue
            victim = rnd.choice(names)
            new = rnd.choice(["../evil.py", "/abs.py", "payload/x\x00.py", names[0], "SIGNATURE",
                              "payload/" + "d/" * 200 + "x.py", "payload/ok.py"])  # fmt: skip
            members[new] = members.pop(victim)
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf:
                for name, content in members.items():
                    zf.writestr(name, content)
            raw = bytearray(buf.getvalue())
            continue
        if not raw:
            raw = bytearray(b"\0")
        at = rnd.randrange(len(raw))
        if op == "flip":
            raw[at] ^= 1 << rnd.randrange(8)
        elif op == "cut":
            del raw[at : at + rnd.randint(1, 128)]
        elif op == "insert":
            raw[at:at] = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 64)))
        else:
            raw[at:at] = raw[at : at + rnd.randint(1, 64)] * rnd.randint(2, 50)
    return bytes(raw)


def protocol_input(rnd: random.Random) -> bytes:
    message = json.dumps({"v": rnd.choice([1, 1, 1, 2, None]), "verb": "list", "args": {}}).encode()
    framed = struct.pack(">I", len(message)) + message
    return mutate(framed, rnd) if rnd.random() < 0.9 else framed


def read_protocol(data: bytes) -> None:
    a, b = socket.socketpair()
    try:
        a.sendall(data[:65536])
        a.shutdown(socket.SHUT_WR)
        b.settimeout(HANG_SECONDS)
        try:
            protocol.receive(b)
        except protocol.ProtocolError:
            pass
    finally:
        a.close()
        b.close()


#: real replies of an agent, one per verb the command line reads (their results'
#: shapes: ping, list, status, log, an action), mutated as bytes
REPLIES = {
    "ping": {"ok": True, "result": {"pid": 1, "app": "shop", "python": "3.11", "applied": []}},
    "list": {"ok": True, "result": []},
    "status": {"ok": True, "result": {
        "name": "fix", "state": "APPLIED", "rc": 0, "build_id": "ab", "depends": None,
        "metadata": {"k": "v"}, "version": "1", "description": "", "consistency": "atomic",
        "python": ["3.11"], "error": None, "message": "", "data": [], "pending": [],
        "funcs": [{"target": "m:f", "applied": True, "active": True, "stack": ["fix"],
                   "trampoline": False, "expect": None}]}},
    "log": {"ok": True, "result": [{"seq": 1, "event": "started"}]},
    "apply": {"ok": True, "result": {"action": "apply", "name": "fix", "state": "APPLIED",
                                     "noop": False, "message": "applied"}},
    "unload": {"ok": False, "error": {"code": "busy", "errno": 16, "message": "later"}},
}  # fmt: skip


def reply_input(rnd: random.Random) -> tuple[str, bytes]:
    verb = rnd.choice(sorted(REPLIES))
    text = json.dumps({"v": 1, **REPLIES[verb]}).encode()
    if rnd.random() < 0.1:
        depth = rnd.choice([33, 1000, 100_000])
        text = text.replace(b'"result":', b'"result":' + b"[" * depth, 1) + b"]" * depth
    return verb, mutate(text, rnd) if rnd.random() < 0.9 else text


def read_reply(verb: str, data: bytes) -> None:
    """What ``Client`` does with the bytes of a reply: frame, parse, check, shape."""
    a, b = socket.socketpair()
    try:
        a.sendall(struct.pack(">I", len(data)) + data[:65536])
        a.shutdown(socket.SHUT_WR)
        try:
            reply = protocol.receive(b, time.monotonic() + HANG_SECONDS)
        except protocol.ProtocolError:
            return
        if reply is not None:
            try:
                Client(1)._answer(verb, reply)
            except LivepatchError:
                pass
    finally:
        a.close()
        b.close()


def manifest_input(rnd: random.Random, corpus: list[bytes]) -> bytes:
    """A real archive whose manifest.json is mutated (or nested deep) and re-zipped."""
    with zipfile.ZipFile(io.BytesIO(rnd.choice(corpus))) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    text = members["manifest.json"]
    if rnd.random() < 0.2:
        opener = rnd.choice([b"[", b'{"a":'])
        depth = rnd.choice([32, 33, 5000, 200_000])
        text = opener * depth + b"1" + (b"]" if opener == b"[" else b"}") * depth
    else:
        text = mutate(text, rnd)
    members["manifest.json"] = text
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


def read_payload(data: bytes) -> None:
    try:
        archive.read(data)
    except LivepatchError:
        pass


def main() -> int:
    warnings.simplefilter("ignore")  # zipfile warns about the duplicate names made on purpose
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    corpus = seeds()
    findings = ROOT / "fuzz" / "findings"
    counts = {"payload": 0, "protocol": 0, "manifest": 0, "reply": 0}
    crashes: list[str] = []
    hangs = 0
    slowest = 0.0
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        target = rnd.choices(list(counts), weights=[5, 2, 2, 1])[0]
        verb = ""
        if target == "payload":
            data = mutate(rnd.choice(corpus), rnd)
        elif target == "manifest":
            data = manifest_input(rnd, corpus)
        elif target == "reply":
            verb, data = reply_input(rnd)
        else:
            data = protocol_input(rnd)
        t0 = time.perf_counter()
        try:
            if target == "reply":
                read_reply(verb, data)
            else:
                (read_protocol if target == "protocol" else read_payload)(data)
        except Exception as exc:  # noqa: BLE001 - a finding
            crashes.append(f"{target}: {type(exc).__name__}: {exc}")
            findings.mkdir(parents=True, exist_ok=True)
            (findings / f"{target}-{len(crashes)}.bin").write_bytes(data)
        dt = time.perf_counter() - t0
        slowest = max(slowest, dt)
        if dt > HANG_SECONDS:
            hangs += 1
            findings.mkdir(parents=True, exist_ok=True)
            (findings / f"{target}-hang-{hangs}.bin").write_bytes(data)
        counts[target] += 1
    total = sum(counts.values())
    print(f"fuzzed for {args.seconds:.0f} s (seed {args.seed}): {total:,} inputs "
          f"({counts['payload']:,} payloads, {counts['protocol']:,} protocol messages, "
          f"{counts['manifest']:,} manifests, {counts['reply']:,} agent replies), "
          f"{len(crashes)} crashes, {hangs} hangs, slowest input {slowest * 1000:.1f} ms")  # fmt: skip
    for c in crashes[:20]:
        print("  crash:", c)
    return 1 if crashes or hangs else 0


if __name__ == "__main__":
    sys.exit(main())
