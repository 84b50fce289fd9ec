"""The garbage collector held off while an action computes (engine/collector.py).

An action's allocations grow with its payload, and automatic collections over a heap
that grows with them made upload, apply, revert and pack quadratic in the number of
functions (docs/benchmarks.md, "Scaling"). These tests check the mechanism, never a
time: no automatic collection starts while the engine computes, the collector runs
while the engine waits for other threads or runs hooks, and the program's collector
settings are as they were after every action, whether it succeeded or failed, and
whatever another thread did to them meanwhile.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pylivepatch import LivepatchError
from pylivepatch.engine import collector, faults

FUNCS = 300  # some 36 GC-tracked objects a function at upload: far over threshold0


def _payload(lab: Any, name: str, funcs: int = FUNCS, hooks: str = "") -> bytes:
    lab.module(name, "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(funcs)))
    body = [
        "import pylivepatch as lp",
        f"patch = lp.Patch('{lab.name(name)}_fix', consistency='transition')",
        textwrap.dedent(hooks),
    ]
    for i in range(funcs):
        body += [f"@patch.function('{{m}}{name}:f{i}')", f"def f{i}(x):", f"    return x - {i}"]
    return lab.pack("\n".join(body) + "\n")


def _settings() -> tuple[bool, tuple[int, ...]]:
    return gc.isenabled(), gc.get_threshold()


@pytest.fixture
def collections() -> Iterator[list[tuple[bool, int]]]:
    """Every automatic or explicit collection started from now on: (whether the
    starting thread held the collector off, the thread)."""
    seen: list[tuple[bool, int]] = []

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            seen.append((collector.holding(), threading.get_ident()))

    gc.callbacks.append(callback)
    try:
        yield seen
    finally:
        gc.callbacks.remove(callback)


@pytest.fixture
def settings_kept() -> Iterator[None]:
    """The test's own changes to the collector are undone whatever happens."""
    before = _settings()
    try:
        yield
    finally:
        gc.set_threshold(*before[1])
        (gc.enable if before[0] else gc.disable)()


def _at(engine: Any, point: str, do: Callable[[], None]) -> Any:
    """Run ``do`` when the engine passes ``point`` (a fault point, not armed to fail)."""

    def inject(at: str, ops: Any) -> None:
        if at == point:
            do()

    engine._inject = inject
    return inject


def test_no_automatic_collection_starts_while_an_upload_computes(lab, collections):
    data = _payload(lab, "many", 3 * FUNCS)
    me = threading.get_ident()
    marks: dict[str, tuple[int, int]] = {}

    def mark(at: str, ops: Any) -> None:
        mine = [held for held, tid in collections if tid == me]
        marks[at] = (len(mine), gc.get_count()[0])
        assert not any(mine), f"a collection started while the engine held it off ({at})"

    lab.engine._inject = mark
    try:
        lab.engine.upload(lab.name("many") + "_fix", data)
    finally:
        lab.engine._inject = None
    (first, young), (last, young_at_end) = marks["upload.read"], marks["upload.commit"]
    assert last == first  # not one collection from reading the archive to the commit
    # ... where the collector, running, would have started some: the young generation
    # (allocations less deallocations) grew past threshold0 more than twice
    assert young_at_end - young > 2 * gc.get_threshold()[0]


def test_no_automatic_collection_starts_in_the_computing_parts_of_apply_and_revert(
    lab, collections
):
    name = lab.name("many") + "_fix"
    lab.engine.upload(name, _payload(lab, "many"))
    me = threading.get_ident()
    lab.engine.apply(name)
    lab.engine.revert(name)
    assert not any(held for held, tid in collections if tid == me)
    assert lab.engine.status(name).state == "CHECKED"


def test_settings_are_as_they_were_after_every_action_and_every_failure(lab, settings_kept):
    before = _settings()
    name = lab.name("many") + "_fix"
    data = _payload(lab, "many", 50)
    e = lab.engine
    for point in ("upload.read", "upload.resolve", "upload.check", "upload.compile"):
        with faults.inject(e, point), pytest.raises(LivepatchError):
            e.upload(name, data)
        assert _settings() == before, point
    e.upload(name, data)
    assert _settings() == before
    e.revert(name)  # nothing to do: a no-op action
    assert _settings() == before
    with pytest.raises(LivepatchError, match="no payload named"):
        e.apply(name + "_missing")  # refused inside the action
    assert _settings() == before
    for point in ("apply.check", "apply.prepare", "pause:transition-start", "transition.wait"):
        with faults.inject(e, point), pytest.raises(LivepatchError):
            e.apply(name)
        assert _settings() == before, point
        assert e.status(name).state == "CHECKED"
    with (
        faults.inject(e, "apply.check", raises=KeyboardInterrupt),
        pytest.raises(KeyboardInterrupt),
    ):
        e.apply(name)
    assert _settings() == before
    e.apply(name)
    assert _settings() == before
    for point in ("revert.check", "revert.prepare", "pause:transition-final"):
        with faults.inject(e, point), pytest.raises(LivepatchError):
            e.revert(name)
        assert _settings() == before, point
    e.revert(name)
    e.unload(name)
    assert _settings() == before


def test_a_program_that_turned_automatic_collection_off_keeps_it_off(lab, settings_kept):
    name = lab.name("few") + "_fix"
    data = _payload(lab, "few", 20)
    gc.disable()
    lab.engine.upload(name, data)
    assert not gc.isenabled()
    gc.enable()
    gc.set_threshold(0, 7, 7)
    lab.engine.apply(name)
    lab.engine.revert(name)
    assert _settings() == (True, (0, 7, 7))


def test_what_another_thread_sets_during_an_action_is_kept(lab, settings_kept):
    """Another thread's gc.disable() and gc.set_threshold() made while the collector is
    held stay (engine/collector.py: only the hold's own value is put back)."""
    name = lab.name("few") + "_fix"
    data = _payload(lab, "few", 20)
    seen: list[tuple[bool, tuple[int, ...]]] = []

    def other(do: Callable[[], None]) -> None:
        t = threading.Thread(target=do)
        t.start()
        t.join()

    def during_upload() -> None:
        seen.append(_settings())
        other(gc.disable)

    _at(lab.engine, "upload.compile", during_upload)
    try:
        lab.engine.upload(name, data)
        assert seen[0][1][0] == 0  # held: automatic collection paused
        assert not gc.isenabled()  # the other thread's gc.disable() stands
        gc.enable()
        _at(lab.engine, "apply.check", lambda: other(lambda: gc.set_threshold(555, 9, 9)))
        lab.engine.apply(name)
        assert gc.get_threshold() == (555, 9, 9)  # theirs, not the saved ones
    finally:
        lab.engine._inject = None
    lab.engine.revert(name)
    assert gc.get_threshold() == (555, 9, 9)


def test_the_collector_runs_while_an_action_waits_and_while_hooks_run(lab, settings_kept):
    gc.set_threshold(700, 10, 10)
    slow = lab.module("slow", "SEEN = []\ndef hold(event):\n    event.wait()\n    return 1\n")
    hooks = """
        import gc, sys
        @patch.pre_apply
        def pre(ctx):
            sys.modules['{m}slow'].SEEN.append(gc.get_threshold())
    """
    body = textwrap.dedent(hooks) + textwrap.dedent("""
        @patch.function('{m}slow:hold')
        def hold(event):
            event.wait()
            return 2
    """)
    data = lab.pack(
        "import pylivepatch as lp\n"
        f"patch = lp.Patch('{lab.name('slow')}_fix', consistency='transition')\n" + body
    )
    name = lab.name("slow") + "_fix"
    lab.engine.upload(name, data)
    held: list[tuple[int, ...]] = []
    _at(lab.engine, "apply.check", lambda: held.append(gc.get_threshold()))
    release = threading.Event()
    blocker = threading.Thread(target=slow.hold, args=(release,))
    blocker.start()
    samples: list[int] = []

    def watch() -> None:
        while not lab.engine._progress.get(name, {}).get("blockers"):
            if release.is_set():  # the apply ended without waiting: it failed
                return
            time.sleep(0.001)
        for _ in range(50):  # the engine is waiting for the blocker meanwhile
            samples.append(gc.get_threshold()[0])
            time.sleep(0.002)
        release.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        lab.engine.apply(name, timeout=60)
    finally:
        release.set()
        lab.engine._inject = None
        watcher.join()
        blocker.join()
    assert held == [(0, 10, 10)]  # the checks ran with automatic collection paused
    assert any(s == 700 for s in samples), samples  # the wait let it run
    assert slow.SEEN == [(700, 10, 10)]  # and so did the pre hook
    assert gc.get_threshold() == (700, 10, 10)


def test_holds_nest_and_a_second_thread_never_takes_a_held_collector(settings_kept):
    gc.set_threshold(700, 10, 10)
    with collector.held():
        assert gc.get_threshold() == (0, 10, 10) and collector.holding()
        with collector.held():  # nested: nothing more, and nothing given back early
            pass
        assert gc.get_threshold() == (0, 10, 10)
        took: list[bool] = []
        t = threading.Thread(target=lambda: took.append(collector.take()))
        t.start()
        t.join()
        assert took == [False]
        with collector.released():
            assert gc.get_threshold() == (700, 10, 10) and not collector.holding()
            with collector.held():
                assert gc.get_threshold() == (0, 10, 10)
            assert gc.get_threshold() == (700, 10, 10)
        assert gc.get_threshold() == (0, 10, 10)
    assert gc.get_threshold() == (700, 10, 10) and not collector.holding()
    with pytest.raises(ZeroDivisionError), collector.held():
        1 / 0  # noqa: B018
    assert gc.get_threshold() == (700, 10, 10) and gc.isenabled()


def test_a_child_forked_by_another_thread_during_a_hold_gets_the_thresholds_back():
    script = textwrap.dedent("""
        import gc, os, threading
        from pylivepatch.engine import collector
        gc.set_threshold(700, 10, 10)
        taken, done = threading.Event(), threading.Event()
        def hold():
            with collector.held():
                taken.set()
                done.wait()
        t = threading.Thread(target=hold, daemon=True)  # an assertion must not hang
        t.start()
        taken.wait()
        assert gc.get_threshold() == (0, 10, 10)
        pid = os.fork()
        if pid == 0:
            os._exit(0 if gc.get_threshold() == (700, 10, 10) else 3)
        _, status = os.waitpid(pid, 0)
        done.set()
        t.join()
        assert gc.get_threshold() == (700, 10, 10)
        print("child", os.waitstatus_to_exitcode(status))
    """)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["child", "0"]
