"""A finished transition leaves nothing behind: its dispatchers, the transition and the
function objects of both versions are freed (found by the soak, benchmarks/soak.py:
every transition leaked about 7 kB, because the dispatcher code held its dispatcher as
a constant and code objects are invisible to the garbage collector)."""

from __future__ import annotations

import gc
import threading

from pylivepatch.engine.transition import Dispatch, Transition

TARGET = """
    def inner(n):
        return 1

    def outer(n):
        return (1, inner(n))
"""

FIX = """
    import pylivepatch as lp
    patch = lp.Patch("tr-memory", consistency="transition")

    @patch.function("{m}trmem:inner")
    def inner(n):
        return 2

    @patch.function("{m}trmem:outer")
    def outer(n):
        return (2, inner(n))
"""


def live(kind: type) -> int:
    # Objects of a finished action may sit in cycles of their own that hold the
    # dispatcher code: freeing them frees more, so collect until nothing is left.
    for _ in range(5):
        if not gc.collect():
            break
    return sum(1 for o in gc.get_objects() if type(o) is kind)


def test_transitions_free_their_dispatchers(lab):
    mod = lab.module("trmem", TARGET)
    lab.engine.upload("tr-memory", lab.pack(FIX))
    lab.engine.apply("tr-memory")  # the first round creates what stays (caches, history)
    lab.engine.revert("tr-memory")
    transitions, dispatchers = live(Transition), live(Dispatch)
    for _ in range(20):
        lab.engine.apply("tr-memory")
        assert mod.outer(0) == (2, 2)
        lab.engine.revert("tr-memory")
        assert mod.outer(0) == (1, 1)
    assert live(Transition) == transitions
    assert live(Dispatch) == dispatchers


def test_a_frame_still_in_a_dispatcher_keeps_it_until_it_returns(lab):
    """The dispatcher code is freed once the last frame running it is gone, not before:
    a thread inside a dispatcher when the transition ends still finishes its call."""
    mod = lab.module(
        "trmem",
        """
        import threading
        entered, release = threading.Event(), threading.Event()

        def inner(n):
            return 1

        def outer(n):
            return (1, inner(n))

        def slow(n):
            entered.set()
            release.wait(30)
            return outer(n)
        """,
    )
    lab.engine.upload(
        "tr-memory",
        lab.pack(
            FIX
            + """
    @patch.function("{m}trmem:slow")
    def slow(n):
        entered.set()
        release.wait(30)
        return ("slow-2", outer(n))
"""
        ),
    )
    before = live(Transition)
    results: list[object] = []
    applier = threading.Thread(target=lab.engine.apply, args=("tr-memory",))
    # a call of the old slow() holds the transition open until it returns
    caller = threading.Thread(target=lambda: results.append(mod.slow(0)))
    caller.start()
    assert mod.entered.wait(10)
    applier.start()
    while not (lab.engine.status("tr-memory").in_progress or {}).get("blockers"):
        threading.Event().wait(0.001)
    assert live(Transition) == before + 1
    mod.release.set()
    caller.join(10)
    applier.join(30)
    assert results == [(1, 1)], "the old call chain stays old to its end"
    assert mod.slow(0) == ("slow-2", (2, 2))
    lab.engine.revert("tr-memory")
    assert live(Transition) == before


def test_actions_leave_no_garbage_for_the_collector(lab):
    """A finished action is freed by reference counting alone: it leaves no cycle for
    the garbage collector. Garbage in cycles waits for a collection of the oldest
    generation, which gets rarer as a process holds more objects (benchmarks.md (i),
    fix 8). Before, each transition left a cycle of its Transition and its Dispatch
    objects, and one of a recursive inner function with its own cell."""
    mod = lab.module("trmem", TARGET)
    lab.engine.upload("tr-memory", lab.pack(FIX))
    for mode in ("atomic", "transition"):  # the first round creates what stays
        lab.engine.apply("tr-memory", consistency=mode)
        lab.engine.revert("tr-memory", consistency=mode)
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for mode in ("atomic", "transition", "immediate"):
            lab.engine.apply("tr-memory", consistency=mode)
            assert mod.outer(0) == (2, 2)
            lab.engine.revert("tr-memory", consistency=mode)
            assert mod.outer(0) == (1, 1)
            assert gc.collect() == 0, f"{mode}: cycles left for the collector"
    finally:
        if was_enabled:
            gc.enable()
