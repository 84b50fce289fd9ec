"""The engine reads other threads' stacks without letting a garbage collection start
inside ``sys._current_frames()``: on CPython 3.11 a collection there can deadlock the
process (CPython gh-106883; found by the soak, benchmarks/soak.py, as a gunicorn worker
that stopped answering its heartbeat)."""

from __future__ import annotations

import gc
import sys
import threading
from typing import Any

from pylivepatch.engine import pause


def deep(n: int, stop: threading.Event) -> None:
    if n:
        deep(n - 1, stop)
    else:
        stop.wait(30)


def collections_started_in(fn: Any) -> list[str]:
    """Names of the Python functions on top when a collection started during ``fn()``,
    with the collector set to run at every allocation of a tracked object."""
    seen: list[str] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(sys._getframe(1).f_code.co_name)

    stop = threading.Event()
    threads = [threading.Thread(target=deep, args=(30, stop)) for _ in range(4)]
    for t in threads:
        t.start()
    threshold = gc.get_threshold()
    gc.collect()
    gc.callbacks.append(watch)
    gc.set_threshold(1, 1, 1)
    try:
        for _ in range(20):
            fn()
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(watch)
        stop.set()
        for t in threads:
            t.join(10)
    return seen


def plain_current_frames() -> Any:
    return sys._current_frames()


def test_no_collection_starts_while_the_engine_reads_the_stacks():
    started = collections_started_in(pause.stacks)
    if sys.version_info[:2] <= (3, 11):
        # 3.11 (the deadlock): a collection may start wherever a tracked object is made,
        # inside sys._current_frames too; the engine holds the collector off there
        assert "stacks" not in started
    # 3.12+ start collections only at the eval breaker, between two bytecodes, never
    # inside a C call: one asked for while the collector was held off may start in
    # ``stacks`` once it is on again, after the frames were read (seen on 3.14, 3.15)
    assert gc.isenabled(), "the collector is on again afterwards"


def test_the_check_above_can_fail():
    """The control: the plain call does start collections where it makes frame objects
    with the collector on (3.11; 3.10 has no frames to make, 3.12+ collects only at the
    eval breaker)."""
    if sys.version_info[:2] != (3, 11):
        return
    assert "plain_current_frames" in collections_started_in(plain_current_frames)


def test_the_collector_stays_off_if_it_was_off():
    gc.disable()
    try:
        stacks = pause.stacks()
        assert threading.get_ident() in stacks
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_stacks_gives_every_threads_whole_stack_innermost_first():
    """One C-level walk (pause.stack_walk) reads each thread's stack whole: here a thread
    30 calls deep, waiting, and this thread's own stack, whose innermost frame is the
    one that asked."""
    stop = threading.Event()
    t = threading.Thread(target=deep, args=(30, stop))
    t.start()
    try:
        for _ in range(500):  # until the thread is at the bottom of its recursion
            names = [f.f_code.co_name for f in pause.stacks().get(t.ident or 0, [])]
            if names.count("deep") == 31:
                break
            threading.Event().wait(0.01)
        assert names.count("deep") == 31, names
        assert names.index("deep") < names.index("run"), "innermost first"
        mine = pause.stacks()[threading.get_ident()]
        assert mine[0].f_code is pause.stacks.__code__
        assert mine[1].f_code.co_name == sys._getframe().f_code.co_name
        expected, f = [], sys._getframe()
        while f is not None:
            expected.append(f)
            f = f.f_back
        assert mine[1:] == expected, "the same frames as walking f_back from here"
    finally:
        stop.set()
        t.join(10)
