"""The examples run as a user runs them, and say every step behaved."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sessions_example_state_shadow_replace_revert():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sessions" / "run.py")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "every step behaved as expected"
    assert "sessions-v1 applied" in lines[1] and "1600/1600" in lines[1]
    assert "replaced by sessions-v2" in lines[2] and "locked out at MAX: True" in lines[2]
