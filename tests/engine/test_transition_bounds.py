"""What bounds a transition (issue 24; docs/benchmarks.md, "Transitions under load"):
every action runs with the switch interval shortened and puts the process's own back,
a check that goes on waiting stops at the first blocker, and the way back of a
transition that timed out has a part of the timeout, not the whole of it again.

Mechanisms, not times: the figures are the benchmark's (benchmarks/bench_transition.py).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

from pylivepatch import LivepatchError
from pylivepatch.engine.base import TRANSITION_SWITCH_INTERVAL, way_back
from pylivepatch.engine.transition import Transition
from test_trust_engine import CHAIN, CHAIN_FIX

from conftest import assert_identical, snapshot

SHOP = """
    LOG = []

    def price(x):
        return x * 2

    def hold(event):
        event.wait()
        return "old"
"""

HOOKED = """
    import sys
    import pylivepatch as lp
    import {m}shop as _target

    patch = lp.Patch("shop-v2", consistency="{mode}")

    @patch.function("{m}shop:price")
    def price(x):
        return x * 3

    @patch.pre_apply
    def pre_apply(ctx):
        _target.LOG.append(sys.getswitchinterval())
        {veto}
"""


@pytest.fixture
def own_interval() -> Iterator[float]:
    """A process's own interval, unlike the default and the engine's: 0.007 s, which
    CPython keeps as 6,999 µs or 7,000 µs depending on how it is given back (an engine
    that saved and restored it carelessly would change it by a microsecond)."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(0.007)
    try:
        yield sys.getswitchinterval()
    finally:
        sys.setswitchinterval(saved)


@pytest.mark.parametrize("mode", ["transition", "atomic"])
def test_an_action_runs_with_a_short_switch_interval_and_puts_the_process_own_back(
    lab, own_interval, mode
):
    """A hook runs inside the action: it sees the engine's interval; after the action,
    applied or refused, the process has its own again, to the microsecond."""
    shop = lab.module("shop", SHOP)
    lab.engine.upload("shop-v2", lab.pack(HOOKED.replace("{mode}", mode).replace("{veto}", "")))
    lab.engine.apply("shop-v2")
    assert shop.LOG == [TRANSITION_SWITCH_INTERVAL]
    assert sys.getswitchinterval() == own_interval
    assert shop.price(2) == 6
    lab.engine.revert("shop-v2")
    assert sys.getswitchinterval() == own_interval
    lab.engine.unload("shop-v2")

    vetoed = HOOKED.replace("{mode}", mode).replace("{veto}", "raise RuntimeError('no')")
    lab.engine.upload("shop-v2", lab.pack(vetoed))
    before = snapshot(shop.price, shop)
    with pytest.raises(LivepatchError):
        lab.engine.apply("shop-v2")
    assert sys.getswitchinterval() == own_interval
    assert_identical(before, snapshot(shop.price, shop))
    lab.engine.unload("shop-v2")


def test_a_process_interval_shorter_than_the_engines_is_kept(lab):
    """The engine only ever shortens the interval: a process that runs shorter turns
    keeps them during the action too."""
    shop = lab.module("shop", SHOP)
    saved = sys.getswitchinterval()
    sys.setswitchinterval(TRANSITION_SWITCH_INTERVAL / 5)
    short = sys.getswitchinterval()
    try:
        lab.engine.upload(
            "shop-v2", lab.pack(HOOKED.replace("{mode}", "transition").replace("{veto}", ""))
        )
        lab.engine.apply("shop-v2")
        assert [short] == shop.LOG
        assert sys.getswitchinterval() == short
        lab.engine.revert("shop-v2")
        lab.engine.unload("shop-v2")
    finally:
        sys.setswitchinterval(saved)


def test_a_check_that_goes_on_waiting_stops_at_the_first_blocker(lab):
    """Three threads parked in old code: a full check names all three, a check that
    only asks whether anything blocks names one."""
    shop = lab.module("shop", SHOP)
    event = threading.Event()
    threads = [
        threading.Thread(target=shop.hold, args=(event,), name=f"parked-{i}") for i in range(3)
    ]
    for t in threads:
        t.start()
    try:
        hold = shop.hold
        trans = Transition([(hold, (hold.__code__, None, None), (shop.price.__code__, None, None))])
        every, first = trans.blockers(), trans.blockers(first=True)
    finally:
        event.set()
        for t in threads:
            t.join(10)
    assert sorted(b.split("'")[1] for b in every) == ["parked-0", "parked-1", "parked-2"]
    assert len(first) == 1 and first[0] in every
    assert trans.blockers() == [], "nothing blocks once they have left"


@pytest.mark.parametrize(
    ("timeout", "budget"), [(0.2, 0.2), (1.0, 1.0), (2.0, 1.0), (10.0, 2.5), (100.0, 25.0)]
)
def test_the_way_back_has_a_quarter_of_the_timeout_at_least_1s_at_most_the_timeout(timeout, budget):
    assert way_back(timeout) == budget


def test_a_timed_out_transition_whose_way_back_is_blocked_is_stuck_after_its_budget(lab):
    """Forward blocked by a request parked in old code, the way back by one that started
    during the transition in new code: the apply reports the transition stuck after its
    timeout and the way back's budget (1 s for a 3 s timeout), not after the timeout
    twice; the report names the budget and both blockers."""
    chain = lab.module("chain", CHAIN)
    lab.engine.upload("chain-v2", lab.pack(CHAIN_FIX))
    since = lab.mark()
    parked = {name: threading.Event() for name in ("old-request", "new-request")}
    inside = {name: threading.Event() for name in parked}

    def request(name: str) -> None:
        def wait() -> None:
            inside[name].set()
            parked[name].wait()

        chain.outer(wait)

    old = threading.Thread(target=request, args=("old-request",), name="old-request")
    old.start()
    inside["old-request"].wait(30)
    result: dict[str, BaseException] = {}

    def apply() -> None:
        try:
            lab.engine.apply("chain-v2", timeout=3.0)
        except LivepatchError as exc:
            result["error"] = exc

    applying = threading.Thread(target=apply)
    applying.start()
    new: threading.Thread | None = None
    try:
        for _ in range(3000):  # bounded: the transition starts at once
            if (lab.engine.status("chain-v2").in_progress or {}).get("blockers"):
                break
            threading.Event().wait(0.01)
        new = threading.Thread(target=request, args=("new-request",), name="new-request")
        new.start()
        inside["new-request"].wait(30)
        applying.join(60)
        error = result["error"]
        assert error.code == "transition-stuck"
        assert "did not complete within 3s" in error.message
        assert "way back did not complete within 1s" in error.message
        assert "new-request" in error.message
        kinds = [ev.kind for ev in lab.engine.history(since) if ev.payload == "chain-v2"]
        assert "reversing" in kinds and "stuck" in kinds and "forced" not in kinds
    finally:
        for event in parked.values():
            event.set()
        old.join(30)
        if new is not None:
            new.join(30)
        applying.join(60)
        if "chain-v2" in lab.engine._stuck:
            lab.engine.revert("chain-v2", timeout=30)
        lab.engine.unload("chain-v2")
