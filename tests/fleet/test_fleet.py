"""``pylivepatch fleet`` for real: four hosts (network namespaces, each with its own
sshd and a service under ``pylivepatch run`` on its own 127.0.0.1), reached over SSH by
Ansible through the real command line.

The scenarios of docs/fleet.md: a healthy canary rollout in three batches (restarts come
up patched, a rerun changes nothing, status, revert everywhere); a payload that makes
one host of batch 2 unhealthy (the rollout stops, every host touched is reverted, the
untouched never changed); a host that cannot be reached; a payload whose signature no
host trusts. Skipped where ansible-core/ansible-runner or the lab's tools are missing,
unless PYLIVEPATCH_FLEET_TESTS=1 (set by .ci/run for CPython 3.11): then they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from test_fleet_lab import APP, BAD_FIX, GOOD_FIX, HEALTH, FleetLab, Host, lab, missing_tools

REQUIRED = os.environ.get("PYLIVEPATCH_FLEET_TESTS") == "1"


def _lacking() -> list[str]:
    lacks = missing_tools()
    try:
        import ansible  # noqa: F401
        import ansible_runner  # noqa: F401
    except ImportError:
        lacks.append("ansible-core and ansible-runner (pip install -e '.[fleet]')")
    return lacks


pytestmark = [
    pytest.mark.system,  # starts servers, gdb or namespaces: not in the fast lane
    pytest.mark.skipif(
        bool(_lacking()) and not REQUIRED, reason=f"fleet tests need {', '.join(_lacking())}"
    ),
]


@pytest.fixture(scope="module")
def fleet() -> Iterator[FleetLab]:
    if _lacking():  # only reached when PYLIVEPATCH_FLEET_TESTS=1
        pytest.fail(f"PYLIVEPATCH_FLEET_TESTS=1 but this machine lacks {', '.join(_lacking())}")
    with lab(4) as made:
        yield made


@pytest.fixture
def hosts(fleet: FleetLab) -> FleetLab:
    """The lab with every host back at the start (nothing applied or installed)."""
    fleet.reset()
    return fleet


def rollout(fleet: FleetLab, payload: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    out = fleet.fleet("rollout", str(payload), "--app", APP, "--plan", "1,10%,100%",
                      "--health", HEALTH, "--json", *extra)  # fmt: skip
    assert out.stdout.strip(), out.stderr
    return out.returncode, json.loads(out.stdout)


def applied(fleet: FleetLab, host: Host, name: str) -> list[str]:
    """The state of payload ``name`` in each process of the host's service."""
    return [p.get(name, ("absent", ""))[0] for _, p in sorted(fleet.processes(host).items())]


def untouched(fleet: FleetLab, host: Host, audit: list[str]) -> None:
    """Nothing was done on the host: no action in its audit log, nothing staged,
    installed or uploaded, and its service answers with the old code."""
    assert fleet.audit_actions(host) == audit, host.name
    assert not list((host.dir / "stage").iterdir()), host.name
    assert fleet.installed(host) == {}, host.name
    assert all(p == {} for p in fleet.processes(host).values()), host.name
    assert fleet.health(host)[1].startswith("version 1"), host.name


def test_a_healthy_rollout_patches_every_host_then_a_rerun_changes_nothing(
    hosts: FleetLab, tmp_path: Path
) -> None:
    fleet = hosts
    payload = fleet.pack(GOOD_FIX, "fix-health")
    key = tmp_path / "release"
    subprocess.run([fleet.pylivepatch, "keygen", "-o", str(key)], check=True, capture_output=True)
    subprocess.run([fleet.pylivepatch, "sign", str(payload), "--key", str(key)], check=True,
                   capture_output=True)  # fmt: skip
    build = json.loads(fleet.cli(fleet.hosts[0], "inspect", str(payload), "--json").stdout)[
        "build_id"
    ]

    rc, doc = rollout(fleet, payload, "--soak", "1", "--keys", f"{key}.pub")
    assert rc == 0, doc
    assert doc["ok"] and doc["batches"] == [["h1"], ["h2"], ["h3", "h4"]]
    for host in fleet.hosts:
        report = doc["hosts"][host.name]
        assert report["result"] == "patched", report
        assert any(s.startswith("signature verified ") for s in report["steps"]), report
        assert "healthy after the soak" in report["steps"], report
        assert [r["after"] for r in report["processes"]] == ["APPLIED", "APPLIED"]
        assert applied(fleet, host, "fix-health") == ["APPLIED", "APPLIED"]
        assert fleet.installed(host) == {"fix-health": build}
        assert fleet.health(host)[1].startswith("version 2")

    # Installed too: a restarted service comes up patched with no rollout.
    h4 = fleet.host("h4")
    fleet.restart_service(h4)
    assert fleet.health(h4)[1].startswith("version 2")
    assert applied(fleet, h4, "fix-health") == ["APPLIED", "APPLIED"]

    # The same rollout again changes nothing anywhere.
    audits = {h.name: fleet.audit_actions(h) for h in fleet.hosts}
    staged = {h.name: [(p.name, p.stat().st_mtime_ns) for p in (h.dir / "stage").iterdir()]
              for h in fleet.hosts}  # fmt: skip
    rc, doc = rollout(fleet, payload, "--keys", f"{key}.pub")
    assert rc == 0, doc
    for host in fleet.hosts:
        report = doc["hosts"][host.name]
        assert report["result"] == "already patched", report
        assert all(r["before"] == r["after"] == "APPLIED" for r in report["processes"])
        assert fleet.audit_actions(host) == audits[host.name], host.name
        assert [(p.name, p.stat().st_mtime_ns) for p in (host.dir / "stage").iterdir()] == (
            staged[host.name]
        )

    # status: hosts x state x build id
    out = fleet.fleet("status", "--app", APP, "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)["hosts"]
    assert {h: s["payloads"]["fix-health"] for h, s in status.items()} == {
        h.name: {"state": "applied", "build_id": build, "applied": "2/2"} for h in fleet.hosts
    }

    # revert: every host, every process, and uninstalled
    out = fleet.fleet("revert", "fix-health", "--app", APP, "--json")
    assert out.returncode == 0, out.stderr
    assert {h: r["result"] for h, r in json.loads(out.stdout)["hosts"].items()} == {
        h.name: "reverted" for h in fleet.hosts
    }
    for host in fleet.hosts:
        assert applied(fleet, host, "fix-health") == ["CHECKED", "CHECKED"]
        assert fleet.installed(host) == {}
        assert fleet.health(host)[1].startswith("version 1")


def test_an_unhealthy_host_in_batch_2_stops_the_rollout_and_every_touched_host_is_reverted(
    hosts: FleetLab,
) -> None:
    fleet = hosts
    h1, h2, h3, h4 = fleet.hosts
    payload = fleet.pack(BAD_FIX, "fix-region")  # breaks the health of region eu: h2
    audits = {h.name: fleet.audit_actions(h) for h in (h3, h4)}

    rc, doc = rollout(fleet, payload, "--health-retries", "2", "--health-delay", "1")
    assert rc == 1
    assert doc["error"]["code"] == "gate-failed" and "batch 2" in doc["error"]["message"]
    assert doc["batches"] == [["h1"], ["h2"]]
    report = doc["hosts"]
    assert report["h1"]["result"] == report["h2"]["result"] == "reverted"
    assert "healthy after the change" in report["h1"]["steps"]
    assert report["h2"]["failure"].startswith("UNHEALTHY after the change (2 tries)")
    assert "500" in report["h2"]["failure"]
    assert report["h3"] == report["h4"] == {
        "batch": None, "result": "not changed", "failure": "", "steps": [], "processes": []
    }  # fmt: skip
    for host in (h1, h2):  # patched, then reverted in every process, and uninstalled
        assert applied(fleet, host, "fix-region") == ["CHECKED", "CHECKED"]
        assert fleet.installed(host) == {}
        assert fleet.health(host)[0] == 200
        assert fleet.health(host)[1].startswith("version 1")
    for host in (h3, h4):
        untouched(fleet, host, audits[host.name])


def test_an_unreachable_host_fails_its_batch_and_the_hosts_reached_are_reverted(
    hosts: FleetLab,
) -> None:
    fleet = hosts
    h1, h2, h3, h4 = fleet.hosts
    payload = fleet.pack(GOOD_FIX, "fix-health")
    audit = fleet.audit_actions(h3)
    fleet.stop_sshd(h3)

    rc, doc = rollout(fleet, payload)
    assert rc == 1
    assert doc["error"]["code"] == "gate-failed" and "batch 3" in doc["error"]["message"]
    report = doc["hosts"]
    assert report["h3"]["result"] == "unreachable" and report["h3"]["batch"] == 3
    assert report["h3"]["failure"].startswith("unreachable:")
    for host in (h1, h2, h4):  # h4 was patched in the same batch, before h3 was gated
        assert report[host.name]["result"] == "reverted", report[host.name]
        assert any(s.startswith("applied in 2 processes") for s in report[host.name]["steps"])
        assert applied(fleet, host, "fix-health") == ["CHECKED", "CHECKED"]
        assert fleet.installed(host) == {}
    untouched(fleet, h3, audit)


def test_a_payload_no_host_trusts_changes_nothing(hosts: FleetLab, tmp_path: Path) -> None:
    fleet = hosts
    payload = fleet.pack(GOOD_FIX, "fix-health")
    for key in ("trusted", "other"):
        subprocess.run([fleet.pylivepatch, "keygen", "-o", str(tmp_path / key)], check=True,
                       capture_output=True)  # fmt: skip
    audits = {h.name: fleet.audit_actions(h) for h in fleet.hosts}

    # Unsigned while --keys asks for a signature: refused here, before Ansible runs.
    out = fleet.fleet("rollout", str(payload), "--app", APP, "--health", HEALTH,
                      "--keys", str(tmp_path / "trusted.pub"))  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith("pylivepatch: signature-required: payload fix-health")

    # Signed by a key the hosts do not trust: the first host refuses it before any change.
    subprocess.run([fleet.pylivepatch, "sign", str(payload), "--key", str(tmp_path / "other")],
                   check=True, capture_output=True)  # fmt: skip
    rc, doc = rollout(fleet, payload, "--keys", str(tmp_path / "trusted.pub"))
    assert rc == 1 and doc["error"]["code"] == "gate-failed"
    assert doc["hosts"]["h1"]["failure"].startswith("apply failed: signature-invalid"), doc
    assert doc["hosts"]["h1"]["result"] == "failed"  # and nothing to revert
    assert doc["batches"] == [["h1"]]
    for host in fleet.hosts:
        assert fleet.audit_actions(host) == audits[host.name], host.name
        assert fleet.installed(host) == {}
        assert all(p == {} for p in fleet.processes(host).values())


def test_a_failure_within_the_gate_reverts_that_host_only_and_the_rollout_goes_on(
    hosts: FleetLab,
) -> None:
    """--max-fail 50 with batches of 2: one failed host is 50%, not more, so its batch
    passes the gate (Ansible's max_fail_percentage must be exceeded). The health check
    here is a command run on each host."""
    fleet = hosts
    payload = fleet.pack(BAD_FIX, "fix-region")  # breaks the health of region eu: h2
    check = f"{sys.executable} -c \"import urllib.request; urllib.request.urlopen('{HEALTH}')\""
    out = fleet.fleet("rollout", str(payload), "--app", APP, "--plan", "2", "--max-fail", "50",
                      "--health", check, "--health-retries", "2", "--health-delay", "1",
                      "--json")  # fmt: skip
    doc = json.loads(out.stdout)
    assert out.returncode == 0 and doc["ok"], doc
    assert doc["batches"] == [["h1", "h2"], ["h3", "h4"]]
    report = doc["hosts"]
    assert report["h2"]["result"] == "reverted (within the gate)"
    assert report["h2"]["failure"].startswith("UNHEALTHY after the change (2 tries): exit 1")
    h2 = fleet.host("h2")
    assert applied(fleet, h2, "fix-region") == ["CHECKED", "CHECKED"]
    assert fleet.installed(h2) == {}
    for host in fleet.hosts:
        if host.name != "h2":
            assert report[host.name]["result"] == "patched", report[host.name]
            assert applied(fleet, host, "fix-region") == ["APPLIED", "APPLIED"]


def test_a_host_lost_in_the_middle_of_its_batch_fails_the_gate_and_the_others_are_reverted(
    hosts: FleetLab,
) -> None:
    """h3's connection dies after its change (the health command, on h3 only, kills
    every sshd of h3 once the payload is staged there): Ansible drops h3 from the play,
    the CLI treats it as a failed gate and reverts every other host touched. h3 keeps
    what it got until it is back: then `fleet revert` finishes it."""
    fleet = hosts
    payload = fleet.pack(GOOD_FIX, "fix-health")
    fetch = f"{sys.executable} -c \"import urllib.request; urllib.request.urlopen('{HEALTH}')\""
    lose_h3 = (
        'd="${XDG_RUNTIME_DIR%/run}"; '
        'if [ "${d##*/}" = h3 ] && ls "$d"/stage/*.lpz >/dev/null 2>&1; then '
        'for p in $(ip netns pids "$(ip netns identify)"); do '
        '[ "$(cat /proc/$p/comm)" = sshd ] && kill -9 "$p"; done; fi; ' + fetch
    )
    rc, doc = rollout(fleet, payload, "--health", lose_h3)
    assert rc == 1 and doc["error"]["code"] == "gate-failed", doc
    report = doc["hosts"]
    assert report["h3"]["result"] == "unreachable", report["h3"]
    assert report["h3"]["failure"].startswith("UNREACHABLE during health (command)")
    for name in ("h1", "h2", "h4"):
        assert report[name]["result"] == "reverted", report[name]
        host = fleet.host(name)
        assert applied(fleet, host, "fix-health") == ["CHECKED", "CHECKED"]
        assert fleet.installed(host) == {}
    h3 = fleet.host("h3")
    assert applied(fleet, h3, "fix-health") == ["APPLIED", "APPLIED"]

    fleet.stop_sshd(h3)
    fleet.start_sshd(h3)  # h3 is back
    out = fleet.fleet("revert", "fix-health", "--app", APP, "--limit", "h3", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["hosts"] == {
        "h3": {"result": "reverted", "detail": "changed in 2 processes, uninstalled"}
    }
    assert applied(fleet, h3, "fix-health") == ["CHECKED", "CHECKED"]
    assert fleet.installed(h3) == {}
