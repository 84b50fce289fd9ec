"""One scenario per rule of spec §3 (life cycle and actions), with event transcripts."""

from __future__ import annotations

import errno
import threading

import pytest

from pylivepatch import LivepatchError
from pylivepatch.engine.table import TABLE, Action, State
from pylivepatch.errors import RETRYABLE
from pylivepatch.payload import archive

from conftest import assert_identical, park, snapshot

TARGET = """
    LIMIT = 3

    def price(x):
        return x * 2

    def tax(x):
        return x // 10

    class Cart:
        def total(self, items):
            return sum(price(i) for i in items)
"""


def payload(
    name: str, tag: str, targets=("price",), depends: str | None = None, consistency="atomic"
) -> str:
    lines = [
        "import pylivepatch as lp",
        f"patch = lp.Patch({name!r}, depends={depends!r}, consistency={consistency!r})",
    ]
    for t in targets:
        lines += [
            f'@patch.function("{{m}}shop:{t}")',
            f"def {t}_{tag.replace('-', '_')}(x):",
            f"    return {tag!r}",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def shop(lab):
    return lab.module("shop", TARGET)


def lines(engine, since=0):
    return [e.line() for e in engine.history(since)]


def test_table_is_data():
    """The actions x states table is one dict the engine consults."""
    assert TABLE[(Action.APPLY, State.CHECKED)] is State.APPLIED
    assert TABLE[(Action.REVERT, State.APPLIED)] is State.CHECKED
    assert (Action.UNLOAD, State.APPLIED) not in TABLE


def test_transcript_upload_apply_revert_unload(lab, shop):
    """The events of a basic scenario, line by line (kernel selftest style)."""
    data = lab.pack(payload("p1", "one"))
    e = lab.engine
    since = lab.mark()
    e.upload("p1", data)
    e.apply("p1")
    assert shop.price(5) == "one"
    e.revert("p1")
    e.unload("p1")
    assert lines(e, since) == [
        "upload p1: started",
        "upload p1: checked funcs=1 data=0 flags=[]",
        "upload p1: finished rc=0",
        "apply p1: started",
        "apply p1: checked funcs=1 data=0 consistency=atomic nodeps=False",
        "apply p1: swapped funcs=1 data=0",
        "apply p1: finished rc=0",
        "revert p1: started",
        "revert p1: checked consistency=atomic",
        "revert p1: swapped funcs=1 data=0",
        "revert p1: finished rc=0",
        "unload p1: started",
        "unload p1: finished rc=0",
    ]
    finished = [
        ev for ev in e.history(since) if ev.kind == "finished" and ev.action in ("apply", "revert")
    ]
    assert all(ev.detail["pause_ns"] > 0 for ev in finished), "every swap reports its pause"


def test_wrong_state_and_no_action_needed(lab, shop):
    """Wrong state -> wrong-state; asking for the current state -> no action needed."""
    e = lab.engine
    e.upload("p1", lab.pack(payload("p1", "one")))
    result = e.revert("p1")
    assert result.noop and "no action needed" in result.message
    e.apply("p1")
    assert e.apply("p1").noop
    before = snapshot(shop.price, shop)
    with pytest.raises(LivepatchError) as err:
        e.unload("p1")
    assert err.value.code == "wrong-state" and err.value.errno == errno.EBADFD
    assert "APPLIED" in err.value.message and "CHECKED" in err.value.message
    assert_identical(before, snapshot(shop.price, shop))
    assert e.status("p1").state == "APPLIED"
    assert e.status("p1").rc == errno.EBADFD and e.status("p1").error == "wrong-state"


def test_not_found_names_what_exists(lab, shop):
    e = lab.engine
    e.upload("p1", lab.pack(payload("p1", "one")))
    for call in (lambda: e.apply("nope"), lambda: e.status("nope"), lambda: e.unload("nope")):
        with pytest.raises(LivepatchError) as err:
            call()
        assert err.value.code == "not-found" and "p1" in err.value.message


def test_duplicate_name_and_build_id(lab, shop):
    e = lab.engine
    data = lab.pack(payload("p1", "one"))
    e.upload("p1", data)
    with pytest.raises(LivepatchError) as err:
        e.upload("p1", data)
    assert err.value.code == "exists"


def test_busy_while_an_action_waits_for_quiescence(lab, shop):
    """A second action while one is in progress gets busy; status shows rc EAGAIN and
    the blockers while the first one waits."""
    e = lab.engine
    e.upload("p1", lab.pack(payload("p1", "one")))
    e.upload("p2", lab.pack(payload("p2", "two", targets=("tax",))))
    parked, sitter = park(shop.price, "sitter")
    since = lab.mark()
    results = {}

    def applier():
        try:
            results["r"] = e.apply("p1", timeout=10)
        except LivepatchError as exc:
            results["r"] = exc

    a = threading.Thread(target=applier, name="applier")
    a.start()
    try:
        for _ in range(500):
            st = e.status("p1")
            if st.in_progress and st.in_progress.get("blockers"):
                break
            threading.Event().wait(0.01)
        assert st.rc == errno.EAGAIN
        assert any("sitter" in b for b in st.in_progress["blockers"])
        with pytest.raises(LivepatchError) as err:
            e.apply("p2")
        assert err.value.code == "busy" and err.value.retryable and "apply p1" in err.value.message
        assert shop.tax(100) == 10, "the refused action changed nothing"
    finally:
        parked.release.set()
        a.join(10)
        sitter.join(10)
    assert not isinstance(results["r"], Exception), results["r"]
    assert shop.price(1) == "one"
    assert "apply p1: waiting" in " ".join(lines(e, since))


def test_atomic_timeout_names_the_blocker_and_changes_nothing(lab, shop):
    """No quiescent moment within the timeout -> timeout naming thread, function, line."""
    e = lab.engine
    e.upload("p1", lab.pack(payload("p1", "one")))
    parked, t = park(shop.price, "slow-request")
    since = lab.mark()
    before = snapshot(shop.price, shop.tax, shop)
    try:
        with pytest.raises(LivepatchError) as err:
            e.apply("p1", timeout=0.2)
        assert err.value.code == "timeout" and err.value.retryable
        msg = err.value.message
        assert "slow-request" in msg and f"{lab.name('shop')}:price" in msg and ".py:5)" in msg
        assert_identical(before, snapshot(shop.price, shop.tax, shop))
        st = e.status("p1")
        assert st.state == "CHECKED" and st.rc == errno.ETIMEDOUT and st.error == "timeout"
        # --force swaps regardless and says so in the history.
        e.apply("p1", timeout=0.05, force=True)
        assert shop.price(2) == "one"
        assert any(ev.kind == "forced" for ev in e.history(since))
    finally:
        parked.release.set()
        t.join(5)


def test_stacking_by_build_id(lab, shop):
    """depends must be 'base' or the top of the stack; revert is refused (has-dependents, not the retryable busy) under a dependant."""
    e = lab.engine
    d1 = lab.pack(payload("s1", "one", depends="base"))
    bid1 = archive.read(d1).manifest.build_id
    d2 = lab.pack(payload("s2", "two", depends=bid1))
    e.upload("s1", d1)
    e.upload("s2", d2)
    before = snapshot(shop.price, shop)
    with pytest.raises(LivepatchError) as err:
        e.apply("s2")
    assert err.value.code == "dependency-mismatch" and "base" in err.value.message
    assert_identical(before, snapshot(shop.price, shop))
    e.apply("s1")
    e.apply("s2")
    assert shop.price(1) == "two"
    with pytest.raises(LivepatchError) as err:
        e.revert("s1")
    assert err.value.code == "has-dependents" and "s2" in err.value.message
    assert err.value.code not in RETRYABLE
    e.revert("s2")
    assert shop.price(1) == "one"
    e.revert("s1")
    assert_identical(before, snapshot(shop.price, shop))


def test_nodeps_skips_the_stack_check(lab, shop):
    e = lab.engine
    d1 = lab.pack(payload("s1", "one", depends="base"))
    d2 = lab.pack(payload("s2", "two", depends=archive.read(d1).manifest.build_id))
    e.upload("s2", d2)
    since = lab.mark()
    e.apply("s2", nodeps=True)
    assert shop.price(1) == "two"
    history = [ev for ev in e.history(since) if ev.kind == "checked" and ev.action == "apply"]
    assert history[-1].detail["nodeps"] is True


def test_function_stack_and_any_order_revert(lab, shop):
    """Several payloads patch one function: the newest runs; reverting the middle one
    only removes it; reverting the top exposes the one below (Linux func_stack)."""
    e = lab.engine
    before = snapshot(shop.price, shop)
    for name, tag in (("a", "A"), ("b", "B"), ("c", "C")):
        e.load(lab.pack(payload(name, tag)))
    assert shop.price(1) == "C"
    fs = e.status("b").funcs[0]
    assert fs.stack == ("a", "b", "c") and not fs.active
    assert e.status("c").funcs[0].active
    e.revert("b")  # middle: nothing visible changes
    assert shop.price(1) == "C"
    assert e.status("c").funcs[0].stack == ("a", "c")
    e.revert("c")  # top: the one below runs again
    assert shop.price(1) == "A"
    e.apply("b")
    assert shop.price(1) == "B"
    e.revert("a")
    e.revert("b")
    assert_identical(before, snapshot(shop.price, shop))


def test_expectation_mismatch_names_function_and_both_fingerprints(lab, shop):
    e = lab.engine
    data = lab.pack(payload("p1", "one"))
    man = archive.read(data).manifest
    expected = man.funcs[0].expect[next(iter(man.funcs[0].expect))]

    def other(x):
        return x * 3

    original = shop.price.__code__
    shop.price.__code__ = other.__code__  # the process now runs other code
    try:
        before = snapshot(shop.price, shop)
        with pytest.raises(LivepatchError) as err:
            e.upload("p1", data, no_object_check=True)
        from pylivepatch.payload.fingerprint import fingerprint

        msg = err.value.message
        assert err.value.code == "expectation-failed"
        assert f"{lab.name('shop')}:price" in msg
        assert expected[:16] in msg and fingerprint(other.__code__)[:16] in msg
        assert_identical(before, snapshot(shop.price, shop))
        assert e.list() == []
    finally:
        shop.price.__code__ = original


def test_object_build_id_mismatch_names_the_module(lab, shop):
    """A payload built for other code of the module (not only the patched function) is refused."""
    e = lab.engine
    data = lab.pack(payload("p1", "one"))

    def other(x):
        return x // 11

    original = shop.tax.__code__
    shop.tax.__code__ = other.__code__
    try:
        with pytest.raises(LivepatchError) as err:
            e.upload("p1", data)
        assert err.value.code == "dependency-mismatch"
        assert lab.name("shop") in err.value.message and "tax" in err.value.message
        e.upload("p1", data, no_object_check=True)
        assert e.status("p1").state == "CHECKED"
        assert ev_flags(e) == ["no-object-check"]
    finally:
        shop.tax.__code__ = original


def ev_flags(e):
    return [ev for ev in e.history() if ev.kind == "checked"][-1].detail["flags"]


def test_load_unloads_again_when_apply_fails(lab, shop):
    e = lab.engine
    d1 = lab.pack(payload("s1", "one", depends="base"))
    d2 = lab.pack(payload("s2", "two", depends=archive.read(d1).manifest.build_id))
    with pytest.raises(LivepatchError) as err:
        e.load(d2)
    assert err.value.code == "dependency-mismatch"
    assert e.list() == []


def test_list_and_status_fields(lab, shop):
    e = lab.engine
    e.upload("p1", lab.pack(payload("p1", "one")))
    (st,) = e.list()
    for field in ("name", "state", "rc", "build_id", "depends", "metadata"):
        assert hasattr(st, field)
    assert (st.name, st.state, st.rc, st.depends) == ("p1", "CHECKED", 0, None)
    assert st.metadata["packed-by"] == "pylivepatch pack"


def test_every_error_message_names_the_payload(lab, shop):
    e = lab.engine
    with pytest.raises(LivepatchError) as err:
        e.upload("ghost", lab.root / "missing.lpz")
    assert err.value.code == "not-found" and err.value.message.startswith("upload ghost: ")


def test_apply_after_the_target_module_was_reloaded_is_refused(lab, shop):
    """The function objects captured at upload must still be the live ones at apply."""
    import importlib

    e = lab.engine
    e.upload("p1", lab.pack(payload("p1", "one")))
    importlib.reload(shop)
    before = snapshot(shop.price, shop)
    with pytest.raises(LivepatchError) as err:
        e.apply("p1")
    assert err.value.code == "dependency-mismatch" and "reloaded" in err.value.message
    assert_identical(before, snapshot(shop.price, shop))
