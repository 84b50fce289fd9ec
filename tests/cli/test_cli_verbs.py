"""Every verb of the command line against a real process, success and failure: the
text is compared whole (a transcript, with pids, build ids, times and durations put
in words), and ``--json`` is parsed and checked in a second test (spec §10)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")

SHOP = "def price(x):\n    return x * 2\n"
FIX = """
    import pylivepatch as lp
    patch = lp.Patch("fix-price", version="1", consistency="atomic",
                     metadata={"cve": "CVE-2026-0001"})

    @patch.function("{m}shop:price")
    def price(x):
        return x * 3
"""
CUMULATIVE = """
    import pylivepatch as lp
    patch = lp.Patch("fix-price-all", version="2", consistency="atomic", replace=True,
                     depends=None)

    @patch.function("{m}shop:price")
    def price(x):
        return x * 4
"""
PROGRAM = """
import sys
import {module} as shop
print("ready", flush=True)
for line in sys.stdin:
    print(shop.price(2), flush=True)
"""


class Session:
    """One target process under ``pylivepatch run`` and a CLI that records a transcript."""

    def __init__(self, lab, app: str) -> None:
        self.lab, self.app = lab, app
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, str(lab.root)]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pylivepatch", "run", "--app", app, "--", sys.executable,
             "-c", PROGRAM.format(module=lab.name("shop"))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=lab.root,
        )  # fmt: skip
        assert self.proc.stdout.readline().strip() == "ready"
        self.pid = str(self.proc.pid)
        self.words: dict[str, str] = {self.pid: "PID", lab.prefix: "M_", app: "APP"}
        self.transcript: list[str] = []

    def call(self) -> str:
        self.proc.stdin.write("x\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [sys.executable, "-m", "pylivepatch", *args], cwd=self.lab.root, text=True,
            capture_output=True, env=dict(os.environ, PYTHONPATH=SRC, COLUMNS="200"), timeout=120,
        )  # fmt: skip
        self.transcript.append("$ pylivepatch " + self.normal(" ".join(args)))
        lines = [self.normal(x) for x in out.stdout.splitlines() if x.strip()]
        if args[0] == "ps":  # other processes of this user may have agents too
            lines = [x for x in lines if not x[0].isdigit()]
        self.transcript += lines
        self.transcript += ["! " + self.normal(x) for x in out.stderr.splitlines()]
        self.transcript.append(f"[exit {out.returncode}]")
        return out

    def normal(self, text: str) -> str:
        for word, name in sorted(self.words.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(word, name)
        text = re.sub(r"\b[0-9a-f]{12,64}\b", "BUILDID", text)
        text = re.sub(r"\d{4}-\d\d-\d\dT?[ \d:.]+Z?", "TIME ", text)
        text = re.sub(r"\d+\.\d ms|\d+ us", "T", text)
        text = re.sub(r"pid \d+", "pid CLI", text)
        text = re.sub(r"─+", "───", text).replace(sys.version.split()[0], "PY")
        return " ".join(text.split())

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


@pytest.fixture
def session(lab):
    lab.module("shop", SHOP)
    (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
    (lab.root / "all.lpz").write_bytes(lab.pack(CUMULATIVE))
    s = Session(lab, f"verbs-{lab.prefix}".rstrip("_"))
    try:
        yield s
    finally:
        s.stop()


def test_every_verb_transcript(session):
    s, pid = session, session.pid
    s.run("ps")
    s.run("upload", "fix.lpz", "-p", pid)
    s.run("list", "-p", pid)
    s.run("apply", "fix-price", "-p", pid)
    assert s.call() == "6"
    s.run("status", "fix-price", "-p", pid)
    s.run("apply", "fix-price", "-p", pid)  # no action needed
    s.run("load", "all.lpz", "--app", s.app)
    assert s.call() == "8"
    s.run("list", "--app", s.app)
    s.run("revert", "fix-price-all", "--app", s.app)
    assert s.call() == "4"
    s.run("unload", "fix-price-all", "-p", pid)
    s.run("replace", "fix-price", "-p", pid)
    s.run("revert", "fix-price", "-p", pid)
    s.run("revert", "fix-price", "-p", pid, "--force")
    s.run("unload", "fix-price", "-p", pid)
    s.run("apply", "nope", "-p", pid)
    s.run("load", "missing.lpz", "-p", pid)
    s.run("install", "fix.lpz", "--app", s.app)
    s.run("list", "--installed", "--app", s.app)
    s.run("uninstall", "fix-price", "--app", s.app)
    s.run("log", "--app", s.app, "-n", "4")
    s.run("list", "--app", "no-such-app")
    s.run("list")
    if os.environ.get("PYLIVEPATCH_WRITE_TRANSCRIPT"):
        Path(os.environ["PYLIVEPATCH_WRITE_TRANSCRIPT"]).write_text("\n".join(s.transcript))
    assert "\n".join(s.transcript) == "\n".join(EXPECTED), "\n".join(s.transcript)


EXPECTED = """\
$ pylivepatch ps
PID APP PYTHON APPLIED
PID APP PY -
[exit 0]
$ pylivepatch upload fix.lpz -p PID
PID RESULT
PID uploaded
[exit 0]
$ pylivepatch list -p PID
PID NAME STATE RC BUILD ID DEPENDS VERSION METADATA SIGNATURE TRANSITION
PID fix-price CHECKED 0 BUILDID - 1 cve=CVE-2026-0001, packed-by=pylivepatch pack unsigned -
[exit 0]
$ pylivepatch apply fix-price -p PID
PID RESULT
PID applied
[exit 0]
$ pylivepatch status fix-price -p PID
process PID: fix-price APPLIED rc=0 build BUILDID consistency atomic unsigned
FUNCTION MARKER ACTIVE STACK
M_shop:price applied yes fix-price
[exit 0]
$ pylivepatch apply fix-price -p PID
PID RESULT
PID fix-price is already APPLIED: no action needed
[exit 0]
$ pylivepatch load all.lpz --app APP
PID RESULT
PID applied
[exit 0]
$ pylivepatch list --app APP
PID NAME STATE RC BUILD ID DEPENDS VERSION METADATA SIGNATURE TRANSITION
PID fix-price CHECKED 0 BUILDID - 1 cve=CVE-2026-0001, packed-by=pylivepatch pack unsigned -
PID fix-price-all APPLIED 0 BUILDID - 2 packed-by=pylivepatch pack unsigned -
[exit 0]
$ pylivepatch revert fix-price-all --app APP
PID RESULT
PID reverted
[exit 0]
$ pylivepatch unload fix-price-all -p PID
PID RESULT
PID unloaded
[exit 0]
$ pylivepatch replace fix-price -p PID
PID RESULT
PID replaced
[exit 0]
$ pylivepatch revert fix-price -p PID
PID RESULT
PID reverted
[exit 0]
$ pylivepatch revert fix-price -p PID --force
PID RESULT
PID fix-price is already CHECKED: no action needed
[exit 0]
$ pylivepatch unload fix-price -p PID
PID RESULT
PID unloaded
[exit 0]
$ pylivepatch apply nope -p PID
PID RESULT
PID not-found: no payload named 'nope' is uploaded (uploaded: none)
! pylivepatch: not-found: no payload named 'nope' is uploaded (uploaded: none)
[exit 1]
$ pylivepatch load missing.lpz -p PID
! pylivepatch: not-found: payload file missing.lpz does not exist
[exit 1]
$ pylivepatch install fix.lpz --app APP
installed fix-price (build id BUILDID) for app APP as number 1: new processes of APP apply it at start; running ones are not changed (pylivepatch load fix.lpz --app APP)
[exit 0]
$ pylivepatch list --installed --app APP
APP # NAME VERSION BUILD ID INSTALLED
APP 1 fix-price 1 BUILDID TIME
[exit 0]
$ pylivepatch uninstall fix-price --app APP
uninstalled fix-price from app APP: new processes no longer apply it; running ones are not changed (pylivepatch revert fix-price --app APP)
[exit 0]
$ pylivepatch log --app APP -n 4
TIME APP PID PEER ACTION PAYLOAD BUILD ID RESULT DURATION PAUSE
TIME APP PID uid 0 pid CLI revert fix-price BUILDID ok T T
TIME APP PID uid 0 pid CLI revert fix-price BUILDID ok (force) T -
TIME APP PID uid 0 pid CLI unload fix-price BUILDID ok T -
TIME APP PID uid 0 pid CLI apply nope - not-found T -
[exit 0]
$ pylivepatch list --app no-such-app
! pylivepatch: not-found: no running process of app 'no-such-app' has an agent
[exit 1]
$ pylivepatch list
! usage: pylivepatch list [-h] [--installed] [-p PID] [--app NAME] [--tree PID] [--json]
! pylivepatch: usage: name the target: -p PID, --app NAME or --tree PID (see `pylivepatch ps`)
[exit 1]
""".splitlines()


def test_every_verb_json(session):
    s, pid = session, session.pid

    def run(*args: str, rc: int = 0):
        out = s.run(*args, "--json")
        assert out.returncode == rc, out.stdout + out.stderr
        return json.loads(out.stdout)

    (me,) = [p for p in run("ps") if p["pid"] == int(pid)]
    assert (me["app"], me["applied"], me["python"]) == (s.app, [], sys.version.split()[0])
    up = run("upload", "fix-price", "fix.lpz", "-p", pid)
    assert up == {"ok": True, "action": "upload", "payload": "fix-price",
                  "processes": {pid: "uploaded"}}  # fmt: skip
    (st,) = run("list", "-p", pid)[pid]
    assert (st["name"], st["state"], st["rc"], st["version"]) == ("fix-price", "CHECKED", 0, "1")
    assert st["metadata"]["cve"] == "CVE-2026-0001" and len(st["build_id"]) == 64
    assert run("apply", "fix-price", "-p", pid)["processes"] == {pid: "applied"}
    status = run("status", "fix-price", "--app", s.app)[pid]
    assert status["state"] == "APPLIED" and status["funcs"][0]["active"] is True
    assert s.call() == "6"
    events = run("log", "--events", "-p", pid)[pid]
    assert ("apply", "fix-price", "finished") in {
        (e["action"], e["payload"], e["event"]) for e in events
    }
    assert run("replace", "fix-price", "-p", pid)["processes"] == {
        pid: "fix-price is already APPLIED: no action needed"
    }
    assert run("revert", "fix-price", "-p", pid)["processes"] == {pid: "reverted"}
    assert run("unload", "fix-price", "-p", pid)["processes"] == {pid: "unloaded"}
    assert run("load", "fix.lpz", "--app", s.app)["processes"] == {pid: "applied"}
    assert s.call() == "6"
    assert run("revert", "fix-price", "--tree", pid)["processes"] == {pid: "reverted"}
    failed = run("apply", "nope", "-p", pid, rc=1)
    assert failed["ok"] is False and failed["error"]["code"] == "not-found"
    assert failed["processes"][pid].startswith("not-found: no payload named 'nope'")
    missing = run("load", "missing.lpz", "-p", pid, rc=1)
    assert missing == {"ok": False, "error": {
        "code": "not-found", "errno": 2, "message": "payload file missing.lpz does not exist"}}  # fmt: skip
    item = run("install", "fix.lpz", "--app", s.app)
    assert (item["app"], item["name"], item["seq"]) == (s.app, "fix-price", 1)
    assert [i["name"] for i in run("list", "--installed", "--app", s.app)] == ["fix-price"]
    assert run("uninstall", "fix-price", "--app", s.app)["name"] == "fix-price"
    assert run("list", "--installed", "--app", s.app) == []
    audit = run("log", "--app", s.app)
    assert [(r["action"], r["result"]) for r in audit][-3:] == [
        ("apply", "ok"), ("revert", "ok"), ("apply", "not-found")
    ]  # fmt: skip
    assert all(r["pid"] == int(pid) and r["app"] == s.app for r in audit)
    wrong = run("list", "--app", "no-such-app", rc=1)
    assert wrong["error"]["code"] == "not-found"
