"""``pylivepatch fleet``'s command line without a fleet: usage errors, what it says when
Ansible is missing, checks made before Ansible runs, and the status table's states.
(The fleet itself: test_fleet.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pylivepatch.cli.fleet import host_state, plan

from conftest import Lab

pytestmark = pytest.mark.system  # starts servers, gdb or namespaces: not in the fast lane


def cli(*args: str, code: str = "") -> subprocess.CompletedProcess[str]:
    """The real command line, in a fresh interpreter (``code`` runs first)."""
    script = f"{code}\nfrom pylivepatch.cli import main\nraise SystemExit(main({list(args)!r}))"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_a_plan_is_ansible_serial() -> None:
    assert plan("1,10%,100%") == [1, "10%", "100%"]
    assert plan(" 2 , 50% ") == [2, "50%"]
    assert plan("0.5%") == ["0.5%"]


@pytest.mark.parametrize("bad", ["0", "0%", "101%", "x", "1,,2", "-1", "10 %"])
def test_a_bad_plan_is_a_usage_error(bad: str, tmp_path: Path) -> None:
    out = cli("fleet", "rollout", "f.lpz", "--app", "a", "-i", "inv", "--health", "true",
              "--plan", bad)  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1].startswith("pylivepatch: usage: argument --plan: ")


@pytest.mark.parametrize(
    ("option", "value"), [("--max-fail", "101"), ("--soak", "-1"), ("--health-retries", "0")]
)
def test_bad_numbers_are_usage_errors(option: str, value: str) -> None:
    out = cli("fleet", "rollout", "f.lpz", "--app", "a", "-i", "inv", "--health", "true",
              option, value)  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1].startswith(f"pylivepatch: usage: argument {option}")


def test_without_ansible_it_says_what_to_install(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("h1\n")
    # as if ansible-runner were not installed: importing it raises ImportError
    out = cli("fleet", "status", "--app", "shop", "-i", str(inventory),
              code="import sys; sys.modules['ansible_runner'] = None")  # fmt: skip
    assert out.returncode == 1
    assert out.stderr == (
        "pylivepatch: not-found: pylivepatch fleet needs ansible-core and ansible-runner: "
        "pip install 'pylivepatch[fleet]'\n"
    )
    assert "Traceback" not in out.stderr


def test_the_fleet_verb_does_not_import_ansible() -> None:
    out = cli("fleet", "--help", code="import sys")
    assert out.returncode == 0 and "rollout" in out.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from pylivepatch.cli import _parser; _parser(); "
         "print(sorted(m for m in sys.modules if m.split('.')[0] in "
         "('ansible', 'ansible_runner')))"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert probe.stdout.strip() == "[]", probe.stderr


def test_a_missing_inventory_or_payload_is_named(tmp_path: Path) -> None:
    out = cli("fleet", "status", "--app", "shop", "-i", str(tmp_path / "nope.ini"))
    assert out.returncode == 1
    assert (
        out.stderr == f"pylivepatch: not-found: inventory {tmp_path / 'nope.ini'} does not exist\n"
    )
    out = cli("fleet", "rollout", str(tmp_path / "nope.lpz"), "--app", "shop", "-i", "x",
              "--health", "true")  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith(f"pylivepatch: not-found: payload file {tmp_path}")


def test_an_unsigned_payload_with_keys_is_refused_before_ansible(
    lab: object, tmp_path: Path
) -> None:

    assert isinstance(lab, Lab)
    target = lab.module("fleetcli", "def f():\n    return 1\n")
    payload = tmp_path / "fix.lpz"
    payload.write_bytes(lab.pack(f"""
        import pylivepatch as lp
        patch = lp.Patch("fix-f")

        @patch.function("{target.__name__}:f")
        def f():
            return 2
        """))  # fmt: skip
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("h1\n")
    out = cli("fleet", "rollout", str(payload), "--app", "shop", "-i", str(inventory),
              "--health", "true", "--keys", "/etc/keys", "--json",
              code="import sys; sys.modules['ansible_runner'] = None")  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith("pylivepatch: signature-required: payload fix-f")
    assert '"code": "signature-required"' in out.stdout


def info(procs: list[dict[str, str]], installed: list[str]) -> dict[str, object]:
    """A livepatch_info result: one process a dict of payload -> state."""
    return {
        "processes": [
            {
                "pid": i,
                "payloads": [{"name": n, "state": s, "build_id": "b" * 64} for n, s in p.items()],
            }
            for i, p in enumerate(procs)
        ],  # fmt: skip
        "installed": [
            {"seq": 1, "name": n, "build_id": "b" * 64, "version": ""} for n in installed
        ],  # fmt: skip
    }


@pytest.mark.parametrize(
    ("procs", "installed", "state"),
    [
        ([{"p": "APPLIED"}, {"p": "APPLIED"}], ["p"], "applied"),
        ([{"p": "APPLIED"}, {"p": "APPLIED"}], [], "applied, not installed"),
        ([{"p": "APPLIED"}, {"p": "CHECKED"}], ["p"], "partly applied (1 of 2)"),
        ([{"p": "CHECKED"}, {}], ["p"], "installed, not applied"),
        ([{"p": "CHECKED"}, {}], [], "reverted"),
        ([{}, {}], [], "absent"),
        ([], ["p"], "installed, no process"),
        ([], [], "no process"),
    ],
)
def test_status_states(procs: list[dict[str, str]], installed: list[str], state: str) -> None:
    assert host_state(info(procs, installed), "p")[0] == state
