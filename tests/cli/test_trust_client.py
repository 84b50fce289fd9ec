"""The CLI and ``Client`` talk only to a real agent of the target (issue 21, item 1).

Two real throwaway users (``useradd``): a victim, whose command line and service run
as that user, and an attacker, who squats the victim's default socket directory or
puts a socket of theirs where the victim's command line looks. The command line and
``Client`` refuse (``untrusted-socket``) before a byte of the request is sent, name the
directory or the impostor (pid and uid seen, pid and uid expected), and discovery
(``ps``, ``--app``) lists no impostor.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pylivepatch import Client, LivepatchError

SRC = str(Path(__file__).resolve().parents[2] / "src")
SYSTEM_PYTHON = next(
    (p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)), None
)

pytestmark = pytest.mark.skipif(
    os.getuid() != 0
    or not shutil.which("setpriv")
    or not shutil.which("useradd")
    or SYSTEM_PYTHON is None,
    reason="needs root (to make two throwaway users), setpriv, useradd and a system python3",
)

#: An impostor: binds SOCKET, answers every request with ok (as the issue's attacker
#: did), and logs how many bytes each connection sent it.
IMPOSTOR = textwrap.dedent(
    """
    import json, os, socket, struct, sys
    path, log, victim = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    os.chmod(path, 0o777)
    s.listen(16)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        c.settimeout(5)
        got = b""
        try:
            while len(got) < 4 or len(got) < 4 + struct.unpack(">I", got[:4])[0]:
                chunk = c.recv(65536)
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
        with open(log, "a") as f:
            f.write(f"{len(got)}\\n")
        if len(got) > 4:
            verb = json.loads(got[4:])["verb"]
            result = (
                {"pid": victim, "app": "shop", "python": "3", "applied": []} if verb == "ping"
                else {"action": verb, "name": "fix", "state": "APPLIED", "noop": False,
                      "message": "applied"}
            )
            body = json.dumps({"v": 1, "ok": True, "result": result}).encode()
            try:
                c.sendall(struct.pack(">I", len(body)) + body)
            except OSError:
                pass
        c.close()
    """
)

#: A real agent of the victim.
AGENT = (
    "import sys, pylivepatch\npylivepatch.start()\nprint('ready', flush=True)\nsys.stdin.read()\n"
)

#: The victim's service started without an agent (as in the issue: the agent refused
#: the squatted directory), waiting until its stdin closes.
SERVICE = "import sys\nprint('ready', flush=True)\nsys.stdin.read()\n"

FIX = """
    import pylivepatch as lp
    patch = lp.Patch("fix-price", consistency="atomic")

    @patch.function("{m}shop:price")
    def price(x):
        return x * 3
"""


class Users:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.names = [f"lpt-victim-{tag}", f"lpt-attack-{tag}"]
        for name in self.names:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                check=True, capture_output=True,
            )  # fmt: skip
        self.victim, self.attacker = (pwd.getpwnam(n).pw_uid for n in self.names)

    def remove(self) -> None:
        for name in self.names:
            subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture(scope="module")
def users() -> Iterator[Users]:
    made = Users()
    try:
        yield made
    finally:
        made.remove()


def as_user(uid: int, *argv: str) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]


class World:
    """A shared /tmp-like directory (mode 1777), the processes started in it, stopped
    by pid at the end."""

    def __init__(self, users: Users) -> None:
        self.users = users
        self.tmp = Path(tempfile.mkdtemp(prefix="lpt-trust-"))
        self.tmp.chmod(0o1777)
        self.state = self.tmp / "state"
        self.state.mkdir(mode=0o700)
        os.chown(self.state, users.victim, users.victim)
        self.procs: list[subprocess.Popen[str]] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items()
            if k not in ("XDG_RUNTIME_DIR", "PYLIVEPATCH_SOCKET_DIR", "PYLIVEPATCH_APP")
        }  # fmt: skip
        env.update(TMPDIR=str(self.tmp), PYTHONPATH=SRC, PYLIVEPATCH_STATE_DIR=str(self.state))
        env.update(extra)
        return env

    def start(self, uid: int, code: str, *args: str, **env: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            as_user(uid, SYSTEM_PYTHON or "", "-c", code, *args),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=self.tmp,
            env=self.env(**env),
        )  # fmt: skip
        self.procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        return proc

    def cli(self, uid: int, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            as_user(uid, SYSTEM_PYTHON or "", "-m", "pylivepatch", *args),
            capture_output=True, text=True, cwd=self.tmp, env=self.env(**env), timeout=120,
        )  # fmt: skip

    def received(self, log: Path) -> list[int]:
        """Bytes each connection sent the impostor."""
        return [int(n) for n in log.read_text().split()] if log.exists() else []

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()  # by pid: only what this test started
            proc.wait(10)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def world(users: Users) -> Iterator[World]:
    w = World(users)
    try:
        yield w
    finally:
        w.stop()


def payload(lab, world: World) -> Path:
    lab.module("shop", "def price(x):\n    return x * 2\n")
    fix = world.tmp / "fix.lpz"
    fix.write_bytes(lab.pack(FIX))
    fix.chmod(0o644)
    return fix


def test_a_squatted_default_socket_directory_is_refused_before_anything_is_sent(lab, world):
    """The issue's attack: the attacker makes the victim's /tmp/pylivepatch-UID (0755)
    and binds VICTIM_PID.sock in it. The victim's `ps`, `load -p`, `load --app` and
    `status` refuse the directory (untrusted-socket, naming it) and the attacker gets
    not one byte; before, `ps` listed the process and `load` said "applied"."""
    users = world.users
    fix = payload(lab, world)
    service = world.start(users.victim, SERVICE)
    squatted = world.tmp / f"pylivepatch-{users.victim}"
    log = world.tmp / "impostor.log"
    world.start(
        users.attacker, IMPOSTOR, str(squatted / f"{service.pid}.sock"), str(log), str(service.pid)
    )
    assert oct(squatted.stat().st_mode & 0o777) == "0o755"
    assert squatted.stat().st_uid == users.attacker

    ps = world.cli(users.victim, "ps", "--json")
    assert ps.returncode == 1, ps
    assert "untrusted-socket" in ps.stderr and str(squatted) in ps.stderr
    assert f"belongs to uid {users.attacker}" in ps.stderr
    for args in (
        ("load", str(fix), "-p", str(service.pid)),
        ("load", str(fix), "--app", "shop"),
        ("status", "fix-price", "-p", str(service.pid)),
    ):
        out = world.cli(users.victim, *args)
        assert out.returncode == 1, (args, out)
        assert "pylivepatch: untrusted-socket: " in out.stderr and str(squatted) in out.stderr
        assert "applied" not in out.stdout and "Traceback" not in out.stderr
    assert set(world.received(log)) <= {0}, "the impostor got request bytes"


def test_an_impostor_in_a_trusted_directory_is_refused_by_its_credentials(lab, world, monkeypatch):
    """The directory is the victim's (0700) but VICTIM_PID.sock leads to the attacker's
    socket (a link, as attach makes for a container's socket): SO_PEERCRED names
    another pid and uid, so the command line and Client send nothing and name the
    impostor; `ps` lists the real agent next to it and not the impostor."""
    users = world.users
    fix = payload(lab, world)
    run = world.tmp / "run"
    run.mkdir(mode=0o700)
    os.chown(run, users.victim, users.victim)
    service = world.start(users.victim, SERVICE)
    real = world.start(users.victim, AGENT, PYLIVEPATCH_SOCKET_DIR=str(run))
    log = world.tmp / "impostor.log"
    theirs = world.tmp / "attacker" / "x.sock"
    impostor = world.start(users.attacker, IMPOSTOR, str(theirs), str(log), str(service.pid))
    (run / f"{service.pid}.sock").symlink_to(theirs)

    ps = world.cli(users.victim, "ps", "--json", PYLIVEPATCH_SOCKET_DIR=str(run))
    assert ps.returncode == 0, ps
    assert [p["pid"] for p in json.loads(ps.stdout)] == [real.pid]
    assert f"pid {impostor.pid} uid {users.attacker}" in ps.stderr, ps.stderr
    out = world.cli(
        users.victim, "load", str(fix), "-p", str(service.pid), PYLIVEPATCH_SOCKET_DIR=str(run)
    )
    assert out.returncode == 1, out
    assert "pylivepatch: untrusted-socket: " in out.stderr
    assert f"the process listening there is pid {impostor.pid} uid {users.attacker}" in out.stderr
    assert f"expected pid {service.pid} uid {users.victim}" in out.stderr
    # root's Client too (a directory of the target's user is accepted, the peer is not)
    monkeypatch.setenv("PYLIVEPATCH_SOCKET_DIR", str(run))
    with pytest.raises(LivepatchError) as err:
        Client(service.pid).load(fix)
    assert err.value.code == "untrusted-socket" and str(impostor.pid) in err.value.message
    assert Client(real.pid).ping()["pid"] == real.pid
    assert set(world.received(log)) <= {0}, "the impostor got request bytes"


#: Root binds PID.sock, listens as the attacker's uid (seteuid), then becomes the
#: victim for good: the socket's credentials say the right pid but the attacker's uid
#: (what a listening socket passed on to a process that reused a pid looks like).
SWITCHER = textwrap.dedent(
    """
    import os, socket, sys
    directory, attacker, victim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    path = os.path.join(directory, f"{os.getpid()}.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    os.chmod(path, 0o777)
    os.setresuid(-1, attacker, -1)
    s.listen(4)
    os.setresuid(0, 0, 0)
    os.setgroups([])
    os.setresgid(victim, victim, victim)
    os.setresuid(victim, victim, victim)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        c.close()
    """
)


def test_a_socket_listened_to_by_another_uid_is_refused(world, monkeypatch):
    users = world.users
    run = world.tmp / "run"
    run.mkdir(mode=0o700)
    os.chown(run, users.victim, users.victim)
    proc = subprocess.Popen(
        [sys.executable, "-c", SWITCHER, str(run), str(users.attacker), str(users.victim)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    world.procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    out = world.cli(
        users.victim, "status", "x", "-p", str(proc.pid), PYLIVEPATCH_SOCKET_DIR=str(run)
    )
    assert out.returncode == 1, out
    assert f"pid {proc.pid} uid {users.attacker}, expected pid {proc.pid} uid {users.victim}" in (
        out.stderr
    )
    monkeypatch.setenv("PYLIVEPATCH_SOCKET_DIR", str(run))
    with pytest.raises(LivepatchError) as err:
        Client(proc.pid).ping()
    assert err.value.code == "untrusted-socket"


def test_an_open_socket_directory_of_ones_own_is_refused_by_the_client_and_fixed_by_run(
    world, monkeypatch
):
    """A socket directory of the caller with mode 0755 (a plain mkdir): the client
    refuses it and says `chmod 700 DIR`; `pylivepatch run` (and an agent) make a
    directory of their own user private instead of failing."""
    users = world.users
    run = world.tmp / "mine"
    run.mkdir(mode=0o755)
    os.chown(run, users.victim, users.victim)
    out = world.cli(users.victim, "ps", PYLIVEPATCH_SOCKET_DIR=str(run))
    assert out.returncode == 1 and f"chmod 700 {run}" in out.stderr, out
    assert "Traceback" not in out.stderr
    ran = world.cli(users.victim, "run", "--", "true", PYLIVEPATCH_SOCKET_DIR=str(run))
    assert ran.returncode == 0, ran
    assert oct(run.stat().st_mode & 0o777) == "0o700"
    theirs = world.tmp / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, users.attacker, users.attacker)
    ran = world.cli(users.victim, "run", "--", "true", PYLIVEPATCH_SOCKET_DIR=str(theirs))
    assert ran.returncode == 1 and "untrusted-socket" in ran.stderr, ran
    assert f"belongs to uid {users.attacker}" in ran.stderr


def test_demo_makes_an_open_directory_of_its_user_private_and_refuses_another_users(world):
    """`pylivepatch demo` with a socket directory made by a plain mkdir (0755) runs (the
    directory becomes 0700) instead of waiting 30 s for agents and ending in a
    traceback; with another user's directory it stops at once, saying why."""
    users = world.users
    mine = world.tmp / "mine"
    mine.mkdir(mode=0o755)
    env = dict(os.environ, PYTHONPATH=SRC, PYLIVEPATCH_SOCKET_DIR=str(mine))
    demo = [sys.executable, "-m", "pylivepatch", "demo", "--json"]
    out = subprocess.run(demo, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert oct(mine.stat().st_mode & 0o777) == "0o700"
    theirs = world.tmp / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, users.attacker, users.attacker)
    env["PYLIVEPATCH_SOCKET_DIR"] = str(theirs)
    out = subprocess.run(demo, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 1, out
    assert "pylivepatch: untrusted-socket: " in out.stderr and str(theirs) in out.stderr
    assert "Traceback" not in out.stderr
    assert json.loads(out.stdout)["error"]["code"] == "untrusted-socket"
