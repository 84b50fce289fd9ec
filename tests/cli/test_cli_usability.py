"""The command line as a new user meets it (issue 15): each test runs the real
``pylivepatch`` in a subprocess against real agents in real processes, and shows one
defect fixed."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pylivepatch.agent import protocol
from pylivepatch.payload import archive
from pylivepatch.payload.fingerprint import python_tag

pytestmark = pytest.mark.system  # starts servers, gdb or namespaces: not in the fast lane

SRC = str(Path(__file__).resolve().parents[2] / "src")

SHOP = "def price(x):\n    return x * 2\n"
FIX = """
    import pylivepatch as lp
    patch = lp.Patch("fix-price", version="{version}", consistency="{mode}")

    @patch.function("{m}shop:price")
    def price(x):
        return x * {factor}
"""
LATER = """
    import pylivepatch as lp
    patch = lp.Patch("fix-later", version="1")

    @patch.function("{m}later:rate")
    def rate():
        return 7
"""
PROGRAM = """
import importlib, sys, threading
import {module} as shop

class Parked:
    def __init__(self):
        self.inside, self.go = threading.Event(), threading.Event()
    def __mul__(self, other):
        self.inside.set()
        self.go.wait(60)
        return 0

parked = Parked()
print("ready", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "call":
        print(shop.price(2), flush=True)
    elif cmd[0] == "park":
        threading.Thread(target=shop.price, args=(parked,), daemon=True).start()
        parked.inside.wait(10)
        print("parked", flush=True)
    elif cmd[0] == "release":
        parked.go.set()
        print("released", flush=True)
    elif cmd[0] == "import":
        print(importlib.import_module(cmd[1]).rate(), flush=True)
"""


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "PYLIVEPATCH_RICH")}
    out["PYTHONPATH"] = SRC
    out.update(extra)
    return out


def cli(*args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pylivepatch", *args], cwd=cwd, capture_output=True, text=True,
        env=env(**extra), timeout=120,
    )  # fmt: skip


class Target:
    """A process under ``pylivepatch run --app APP`` that calls, parks a thread inside
    ``shop.price`` and imports modules when told to."""

    def __init__(self, lab, app: str) -> None:
        self.app = app
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pylivepatch", "run", "--app", app, "--", sys.executable,
             "-c", PROGRAM.format(module=lab.name("shop"))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=lab.root,
            env=env(PYTHONPATH=os.pathsep.join([SRC, str(lab.root)])),
        )  # fmt: skip
        assert self.say(None) == "ready"
        self.pid = str(self.proc.pid)

    def say(self, command: str | None) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def shop(lab):
    lab.module("shop", SHOP)
    targets: list[Target] = []

    def start(app: str = "") -> Target:
        t = Target(lab, app or f"use-{lab.prefix}{len(targets)}".rstrip("_"))
        targets.append(t)
        return t

    def payload(file: str, version: str = "1", factor: int = 3, mode: str = "atomic") -> str:
        source = FIX.format(version=version, factor=factor, mode=mode, m="{m}")
        (lab.root / file).write_bytes(lab.pack(source))
        return file

    start.payload = payload  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        for t in targets:
            t.stop()


def plain(text: str) -> str:
    """Terminal output without colours, cursor moves and line ends."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", text)


def on_pty(args: list[str], cwd: Path, stream: str, columns: int = 0, until=None, then=None):
    """Run the CLI with ``stream`` (stdout or stderr) on a pseudo-terminal of
    ``columns`` x 0 (0 x 0 by default, as CI ptys report). ``until(text)`` is checked on
    what the terminal received so far; once true, ``then()`` runs (once). Returns (exit
    code, terminal text, the other stream, whether ``until`` was met)."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 0, columns, 0, 0))
    ends = {"stdout": slave, "stderr": subprocess.PIPE}
    if stream == "stderr":
        ends = {"stdout": subprocess.PIPE, "stderr": slave}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pylivepatch", *args], cwd=cwd, env=env(), **ends,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(slave)
    seen, met = b"", False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the other end is closed
                    break
                if not chunk:
                    break
                seen += chunk
            if until is not None and not met and until(plain(seen.decode(errors="replace"))):
                met = True
                if then is not None:
                    then()
            if not ready and proc.poll() is not None:
                break
    finally:
        os.close(master)
        if not met and then is not None:
            then()  # let the process finish either way
    other = proc.stdout if stream == "stderr" else proc.stderr
    assert other is not None
    rest = other.read().decode()
    proc.wait(60)
    return proc.returncode, plain(seen.decode(errors="replace")), rest, met


# --- the defects of issue 15, one test each --------------------------------------------


def test_no_object_check_and_no_expect_are_options_and_audited(lab, shop):
    payload = shop.payload("fix.lpz")
    # The process runs other code than the payload was built against: one more function.
    (lab.root / f"{lab.name('shop')}.py").write_text(SHOP + "\ndef extra():\n    return 1\n")
    t = shop()
    refused = cli("load", payload, "-p", t.pid, cwd=lab.root)
    assert refused.returncode == 1
    assert "pylivepatch: dependency-mismatch: " in refused.stderr
    assert "(or pass --no-object-check)" in refused.stderr
    loaded = cli("load", payload, "-p", t.pid, "--no-object-check", cwd=lab.root)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split()[-2:] == [t.pid, "applied"]
    assert t.say("call") == "6"
    records = json.loads(cli("log", "-p", t.pid, "--json", cwd=lab.root).stdout)
    upload = [r for r in records if r["action"] == "upload" and r["result"] == "ok"][-1]
    assert upload["flags"] == ["no-object-check"]
    text = cli("log", "-p", t.pid, "-n", "2", cwd=lab.root).stdout
    assert "upload fix-price" in " ".join(text.split()) and "ok (no-object-check)" in text

    # A payload with no expectation for this interpreter: --no-expect.
    packed = archive.read((lab.root / payload).read_bytes()).manifest.to_json()
    tag, other = python_tag(), "3.99"
    packed["name"], packed["python"] = "fix-other", [other]
    for f in packed["funcs"]:
        f["expect"] = {other: f["expect"][tag]}
    packed["objects"] = {m: {other: ids[tag]} for m, ids in packed["objects"].items()}
    files = archive.read((lab.root / payload).read_bytes()).files
    manifest = archive.seal({k: v for k, v in packed.items() if k != "build_id"}, files)
    (lab.root / "other.lpz").write_bytes(archive.write(manifest, files))
    cli("revert", "fix-price", "-p", t.pid, cwd=lab.root)
    refused = cli("upload", "other.lpz", "-p", t.pid, cwd=lab.root)
    assert refused.returncode == 1 and "(or pass --no-expect)" in refused.stderr
    up = cli("upload", "other.lpz", "-p", t.pid, "--no-expect", "--no-object-check", "--json",
             cwd=lab.root)  # fmt: skip
    assert json.loads(up.stdout)["processes"] == {t.pid: "uploaded"}, up.stderr
    records = json.loads(cli("log", "-p", t.pid, "--json", cwd=lab.root).stdout)
    assert records[-1]["flags"] == ["no-expect", "no-object-check"]


def test_test_reports_a_payload_refused_at_import_once_and_runs_without_it(lab):
    lab.module("calc", "def div(a, b):\n    return a / b\n\ndef mul(a, b):\n    return a * b\n")
    fix = """
        import pylivepatch as lp
        patch = lp.Patch("fix-div")

        @patch.function("{m}calc:div")
        def div(a, b):
            return None if b == 0 else a / b
    """
    (lab.root / "fix.lpz").write_bytes(lab.pack(fix))
    other = """
        import pylivepatch as lp
        patch = lp.Patch("fix-mul")

        @patch.function("{m}calc:mul")
        def mul(a, b):
            return 0
    """
    (lab.root / "mul.lpz").write_bytes(lab.pack(other))
    # The installed version is not the one the payloads were built from.
    (lab.root / f"{lab.name('calc')}.py").write_text(
        "HAS = False\n\ndef div(a, b):\n    return a / b\n\ndef mul(a, b):\n    return a * b\n"
    )
    out = cli(
        "test", "fix.lpz", "mul.lpz", "--", sys.executable, "-c",
        f"import {lab.prefix}calc as c; print(c.div(6, 3), c.mul(2, 3))",
        cwd=lab.root, PYTHONPATH=os.pathsep.join([SRC, str(lab.root)]),
    )  # fmt: skip
    assert (out.returncode, out.stdout) == (0, "2.0 6\n"), out.stderr
    refused, taken = out.stderr.splitlines()
    assert refused.startswith(
        f"pylivepatch test: fix-div REFUSED at the import of {lab.prefix}calc in 1 of 1 Python "
        f"processes: dependency-mismatch: payload fix-div was built for module {lab.prefix}calc "
    ), refused
    assert refused.endswith("; taken out there, they ran on without it")
    assert taken == (
        f"pylivepatch test: fix-mul taken out at the import of {lab.prefix}calc in 1 of 1 Python "
        "processes, with fix-div (refused there); they ran on without it"
    )


def test_target_options_combine_and_single_ones_refuse_a_second(lab, shop):
    a, b = shop(), shop()
    for args in (["--app", a.app, "--app", b.app], ["--app", a.app, "-p", b.pid],
                 ["-p", b.pid, "--tree", a.pid]):  # fmt: skip
        out = cli("list", *args, "--json", cwd=lab.root)
        assert out.returncode == 0, out.stderr
        assert sorted(json.loads(out.stdout)) == sorted([a.pid, b.pid]), args
    shop.payload("fix.lpz")
    out = cli("load", "fix.lpz", "--app", a.app, "--app", b.app, cwd=lab.root)
    assert out.returncode == 0 and (a.say("call"), b.say("call")) == ("6", "6")
    for args in (["install", "fix.lpz", "--app", a.app, "--app", b.app],
                 ["run", "--app", "x", "--app", "y", "--", "true"]):  # fmt: skip
        out = cli(*args, cwd=lab.root)
        assert out.returncode == 1
        assert out.stderr.splitlines()[-1].startswith("pylivepatch: usage: --app given twice")


def test_log_events_takes_n(lab, shop):
    t = shop()
    shop.payload("fix.lpz")
    assert cli("load", "fix.lpz", "-p", t.pid, cwd=lab.root).returncode == 0
    events = json.loads(cli("log", "--events", "-p", t.pid, "-n", "2", "--json",
                            cwd=lab.root).stdout)[t.pid]  # fmt: skip
    assert [(e["action"], e["event"]) for e in events] == [
        ("apply", "swapped"),
        ("apply", "finished"),
    ]
    text = cli("log", "--events", "-p", t.pid, "-n", "1", cwd=lab.root).stdout.splitlines()
    assert len(text) == 2 and text[1].split()[2:5] == ["apply", "fix-price", "finished"]


def test_tables_on_a_terminal_of_size_0x0(lab, shop):
    pytest.importorskip("rich")
    t = shop()
    shop.payload("fix.lpz")
    for args, words in (
        (["ps"], [t.pid, t.app]),
        (["load", "fix.lpz", "-p", t.pid], [t.pid, "applied"]),
        (["list", "-p", t.pid], [t.pid, "fix-price", "APPLIED"]),
        (["revert", "fix-price", "-p", t.pid], [t.pid, "reverted"]),
    ):
        rc, shown, err, _ = on_pty(args, lab.root, "stdout")
        assert rc == 0, err
        rows = [line.split() for line in shown.splitlines()]
        assert rows[0][:2] == ["PID", {"ps": "APP", "list": "NAME"}.get(args[0], "RESULT")], shown
        assert words in [r[: len(words)] for r in rows], shown
        if args[0] != "list":  # COLUMNS unset: 80 (list is wider: cells are never cut)
            assert max(len(line) for line in shown.splitlines()) <= 80, shown


def test_version_and_help_of_every_option(tmp_path):
    out = cli("--version", cwd=tmp_path)
    assert (out.returncode, out.stdout) == (0, "pylivepatch 0.1.0\n")
    text = " ".join(cli("apply", "-h", cwd=tmp_path).stdout.split())
    assert "--timeout SECONDS seconds the change may wait" in text
    assert "default: the payload's mode, 10 for transition, 1 for atomic" in text
    assert "--force when the timeout runs out, complete the change instead of reversing" in text
    assert "--nodeps do not check the payload's depends" in text
    assert "NAME payload name" in text and "--pid PID a process (repeatable)" in text
    # every option and positional of every verb declared here says what it is
    from pylivepatch import cli as cli_module

    parser = cli_module._parser()
    own = {v for v, p in parser.parse_args(["ps"]).verbs.items()}
    for module in cli_module.VERB_MODULES:  # verbs of other modules document themselves
        own -= set(_verbs_of(module))
    for verb in sorted(own):
        for action in parser.parse_args(["ps"]).verbs[verb]._actions:
            assert action.help, f"{verb} {action.option_strings or action.dest} has no help"


def _verbs_of(module: str) -> list[str]:
    import argparse
    import importlib

    sub = argparse.ArgumentParser().add_subparsers()
    importlib.import_module(f"pylivepatch.cli.{module}").register(sub)
    return list(sub.choices)


def test_unknown_options_show_the_verbs_usage_with_the_usage_code(tmp_path):
    out = cli("load", "fix.lpz", "--bogus", cwd=tmp_path)
    lines = out.stderr.splitlines()
    assert out.returncode == 1 and lines[0].startswith("usage: pylivepatch load [-h]")
    assert lines[-1] == "pylivepatch: usage: unrecognized arguments: --bogus"
    out = cli("load", "fix.lpz", "--bogus", "--json", cwd=tmp_path)
    assert out.returncode == 1 and json.loads(out.stdout) == {"ok": False, "error": {
        "code": "usage", "errno": 22, "message": "unrecognized arguments: --bogus"}}  # fmt: skip
    for args, message in (
        (["run"], "run needs a command: pylivepatch run -- CMD ..."),
        (["test", "fix.lpz"], "test needs a command after --: pylivepatch test FILE... -- CMD ..."),
        (["list", "--installed", "-p", "1"], "list --installed takes --app NAME (or nothing for "
         "every app)"),
        (["status", "x"], "name the target: -p PID, --app NAME or --tree PID (see `pylivepatch ps`)"),
    ):  # fmt: skip
        out = cli(*args, cwd=tmp_path)
        assert out.returncode == 1
        assert out.stderr.splitlines()[0].startswith(f"usage: pylivepatch {args[0]} ")
        assert out.stderr.splitlines()[-1] == f"pylivepatch: usage: {message}"
    out = cli("status", "x", "--json", cwd=tmp_path)
    assert json.loads(out.stdout)["error"]["code"] == "usage"


def test_ps_filters_by_target(lab, shop):
    a, b = shop(), shop()
    out = json.loads(cli("ps", "--json", cwd=lab.root).stdout)
    mine = [p["pid"] for p in out if p["app"] in (a.app, b.app)]  # others may run too
    assert mine == sorted(int(p) for p in (a.pid, b.pid))
    assert [p["pid"] for p in json.loads(cli("ps", "-p", b.pid, "--json", cwd=lab.root).stdout)] \
        == [int(b.pid)]  # fmt: skip
    shown = cli("ps", "--app", a.app, cwd=lab.root).stdout.splitlines()
    assert [line.split()[:2] for line in shown] == [["PID", "APP"], [a.pid, a.app]]
    assert cli("ps", "--app", "nobody", cwd=lab.root).stdout == (
        "no process of the target has a pylivepatch agent\n"
    )


NAMESPACE_DRIVER = """
import subprocess, sys
def pid_of_a_new_process():
    return int(subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout)
procs = []
def start(app):
    p = subprocess.Popen([sys.executable, "-m", "pylivepatch", "run", "--app", app, "--",
                          sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    procs.append(p)
start(sys.argv[1])
while pid_of_a_new_process() < 12:  # the next one has two digits
    pass
start(sys.argv[1])
out = subprocess.run([sys.executable, "-m", "pylivepatch", "ps"], capture_output=True, text=True)
print(out.stdout, out.stderr, end="")
for p in procs:
    p.stdin.close()
    p.wait(10)
"""


def test_ps_sorts_pids_as_numbers(tmp_path):
    """In a pid namespace of its own, a process with a one-digit and one with a two-digit
    pid: ps lists them in numeric order (as text, "13" sorted before "2")."""
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True) if unshare else None  # fmt: skip
    if probe is None or probe.returncode != 0:
        pytest.skip("needs unshare --pid (root or user namespaces)")
    out = subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", sys.executable, "-c", NAMESPACE_DRIVER,
         "ns-app"], capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=120,
    )  # fmt: skip
    rows = [line.split() for line in out.stdout.splitlines() if line.strip()]
    assert rows[0][:2] == ["PID", "APP"], out.stdout + out.stderr
    pids = [int(r[0]) for r in rows[1:] if r[1] == "ns-app"]
    assert len(pids) == 2 and pids[0] < 10 <= pids[1], pids


def test_upload_takes_the_file_alone(lab, shop):
    t = shop()
    shop.payload("fix.lpz")
    out = cli("upload", "fix.lpz", "-p", t.pid, "--json", cwd=lab.root)
    assert json.loads(out.stdout) == {
        "ok": True, "action": "upload", "payload": "fix-price", "processes": {t.pid: "uploaded"}
    }  # fmt: skip
    out = cli("upload", "other-name", "fix.lpz", "-p", t.pid, cwd=lab.root)
    assert out.returncode == 1 and "the payload in that file is named 'fix-price'" in out.stderr


def test_a_new_version_of_an_applied_payload_gets_a_hint_that_works(lab, shop):
    t = shop()
    shop.payload("v1.lpz", version="1", factor=3)
    shop.payload("v2.lpz", version="2", factor=5)
    assert cli("load", "v1.lpz", "--app", t.app, cwd=lab.root).returncode == 0
    assert t.say("call") == "6"
    out = cli("load", "v2.lpz", "--app", t.app, cwd=lab.root)
    assert out.returncode == 1
    message = out.stderr.splitlines()[-1]
    assert message.startswith("pylivepatch: exists: fix-price 1 (build ")
    assert f"is APPLIED in process {t.pid}, this file is another build" in message
    hint = message.split("to move to it: ", 1)[1].split(" (the original code", 1)[0]
    assert hint == (
        f"pylivepatch revert fix-price --app {t.app} && pylivepatch unload fix-price --app "
        f"{t.app} && pylivepatch load v2.lpz --app {t.app}"
    )
    for step in hint.split(" && "):  # follow it
        words = step.split()
        assert words[0] == "pylivepatch"
        done = cli(*words[1:], cwd=lab.root)
        assert done.returncode == 0, step + done.stderr
    assert t.say("call") == "10"


def test_list_and_ps_show_a_payload_waiting_for_an_import(lab, shop):
    lab.module("later", "def rate():\n    return 1\n")
    (lab.root / "later.lpz").write_bytes(lab.pack(LATER))
    import sys as _sys

    _sys.modules.pop(lab.name("later"), None)  # the target has not imported it
    t = shop()
    out = cli("load", "later.lpz", "-p", t.pid, cwd=lab.root)
    assert out.returncode == 0, out.stderr
    assert f"applied; waits for the import of {lab.prefix}later" in out.stdout
    row = " ".join(cli("list", "-p", t.pid, cwd=lab.root).stdout.splitlines()[1].split())
    assert f"fix-later WAITING for import of {lab.prefix}later 0 " in row
    ps = cli("ps", "-p", t.pid, cwd=lab.root).stdout.splitlines()[1]
    assert ps.endswith(f"fix-later (waiting for import of {lab.prefix}later)")
    assert json.loads(cli("list", "-p", t.pid, "--json", cwd=lab.root).stdout)[t.pid][0][
        "state"] == "APPLIED"  # fmt: skip
    assert t.say(f"import {lab.prefix}later") == "7"
    row = cli("list", "-p", t.pid, cwd=lab.root).stdout.splitlines()[1]
    assert row.split()[1:3] == ["fix-later", "APPLIED"]
    assert cli("ps", "-p", t.pid, cwd=lab.root).stdout.splitlines()[1].endswith(" fix-later")


def test_progress_of_a_transition_in_one_process(lab, shop):
    pytest.importorskip("rich")
    t = shop()
    shop.payload("fix.lpz", mode="transition")
    assert t.say("park") == "parked"  # a thread inside price: the transition waits for it
    released: list[str] = []
    rc, shown, out, met = on_pty(
        ["load", "fix.lpz", "-p", t.pid, "--timeout", "50"], lab.root, "stderr", columns=200,
        until=lambda text: f"process {t.pid}: apply patching -> APPLIED" in text
        and "1 blocked" in text,
        then=lambda: released.append(t.say("release")),
    )  # fmt: skip
    assert released == ["released"]
    assert rc == 0, shown + out
    assert met, shown
    assert "apply fix-price" in shown and out.split()[-2:] == [t.pid, "applied"]


def test_sockets_of_dead_processes_are_removed(lab, shop):
    t = shop()
    path = protocol.socket_path(int(t.pid))
    assert path.exists()
    t.proc.send_signal(signal.SIGKILL)  # no chance to remove its socket
    t.proc.wait(10)
    assert path.exists()
    assert int(t.pid) not in [
        p["pid"] for p in json.loads(cli("ps", "--json", cwd=lab.root).stdout)
    ]
    assert not path.exists()


def test_the_tests_keep_agent_sockets_in_their_own_directory(lab, shop):
    import tempfile

    mine = protocol.socket_dir()
    assert mine == Path(os.environ["XDG_RUNTIME_DIR"]) / "pylivepatch"
    assert Path(os.environ["XDG_RUNTIME_DIR"]).name.startswith("pylivepatch-run-")
    t = shop()
    assert (mine / f"{t.pid}.sock").exists()
    users = Path(tempfile.gettempdir()) / f"pylivepatch-{os.getuid()}"
    assert not (users / f"{t.pid}.sock").exists()


def test_shell_completion_with_bash(lab, shop):
    pytest.importorskip("argcomplete")
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("needs bash")
    t = shop()
    shop.payload("fix.lpz")
    assert cli("upload", "fix.lpz", "-p", t.pid, cwd=lab.root).returncode == 0
    script = cli("completion", "bash", cwd=lab.root)
    assert script.returncode == 0 and "complete " in script.stdout
    bindir = lab.root / "bin"
    bindir.mkdir()
    (bindir / "pylivepatch").write_text(f'#!/bin/sh\nexec {sys.executable} -m pylivepatch "$@"\n')
    (bindir / "pylivepatch").chmod(0o755)
    session = textwrap.dedent(
        """
        eval "$SCRIPT"
        complete -p pylivepatch
        ask() {
            COMP_LINE="$1"; COMP_POINT=${#COMP_LINE}; COMP_TYPE=9
            _python_argcomplete pylivepatch
            echo "$1 => $(printf '%s\\n' "${COMPREPLY[@]}" | sed 's/ *$//' | sort | tr '\\n' ' ')"
        }
        ask "pylivepatch lo"
        ask "pylivepatch list --ap"
        ask "pylivepatch list --app "
        ask "pylivepatch status -p "
        ask "pylivepatch apply -p PID "
        """
    ).replace("PID", t.pid)
    out = subprocess.run(
        [bash, "--norc", "-c", session], capture_output=True, text=True, cwd=lab.root, timeout=120,
        env=env(SCRIPT=script.stdout, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}"),
    )  # fmt: skip
    lines = out.stdout.splitlines()
    assert lines[0].startswith("complete ") and lines[0].endswith(" pylivepatch"), out.stderr
    assert lines[1] == "pylivepatch lo => load log "
    assert lines[2] == "pylivepatch list --ap => --app "
    assert lines[3].startswith("pylivepatch list --app  => ") and t.app in lines[3].split()
    assert lines[4].startswith("pylivepatch status -p  => ") and t.pid in lines[4].split()
    assert lines[5] == f"pylivepatch apply -p {t.pid}  => fix-price "
    zsh = cli("completion", "zsh", cwd=lab.root).stdout
    assert "compdef _python_argcomplete pylivepatch" in zsh
    # what zsh's function asks (no zsh here): the same request, answered with descriptions
    # (through a file, as the script does with ARGCOMPLETE_USE_TEMPFILES)
    line, answer = "pylivepatch lo", lab.root / "answer"
    subprocess.run(
        [sys.executable, "-m", "pylivepatch"], cwd=lab.root, capture_output=True, timeout=60,
        env=env(COMP_LINE=line, COMP_POINT=str(len(line)), _ARGCOMPLETE="1", IFS="\013",
                _ARGCOMPLETE_SHELL="zsh", _ARGCOMPLETE_SUPPRESS_SPACE="1",
                _ARGCOMPLETE_STDOUT_FILENAME=str(answer)),
    )  # fmt: skip
    assert sorted(answer.read_text().split("\013")) == [
        "load:upload and apply a payload (all or nothing)",
        "log:the audit log: every action, who asked, its result",
    ]
