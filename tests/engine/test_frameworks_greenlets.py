"""A greenlet suspended in old code is a call chain in flight (engine/greenlets.py), in
the test process, without a server: a transition-mode load waits while the greenlet is
suspended inside the old ``handler``; resumed, the greenlet finishes on the old
version only (never old then new), and the load completes after it returned."""

from __future__ import annotations

import threading
import time

import pytest

greenlet = pytest.importorskip("greenlet")

TARGET = """
    def version():
        return "v1"

    def handler(suspend):
        first = version()
        suspend()  # the greenlet is suspended here, in old code
        return f"{first},{version()}"
"""

FIX = """
    import pylivepatch as lp
    patch = lp.Patch("greenlet-v2", consistency="transition")

    @patch.function("{m}glmod:version")
    def version():
        return "v2"

    @patch.function("{m}glmod:handler")
    def handler(suspend):
        first = version()
        suspend()
        return f"{first},{version()}"
"""


def test_suspended_greenlet_blocks_the_transition(lab):
    mod = lab.module("glmod", TARGET)
    main = greenlet.getcurrent()
    request = greenlet.greenlet(lambda: mod.handler(main.switch))
    request.switch()  # runs until suspended inside handler, after the first call
    data = lab.pack(FIX)
    done: list[object] = []
    loader = threading.Thread(target=lambda: done.append(lab.engine.load(data, timeout=30)))
    loader.start()
    try:
        in_progress = None
        for _ in range(12000):  # until the load's transition has read the stacks (bounded)
            if "greenlet-v2" in lab.engine._payloads:
                in_progress = lab.engine.status("greenlet-v2").in_progress
                if in_progress and in_progress.get("blockers"):
                    break
            if not loader.is_alive():
                break
            time.sleep(0.005)
        assert loader.is_alive() and not done, "the load waits for the suspended greenlet"
        assert in_progress is not None, "the transition never showed its blockers"
        blockers = " ".join(in_progress.get("blockers", []))
        assert "handler" in blockers and "greenlet (id " in blockers, in_progress
    finally:
        answer = request.switch()  # resumed: it finishes its call chain
        loader.join(60)
    assert answer == "v1,v1", "a request suspended in old code finishes on the old version"
    assert done and str(lab.engine.status("greenlet-v2").state) == "APPLIED"
    assert mod.handler(lambda: None) == "v2,v2"
