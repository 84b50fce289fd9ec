"""Trust under attack, the engine's side (issue 21): no call chain mixes versions
unless an operator asks for ``force``, even when a transition cannot end; arguments
are checked before anything is armed; targets inside pylivepatch are refused."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import pytest

from pylivepatch import LivepatchError
from pylivepatch.payload import manifest, signing

from conftest import assert_identical, snapshot

CHAIN = """
    def inner():
        return "inner-old"

    def outer(wait):
        first = inner()
        wait()
        return ("outer-old", first, inner())
"""

CHAIN_FIX = """
    import pylivepatch as lp
    patch = lp.Patch("chain-v2", consistency="transition")

    @patch.function("{m}chain:inner")
    def inner():
        return "inner-new"

    @patch.function("{m}chain:outer")
    def outer(wait):
        first = inner()
        wait()
        return ("outer-new", first, inner())
"""


class Request:
    """A call of ``outer`` in its own thread that parks in ``wait`` until released."""

    def __init__(self, outer: Any, name: str) -> None:
        self.inside, self.release = threading.Event(), threading.Event()
        self.result: Any = None
        self.thread = threading.Thread(target=self._run, args=(outer,), name=name, daemon=True)
        self.thread.start()
        assert self.inside.wait(30)

    def _wait(self) -> None:
        self.inside.set()
        assert self.release.wait(60)

    def _run(self, outer: Any) -> None:
        self.result = outer(self._wait)

    def finish(self) -> Any:
        self.release.set()
        self.thread.join(60)
        return self.result


class Background:
    def __init__(self, call: Any, *args: Any, **kwargs: Any) -> None:
        self.outcome: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, args=(call, args, kwargs), daemon=True)
        self.thread.start()

    def _run(self, call: Any, args: Any, kwargs: Any) -> None:
        try:
            self.outcome["result"] = call(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.outcome["error"] = exc

    def join(self) -> Any:
        self.thread.join(120)
        assert not self.thread.is_alive()
        return self.outcome


def runs(request: Request, marker: str) -> bool:
    """Whether the request (parked in ``wait``) runs the ``outer`` whose constants hold
    ``marker``: read from its thread's stack, not from its result."""
    frame = sys._current_frames().get(request.thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == "outer":
            return marker in frame.f_code.co_consts
        frame = frame.f_back
    return False


def until(cond: Any, what: str) -> Any:
    for _ in range(6000):
        value = cond()
        if value:
            return value
        threading.Event().wait(0.005)
    raise AssertionError(f"never happened: {what}")


def stuck_transition(lab: Any, chain: Any) -> tuple[Request, Request, Background]:
    """An apply whose transition is reversed while a request runs new ``outer`` (it
    started during the transition) and a request parked in old ``outer`` keeps the
    forward way blocked: the way back is blocked by the new one."""
    old_request = Request(chain.outer, "old-request")  # blocks the way forward
    apply = Background(lab.engine.apply, "chain-v2", timeout=600)
    until(
        lambda: (lab.engine.status("chain-v2").in_progress or {}).get("blockers"),
        "the transition waits for the old request",
    )
    new_request = Request(chain.outer, "new-request")  # started during the transition
    with pytest.raises(LivepatchError) as err:
        lab.engine.revert("chain-v2", timeout=0.2)  # reverses it; the way back is blocked
    assert err.value.code == "transition-stuck"
    return old_request, new_request, apply


def test_a_reverse_that_cannot_finish_is_stuck_not_forced(lab):
    """Issue 21 item 2: the way back of a transition blocked by a request running the
    new code is never forced: the request's chain stays new to its end, the payload
    is reported stuck with its blocker, every other action is refused, and ``revert``
    ends it once the blocker is gone, leaving every function as it was."""
    chain = lab.module("chain", CHAIN)
    lab.engine.upload("chain-v2", lab.pack(CHAIN_FIX))
    before = snapshot(chain.inner, chain.outer, chain)
    since = lab.mark()
    old_request, new_request, apply = stuck_transition(lab, chain)
    try:
        failed = apply.join()["error"]
        assert failed.code == "transition-stuck" and not failed.retryable
        assert "new-request" in failed.message and "--force" in failed.message
        st = lab.engine.status("chain-v2")
        assert st.state == "CHECKED" and st.error == "transition-stuck"
        assert st.in_progress["transition"] == "stuck"
        assert st.in_progress["target"] == "CHECKED"
        assert any("new-request" in b for b in st.in_progress["blockers"])
        assert chain.outer(lambda: None)[0] == "outer-old", "new calls run the old code"
        for refused in (
            lambda: lab.engine.apply("chain-v2"),
            lambda: lab.engine.unload("chain-v2"),
            lambda: lab.engine.upload("other", b"x"),
        ):
            with pytest.raises(LivepatchError) as err:
                refused()
            assert err.value.code == "transition-stuck"
            assert "revert chain-v2" in err.value.message
        with pytest.raises(LivepatchError) as err:  # still blocked: stuck again
            lab.engine.revert("chain-v2", timeout=0.05)
        assert err.value.code == "transition-stuck"
        # the chains: each keeps its version to its end
        assert new_request.finish() == ("outer-new", "inner-new", "inner-new")
        assert old_request.finish() == ("outer-old", "inner-old", "inner-old")
        result = lab.engine.revert("chain-v2", timeout=60)
        assert result.state == "CHECKED" and "ended" in result.message
        assert lab.engine.status("chain-v2").in_progress is None
        assert_identical(before, snapshot(chain.inner, chain.outer, chain))
        kinds = [ev.kind for ev in lab.engine.history(since) if ev.payload == "chain-v2"]
        assert "stuck" in kinds and "forced" not in kinds
        lab.engine.unload("chain-v2")
    finally:
        new_request.release.set()
        old_request.release.set()
        if "chain-v2" in lab.engine._stuck:
            lab.engine.revert("chain-v2", force=True, timeout=0)


def test_force_ends_a_stuck_transition_and_is_recorded(lab):
    """``revert --force`` ends a stuck transition at once (the operator's choice to mix
    the chains named), recorded as ``forced``."""
    chain = lab.module("chain", CHAIN)
    lab.engine.upload("chain-v2", lab.pack(CHAIN_FIX))
    before = snapshot(chain.inner, chain.outer, chain)
    since = lab.mark()
    old_request, new_request, apply = stuck_transition(lab, chain)
    try:
        assert apply.join()["error"].code == "transition-stuck"
        result = lab.engine.revert("chain-v2", timeout=0.05, force=True)
        assert result.state == "CHECKED"
        assert_identical(before, snapshot(chain.inner, chain.outer, chain))
        (forced,) = [
            ev
            for ev in lab.engine.history(since)
            if ev.payload == "chain-v2" and ev.kind == "forced"
        ]
        assert any("new-request" in b for b in forced.detail["blockers"])
        assert new_request.finish() == ("outer-new", "inner-new", "inner-old"), "forced: mixed"
        old_request.finish()
    finally:
        new_request.release.set()
        old_request.release.set()
        if "chain-v2" in lab.engine._stuck:
            lab.engine.revert("chain-v2", force=True, timeout=0)


PRICE = """
    def price(x):
        return x * 2
"""

PRICE_FIX = """
    import pylivepatch as lp
    patch = lp.Patch("price-v2", consistency="transition")

    @patch.function("{m}price:price")
    def price(x):
        return x * 3
"""


@pytest.mark.parametrize(
    "options",
    [
        {"timeout": "10"},
        {"timeout": 10**400},
        {"timeout": float("nan")},
        {"timeout": float("inf")},
        {"timeout": -1},
        {"timeout": True},
        {"force": "yes"},
        {"nodeps": 1},
        {"consistency": 5},
        {"consistency": "eventually"},
    ],
    ids=repr,
)
def test_bad_arguments_are_refused_before_anything_is_armed(lab, options):
    """Issue 21 item 3: a timeout that is not a finite number of seconds (a string,
    10**400, NaN, infinity, a negative number, a bool), a flag that is not a bool, an
    unknown mode: ``bad-request`` before the action starts, audited as refused, and
    every function as it was (before, a string timeout failed after the dispatchers
    were armed and the undo put the old code back at once)."""
    mod = lab.module("price", PRICE)
    lab.engine.upload("price-v2", lab.pack(PRICE_FIX))
    before = snapshot(mod.price, mod)
    since = lab.mark()
    with pytest.raises(LivepatchError) as err:
        lab.engine.apply("price-v2", **options)
    assert err.value.code == "bad-request" and "price-v2" in err.value.message
    events = [ev for ev in lab.engine.history(since) if ev.payload == "price-v2"]
    assert [ev.kind for ev in events] == ["refused"], "nothing started, nothing armed"
    assert events[0].detail["error"] == "bad-request"
    assert_identical(before, snapshot(mod.price, mod))
    assert lab.engine.status("price-v2").state == "CHECKED"
    with pytest.raises(LivepatchError) as err:
        lab.engine.load(lab.pack(PRICE_FIX), **options)
    assert err.value.code == "bad-request"


@pytest.mark.parametrize("name", [5, ["x"], None, "", "x" * 200], ids=repr)
def test_a_name_that_is_not_a_string_is_a_bad_request(lab, name):
    since = lab.mark()
    for call in (lab.engine.apply, lab.engine.revert, lab.engine.unload):
        with pytest.raises(LivepatchError) as err:
            call(name)
        assert err.value.code == "bad-request"
    assert {ev.kind for ev in lab.engine.history(since)} == {"refused"}


@pytest.mark.parametrize(
    "target",
    ["pylivepatch.payload.signing:Policy.check", "pylivepatch.engine.checks:Checks._check_objects"],
)
def test_a_payload_may_not_patch_pylivepatch(lab, target):
    """Issue 21: a payload (a signed one too) must not patch the engine, e.g. turn the
    signature checks off for good: ``unsupported-target`` at upload."""
    fix = f"""
    import pylivepatch as lp
    patch = lp.Patch("self-patch")

    @patch.function("{target}")
    def check(*args, **kwargs):
        return "verified by nobody"
    """
    original = signing.Policy.check.__code__
    with pytest.raises(LivepatchError) as err:
        lab.engine.load(lab.pack(fix))
    assert err.value.code == "unsupported-target" and "part of pylivepatch" in err.value.message
    assert signing.Policy.check.__code__ is original
    assert [s.name for s in lab.engine.list()] == []


def test_a_name_imported_from_pylivepatch_is_ours_too(lab):
    """A target module that imported one of pylivepatch's functions: the function is
    pylivepatch's, refused by where its code lives."""
    lab.module("uses", "from pylivepatch.payload.signing import Policy\n")
    fix = """
    import pylivepatch as lp
    patch = lp.Patch("self-patch")

    @patch.function("{m}uses:Policy.check")
    def check(*args, **kwargs):
        return "verified by nobody"
    """
    with pytest.raises(LivepatchError) as err:
        lab.engine.upload("self-patch", lab.pack(fix))
    assert err.value.code == "unsupported-target"


@pytest.mark.parametrize("name", ["fix\n", "fix\nsecond-line"])
def test_a_payload_name_is_matched_whole(name):
    """Issue 21: a name check with ``$`` let a final newline through."""
    assert manifest.NAME_RE.match(name) is None


def test_a_forked_child_ends_a_stuck_transition_its_blockers_stayed_in(lab):
    """A child forked while a transition is stuck does not have the threads that block
    it: the transition ends there at once (the parent's stays stuck)."""
    chain = lab.module("chain", CHAIN)
    lab.engine.upload("chain-v2", lab.pack(CHAIN_FIX))
    before = snapshot(chain.inner, chain.outer, chain)
    old_request, new_request, apply = stuck_transition(lab, chain)
    try:
        assert apply.join()["error"].code == "transition-stuck"
        pid = os.fork()
        if pid == 0:  # the child: report through the exit status only
            ok = (
                not lab.engine._stuck
                and lab.engine.status("chain-v2").in_progress is None
                and chain.outer(lambda: None) == ("outer-old", "inner-old", "inner-old")
            )
            try:
                assert_identical(before, snapshot(chain.inner, chain.outer, chain))
            except AssertionError:
                ok = False
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert "chain-v2" in lab.engine._stuck, "the parent's blockers are still there"
    finally:
        new_request.release.set()
        old_request.release.set()
        new_request.thread.join(60)
        if "chain-v2" in lab.engine._stuck:
            lab.engine.revert("chain-v2", timeout=60)


def test_the_issue_scenario_a_timed_out_transition_whose_reverse_is_blocked(lab):
    """Issue 21 item 2 as reported: a request parked in old ``outer`` blocks the
    transition, which times out and is reversed; a request that started during the
    transition (new ``outer``) blocks the way back. Before, the reverse was forced and
    that request returned ``outer-new, inner-new, inner-old``; now it keeps its version
    and the apply fails ``transition-stuck``.

    The timeout is what reverses the transition, so the new request must be inside new
    ``outer`` before it expires; on a loaded machine it may not be: that attempt is not
    the scenario (its reverse is not blocked), it is let finish and the scenario is
    tried again with a timeout twice as long (bounded)."""
    chain = lab.module("chain", CHAIN)
    lab.engine.upload("chain-v2", lab.pack(CHAIN_FIX))
    for timeout in (3, 6, 12, 24, 48, 96):
        old_request = Request(chain.outer, "old-request")
        apply = Background(lab.engine.apply, "chain-v2", timeout=timeout)
        until(
            lambda: (
                (lab.engine.status("chain-v2").in_progress or {}).get("transition") == "patching"
            ),
            "the transition started",
        )
        new_request = Request(chain.outer, "new-request")
        if runs(new_request, "outer-new"):
            break  # it started before the timeout reversed the transition: the scenario
        new_request.finish()
        old_request.finish()
        apply.join()
        if "chain-v2" in lab.engine._stuck:
            lab.engine.revert("chain-v2", force=True, timeout=0)
        assert lab.engine.status("chain-v2").state == "CHECKED"
    else:
        raise AssertionError("the new request never started before the timeout")
    try:
        failed = apply.join()["error"]
        assert failed.code == "transition-stuck", failed
        assert f"did not complete within {timeout}s" in failed.message
        assert new_request.finish() == ("outer-new", "inner-new", "inner-new")
        assert old_request.finish() == ("outer-old", "inner-old", "inner-old")
        assert lab.engine.revert("chain-v2", timeout=60).state == "CHECKED"
    finally:
        new_request.release.set()
        old_request.release.set()
        if "chain-v2" in lab.engine._stuck:
            lab.engine.revert("chain-v2", force=True, timeout=0)


def test_a_load_whose_transition_is_stuck_names_the_payload_it_leaves(lab):
    """A ``load`` whose apply ends stuck cannot unload its payload (every action but the
    one that ends the transition is refused): the error says it stays uploaded and
    how to remove it, instead of leaving it silently."""
    chain = lab.module("chain", CHAIN)
    old_request = Request(chain.outer, "old-request")
    load = Background(lab.engine.load, lab.pack(CHAIN_FIX), timeout=600)
    until(
        lambda: (
            "chain-v2" in lab.engine._payloads
            and (lab.engine.status("chain-v2").in_progress or {}).get("blockers")
        ),
        "the transition waits for the old request",
    )
    new_request = Request(chain.outer, "new-request")
    try:
        with pytest.raises(LivepatchError):
            lab.engine.revert("chain-v2", timeout=0.2)
        failed = load.join()["error"]
        assert failed.code == "transition-stuck"
        assert "chain-v2 stays uploaded" in failed.message
        assert "pylivepatch unload chain-v2" in failed.message
        assert lab.engine.status("chain-v2").state == "CHECKED"
    finally:
        new_request.release.set()
        old_request.release.set()
        new_request.thread.join(60)
        if "chain-v2" in lab.engine._stuck:
            lab.engine.revert("chain-v2", timeout=60)


def test_an_unknown_action_is_a_bad_request(lab):
    with pytest.raises(LivepatchError) as err:
        lab.engine.action("anything", "reboot")
    assert err.value.code == "bad-request"


def test_a_payload_path_that_is_not_a_regular_file_is_refused_at_once(lab, tmp_path):
    """``load``/``upload`` of a FIFO would wait for a writer for ever, a file
    descriptor number would read whatever it is: both refused at once."""
    fifo = tmp_path / "fix.lpz"
    os.mkfifo(fifo)
    for call in (lambda: lab.engine.load(str(fifo)), lambda: lab.engine.upload("x", fifo)):
        with pytest.raises(LivepatchError) as err:
            call()
        assert err.value.code == "invalid-payload" and "regular file" in err.value.message
    with pytest.raises(LivepatchError) as err:
        lab.engine.load(0)  # type: ignore[arg-type]
    assert err.value.code == "bad-request"


def test_a_revert_whose_way_back_is_blocked_is_stuck_and_apply_ends_it(lab):
    """The same rule the other way: a revert's transition blocked by a request in the
    new code times out and is reversed towards APPLIED; a request that started during
    it runs the old code and blocks the way back: stuck, ended by ``apply``."""
    chain = lab.module("chain", CHAIN)
    lab.engine.load(lab.pack(CHAIN_FIX), timeout=60)
    applied = snapshot(chain.inner, chain.outer, chain)
    # As in the issue scenario above, the old request must start before the timeout
    # reverses the revert's transition; an attempt where it did not is let finish and
    # the scenario tried again with a longer timeout (bounded).
    for timeout in (3, 6, 12, 24, 48, 96):
        new_request = Request(chain.outer, "new-request")  # blocks the way to the old code
        revert = Background(lab.engine.revert, "chain-v2", timeout=timeout)
        until(
            lambda: (
                (lab.engine.status("chain-v2").in_progress or {}).get("transition") == "unpatching"
            ),
            "the transition started",
        )
        old_request = Request(chain.outer, "old-request")  # started during it: old code
        if runs(old_request, "outer-old"):
            break
        old_request.finish()
        new_request.finish()
        revert.join()
        if "chain-v2" in lab.engine._stuck:
            lab.engine.apply("chain-v2", force=True, timeout=0)
        assert lab.engine.status("chain-v2").state == "APPLIED"
    else:
        raise AssertionError("the old request never started before the timeout")
    try:
        failed = revert.join()["error"]
        assert failed.code == "transition-stuck", failed
        assert "pylivepatch apply chain-v2" in failed.message
        st = lab.engine.status("chain-v2")
        assert st.state == "APPLIED" and st.in_progress["target"] == "APPLIED"
        with pytest.raises(LivepatchError) as err:
            lab.engine.revert("chain-v2")
        assert err.value.code == "transition-stuck"
        assert old_request.finish() == ("outer-old", "inner-old", "inner-old")
        assert new_request.finish() == ("outer-new", "inner-new", "inner-new")
        result = lab.engine.apply("chain-v2", timeout=60)
        assert result.state == "APPLIED" and "ended" in result.message
        assert_identical(applied, snapshot(chain.inner, chain.outer, chain))
        assert chain.outer(lambda: None) == ("outer-new", "inner-new", "inner-new")
    finally:
        new_request.release.set()
        old_request.release.set()
        if "chain-v2" in lab.engine._stuck:
            lab.engine.apply("chain-v2", force=True, timeout=0)
