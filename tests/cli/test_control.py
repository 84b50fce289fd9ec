"""The operator's side as a library (pylivepatch.control): a Python program selects
processes and runs the all-or-nothing action without the command line, and gets the
same results the command line prints."""

from __future__ import annotations

import os

import pytest

from pylivepatch import LivepatchError
from pylivepatch.control.targets import Targets, select
from pylivepatch.control.together import act
from test_remote import FIX, odd_process, procs, wait_for_agents  # noqa: F401 - a fixture


def test_a_program_loads_and_reverts_on_every_process_of_an_app(lab, procs):  # noqa: F811
    lab.module("shop", "def price(x):\n    return x * 2\n")
    app = f"lib-{lab.prefix}"
    workers = [procs(app, lab.name("shop")) for _ in range(2)]
    wait_for_agents(lab, app, 2)
    pids = sorted(w.p.pid for w in workers)
    assert sorted(select(Targets(apps=(app,)))) == pids
    (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
    steps: list[tuple[str, int]] = []

    from contextlib import contextmanager

    from pylivepatch.control.together import Steps

    @contextmanager
    def progress(label: str, total: int):
        steps.append((label, total))
        yield Steps()

    out = act("load", Targets(apps=(app,)), file=str(lab.root / "fix.lpz"), progress=progress)
    assert out.ok and out.name == "fix-price" and sorted(out.pids) == pids
    assert out.results == {pid: "applied" for pid in pids}
    assert steps == [("upload fix-price", 2), ("apply fix-price", 2)]
    assert [w.call() for w in workers] == ["6", "6"]
    out = act("revert", Targets(apps=(app,)), name="fix-price")
    assert out.ok and out.results == {pid: "reverted" for pid in pids}
    assert [w.call() for w in workers] == ["4", "4"]
    out = act("unload", Targets(pids=tuple(pids)), name="fix-price")
    assert out.ok and out.results == {pid: "unloaded" for pid in pids}


def test_one_refusing_process_is_the_failure_and_the_others_are_put_back(lab, procs):  # noqa: F811
    lab.module("shop", "def price(x):\n    return x * 2\n")
    app = f"lib-mixed-{lab.prefix}"
    good = [procs(app, lab.name("shop")) for _ in range(2)]
    odd = odd_process(lab, app)
    try:
        wait_for_agents(lab, app, 3)
        (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
        out = act("load", Targets(apps=(app,)), file=str(lab.root / "fix.lpz"))
        assert not out.ok and out.failure is not None and not out.left
        assert out.failure.code in ("dependency-mismatch", "expectation-failed")
        assert out.results[odd.p.pid].startswith(out.failure.code)
        for w in good:
            assert out.results[w.p.pid] == "uploaded, then unloaded (another process refused)"
        assert [w.call() for w in good] == ["4", "4"], "nobody stays patched"
        assert odd.call() == "4"
    finally:
        odd.stop()


def test_bad_calls_are_refused_before_any_process_is_asked():
    for verb, targets, options, words in [
        ("patch", Targets(pids=(1,)), {}, "unknown action"),
        ("apply", Targets(), {"name": "x"}, "name the target"),
        ("apply", Targets(pids=(os.getpid(),)), {}, "name is missing"),
        ("load", Targets(pids=(os.getpid(),)), {}, "file is missing"),
    ]:
        with pytest.raises(LivepatchError) as err:
            act(verb, targets, **options)
        assert err.value.code == "bad-request" and words in err.value.message
