"""The consistency model (spec §5 transition): a call chain never mixes old and new
versions of a payload's functions; suspended generators keep a transition open; a
transition that cannot complete is reversed (or forced)."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time

import pytest

from pylivepatch import LivepatchError

from conftest import assert_identical, snapshot

PAIR = """
    import time

    def fmt(x):
        return ("v1", x)

    def process(items):
        out = []
        for i in items:
            out.append(fmt(i))
            time.sleep(0.0005)   # a long request: other threads run meanwhile
        return ("v1", out)

    async def step(x):
        return ("v1", x)

    async def handle(items):
        out = []
        for i in items:
            out.append(await step(i))
            await asyncio.sleep(0.0005)
        return ("v1", out)

    import asyncio

    def gen():
        yield "v1-a"
        yield "v1-b"
"""

FIX = """
    import pylivepatch as lp
    patch = lp.Patch("pair-v2", consistency="transition")

    @patch.function("{m}pair:fmt")
    def fmt(x):
        return ("v2", x)

    @patch.function("{m}pair:process")
    def process(items):
        out = []
        for i in items:
            out.append(fmt(i))
            time.sleep(0.0005)
        return ("v2", out)

    @patch.function("{m}pair:step")
    async def step(x):
        return ("v2", x)

    @patch.function("{m}pair:handle")
    async def handle(items):
        out = []
        for i in items:
            out.append(await step(i))
            await asyncio.sleep(0.0005)
        return ("v2", out)

    @patch.function("{m}pair:gen")
    def gen():
        yield "v2-a"
        yield "v2-b"
"""


def consistent(result) -> bool:
    version, parts = result
    return all(v == version for v, _ in parts)


@pytest.fixture
def pair(lab):
    return lab.module("pair", PAIR)


def test_threads_never_see_old_and_new_in_one_call_chain(lab, pair):
    data = lab.pack(FIX)
    stop = threading.Event()
    results: list = []

    def worker():
        while not stop.is_set():
            results.append(pair.process(range(5)))

    threads = [threading.Thread(target=worker, name=f"w{i}") for i in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.05)
        sig = inspect.signature(pair.process)
        result = lab.engine.load(data, timeout=20)
        assert result.consistency == "transition"
        time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert inspect.signature(pair.process) == sig
    versions = {r[0] for r in results}
    assert versions == {"v1", "v2"}, "both versions ran during the test"
    assert all(consistent(r) for r in results), [r for r in results if not consistent(r)][:3]
    events = [ev.kind for ev in lab.engine.history() if ev.payload == "pair-v2"]
    assert "transition" in events and "transition-complete" in events


def test_asyncio_tasks_never_mix_versions(lab, pair):
    data = lab.pack(FIX)
    results: list = []

    async def main():
        stop = asyncio.Event()

        async def client():
            while not stop.is_set():
                results.append(await pair.handle(range(5)))

        tasks = [asyncio.create_task(client(), name=f"client-{i}") for i in range(20)]
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: lab.engine.load(data, timeout=20))
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert {r[0] for r in results} == {"v1", "v2"}
    assert all(consistent(r) for r in results)


def test_a_suspended_generator_keeps_the_transition_open_until_it_finishes(lab, pair):
    g = pair.gen()
    assert next(g) == "v1-a"  # suspended inside old code
    lab.engine.upload("pair-v2", lab.pack(FIX))
    done = {}
    applier = threading.Thread(
        target=lambda: done.setdefault("r", lab.engine.apply("pair-v2", timeout=20))
    )
    applier.start()
    for _ in range(500):
        st = lab.engine.status("pair-v2")
        if st.in_progress and st.in_progress.get("blockers"):
            break
        time.sleep(0.01)
    assert any("generator suspended in" in b and "gen" in b for b in st.in_progress["blockers"])
    assert st.in_progress["transition"] == "patching"
    assert st.in_progress["target"] == "APPLIED", "the state the transition leads to"
    assert pair.gen().__next__() == "v2-a", "new calls already run the new version"
    assert next(g) == "v1-b"  # the old generator finishes in its own version
    with pytest.raises(StopIteration):
        next(g)
    applier.join(20)
    assert done["r"].state == "APPLIED"


def test_a_never_ending_blocker_times_out_reverses_and_names_it_then_force(lab, pair):
    g = pair.gen()
    next(g)
    lab.engine.upload("pair-v2", lab.pack(FIX))
    funcs = [pair.fmt, pair.process, pair.step, pair.handle, pair.gen]
    before = snapshot(*funcs, pair)
    with pytest.raises(LivepatchError) as err:
        lab.engine.apply("pair-v2", timeout=0.2)
    assert err.value.code == "timeout" and "reversed" in err.value.message
    assert "generator suspended in" in err.value.message and "gen" in err.value.message
    assert_identical(before, snapshot(*funcs, pair))
    assert lab.engine.status("pair-v2").state == "CHECKED"
    lab.engine.apply("pair-v2", timeout=0.1, force=True)
    assert pair.fmt(1) == ("v2", 1)
    assert any(ev.kind == "forced" for ev in lab.engine.history() if ev.payload == "pair-v2")
    del g


def test_revert_runs_the_model_backwards(lab, pair):
    lab.engine.load(lab.pack(FIX), timeout=10)
    assert pair.process([1])[0] == "v2"
    g = pair.gen()
    next(g)  # suspended in NEW code: blocks the way back
    result = {}
    t = threading.Thread(
        target=lambda: result.setdefault("r", lab.engine.revert("pair-v2", timeout=20))
    )
    t.start()
    for _ in range(500):
        st = lab.engine.status("pair-v2")
        if st.in_progress and st.in_progress.get("blockers"):
            break
        time.sleep(0.01)
    assert st.in_progress["transition"] == "unpatching"
    assert st.in_progress["target"] == "CHECKED"
    list(g)
    t.join(20)
    assert result["r"].state == "CHECKED" and pair.process([1])[0] == "v1"


def test_revert_during_the_transition_reverses_it(lab, pair):
    """Kernel semantics: disabling a patch in transition reverses the transition."""
    g = pair.gen()
    next(g)  # holds the transition open
    lab.engine.upload("pair-v2", lab.pack(FIX))
    funcs = [pair.fmt, pair.process, pair.step, pair.handle, pair.gen]
    before = snapshot(*funcs, pair)
    outcome = {}

    def applier():
        try:
            lab.engine.apply("pair-v2", timeout=30)
        except LivepatchError as exc:
            outcome["error"] = exc

    t = threading.Thread(target=applier)
    t.start()
    for _ in range(500):
        st = lab.engine.status("pair-v2")
        if st.in_progress and st.in_progress.get("transition"):
            break
        time.sleep(0.01)
    result = lab.engine.revert("pair-v2")
    t.join(30)
    assert result.state == "CHECKED" and "reversed" in result.message
    assert outcome["error"].code == "vetoed" and "reversed" in outcome["error"].message
    assert_identical(before, snapshot(*funcs, pair))
    del g


def test_a_blocking_asyncio_task_is_named(lab, pair):
    """The timeout names an asyncio task whose coroutine is suspended in old code."""
    ready, release = threading.Event(), threading.Event()
    loop = asyncio.new_event_loop()

    async def waiter():
        return await pair.handle([1])

    async def main():
        original_sleep = asyncio.sleep

        async def slow_sleep(delay):  # park the task inside handle() (old code)
            ready.set()
            while not release.is_set():
                await original_sleep(0.01)

        pair.asyncio = type("A", (), {"sleep": staticmethod(slow_sleep)})
        try:
            await asyncio.create_task(waiter(), name="checkout-42")
        finally:
            pair.asyncio = asyncio

    t = threading.Thread(target=lambda: loop.run_until_complete(main()))
    t.start()
    try:
        assert ready.wait(10)
        lab.engine.upload("pair-v2", lab.pack(FIX))
        with pytest.raises(LivepatchError) as err:
            lab.engine.apply("pair-v2", timeout=0.2)
        assert err.value.code == "timeout"
        assert "asyncio task 'checkout-42'" in err.value.message and "handle" in err.value.message
    finally:
        release.set()
        t.join(10)
        loop.close()


def test_status_of_a_reversal_shows_it_and_the_state_it_leads_back_to(lab, pair):
    """An old generator holds the transition past its timeout; one started during the
    transition (so in the new code) holds the way back: status shows ``reversing`` with
    target CHECKED until it finishes, and the apply then fails with ``timeout``."""
    old = pair.gen()
    next(old)
    lab.engine.upload("pair-v2", lab.pack(FIX))
    out: dict = {}

    def apply() -> None:
        try:
            # Long enough that the call below is made before the way back starts,
            # even on a loaded machine (0.3 s failed once in CI).
            lab.engine.apply("pair-v2", timeout=3.0)
        except LivepatchError as exc:
            out["error"] = exc

    applier = threading.Thread(target=apply)
    applier.start()
    new = None
    try:
        for _ in range(500):
            st = lab.engine.status("pair-v2")
            if st.in_progress and st.in_progress.get("blockers"):
                break
            time.sleep(0.01)
        new = pair.gen()
        assert next(new) == "v2-a", "a call during the transition runs the new version"
        for _ in range(2000):
            st = lab.engine.status("pair-v2")
            if st.in_progress and st.in_progress.get("transition") == "reversing":
                break
            time.sleep(0.01)
        assert st.in_progress["transition"] == "reversing"
        assert st.in_progress["target"] == "CHECKED"
        assert any("generator suspended in" in b for b in st.in_progress["blockers"])
    finally:
        if new is not None:
            list(new)
        applier.join(20)
    assert out["error"].code == "timeout"
    assert lab.engine.status("pair-v2").state == "CHECKED"
    assert list(old) == ["v1-b"]
