"""A fleet on one machine for the fleet tests: each host a network namespace with its
own sshd on its own 127.0.0.1:22 and a real service under ``pylivepatch run`` whose
health endpoint is on its own 127.0.0.1:8080.

Ansible reaches a host over real SSH: the ProxyCommand enters the host's namespace and
connects to its sshd (``ip netns exec NS nc 127.0.0.1 22``). The namespaces share the
kernel and the filesystem, so each host also has its own agent socket directory and
state directory (``XDG_RUNTIME_DIR``, ``PYLIVEPATCH_STATE_DIR``): its service runs with
them, and its sshd sets them in every session (``SetEnv``), so what a host sees of
pylivepatch is its own. Everything a lab starts is stopped by ``close()``, and the
namespaces are deleted, whatever happened; labs left by a killed run are removed the
next time one starts.

Needs root, iproute2, openssh-server and netcat-openbsd (.ci/run installs them).
This module also tests the lab itself: the hosts are isolated from each other.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

APP = "shop"
PORT = 8080
HEALTH = f"http://127.0.0.1:{PORT}/health"
PREFIX = "lpzf"  # namespace names: lpzf<pid of the test run>h<n>

SERVICE = '''
"""fleetshop: a pre-fork HTTP service; GET /health answers what health() says."""

import os
import signal
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


def health():
    return 200, "version 1"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        code, text = health() if self.path == "/health" else (404, "no such page")
        body = ("%s pid %d\\n" % (text, os.getpid())).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main(port, workers):
    server = HTTPServer(("127.0.0.1", port), Handler)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            server.serve_forever()
            os._exit(0)
        children.append(pid)

    def stop(*_):
        for child in children:
            os.kill(child, signal.SIGTERM)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    print("serving", flush=True)
    while True:
        time.sleep(3600)
'''

#: The fix every host is healthy with.
GOOD_FIX = """
import pylivepatch as lp

patch = lp.Patch("fix-health", version="2")


@patch.function("fleetshop:health")
def health():
    return 200, "version 2"
"""

#: A fix that breaks the service on hosts of region eu (only h2 is).
BAD_FIX = """
import os

import pylivepatch as lp

patch = lp.Patch("fix-region", version="2")


@patch.function("fleetshop:health")
def health():
    if os.environ.get("FLEET_REGION") == "eu":
        return 500, "version 2: no tax table for region eu"
    return 200, "version 2"
"""


#: run with a host's environment: uninstall, revert and unload everything of the app;
#: prints how many processes, payloads left in them, payloads left installed
RESET = """
import sys
from pylivepatch import Client
from pylivepatch.agent import store
from pylivepatch.control.targets import discover

app = sys.argv[1]
for item in store.installed(app):
    store.uninstall(app, item.name)
pids = [info["pid"] for info in discover() if info.get("app") == app]
for pid in pids:
    client = Client(pid)
    for status in client.list():
        if status.state == "APPLIED":
            client.revert(status.name)
        client.unload(status.name)
left = sum(len(Client(pid).list()) for pid in pids)
print(len(pids), left, len(store.installed(app)))
"""


def _run(*cmd: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60, **kw)


def missing_tools() -> list[str]:
    """What this machine lacks to run a lab (empty: it can)."""
    lacks = [t for t in ("ip", "nc") if shutil.which(t) is None]
    if not Path("/usr/sbin/sshd").exists():
        lacks.append("sshd (openssh-server)")
    if os.geteuid() != 0:
        lacks.append("root (network namespaces)")
    return lacks


class Host:
    def __init__(self, lab: FleetLab, index: int) -> None:
        self.name = f"h{index}"
        self.netns = f"{PREFIX}{os.getpid()}h{index}"
        self.dir = lab.root / self.name
        self.region = "eu" if index == 2 else "us"
        self.env = {
            "XDG_RUNTIME_DIR": str(self.dir / "run"),
            "PYLIVEPATCH_STATE_DIR": str(self.dir / "state"),
        }
        self.sshd: subprocess.Popen[bytes] | None = None
        self.service: subprocess.Popen[bytes] | None = None


class FleetLab:
    """``FleetLab(4)`` makes hosts h1..h4; ``start()``, then ``close()`` (or ``with``)."""

    def __init__(self, hosts: int = 4) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pylivepatch-fleet-"))
        self.root.chmod(0o755)
        self.hosts = [Host(self, i) for i in range(1, hosts + 1)]
        self.inventory = self.root / "inventory.ini"
        self.sshd_config: dict[str, Path] = {}
        self.pylivepatch = str(Path(sys.executable).with_name("pylivepatch"))

    def __enter__(self) -> FleetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    # --- start and stop ---------------------------------------------------------------

    def start(self) -> FleetLab:
        remove_stale_labs()
        try:
            self._files()
            for host in self.hosts:
                _run("ip", "netns", "add", host.netns)
                _run("ip", "netns", "exec", host.netns, "ip", "link", "set", "lo", "up")
                self.start_sshd(host)
                self.start_service(host)
            for host in self.hosts:
                self.wait_healthy(host)
        except BaseException:
            self.close()
            raise
        return self

    def _files(self) -> None:
        root = self.root
        (root / "svc").mkdir()
        (root / "svc" / "fleetshop.py").write_text(SERVICE)
        (root / "ansible").mkdir(mode=0o700)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "client_key"))
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "host_key"))
        shutil.copy(root / "client_key.pub", root / "authorized_keys")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation
        lines = ["[fleet]"]
        for host in self.hosts:
            for sub in ("run", "state", "stage", "tmp"):
                (host.dir / sub).mkdir(parents=True, mode=0o700)
            (host.dir / "home").mkdir(mode=0o700)
            (host.dir / "passwd").write_text(_passwd(host.dir / "home"))
            env = " ".join(f"{k}={v}" for k, v in host.env.items())
            config = host.dir / "sshd_config"
            config.write_text(
                textwrap.dedent(f"""\
                ListenAddress 127.0.0.1:22
                HostKey {root / "host_key"}
                PidFile none
                AuthorizedKeysFile {root / "authorized_keys"}
                PermitRootLogin prohibit-password
                PasswordAuthentication no
                KbdInteractiveAuthentication no
                UsePAM no
                StrictModes no
                LogLevel ERROR
                SetEnv {env}
                Subsystem sftp internal-sftp
                """)
            )
            lines.append(
                f"{host.name} ansible_host={host.netns} pylivepatch_stage_dir={host.dir / 'stage'}"
                f" ansible_remote_tmp={host.dir / 'tmp'}"
            )
        proxy = "ip netns exec %h nc 127.0.0.1 22"
        lines += [
            "",
            "[fleet:vars]",
            "ansible_user=root",
            f"ansible_python_interpreter={sys.executable}",
            f"ansible_ssh_private_key_file={root / 'client_key'}",
            f'ansible_ssh_common_args=\'-o ProxyCommand="{proxy}" -o StrictHostKeyChecking=no'
            " -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
            # a host whose sshd dies is noticed in seconds, not never (nc would wait)
            " -o ServerAliveInterval=2 -o ServerAliveCountMax=3'",
            f"pylivepatch_executable={self.pylivepatch}",
            "",
        ]
        self.inventory.write_text("\n".join(lines))

    def start_sshd(self, host: Host) -> None:
        log = open(host.dir / "sshd.log", "ab")  # noqa: SIM115 - the child keeps it
        # In a mount namespace of its own where /etc/passwd gives root the host's own
        # home and /bin/sh: no rc file of this machine's root runs in every SSH session.
        host.sshd = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--propagation",
             "private", "sh", "-c", 'mount --bind "$1" /etc/passwd && exec "$2" -D -e -f "$3"',
             "sh", str(host.dir / "passwd"), "/usr/sbin/sshd", str(host.dir / "sshd_config")],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        for _ in range(100):  # listening within a few seconds, or the test fails
            probe = _run("ip", "netns", "exec", host.netns, "nc", "-z", "127.0.0.1", "22",
                         check=False)  # fmt: skip
            if probe.returncode == 0:
                return
            if host.sshd.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"sshd of {host.name} did not start: {self.log(host, 'sshd')}")

    def stop_sshd(self, host: Host) -> None:
        """The host becomes unreachable: its sshd and every SSH session into it end."""
        for pid in self.netns_pids(host):
            if _comm(pid) == "sshd":
                _kill(pid)
        if host.sshd is not None:
            with contextlib.suppress(ProcessLookupError):
                host.sshd.kill()
            host.sshd.wait(timeout=10)
            host.sshd = None

    def start_service(self, host: Host) -> None:
        log = open(host.dir / "service.log", "ab")  # noqa: SIM115 - the child keeps it
        env = dict(os.environ, **host.env, PYTHONPATH=str(self.root / "svc"),
                   FLEET_REGION=host.region)  # fmt: skip
        host.service = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, self.pylivepatch, "run", "--app", APP, "--",
             sys.executable, "-c", f"import fleetshop; fleetshop.main({PORT}, 1)"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )  # fmt: skip
        log.close()

    def stop_service(self, host: Host) -> None:
        if host.service is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(host.service.pid, signal.SIGTERM)
        try:
            host.service.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(host.service.pid, signal.SIGKILL)
            host.service.wait(timeout=10)
        host.service = None

    def restart_service(self, host: Host) -> None:
        self.stop_service(host)
        for _ in range(100):  # its agents' sockets gone before the new one starts
            if not self.cli(host, "ps").stdout.strip().startswith("PID"):
                break
            time.sleep(0.05)
        self.start_service(host)
        self.wait_healthy(host)

    def wait_healthy(self, host: Host) -> None:
        # Health first: the worker answers it, so the master has forked. Asking an agent
        # while its process forks can leave the child's agent stuck (the process
        # engine's creation lock is copied held: see docs/fleet.md, known problems).
        for _ in range(200):
            if self.health(host)[0] == 200:
                break
            if host.service is not None and host.service.poll() is not None:
                break
            time.sleep(0.05)
        for _ in range(200):
            if len(self.processes(host)) == 2:  # the master and its worker, with agents
                return
            if host.service is not None and host.service.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"service of {host.name} did not start: {self.log(host, 'service')}")

    def close(self) -> None:
        """Stop everything this lab started, delete its namespaces and files."""
        for host in self.hosts:
            with contextlib.suppress(Exception):
                self.stop_service(host)
            with contextlib.suppress(Exception):
                _delete_netns(host.netns)
            if host.sshd is not None:
                with contextlib.suppress(Exception):
                    host.sshd.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    # --- looking at a host --------------------------------------------------------------

    def netns_pids(self, host: Host) -> list[int]:
        out = _run("ip", "netns", "pids", host.netns, check=False).stdout
        return [int(p) for p in out.split()]

    def log(self, host: Host, what: str) -> str:
        path = host.dir / f"{what}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"

    def health(self, host: Host) -> tuple[int, str]:
        """GET /health on the host's own 127.0.0.1, from inside its namespace."""
        fetch = (
            "import sys, urllib.request, urllib.error\n"
            "try:\n"
            f"    r = urllib.request.urlopen('{HEALTH}', timeout=5)\n"
            "    print(r.status, r.read().decode().strip())\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code, e.read().decode().strip())\n"
            "except OSError as e:\n"
            "    print(0, e)\n"
        )
        out = _run("ip", "netns", "exec", host.netns, sys.executable, "-c", fetch).stdout
        code, _, text = out.strip().partition(" ")
        return int(code), text

    def cli(self, host: Host, *args: str) -> subprocess.CompletedProcess[str]:
        """The pylivepatch command line as it runs on ``host`` (its own agents and state)."""
        return _run(self.pylivepatch, *args, check=False, env=dict(os.environ, **host.env))

    def processes(self, host: Host) -> dict[int, dict[str, tuple[str, str]]]:
        """{pid: {payload: (state, build id)}} of the host's service processes."""
        import json

        out = self.cli(host, "list", "--app", APP, "--json")
        if out.returncode != 0:
            return {}
        return {int(pid): {s["name"]: (s["state"], s["build_id"]) for s in payloads}
                for pid, payloads in json.loads(out.stdout).items()}  # fmt: skip

    def installed(self, host: Host) -> dict[str, str]:
        """{payload: build id} installed for the app on the host."""
        import json

        out = self.cli(host, "list", "--installed", "--app", APP, "--json")
        return {i["name"]: i["build_id"] for i in json.loads(out.stdout)}

    def audit_actions(self, host: Host) -> list[str]:
        """The actions the host's audit log records (every process of the app)."""
        import json

        out = self.cli(host, "log", "--app", APP, "--json")
        if out.returncode != 0 or not out.stdout.strip():
            return []
        return [r.get("action", "") for r in json.loads(out.stdout)]

    def reset(self) -> None:
        """Every host back to the start: nothing applied, uploaded, installed or staged,
        its sshd up. One Python process a host does it all, with the host's own view."""
        for host in self.hosts:
            if host.sshd is None or host.sshd.poll() is not None:
                self.stop_sshd(host)  # and every session left
                self.start_sshd(host)
            for staged in (host.dir / "stage").iterdir():
                staged.unlink()
            out = _run(sys.executable, "-c", RESET, APP, env=dict(os.environ, **host.env))
            assert out.stdout.split() == ["2", "0", "0"], (host.name, out.stdout, out.stderr)

    def fleet(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``pylivepatch fleet ARGS -i INVENTORY`` on the controller (this machine)."""
        env = dict(
            os.environ,
            ANSIBLE_HOME=str(self.root / "ansible"),
            ANSIBLE_LOCAL_TEMP=str(self.root / "ansible" / "tmp"),
            ANSIBLE_SSH_CONTROL_PATH_DIR=str(self.root / "ansible" / "cp"),
        )
        return subprocess.run(
            [self.pylivepatch, "fleet", *args, "-i", str(self.inventory)],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip

    def pack(self, source: str, name: str) -> Path:
        path = self.root / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        out = self.root / f"{name}.lpz"
        env = dict(os.environ, PYTHONPATH=str(self.root / "svc"))
        _run(self.pylivepatch, "pack", str(path), "-o", str(out), env=env)
        return out


def _passwd(home: Path) -> str:
    """This machine's /etc/passwd with root's home and shell made the host's own."""
    lines = []
    for line in Path("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) == 7 and fields[0] == "root":
            fields[5], fields[6] = str(home), "/bin/sh"
        lines.append(":".join(fields))
    return "\n".join(lines) + "\n"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Running (an ended process its parent has not reaped yet is not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status and "\nState:\tX" not in status


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _delete_netns(netns: str) -> None:
    """Kill every process left in the namespace, then delete it."""
    for _ in range(50):
        out = _run("ip", "netns", "pids", netns, check=False)
        if out.returncode != 0:
            return  # no such namespace
        pids = [int(p) for p in out.stdout.split()]
        if not pids:
            break
        for pid in pids:
            _kill(pid)
        time.sleep(0.05)
    _run("ip", "netns", "del", netns, check=False)


def remove_stale_labs() -> None:
    """Namespaces (and what runs in them) and directories of labs whose test run died
    without closing them (killed: no finalizer ran)."""
    out = _run("ip", "netns", "list", check=False).stdout
    for line in out.splitlines():
        match = re.match(rf"({PREFIX}(\d+)h\d+)\b", line)
        if match and not Path(f"/proc/{match.group(2)}").exists():
            _delete_netns(match.group(1))
    for inventory in Path(tempfile.gettempdir()).glob("pylivepatch-fleet-*/inventory.ini"):
        match = re.search(rf"ansible_host={PREFIX}(\d+)h", inventory.read_text(errors="replace"))
        if match and not Path(f"/proc/{match.group(1)}").exists():
            shutil.rmtree(inventory.parent, ignore_errors=True)


@contextlib.contextmanager
def lab(hosts: int = 4) -> Iterator[FleetLab]:
    with FleetLab(hosts) as made:
        yield made.start()


# --- the lab itself ------------------------------------------------------------------

pytestmark = [
    pytest.mark.system,  # starts servers, gdb or namespaces: not in the fast lane
    pytest.mark.skipif(
        bool(missing_tools()) and not os.environ.get("PYLIVEPATCH_FLEET_TESTS"),
        reason=f"fleet lab needs {', '.join(missing_tools())}",
    ),
]


def test_each_host_has_its_own_loopback_sshd_and_service() -> None:
    """Two hosts: the same 127.0.0.1:8080 answers from a different process in each, a
    host's pylivepatch sees only its own processes, and close() leaves nothing behind."""
    with lab(2) as fleet:
        h1, h2 = fleet.hosts
        (c1, t1), (c2, t2) = fleet.health(h1), fleet.health(h2)
        assert (c1, c2) == (200, 200)
        assert t1.startswith("version 1") and t2.startswith("version 1") and t1 != t2
        p1, p2 = set(fleet.processes(h1)), set(fleet.processes(h2))
        assert len(p1) == len(p2) == 2 and not p1 & p2
        netns = [h.netns for h in fleet.hosts]
        started = [p for h in fleet.hosts for p in fleet.netns_pids(h)]
        assert len(started) >= 6  # per host: sshd, the service's master and worker
    listed = _run("ip", "netns", "list").stdout
    assert not any(n in listed for n in netns)
    assert not any(_alive(p) for p in started)
    assert not fleet.root.exists()
