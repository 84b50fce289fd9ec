"""A call switched out inside a dispatcher, after it read the transition's view and
before it called the version it chose, blocks every action after it until it has
started that version (found by the soak, benchmarks/soak.py: one answer in about
100,000 mixed the versions of two cooperating functions).

Without that rule the transition ends, the next action (a revert, atomic or by
transition) swaps the functions back, and the call then runs the version chosen before:
the new ``outer`` calling the old ``inner``.

The thread is parked at that exact point by a trace function of its own (an audit hook
would do it too, but it stays for the whole test session and runs Python code inside
every other test's pauses)."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from pylivepatch.engine.transition import Dispatch

from conftest import park

DISPATCH_CODE = Dispatch.__call__.__code__

TARGET = """
    def inner():
        return 1

    def outer(parked=None):
        if parked is not None:
            parked * 1   # waits inside this version until released
        return (1, inner())
"""

FIX = """
    import pylivepatch as lp
    patch = lp.Patch("in-flight", consistency="transition")

    @patch.function("{m}inflight:inner")
    def inner():
        return 2

    @patch.function("{m}inflight:outer")
    def outer(parked=None):
        if parked is not None:
            parked * 1
        return (2, inner())
"""


def park_in_dispatcher(reached: threading.Event, release: threading.Event) -> None:
    """Trace this thread (only): it stops in the first dispatcher it enters, on the
    first line after it has read and unpacked the transition's view, until ``release``."""

    def local(frame, event, arg):
        if event == "line" and "back" in frame.f_locals and not reached.is_set():
            reached.set()
            release.wait(30)
        return local

    def calls(frame, event, arg):
        return local if frame.f_code is DISPATCH_CODE and not reached.is_set() else None

    sys.settrace(calls)


def wait_for_blockers(lab, name: str, action: threading.Thread) -> list[str]:
    for _ in range(1000):
        progress = lab.engine.status(name).in_progress
        if progress and progress.get("blockers"):
            return list(progress["blockers"])
        assert action.is_alive(), "the action completed without waiting for anything"
        time.sleep(0.01)
    raise AssertionError("the action never reported a blocker")


@pytest.mark.parametrize("revert_mode", ["atomic", "transition"])
def test_a_call_switched_out_in_a_dispatcher_blocks_the_next_action(lab, revert_mode):
    mod = lab.module("inflight", TARGET)
    lab.engine.upload("in-flight", lab.pack(FIX))

    # A request inside the old outer keeps the apply's transition open ...
    old_call, old_thread = park(mod.outer, "old-request")
    applied: dict = {}
    applier = threading.Thread(
        target=lambda: applied.setdefault("r", lab.engine.apply("in-flight", timeout=20))
    )
    applier.start()
    assert any("old-request" in b for b in wait_for_blockers(lab, "in-flight", applier))

    # ... while a new request enters outer's dispatcher, reads the armed view and is
    # switched out before it calls the version it chose (the new one).
    reached, release = threading.Event(), threading.Event()
    answers: list = []

    def new_request() -> None:
        park_in_dispatcher(reached, release)
        try:
            answers.append(mod.outer())
        finally:
            sys.settrace(None)

    late = threading.Thread(target=new_request, name="in-flight-request", daemon=True)
    late.start()
    try:
        assert reached.wait(10)
        old_call.release.set()  # the old request finishes in its own version
        old_thread.join(10)
        applier.join(20)
        assert applied["r"].state == "APPLIED", "the parked call does not hold the transition"

        # The revert must now wait for the parked call: it will run the new outer.
        reverted: dict = {}

        def revert() -> None:
            try:
                reverted["r"] = lab.engine.revert("in-flight", timeout=20, consistency=revert_mode)
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                reverted["error"] = exc

        reverter = threading.Thread(target=revert)
        reverter.start()
        blockers = wait_for_blockers(lab, "in-flight", reverter)
        assert any("in-flight-request" in b for b in blockers), blockers
        assert "r" not in reverted, "the revert waits"
        # new calls meanwhile: the applied code (atomic), the code the revert goes to
        # (transition: dispatchers are installed)
        assert mod.outer() == ((2, 2) if revert_mode == "atomic" else (1, 1))
    finally:
        release.set()
        late.join(10)
    reverter.join(20)
    assert "error" not in reverted, reverted
    assert reverted["r"].state == "CHECKED"
    assert answers == [(2, 2)], "the parked call ran one version of both functions"
    assert mod.outer() == (1, 1)
