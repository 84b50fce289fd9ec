"""Atomic replace of cumulative payloads (spec §7), after the kernel's test-livepatch
(replace of three by one), test-callbacks (only the new payload's hooks run) and
test-state (take over via prev_state), and the Xen rule on untracked hook mutations."""

from __future__ import annotations

import pytest

from pylivepatch import LivepatchError
from pylivepatch.state import get_state

from conftest import assert_identical, snapshot

TARGET = """
    LIMIT = 1

    def a():
        return "a"

    def b():
        return "b"

    def c():
        return "c"
"""


def payload(name, funcs, *, replace=False, states=(), hooks="", extra="", depends=None):
    lines = [
        "import pylivepatch as lp",
        f"patch = lp.Patch({name!r}, consistency='atomic', replace={replace!r}, depends={depends!r})",
        *[f"patch.state(id={i}, version={v})" for i, v in states],
    ]
    for f in funcs:
        lines += [f'@patch.function("{{m}}rp:{f}")', f"def {f}_{name}():", f"    return {name!r}"]
    return "\n".join([*lines, hooks, extra]) + "\n"


@pytest.fixture
def rp(lab):
    return lab.module("rp", TARGET)


def calls(mod):
    return mod.a(), mod.b(), mod.c()


def test_replace_three_by_one(lab, rp):
    e = lab.engine
    before = snapshot(rp.a, rp.b, rp.c, rp)
    e.load(lab.pack(payload("p1", ["a"])))
    e.load(
        lab.pack(
            payload("p2", ["b"], extra="def _h():\n    return 1\npatch.data('{m}rp:HELPER', 5)")
        )
    )
    e.load(lab.pack(payload("p3", ["a", "c"])))
    assert calls(rp) == ("p3", "p2", "p3") and rp.HELPER == 5
    e.upload("cum", lab.pack(payload("cum", ["b"], replace=True)))
    result = e.replace("cum")
    assert calls(rp) == ("a", "cum", "c"), (
        "functions only earlier payloads touched are original again"
    )
    assert rp.a.__code__ is before[0][1] and rp.c.__code__ is before[2][1]
    assert not hasattr(rp, "HELPER"), "data of earlier payloads is restored"
    assert {s.name: s.state for s in e.list()} == {
        "p1": "CHECKED", "p2": "CHECKED", "p3": "CHECKED", "cum": "APPLIED"
    }  # fmt: skip
    assert "replaced 3" in result.message
    assert e.status("cum").funcs[0].stack == ("cum",)
    e.revert("cum")
    assert_identical(before, snapshot(rp.a, rp.b, rp.c, rp))
    e.apply("p1")  # a replaced payload can be applied again
    assert calls(rp) == ("p1", "b", "c")


def test_apply_of_a_replace_payload_replaces(lab, rp):
    e = lab.engine
    e.load(lab.pack(payload("p1", ["a", "b"])))
    e.load(lab.pack(payload("cum", ["c"], replace=True)))
    assert calls(rp) == ("a", "b", "cum")
    assert e.status("p1").state == "CHECKED"


HOOKS = """
@patch.pre_apply
def pre(ctx):
    st = ctx.state(1)
    prev = ctx.prev_state(1)
    st.data = (prev.data if prev else []) + [ctx.payload.name]
    ctx.log(f"pre_apply {ctx.action} prev={prev.payload if prev else None}")

@patch.post_apply
def post(ctx):
    ctx.log(f"post_apply {ctx.action} rc={ctx.rc}")

@patch.pre_revert
def pre_revert(ctx):
    ctx.log("pre_revert")

@patch.post_revert
def post_revert(ctx):
    ctx.log("post_revert")
"""


def test_only_the_replacing_payloads_hooks_run_and_it_takes_the_state_over(lab, rp):
    e = lab.engine
    e.load(lab.pack(payload("p1", ["a"], states=[(1, 1)], hooks=HOOKS)))
    e.load(lab.pack(payload("p2", ["b"], states=[(1, 1)], hooks=HOOKS)))
    since = lab.mark()
    e.load(lab.pack(payload("cum", ["a", "b"], replace=True, states=[(1, 2)], hooks=HOOKS)))
    logs = [(ev.payload, ev.detail["message"]) for ev in e.history(since) if ev.kind == "hook-log"]
    assert logs == [("cum", "pre_apply replace prev=p2"), ("cum", "post_apply replace rc=0")]
    assert get_state("cum", 1).data == ["p1", "p2", "cum"]
    assert calls(rp) == ("cum", "cum", "c")


def test_replace_refused_when_an_applied_payload_has_untracked_hooks(lab, rp):
    """Xen refuses replace with vetoing hooks; we refuse only where their mutations are
    untracked: pre/post hooks and no declared state."""
    e = lab.engine
    e.load(lab.pack(payload("p1", ["a"], hooks="@patch.post_apply\ndef post(ctx):\n    pass\n")))
    e.upload("cum", lab.pack(payload("cum", ["b"], replace=True)))
    before = snapshot(rp.a, rp.b, rp.c, rp)
    with pytest.raises(LivepatchError) as err:
        e.replace("cum")
    assert err.value.code == "replace-refused" and "p1" in err.value.message
    assert_identical(before, snapshot(rp.a, rp.b, rp.c, rp))
    assert e.status("p1").state == "APPLIED" and e.status("cum").state == "CHECKED"


@pytest.mark.parametrize(
    "problem,code",
    [
        ("drops-state", "incompatible-state"),
        ("vetoes", "vetoed"),
        ("stacks", "dependency-mismatch"),
    ],
)
def test_a_failed_replace_leaves_the_applied_set_exactly_as_it_was(lab, rp, problem, code):
    e = lab.engine
    e.load(lab.pack(payload("p1", ["a"], states=[(3, 1)])))
    e.load(lab.pack(payload("p2", ["b", "c"], extra="patch.data('{m}rp:LIMIT', 9)")))
    kwargs = {
        "drops-state": {},
        "vetoes": {
            "states": [(3, 1)],
            "hooks": "@patch.pre_apply\ndef no(ctx):\n    return False\n",
        },
        "stacks": {"states": [(3, 1)], "depends": "f" * 64},
    }[problem]
    e.upload("cum", lab.pack(payload("cum", ["a"], replace=True, **kwargs)))
    before = snapshot(rp.a, rp.b, rp.c, rp)
    with pytest.raises(LivepatchError) as err:
        e.replace("cum")
    assert err.value.code == code
    assert_identical(before, snapshot(rp.a, rp.b, rp.c, rp))
    assert calls(rp) == ("p1", "p2", "p2") and rp.LIMIT == 9
    assert {s.name: s.state for s in e.list()} == {
        "p1": "APPLIED",
        "p2": "APPLIED",
        "cum": "CHECKED",
    }


def test_replace_refused_for_action_hooks_without_state_and_on_the_replacing_payload(lab, rp):
    e = lab.engine
    target = f"{lab.prefix}rp:a"
    e.load(
        lab.pack(
            payload(
                "p1", ["a"], hooks=f"@patch.apply\ndef on(ctx):\n    ctx.mark_applied({target!r})\n"
            )
        )
    )
    e.upload("cum", lab.pack(payload("cum", ["b"], replace=True)))
    with pytest.raises(LivepatchError) as err:
        e.replace("cum")
    assert (
        err.value.code == "replace-refused"
        and "p1" in err.value.message
        and "apply" in err.value.message
    )
    e.revert("p1")
    e.upload(
        "cum2",
        lab.pack(
            payload("cum2", ["b"], replace=True, hooks="@patch.apply\ndef on(ctx):\n    pass\n")
        ),
    )
    with pytest.raises(LivepatchError) as err:
        e.replace("cum2")
    assert err.value.code == "replace-refused" and "action hooks" in err.value.message
