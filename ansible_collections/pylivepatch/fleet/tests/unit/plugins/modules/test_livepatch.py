"""The livepatch module against a real service: a master and a forked worker under
``pylivepatch run``, driven through the module's own ``main()`` and the host's real
``pylivepatch`` command line (``ansible-test units --local``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.pylivepatch.fleet.plugins.modules import livepatch, livepatch_info

PYLIVEPATCH = str(Path(sys.executable).with_name("pylivepatch"))

SERVICE = """
import os, time

def answer():
    return "version 1"

def main():
    if os.fork() == 0:
        while True:
            time.sleep(3600)
    while True:
        time.sleep(3600)
"""

FIX = """
import pylivepatch as lp

patch = lp.Patch("fix-answer", version="2")

@patch.function("{module}:answer")
def answer():
    return "version 2"
"""


@pytest.fixture
def shop(tmp_path, monkeypatch):
    """A running app ``ushop`` (two processes) with agents and state under tmp_path."""
    for sub in ("run", "state", "src", "other"):
        (tmp_path / sub).mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("PYLIVEPATCH_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "src" / "ushop.py").write_text(SERVICE)
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "src"))
    proc = subprocess.Popen(
        [PYLIVEPATCH, "run", "--app", "ushop", "--", sys.executable, "-c",
         "import ushop; ushop.main()"],
        env=env, start_new_session=True,
    )  # fmt: skip
    try:
        for _ in range(200):
            out = subprocess.run([PYLIVEPATCH, "list", "--app", "ushop", "--json"],
                                 capture_output=True, text=True)  # fmt: skip
            if out.returncode == 0 and len(json.loads(out.stdout)) == 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the service did not start")
        yield tmp_path
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def pack(tmp_path, source_dir, name):
    fix = tmp_path / f"{name}.py"
    fix.write_text(textwrap.dedent(FIX.format(module="ushop")))
    out = tmp_path / f"{name}.lpz"
    subprocess.run([PYLIVEPATCH, "pack", str(fix), "-o", str(out)], check=True,
                   env=dict(os.environ, PYTHONPATH=str(source_dir)), capture_output=True)  # fmt: skip
    return str(out)


def module(mod, capsys, **args):
    """Run the module's main() with these args; its JSON result and whether it failed."""
    check = args.pop("_ansible_check_mode", False)
    with patch_module_args(dict(args, executable=PYLIVEPATCH, _ansible_check_mode=check,
                                _ansible_diff=True)):  # fmt: skip
        with pytest.raises(SystemExit) as stop:
            mod.main()
    result = json.loads(capsys.readouterr().out)
    return result, stop.value.code != 0


def states(capsys):
    info, failed = module(livepatch_info, capsys, app="ushop")
    assert not failed, info
    return [{p["name"]: p["state"] for p in pr["payloads"]} for pr in info["processes"]], [
        i["name"] for i in info["installed"]
    ]


def test_check_mode_then_apply_then_again(shop, capsys):
    payload = pack(shop, shop / "src", "fix")
    dry, failed = module(livepatch, capsys, app="ushop", src=payload, _ansible_check_mode=True)
    assert not failed and dry["changed"]
    assert [r["after"] for r in dry["processes"]] == ["APPLIED", "APPLIED"]
    assert states(capsys) == ([{}, {}], [])  # nothing changed

    done, failed = module(livepatch, capsys, app="ushop", src=payload)
    assert not failed and done["changed"], done
    assert [r["result"] for r in done["processes"]] == ["applied", "applied"]
    assert done["installed"] == {"before": False, "after": True}
    assert "installed for app: no" in done["diff"]["before"]
    assert "installed for app: yes" in done["diff"]["after"]
    assert states(capsys) == ([{"fix-answer": "APPLIED"}] * 2, ["fix-answer"])

    again, failed = module(livepatch, capsys, app="ushop", src=payload)
    assert not failed and not again["changed"]
    assert [r["result"] for r in again["processes"]] == ["no change", "no change"]


def test_revert_then_absent(shop, capsys):
    payload = pack(shop, shop / "src", "fix")
    module(livepatch, capsys, app="ushop", src=payload)
    reverted, failed = module(livepatch, capsys, app="ushop", name="fix-answer", state="reverted")
    assert not failed and reverted["changed"]
    assert states(capsys) == ([{"fix-answer": "CHECKED"}] * 2, [])
    again, _ = module(livepatch, capsys, app="ushop", name="fix-answer", state="reverted")
    assert not again["changed"]
    absent, failed = module(livepatch, capsys, app="ushop", name="fix-answer", state="absent")
    assert not failed and absent["changed"]
    assert states(capsys) == ([{}, {}], [])


def test_a_load_refused_by_the_processes_leaves_nothing_installed(shop, capsys):
    # packed against other code than the service runs: every process refuses it
    (shop / "other" / "ushop.py").write_text(SERVICE.replace('"version 1"', '"other"'))
    payload = pack(shop, shop / "other", "fix")
    result, failed = module(livepatch, capsys, app="ushop", src=payload)
    # the module's build id differs from the one it was packed against
    assert failed and result["error_code"] == "dependency-mismatch", result
    assert states(capsys) == ([{}, {}], [])


def test_another_build_of_the_same_name_is_refused_before_any_change(shop, capsys):
    module(livepatch, capsys, app="ushop", src=pack(shop, shop / "src", "fix"))
    (shop / "other" / "ushop.py").write_text(SERVICE)
    other = shop / "other-fix.py"
    other.write_text(textwrap.dedent(FIX.format(module="ushop")).replace("version 2", "v3"))
    out = shop / "other.lpz"
    subprocess.run([PYLIVEPATCH, "pack", str(other), "-o", str(out)], check=True,
                   env=dict(os.environ, PYTHONPATH=str(shop / "src")), capture_output=True)  # fmt: skip
    result, failed = module(livepatch, capsys, app="ushop", src=str(out))
    assert failed and result["error_code"] == "exists"
    assert "with build id" in result["msg"]
    assert states(capsys) == ([{"fix-answer": "APPLIED"}] * 2, ["fix-answer"])


def test_an_archive_that_is_not_a_payload(tmp_path):
    bad = tmp_path / "bad.lpz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(livepatch.PylivepatchFailed) as failed:
        livepatch._manifest(str(bad))
    assert failed.value.code == "invalid-payload"
