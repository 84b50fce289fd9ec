"""An audit hook written in Python runs inside the pause: every assignment of
``__code__`` raises the audit event ``object.__setattr__``. Without care its bytecode
hands the GIL to other threads in the middle of the swaps (measured: in 48-50 pauses of
50). The pause raises the GIL switch interval for its length (engine/pause.py).

Audit hooks cannot be removed, so each case runs in a process of its own."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = """
import json, sys, textwrap
from pathlib import Path

sys.path.insert(0, sys.argv[1])
Path(sys.argv[1], "hooked_target.py").write_text("def price(x):\\n    return x * 2\\n")
Path(sys.argv[1], "hooked_fix.py").write_text(textwrap.dedent('''
    import pylivepatch as lp
    patch = lp.Patch("hooked-fix", consistency="atomic")

    @patch.function("hooked_target:price")
    def price(x):
        return x * 3
'''))

import pylivepatch
from pylivepatch.builder.pack import pack
import hooked_target

intervals = []  # the switch interval each time a function's code is swapped


def hook(event, args):
    if event == "object.__setattr__" and len(args) > 1 and args[1] == "__code__":
        intervals.append(sys.getswitchinterval())


sys.addaudithook(hook)
before = sys.getswitchinterval()
engine = pylivepatch.engine()
data = pack(Path(sys.argv[1], "hooked_fix.py")).data
mode = sys.argv[2]
engine.load(data, consistency=mode, timeout=10)
applied = hooked_target.price(1)
engine.revert("hooked-fix", consistency=mode, timeout=10)
print(json.dumps({
    "intervals": intervals,
    "before": before,
    "after": sys.getswitchinterval(),
    "applied": applied,
    "reverted": hooked_target.price(1),
}))
"""


def run(tmp_path: Path, mode: str) -> dict:
    src = str(Path(__file__).resolve().parents[2] / "src")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), str(tmp_path),
         mode],
        capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin",
             "PYLIVEPATCH_STATE_DIR": str(tmp_path / "state")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("mode", ["atomic", "transition"])
def test_a_python_audit_hook_runs_in_the_pause_with_a_long_switch_interval(tmp_path, mode):
    out = run(tmp_path, mode)
    assert (out["applied"], out["reverted"]) == (3, 2)
    # every swap ran with the pause's interval, and the process's own is back after
    assert out["intervals"] and set(out["intervals"]) == {1.0}, out["intervals"]
    assert out["after"] == out["before"] != 1.0
