"""The examples run as a user runs them, and say every step behaved."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


NO_RACE = "WRONG: the race should lose updates before the fix"


def test_sessions_example_state_shadow_replace_revert():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    # The unpatched code's race needs the threads to interleave; on a loaded machine
    # they may happen not to (CI met it once on 3.10). Only that precondition is
    # tried again, at most three runs in all; any other failure fails at once.
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "sessions" / "run.py")],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        wrong = [ln.strip() for ln in out.stdout.splitlines() if ln.strip().startswith("WRONG:")]
        if not (wrong and all(w.startswith(NO_RACE) for w in wrong)):
            break
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "every step behaved as expected"
    assert "sessions-v1 applied" in lines[1] and "1600/1600" in lines[1]
    assert "replaced by sessions-v2" in lines[2] and "locked out at MAX: True" in lines[2]


def test_the_patch_author_guide_shows_what_the_builder_prints(tmp_path):
    """Every ``<!-- build: ARGS -->`` block of the guide is the builder's real output."""
    import re
    import shutil

    guide = (ROOT / "docs" / "patch-author-guide.md").read_text()
    blocks = re.findall(r"<!-- build: (.*?) -->\n```text\n(.*?)```", guide, re.S)
    assert len(blocks) == 3
    shutil.copytree(ROOT / "examples" / "builder", tmp_path / "builder")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    for args, shown in blocks:
        argv = args.split()
        name = argv[argv.index("--name") + 1]
        out = subprocess.run(
            [sys.executable, "-m", "pylivepatch", "build", *argv, "-o", f"{name}.lpz"],
            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path / "builder",
        )  # fmt: skip
        text = re.sub(r"build id [0-9a-f]{16}", "build id BUILD_ID", out.stdout)
        text = re.sub(r"python 3\.\d+", "python 3.11", text)
        assert text == shown, args
        assert out.returncode == (1 if "REFUSED" in shown else 0), out.stderr


def test_the_guide_example_payload_fixes_the_old_shop(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(tmp_path / "old")]))
    import shutil

    shutil.copytree(ROOT / "examples" / "builder" / "shop-1.0", tmp_path / "old")
    builder = ROOT / "examples" / "builder"
    built = subprocess.run(
        [sys.executable, "-m", "pylivepatch", "build", str(builder / "shop-1.0"),
         str(builder / "shop-1.1"), "-o", str(tmp_path / "fix-login.lpz"), "--name", "fix-login"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    probe = (
        "import types, shop, shop.auth as a\n"
        "u = types.SimpleNamespace(hash='', salt=b's')\n"
        "print(a.check_password(u, 'anything'), a.banner())\n"
    )
    plain = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60
    )
    assert plain.stdout.split() == ["True", "shop", "1.0"], "the old shop lets anyone in"
    fixed = subprocess.run(
        [sys.executable, "-m", "pylivepatch", "test", str(tmp_path / "fix-login.lpz"), "--",
         sys.executable, "-c", probe],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.split() == ["False", "shop", "1.1"]
    assert (
        fixed.stderr == "pylivepatch test: fix-login applied at start in 1 of 1 Python processes\n"
    )
