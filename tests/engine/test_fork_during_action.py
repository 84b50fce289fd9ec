"""A fork while an action runs in another thread (engine/forks.py): the fork waits for
the action to end, so the child has its result and a free engine; an action that takes
longer than the wait goes on in the parent and is undone in the child, which says so
and can act again. Before, the child kept the engine's lock (every action ``busy``) and
the transition's dispatchers for good.

Each case runs in a process of its own (it forks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = """
import json, os, sys, threading, time, textwrap
from pathlib import Path

sys.path.insert(0, sys.argv[1])
Path(sys.argv[1], "forked_target.py").write_text(textwrap.dedent('''
    def price(parked=None):
        if parked is not None:
            parked.wait(30)  # a request inside the old code: the transition waits for it
        return 1
'''))
Path(sys.argv[1], "forked_fix.py").write_text(textwrap.dedent('''
    import pylivepatch as lp
    patch = lp.Patch("fork-fix", consistency="transition")

    @patch.function("forked_target:price")
    def price(parked=None):
        return 2
'''))

import pylivepatch
from pylivepatch.builder.pack import pack
from pylivepatch.engine import forks

import forked_target as t

case = sys.argv[2]
if case == "undone":
    forks.FORK_WAIT = 0.3
engine = pylivepatch.engine()
if case == "control":  # the engine left out of the fork handling
    forks._engines.discard(engine)
engine.upload("fork-fix", pack(Path(sys.argv[1], "forked_fix.py")).data)
original = (t.price.__code__, t.price.__defaults__, t.price.__kwdefaults__)
release = threading.Event()
old = threading.Thread(target=t.price, args=(release,))
old.start()
time.sleep(0.1)
results = []
applier = threading.Thread(target=lambda: results.append(engine.apply("fork-fix", timeout=30)))
applier.start()
for _ in range(1000):  # the transition is waiting for the old request
    progress = engine.status("fork-fix").in_progress
    if progress and progress.get("blockers"):
        break
    time.sleep(0.01)
else:
    raise SystemExit("the transition never waited")
if case == "waits":
    threading.Timer(0.5, release.set).start()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    status = engine.status("fork-fix")
    out = {
        "state": status.state,
        "in_progress": status.in_progress,
        "price": t.price(),
        "identical": (t.price.__code__, t.price.__defaults__, t.price.__kwdefaults__)
        == original and t.price.__code__ is original[0],
        "last": [[e.kind, e.detail.get("message", "")] for e in engine.history()][-1],
    }
    try:  # the child's engine is free: it can act at once
        if case in ("undone", "control"):
            out["acted"] = engine.apply("fork-fix", consistency="immediate").state
        else:
            out["acted"] = engine.revert("fork-fix", consistency="immediate").state
        out["price_after"] = t.price()
    except Exception as exc:
        out["acted"] = repr(exc)
    os.write(w, json.dumps(out).encode())
    os._exit(0)
os.close(w)
release.set()
applier.join(30)
old.join(30)
child = json.loads(os.read(r, 65536))
os.waitpid(pid, 0)
print(json.dumps({"child": child, "parent": [engine.status("fork-fix").state, t.price()]}))
"""


def run(tmp_path: Path, case: str) -> dict:
    src = str(Path(__file__).resolve().parents[2] / "src")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), str(tmp_path), case],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=src, PYLIVEPATCH_STATE_DIR=str(tmp_path / "state")),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_a_fork_waits_for_the_running_action_and_the_child_has_its_result(tmp_path):
    out = run(tmp_path, "waits")
    child = out["child"]
    assert child["state"] == "APPLIED" and child["in_progress"] is None
    assert child["price"] == 2
    assert (child["acted"], child["price_after"]) == ("CHECKED", 1), "the child's engine is free"
    assert out["parent"] == ["APPLIED", 2]


def test_an_action_longer_than_the_wait_is_undone_in_the_child(tmp_path):
    out = run(tmp_path, "undone")
    child = out["child"]
    assert child["state"] == "CHECKED" and child["in_progress"] is None
    assert child["identical"] and child["price"] == 1, "the function as it was, no dispatcher"
    kind, message = child["last"]
    assert kind == "finished" and "forked while the action ran in its parent" in message
    assert (child["acted"], child["price_after"]) == ("APPLIED", 2), "the child can act again"
    assert out["parent"] == ["APPLIED", 2], "the parent's action went on"


def test_the_check_above_can_fail(tmp_path):
    """The control: an engine left out of the fork handling gives its child the action
    half done, with the lock held by a thread the child does not have."""
    out = run(tmp_path, "control")
    child = out["child"]
    assert child["in_progress"] is not None and not child["identical"]
    assert "is in progress; try again" in child["acted"]  # busy, for good
    assert out["parent"] == ["APPLIED", 2]
