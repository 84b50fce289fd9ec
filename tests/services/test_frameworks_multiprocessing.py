"""An app using multiprocessing with the forkserver or the spawn start method, started
from ``/`` under ``pylivepatch run``: its resource tracker (and the forkserver) are Python
processes of the app with agents that cannot import the app's module (their
``sys.path`` does not hold the script's directory). A load app-wide used to be refused
there (``not-found: … module … does not exist in this process``) and changed nothing;
now such a process waits for the module (as a payload installed for the app does at
start), the rest of the app is patched, the pool's workers answer with the new code,
and the revert brings the old back.

docs/frameworks.md, "multiprocessing helpers"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from test_services import SRC, agents, cli, stop, wait_until

pytestmark = pytest.mark.system  # starts servers, gdb or namespaces: not in the fast lane

MAIN = """
    import multiprocessing as mp
    import os
    import sys
    import time

    import {m}mpapp as mpapp

    if __name__ == "__main__":
        mp.set_start_method(sys.argv[2])
        out = sys.argv[1]
        with mp.Pool(2) as pool:
            deadline = time.monotonic() + 300
            while not os.path.exists(out + ".stop") and time.monotonic() < deadline:
                answers = pool.map(mpapp.answer, range(4))
                with open(out, "a") as f:
                    f.write("".join(a + "\\n" for a in answers))
                time.sleep(0.02)
"""

APP = """
    import os

    def version():
        return "v1"

    def answer(_):
        return f"{version()} {os.getpid()}"
"""

FIX = """
    import pylivepatch as lp
    patch = lp.Patch("mp-v2", consistency="atomic")

    @patch.function("{m}mpapp:version")
    def version():
        return "v2"
"""


def answers(out: Path, since: int) -> list[tuple[str, int]]:
    lines = out.read_text().splitlines()[since:] if out.exists() else []
    return [(v, int(pid)) for v, pid in (line.split() for line in lines if " " in line)]


def lines(out: Path) -> int:
    return len(out.read_text().splitlines()) if out.exists() else 0


def settle(out: Path, expect: str, what: str) -> None:
    mark = lines(out) + 8  # the batch being written may have started before
    wait_until(lambda: len(answers(out, mark)) >= 24, what)
    got = answers(out, mark)
    assert {v for v, _ in got} == {expect}, (what, got)
    assert len({pid for _, pid in got}) >= 1


@pytest.mark.parametrize(
    "method, processes",
    # the main process, the resource tracker, 2 pool workers (and the forkserver)
    [("forkserver", 5), ("spawn", 4)],
)
def test_helpers_wait_and_the_app_loads(lab, method, processes):
    lab.module("mpapp", APP)
    main = lab.root / "main.py"
    main.write_text(textwrap.dedent(MAIN).replace("{m}", lab.prefix))
    out = lab.root / "answers.txt"
    app = f"mp-{lab.prefix}".rstrip("_")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pylivepatch", "run", "--app", app, "--",
         sys.executable, str(main), str(out), method],
        env=dict(os.environ, PYTHONPATH=SRC), cwd="/",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: len(agents(lab, app)) >= processes, "the app's processes with agents")
        settle(out, "v1", "before load")
        (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
        out_load = cli("load", "fix.lpz", "--app", app, "--json", cwd=lab.root)
        assert out_load.returncode == 0, out_load.stdout + out_load.stderr
        results = json.loads(out_load.stdout)["processes"]
        assert all(r.startswith("applied") for r in results.values()), results
        waiting = [r for r in results.values() if "waits for the import" in r]
        assert waiting, f"a helper that cannot import the module waits for it: {results}"
        settle(out, "v2", "after load")
        revert = cli("revert", "mp-v2", "--app", app, cwd=lab.root)
        assert revert.returncode == 0, revert.stdout + revert.stderr
        settle(out, "v1", "after revert")
    finally:
        Path(str(out) + ".stop").write_text("")
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            stop(proc)
        time.sleep(0)
