"""The pause (spec §5): no other thread sees a half-done swap, atomic waits for
quiescence, immediate does not."""

from __future__ import annotations

import sys
import threading
from operator import attrgetter

import pytest

from conftest import park

N = 300


@pytest.fixture
def many(lab):
    src = "".join(f"def f{i}():\n    return 'old'\n\n" for i in range(N))
    mod = lab.module("many", src)
    body = ["import pylivepatch as lp", "patch = lp.Patch('many', consistency='atomic')"]
    for i in range(N):
        body += [f"@patch.function('{{m}}many:f{i}')", f"def f{i}():", "    return 'new'"]
    data = lab.pack("\n".join(body) + "\n")
    return mod, data


@pytest.mark.parametrize("mode", ["atomic", "immediate"])
def test_no_thread_ever_sees_a_half_done_swap(lab, many, mode):
    """A reader thread snapshots all functions' code objects in one C call, as often as
    it can, with the interpreter switching threads every microsecond; every snapshot is
    all old or all new across 20 applies and reverts of a 300-function payload."""
    mod, data = many
    funcs = [getattr(mod, f"f{i}") for i in range(N)]
    old = [f.__code__ for f in funcs]
    get_code = attrgetter("__code__")
    stop = threading.Event()
    seen: dict[str, int] = {"old": 0, "new": 0, "mixed": 0}

    def reader():
        while not stop.is_set():
            codes = list(map(get_code, funcs))  # one C-level call: atomic w.r.t. the GIL
            n_old = sum(map(lambda pair: pair[0] is pair[1], zip(codes, old, strict=True)))
            seen["old" if n_old == N else "new" if n_old == 0 else "mixed"] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    t = threading.Thread(target=reader, name="reader")
    t.start()
    try:
        lab.engine.upload("many", data)
        for _ in range(20):
            # a generous timeout: the reader's frames keep moving, so atomic may retry
            lab.engine.apply("many", consistency=mode, timeout=30)
            lab.engine.revert("many", consistency=mode, timeout=30)
    finally:
        stop.set()
        t.join(10)
        sys.setswitchinterval(interval)
    assert seen["mixed"] == 0, seen
    assert seen["old"] > 0
    assert all(f.__code__ is c for f, c in zip(funcs, old, strict=True))


def price_payload(lab, name: str, consistency: str):
    """A module ``name`` with ``price(x) = x * 2`` and a payload making it ``x * 3``."""
    mod = lab.module(name, "def price(x):\n    return x * 2\n")
    data = lab.pack(
        f"""
        import pylivepatch as lp
        patch = lp.Patch({name!r}, consistency={consistency!r})
        @patch.function("{{m}}{name}:price")
        def price(x):
            return x * 3
        """
    )
    return mod, data


def test_immediate_swaps_under_a_running_call(lab):
    """immediate: no quiescence check; a thread inside the old code finishes in it."""
    mod, data = price_payload(lab, "imm", "immediate")
    parked, t = park(mod.price, "inside")
    try:
        result = lab.engine.load(data, timeout=0.01)
        assert result.consistency == "immediate" and result.pause_ns > 0
        assert mod.price(2) == 6
    finally:
        parked.release.set()
        t.join(5)
    assert not any(ev.kind == "waiting" for ev in lab.engine.history() if ev.payload == "imm")


def test_consistency_can_be_overridden_per_action(lab):
    mod, data = price_payload(lab, "ovr", "immediate")
    parked, t = park(mod.price, "inside")
    try:
        lab.engine.upload("ovr", data)
        with pytest.raises(Exception) as err:
            lab.engine.apply("ovr", consistency="atomic", timeout=0.05)
        assert getattr(err.value, "code", None) == "timeout"
        assert mod.price(2) == 4
    finally:
        parked.release.set()
        t.join(5)
    assert lab.engine.apply("ovr", consistency="atomic").consistency == "atomic"
    assert mod.price(2) == 6


def test_transition_is_the_default_mode(lab):
    """A payload that names no consistency goes through a transition."""
    mod = lab.module("tr", "def price(x):\n    return x * 2\n")
    data = lab.pack(
        """
        import pylivepatch as lp
        patch = lp.Patch("tr")
        @patch.function("{m}tr:price")
        def price(x):
            return x * 3
        """
    )
    since = lab.mark()
    result = lab.engine.load(data)
    assert result.consistency == "transition" and mod.price(2) == 6
    kinds = [ev.kind for ev in lab.engine.history(since) if ev.action == "apply"]
    assert kinds == [
        "started",
        "checked",
        "transition",
        "transition-complete",
        "swapped",
        "finished",
    ]


def test_without_the_gil_only_immediate_is_accepted(lab, monkeypatch):
    """Free-threaded builds (no free-threaded interpreter here: the detection is
    simulated): atomic and transition are refused with a clear error, never raced."""
    from pylivepatch.engine import pause

    mod, data = price_payload(lab, "ft", "atomic")
    lab.engine.upload("ft", data)
    monkeypatch.setattr(pause, "gil_disabled", lambda: True)
    for mode in ("atomic", "transition"):
        with pytest.raises(Exception) as err:
            lab.engine.apply("ft", consistency=mode)
        assert getattr(err.value, "code", None) == "unsupported-target"
        assert "without the GIL" in str(err.value) and mod.price(2) == 4
    lab.engine.apply("ft", consistency="immediate")
    assert mod.price(2) == 6
