"""Hooks (spec §4) and system states (spec §6), as scenario transcripts in the style of
the kernel's test-callbacks.sh and test-state.sh."""

from __future__ import annotations

import errno

import pytest

from pylivepatch import LivepatchError
from pylivepatch.payload import archive
from pylivepatch.state import get_state

from conftest import assert_identical, park, snapshot

TARGET = """
    def greet(name):
        return "hello " + name
"""


def payload(name, *, hooks="", extra="", depends=None, states=()):
    lines = [
        "import pylivepatch as lp",
        "LOG = []",
        f"patch = lp.Patch({name!r}, consistency='atomic', depends={depends!r})",
        *[f"patch.state(id={i}, version={v})" for i, v in states],
        '@patch.function("{m}cb:greet")',
        f"def greet_{name.replace('-', '_')}(name):",
        f"    return {name!r} + ' ' + name",
        hooks,
        extra,
    ]
    return "\n".join(lines) + "\n"


ALL_HOOKS = """
@patch.pre_apply
def pre_apply(ctx):
    ctx.log(f"pre_apply {ctx.action}")

@patch.post_apply
def post_apply(ctx):
    ctx.log(f"post_apply rc={ctx.rc}")

@patch.pre_revert
def pre_revert(ctx):
    ctx.log(f"pre_revert {ctx.action}")

@patch.post_revert
def post_revert(ctx):
    ctx.log(f"post_revert rc={ctx.rc}")
"""


@pytest.fixture
def cb(lab):
    return lab.module("cb", TARGET)


def transcript(engine, since=0, skip=("upload",)):
    return [e.line() for e in engine.history(since) if e.action not in skip]


def mark(engine) -> int:
    """The history position now: the process engine's history spans tests."""
    events = engine.history()
    return events[-1].seq if events else 0


def test_callbacks_target_loaded_before_the_payload(lab, cb):
    """test-callbacks #1: pre and post hooks around apply and revert, in order."""
    e = lab.engine
    e.upload("p1", lab.pack(payload("p1", hooks=ALL_HOOKS)))
    since = mark(e)
    e.apply("p1")
    assert cb.greet("x") == "p1 x"
    e.revert("p1")
    assert transcript(e, since) == [
        "apply p1: started",
        "apply p1: checked funcs=1 data=0 consistency=atomic nodeps=False",
        "apply p1: hook-log message=pre_apply apply",
        "apply p1: hook hook=pre_apply result=ok",
        "apply p1: swapped funcs=1 data=0",
        "apply p1: hook-log message=post_apply rc=0",
        "apply p1: hook hook=post_apply rc=0 result=ok",
        "apply p1: finished rc=0",
        "revert p1: started",
        "revert p1: checked consistency=atomic",
        "revert p1: hook-log message=pre_revert revert",
        "revert p1: hook hook=pre_revert result=ok",
        "revert p1: swapped funcs=1 data=0",
        "revert p1: hook-log message=post_revert rc=0",
        "revert p1: hook hook=post_revert rc=0 result=ok",
        "revert p1: finished rc=0",
    ]


def test_callbacks_target_imported_after_the_payload(lab):
    """test-callbacks #2: the payload's hooks run for a module imported later, around
    its swap, at the import."""
    import importlib
    import textwrap

    (lab.root / f"{lab.name('late')}.py").write_text(textwrap.dedent(TARGET))
    lab.modules.append(lab.name("late"))
    importlib.invalidate_caches()
    data = lab.pack(
        payload("p1", hooks=ALL_HOOKS).replace("{m}cb", "{m}late"), against=str(lab.root)
    )
    lab.engine.load(data)  # the target is not imported yet
    assert lab.engine.status("p1").pending == (lab.name("late"),)
    since = mark(lab.engine)
    late = importlib.import_module(lab.name("late"))
    assert late.greet("x") == "p1 x"
    assert transcript(lab.engine, since) == [
        f"apply p1: late-object module={lab.name('late')}",
        "apply p1: hook-log message=pre_apply apply",
        "apply p1: hook hook=pre_apply result=ok",
        f"apply p1: swapped module={lab.name('late')} funcs=1 data=0",
        "apply p1: hook-log message=post_apply rc=0",
        "apply p1: hook hook=post_apply rc=0 result=ok",
    ]


@pytest.mark.parametrize(
    "veto", ["return False", "return -errno.ENODEV", "raise RuntimeError('not now')", "return 5"]
)
def test_a_pre_hook_veto_changes_nothing_and_skips_the_post_hook(lab, cb, veto):
    """test-callbacks #6 / Xen prepost_hooks_fail: the action fails with vetoed."""
    hooks = f"""
import errno
@patch.pre_apply
def no(ctx):
    {veto}

@patch.post_apply
def post(ctx):
    raise AssertionError("a post hook must not run after a veto")
"""
    e = lab.engine
    e.upload("p1", lab.pack(payload("p1", hooks=hooks)))
    since = mark(e)
    before = snapshot(cb.greet, cb)
    with pytest.raises(LivepatchError) as err:
        e.apply("p1")
    assert err.value.code == "vetoed" and "pre_apply" in err.value.message
    if "not now" in veto:
        assert "RuntimeError: not now" in err.value.message
    assert_identical(before, snapshot(cb.greet, cb))
    st = e.status("p1")
    assert (st.state, st.rc, st.error) == ("CHECKED", errno.ECANCELED, "vetoed")
    assert not [ev for ev in e.history(since) if ev.detail.get("hook") == "post_apply"]


@pytest.mark.parametrize("ok", ["return None", "return True", "return 0", "pass"])
def test_pre_hook_results_that_let_the_action_go_on(lab, cb, ok):
    e = lab.engine
    e.load(lab.pack(payload("p1", hooks=f"@patch.pre_apply\ndef fine(ctx):\n    {ok}\n")))
    assert cb.greet("x") == "p1 x"


def test_post_hook_sees_the_rc_of_a_timed_out_action(lab, cb):
    """test-callbacks #9 (busy target) / Xen: post hooks always run after their pre hook,
    with ctx.rc saying the action failed, so they can undo what pre prepared."""
    hooks = """
PREPARED = []
@patch.pre_apply
def pre(ctx):
    PREPARED.append("resource")

@patch.post_apply
def post(ctx):
    if ctx.rc:
        PREPARED.clear()
    ctx.log(f"post rc={ctx.rc} prepared={len(PREPARED)}")
"""
    e = lab.engine
    e.upload("p1", lab.pack(payload("p1", hooks=hooks)))
    parked, t = park(cb.greet, "busy-request")
    try:
        with pytest.raises(LivepatchError) as err:
            e.apply("p1", timeout=0.1)
    finally:
        parked.release.set()
        t.join(5)
    assert err.value.code == "timeout"
    logs = [ev.detail["message"] for ev in e.history() if ev.kind == "hook-log"]
    assert logs[-1] == f"post rc={errno.ETIMEDOUT} prepared=0"
    assert e.status("p1").state == "CHECKED"


def test_a_failing_post_hook_is_reported_and_the_action_stands(lab, cb):
    hooks = "@patch.post_apply\ndef post(ctx):\n    raise ValueError('oops')\n"
    e = lab.engine
    since = mark(e)
    result = e.load(lab.pack(payload("p1", hooks=hooks)))
    assert cb.greet("x") == "p1 x" and e.status("p1").state == "APPLIED"
    assert "post_apply hook failed: ValueError: oops" in result.message
    assert "apply p1: hook hook=post_apply rc=0 result=failed error=ValueError: oops" in transcript(
        e, since
    )


def test_two_stacked_payloads_run_their_own_hooks(lab, cb):
    """test-callbacks #10: each payload's hooks run for its own actions only."""
    e = lab.engine
    since = mark(e)
    d1 = lab.pack(payload("p1", hooks=ALL_HOOKS, depends="base"))
    d2 = lab.pack(payload("p2", hooks=ALL_HOOKS, depends=archive.read(d1).manifest.build_id))
    e.load(d1)
    e.load(d2)
    assert cb.greet("x") == "p2 x"
    e.revert("p2")
    e.revert("p1")
    hooks = [
        (ev.action, ev.payload, ev.detail["hook"]) for ev in e.history(since) if ev.kind == "hook"
    ]
    assert hooks == [
        ("apply", "p1", "pre_apply"), ("apply", "p1", "post_apply"),
        ("apply", "p2", "pre_apply"), ("apply", "p2", "post_apply"),
        ("revert", "p2", "pre_revert"), ("revert", "p2", "post_revert"),
        ("revert", "p1", "pre_revert"), ("revert", "p1", "post_revert"),
    ]  # fmt: skip


def test_revert_veto(lab, cb):
    e = lab.engine
    e.load(lab.pack(payload("p1", hooks="@patch.pre_revert\ndef stay(ctx):\n    return False\n")))
    with pytest.raises(LivepatchError) as err:
        e.revert("p1")
    assert err.value.code == "vetoed" and e.status("p1").state == "APPLIED"
    assert cb.greet("x") == "p1 x"


STATE_HOOKS = """
@patch.pre_apply
def take(ctx):
    st, prev = ctx.state(7), ctx.prev_state(7)
    st.data = {"owner": ctx.payload.name, "from": prev.payload if prev else None,
               "count": (prev.data["count"] if prev else 0) + 1}
    ctx.log(f"state 7 v{st.version} data={st.data}")

@patch.post_revert
def give_back(ctx):
    prev = ctx.prev_state(7)
    ctx.log(f"back to {prev.payload if prev else 'nothing'}")
"""


def test_state_changed_and_taken_over_by_a_later_payload(lab, cb):
    """test-state: a payload keeps data in its state; a later payload with the same id
    takes it over through prev_state; payload code reads it with get_state."""
    e = lab.engine
    e.load(lab.pack(payload("s1", hooks=STATE_HOOKS, states=[(7, 1)])))
    assert get_state("s1", 7).data == {"owner": "s1", "from": None, "count": 1}
    e.load(lab.pack(payload("s2", hooks=STATE_HOOKS, states=[(7, 1)])))  # same version: compatible
    assert get_state("s2", 7).data == {"owner": "s2", "from": "s1", "count": 2}
    e.revert("s2")
    logs = [ev.detail["message"] for ev in e.history() if ev.kind == "hook-log"]
    assert logs[-1] == "back to s1"
    assert get_state("nope", 7) is None and get_state("s1", 8) is None


def test_an_incompatible_state_downgrade_is_refused(lab, cb):
    """test-state: version 1 after version 2 of the same state is refused, nothing changes."""
    e = lab.engine
    e.load(lab.pack(payload("s2", states=[(7, 2)])))
    e.upload("s1", lab.pack(payload("s1", states=[(7, 1)])))
    before = snapshot(cb.greet, cb)
    with pytest.raises(LivepatchError) as err:
        e.apply("s1")
    assert err.value.code == "incompatible-state"
    assert "state 7" in err.value.message and "version 2" in err.value.message
    assert "version 1" in err.value.message
    assert_identical(before, snapshot(cb.greet, cb))
    e.load(lab.pack(payload("s3", states=[(7, 3)])))  # an upgrade is fine
    e.load(lab.pack(payload("s4")))  # so is a non-replace payload without the state


TWO = """
import pylivepatch as lp
patch = lp.Patch("act", consistency="atomic")

@patch.function("{m}cb:greet")
def greet(name):
    return "act " + name

@patch.function("{m}cb:wave")
def wave(name):
    return "act wave " + name
"""

TARGET_TWO = (
    TARGET
    + """
    def wave(name):
        return "wave " + name
"""
)


@pytest.fixture
def cb2(lab):
    return lab.module("cb", TARGET_TWO)


def test_action_hooks_mark_each_function(lab, cb2):
    """apply/revert hooks replace the default swap; markers show per function."""
    g, w = f"{lab.prefix}cb:greet", f"{lab.prefix}cb:wave"
    hooks = f"""
@patch.apply
def do_apply(ctx):
    ctx.mark_applied({g!r})
    ctx.log("between the two")
    ctx.mark_applied({w!r})

@patch.revert
def do_revert(ctx):
    ctx.mark_reverted({w!r})
    ctx.mark_reverted({g!r})
"""
    e = lab.engine
    before = snapshot(cb2.greet, cb2.wave, cb2)
    since = mark(e)
    e.load(lab.pack(TWO + hooks))
    assert (cb2.greet("x"), cb2.wave("x")) == ("act x", "act wave x")
    assert [f.applied for f in e.status("act").funcs] == [True, True]
    e.revert("act")
    assert [f.applied for f in e.status("act").funcs] == [False, False]
    assert_identical(before, snapshot(cb2.greet, cb2.wave, cb2))
    assert [ln for ln in transcript(e, since) if ": hook" in ln] == [
        "apply act: hook-log message=between the two",
        "apply act: hook hook=apply result=ok",
        "revert act: hook hook=revert result=ok",
    ]


def test_a_payload_of_hooks_only(lab, cb):
    """A payload with action hooks and no function: the hooks are the whole action."""
    seen = lab.module("seen", "CALLS = []\n")
    src = """
import pylivepatch as lp
import {m}seen

patch = lp.Patch("only-hooks")

@patch.apply
def on(ctx):
    {m}seen.CALLS.append(("apply", ctx.action))

@patch.revert
def off(ctx):
    {m}seen.CALLS.append(("revert", ctx.action))
"""
    e = lab.engine
    since = mark(e)
    e.load(lab.pack(src))
    assert e.status("only-hooks").state == "APPLIED" and e.status("only-hooks").funcs == ()
    assert seen.CALLS == [("apply", "apply")]
    e.revert("only-hooks")
    assert e.status("only-hooks").state == "CHECKED"
    assert seen.CALLS == [("apply", "apply"), ("revert", "revert")]
    assert [ln for ln in transcript(e, since) if ": hook" in ln] == [
        "apply only-hooks: hook hook=apply result=ok",
        "revert only-hooks: hook hook=revert result=ok",
    ]


def test_an_apply_hook_that_leaves_a_function_unapplied_is_undone(lab, cb2):
    """After the hook every function must be applied; else they are put back and the
    action fails, leaving the process exactly as it was."""
    g = f"{lab.prefix}cb:greet"
    hooks = f"""
@patch.apply
def half(ctx):
    ctx.mark_applied({g!r})
"""
    e = lab.engine
    e.upload("act", lab.pack(TWO + hooks))
    before = snapshot(cb2.greet, cb2.wave, cb2)
    with pytest.raises(LivepatchError) as err:
        e.apply("act")
    assert err.value.code == "inconsistent" and "nothing changed" in err.value.message
    assert "wave" in err.value.message
    assert_identical(before, snapshot(cb2.greet, cb2.wave, cb2))
    assert e.status("act").state == "CHECKED"


def test_inconsistent_when_the_opposite_hook_cannot_fix_it_and_revert_force(lab, cb2):
    """If even the opposite hook leaves a mix, the payload is INCONSISTENT: only
    revert --force is accepted, and it restores every function exactly."""
    g = f"{lab.prefix}cb:greet"
    hooks = f"""
@patch.apply
def half(ctx):
    ctx.mark_applied({g!r})
    raise RuntimeError("disk full")

@patch.revert
def stubborn(ctx):
    pass
"""
    e = lab.engine
    e.upload("act", lab.pack(TWO + hooks))
    before = snapshot(cb2.greet, cb2.wave, cb2)
    with pytest.raises(LivepatchError) as err:
        e.apply("act")
    assert err.value.code == "inconsistent" and "INCONSISTENT" in err.value.message
    assert "disk full" in err.value.message
    assert e.status("act").state == "INCONSISTENT"
    assert cb2.greet("x") == "act x" and cb2.wave("x") == "wave x"  # the mix, loudly reported
    for call in (lambda: e.apply("act"), lambda: e.revert("act"), lambda: e.unload("act")):
        with pytest.raises(LivepatchError) as err:
            call()
        assert err.value.code == "wrong-state" and "revert --force" in err.value.message
    e.revert("act", force=True)
    assert e.status("act").state == "CHECKED"
    assert_identical(before, snapshot(cb2.greet, cb2.wave, cb2))


def test_ctx_modules_names_what_a_run_of_the_hooks_is_for(lab, cb):
    """At apply, the hooks see the targets imported by then; when a target is imported
    later, they run again for that module alone."""
    import importlib
    import textwrap

    later = lab.name("later")
    (lab.root / f"{later}.py").write_text(textwrap.dedent(TARGET))
    lab.modules.append(later)
    importlib.invalidate_caches()
    hooks = """
SEEN = []

@patch.pre_apply
def pre(ctx):
    SEEN.append(("pre", ctx.modules))

@patch.post_apply
def post(ctx):
    SEEN.append(("post", ctx.modules, ctx.rc))
"""
    extra = (
        '@patch.function("{m}later:greet")\ndef greet_later(name):\n    return "later " + name\n'
    )
    lab.engine.load(lab.pack(payload("mods", hooks=hooks, extra=extra), against=str(lab.root)))
    seen = lab.engine._payloads["mods"].loaded.namespace["SEEN"]
    assert seen == [("pre", (cb.__name__,)), ("post", (cb.__name__,), 0)]
    mod = importlib.import_module(later)
    assert mod.greet("x") == "later x"
    assert seen[2:] == [("pre", (later,)), ("post", (later,), 0)]
