"""Reading the stacks does not change when another thread's objects die.

A consistent action reads every thread's stack, and so makes a frame object for every
frame. Such a frame object, still referenced when its function returns, keeps that
function's locals alive with it; and if the engine's own frame is among those it
references (it is on its own thread's stack), the references form a cycle that only
the garbage collector frees, later, in any order. The program's objects must die when
their function returns, as without the engine: a file closed at return stays open
otherwise, and on CPython 3.12.1 a ``BytesIO`` buffer freed by the collector in the
wrong order crashes the process (CPython gh-111049). The soak met exactly that in a
uvicorn worker, whose thread answering the supervisor's pings sends each answer
through a ``BytesIO`` buffer (``multiprocessing.connection``)."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from pylivepatch.engine import pause
from test_transition_memory import FIX, TARGET  # outer and inner, both changed


class Marker:
    pass


def hold(lock: threading.Lock, refs: list[weakref.ref[Marker]], entered: threading.Event) -> None:
    """Keeps a local and blocks in C (this function is its thread's innermost frame)."""
    mine = Marker()
    refs.append(weakref.ref(mine))
    entered.set()
    lock.acquire()


def run_beside_a_holder(action) -> weakref.ref[Marker]:
    """Run ``action()`` while another thread sits in :func:`hold`; then let the thread
    return, with the collector off all along. The weak reference to its local."""
    lock, refs, entered = threading.Lock(), [], threading.Event()
    lock.acquire()
    thread = threading.Thread(target=hold, args=(lock, refs, entered))
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        thread.start()
        assert entered.wait(10)
        action()
        lock.release()
        thread.join(10)
        assert not thread.is_alive()
        return refs[0]
    finally:
        if was_enabled:
            gc.enable()


def test_control_a_frame_object_kept_past_its_return_keeps_the_locals():
    """The check below can fail: a frame object that outlives its function keeps that
    function's locals alive."""
    kept: list[dict[int, list]] = []
    ref = run_beside_a_holder(lambda: kept.append(pause.stacks()))
    assert ref() is not None
    kept.pop().clear()  # the frames' only references: the local dies with its frame
    assert ref() is None


def test_reading_the_stacks_directly():
    with pause.read_stacks() as stacks:
        assert threading.get_ident() in stacks
    assert stacks == {}, "emptied at the end of the block"


@pytest.mark.parametrize("mode", ["atomic", "transition"])
def test_a_consistent_action_leaves_other_threads_locals_to_die_at_return(lab, mode):
    mod = lab.module("trmem", TARGET)
    lab.engine.upload("tr-memory", lab.pack(FIX))

    def apply_and_revert() -> None:
        lab.engine.apply("tr-memory", consistency=mode)
        assert mod.outer(0) == (2, 2)
        lab.engine.revert("tr-memory", consistency=mode)
        assert mod.outer(0) == (1, 1)

    ref = run_beside_a_holder(apply_and_revert)
    assert ref() is None, "the local died when its function returned"
