"""Scenario transcripts in the style of the kernel livepatch selftests
(tools/testing/selftests/livepatch: test-callbacks.sh, test-state.sh,
test-livepatch.sh) and of Xen's livepatch hook tests: each test runs one scenario
and compares the engine's whole event transcript (``Event.line()``) with the
expected one, line by line.

Lines are normalized so that a transcript names what happened, not where: the
test's module prefix becomes ``{m}``, its directory ``<root>``, thread ids ``N`` and
the build id in a payload's file names (``<pylivepatch NAME BUILDID>``) is dropped.
Upload events are left out (test_lifecycle.py has their transcript)."""

from __future__ import annotations

import errno
import importlib
import re
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from pylivepatch import LivepatchError
from pylivepatch.payload import archive
from pylivepatch.state import get_state

from conftest import assert_identical, park, snapshot

TARGET = """
    def greet(name):
        return "hello " + name
"""

# Where a thread parked in greet (conftest.park) sits, as the engine names it.
SITTER = "thread 'sitter' (id N) in {m}cb:greet (<root>/{m}cb.py:3)"

HOOKS = """
@patch.pre_apply
def pre_apply(ctx):
    ctx.log(f"pre_apply {ctx.action}")

@patch.post_apply
def post_apply(ctx):
    ctx.log(f"post_apply {ctx.action} rc={ctx.rc}")

@patch.pre_revert
def pre_revert(ctx):
    ctx.log(f"pre_revert {ctx.action}")

@patch.post_revert
def post_revert(ctx):
    ctx.log(f"post_revert {ctx.action} rc={ctx.rc}")
"""

# Hooks that keep a list in state 7: each payload appends its name to what it took over.
STATE_HOOKS = """
@patch.pre_apply
def pre_apply(ctx):
    st, prev = ctx.state(7), ctx.prev_state(7)
    st.data = (prev.data if prev else []) + [ctx.payload.name]
    where = f"{prev.payload} v{prev.version}" if prev else "none"
    ctx.log(f"pre_apply {ctx.action} state 7 v{st.version} prev={where} data={st.data}")

@patch.post_apply
def post_apply(ctx):
    ctx.log(f"post_apply {ctx.action} rc={ctx.rc} data={ctx.state(7).data}")

@patch.pre_revert
def pre_revert(ctx):
    ctx.log(f"pre_revert data={ctx.state(7).data}")

@patch.post_revert
def post_revert(ctx):
    ctx.state(7).data = None
    ctx.log(f"post_revert rc={ctx.rc}")
"""


def payload(
    name: str,
    *,
    hooks: str = "",
    consistency: str = "atomic",
    depends: str | None = None,
    states: tuple[tuple[int, int], ...] | list[tuple[int, int]] = (),
    replace: bool = False,
    func: str = "greet",
    module: str = "cb",
) -> str:
    """A payload that patches ``{m}module:func`` to return ``"<name> " + arg``."""
    lines = [
        "import pylivepatch as lp",
        f"patch = lp.Patch({name!r}, consistency={consistency!r}, depends={depends!r}, "
        f"replace={replace!r})",
        *[f"patch.state(id={i}, version={v})" for i, v in states],
        f'@patch.function("{{m}}{module}:{func}")',
        f"def {func}_{name.replace('-', '_')}(name):",
        f"    return {name + ' '!r} + name",
    ]
    return "\n".join([*lines, hooks]) + "\n"


@pytest.fixture
def cb(lab):
    return lab.module("cb", TARGET)


def transcript(lab, since: int, skip: tuple[str, ...] = ("upload",)) -> list[str]:
    """The normalized lines of the events after ``since`` (see the module docstring)."""
    out = []
    for ev in lab.engine.history(since):
        if ev.action in skip:
            continue
        line = ev.line().replace(str(lab.root), "<root>").replace(lab.prefix, "{m}")
        line = re.sub(r"\(id \d+\)", "(id N)", line)
        out.append(re.sub(r"<pylivepatch (\S+) [0-9a-f]+>", r"<pylivepatch \1>", line))
    return out


def build_id(data: bytes) -> str:
    return archive.read(data).manifest.build_id


def wait_for(cond: Callable[[], Any], what: str, tries: int = 500, step: float = 0.01) -> Any:
    """Poll ``cond`` at most ``tries`` times, ``step`` seconds apart; its first true value."""
    for _ in range(tries):
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"gave up waiting for {what} after {tries} tries")


def blocked(lab, name: str):
    """The status of ``name`` once its action in progress reports blockers."""
    st = lab.engine.status(name)
    return st if st.in_progress and st.in_progress.get("blockers") else None


def in_background(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``call`` in a thread; the dict gets its ``result`` or its ``error``."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = call()
        except LivepatchError as exc:
            out["error"] = exc

    t = threading.Thread(target=run, name="actor", daemon=True)
    t.start()
    return t, out


# --- test-callbacks.sh ---------------------------------------------------------------


def test_callbacks_pre_patch_callback_veto(lab, cb):
    """test-callbacks "pre-patch callback -ENODEV": the apply fails with vetoed, nothing
    changed, and the post hook does not run."""
    hooks = """
import errno

@patch.pre_apply
def no(ctx):
    ctx.log("pre_apply says no")
    return -errno.ENODEV

@patch.post_apply
def post(ctx):
    ctx.log("post_apply must not run")
"""
    e = lab.engine
    e.upload("p1", lab.pack(payload("p1", hooks=hooks)))
    before = snapshot(cb.greet, cb)
    since = lab.mark()
    with pytest.raises(LivepatchError) as err:
        e.apply("p1")
    assert err.value.code == "vetoed"
    assert_identical(before, snapshot(cb.greet, cb))
    assert e.status("p1").state == "CHECKED"
    assert transcript(lab, since) == [
        "apply p1: started",
        "apply p1: checked funcs=1 data=0 consistency=atomic nodeps=False",
        "apply p1: hook-log message=pre_apply says no",
        "apply p1: hook hook=pre_apply result=vetoed",
        f"apply p1: finished rc={errno.ECANCELED} error=vetoed "
        "message=p1: pre_apply hook refused (returned -19)",
    ]


def test_callbacks_multiple_livepatches(lab, cb):
    """test-callbacks "multiple livepatches": two stacked payloads, each with all four
    hooks; apply both, revert both: each runs its own hooks, in order."""
    e = lab.engine
    d1 = lab.pack(payload("p1", hooks=HOOKS, depends="base"))
    d2 = lab.pack(payload("p2", hooks=HOOKS, depends=build_id(d1)))
    e.upload("p1", d1)
    e.upload("p2", d2)
    since = lab.mark()
    e.apply("p1")
    e.apply("p2")
    assert cb.greet("x") == "p2 x"
    e.revert("p2")
    e.revert("p1")
    assert cb.greet("x") == "hello x"
    assert transcript(lab, since) == [
        "apply p1: started",
        "apply p1: checked funcs=1 data=0 consistency=atomic nodeps=False",
        "apply p1: hook-log message=pre_apply apply",
        "apply p1: hook hook=pre_apply result=ok",
        "apply p1: swapped funcs=1 data=0",
        "apply p1: hook-log message=post_apply apply rc=0",
        "apply p1: hook hook=post_apply rc=0 result=ok",
        "apply p1: finished rc=0",
        "apply p2: started",
        "apply p2: checked funcs=1 data=0 consistency=atomic nodeps=False",
        "apply p2: hook-log message=pre_apply apply",
        "apply p2: hook hook=pre_apply result=ok",
        "apply p2: swapped funcs=1 data=0",
        "apply p2: hook-log message=post_apply apply rc=0",
        "apply p2: hook hook=post_apply rc=0 result=ok",
        "apply p2: finished rc=0",
        "revert p2: started",
        "revert p2: checked consistency=atomic",
        "revert p2: hook-log message=pre_revert revert",
        "revert p2: hook hook=pre_revert result=ok",
        "revert p2: swapped funcs=1 data=0",
        "revert p2: hook-log message=post_revert revert rc=0",
        "revert p2: hook hook=post_revert rc=0 result=ok",
        "revert p2: finished rc=0",
        "revert p1: started",
        "revert p1: checked consistency=atomic",
        "revert p1: hook-log message=pre_revert revert",
        "revert p1: hook hook=pre_revert result=ok",
        "revert p1: swapped funcs=1 data=0",
        "revert p1: hook-log message=post_revert revert rc=0",
        "revert p1: hook hook=post_revert rc=0 result=ok",
        "revert p1: finished rc=0",
    ]


def test_callbacks_atomic_replace(lab, cb):
    """test-callbacks "atomic replace": only the replacing payload's hooks run (with
    ctx.action "replace"); the replaced payloads' hooks never do, not even on the
    later revert of the replacing one."""
    e = lab.engine
    e.load(lab.pack(payload("p1", hooks=HOOKS, states=[(1, 1)])))
    e.load(lab.pack(payload("p2", hooks=HOOKS, states=[(1, 1)])))
    e.upload("cum", lab.pack(payload("cum", hooks=HOOKS, states=[(1, 1)], replace=True)))
    since = lab.mark()
    e.replace("cum")
    assert cb.greet("x") == "cum x"
    assert [s.state for s in e.list()] == ["CHECKED", "CHECKED", "APPLIED"]
    e.revert("cum")
    assert cb.greet("x") == "hello x"
    assert transcript(lab, since) == [
        "replace cum: started",
        "replace cum: checked funcs=1 data=0 consistency=atomic replaces=[p1,p2]",
        "replace cum: hook-log message=pre_apply replace",
        "replace cum: hook hook=pre_apply result=ok",
        "replace cum: swapped funcs=1 data=0",
        "replace cum: hook-log message=post_apply replace rc=0",
        "replace cum: hook hook=post_apply rc=0 result=ok",
        "replace cum: finished rc=0",
        "revert cum: started",
        "revert cum: checked consistency=atomic",
        "revert cum: hook-log message=pre_revert revert",
        "revert cum: hook hook=pre_revert result=ok",
        "revert cum: swapped funcs=1 data=0",
        "revert cum: hook-log message=post_revert revert rc=0",
        "revert cum: hook hook=post_revert rc=0 result=ok",
        "revert cum: finished rc=0",
    ]


def test_callbacks_busy_target(lab, cb):
    """test-callbacks "busy target module", the kernel way: a thread parked in the old
    code holds the transition open; meanwhile new calls run the new code and a second
    action gets busy (one refused event, for the audit log); once the thread leaves, the transition
    completes and post_apply runs."""
    e = lab.engine
    e.upload("p1", lab.pack(payload("p1", hooks=HOOKS, consistency="transition")))
    e.upload("p2", lab.pack(payload("p2")))
    parked, sitter = park(cb.greet, "sitter")
    since = lab.mark()
    actor = None
    try:
        actor, out = in_background(lambda: e.apply("p1", timeout=10))
        st = wait_for(lambda: blocked(lab, "p1"), "the transition to report its blocker")
        assert st.rc == errno.EAGAIN and st.in_progress["transition"] == "patching"
        with pytest.raises(LivepatchError) as err:
            e.apply("p2")
        assert err.value.code == "busy" and "apply p1" in err.value.message
        assert cb.greet("x") == "p1 x", "a call chain without old frames gets the new code"
    finally:
        parked.release.set()
        sitter.join(5)
        if actor is not None:
            actor.join(10)
    assert out["result"].state == "APPLIED" and e.status("p2").state == "CHECKED"
    assert transcript(lab, since) == [
        "apply p1: started timeout=10",
        "apply p1: checked funcs=1 data=0 consistency=transition nodeps=False",
        "apply p1: hook-log message=pre_apply apply",
        "apply p1: hook hook=pre_apply result=ok",
        "apply p1: transition direction=patching funcs=1",
        "apply p2: refused error=busy rc=16 message=apply p2: apply p1 is in progress; try again",
        "apply p1: transition-complete",
        "apply p1: swapped funcs=1 data=0",
        "apply p1: hook-log message=post_apply apply rc=0",
        "apply p1: hook hook=post_apply rc=0 result=ok",
        "apply p1: finished rc=0",
    ]


def test_callbacks_post_hooks_after_a_transition_timeout(lab, cb):
    """A transition that times out is reversed and the post hook still runs, with
    ctx.rc == ETIMEDOUT (Linux pairs the callbacks); both ways, apply and revert."""
    e = lab.engine
    e.upload("p1", lab.pack(payload("p1", hooks=HOOKS, consistency="transition")))
    before = snapshot(cb.greet, cb)
    since = lab.mark()
    parked, sitter = park(cb.greet, "sitter")  # in the old code
    try:
        with pytest.raises(LivepatchError) as err:
            e.apply("p1", timeout=0.3)
    finally:
        parked.release.set()
        sitter.join(5)
    assert err.value.code == "timeout"
    assert_identical(before, snapshot(cb.greet, cb))
    e.apply("p1")
    parked, sitter = park(cb.greet, "sitter")  # in the new code
    try:
        with pytest.raises(LivepatchError) as err:
            e.revert("p1", timeout=0.3)
    finally:
        parked.release.set()
        sitter.join(5)
    assert err.value.code == "timeout"
    assert e.status("p1").state == "APPLIED" and cb.greet("x") == "p1 x"
    sitter_new = SITTER.replace("<root>/{m}cb.py:3", "<pylivepatch p1>/payload/__init__.py:5")
    assert transcript(lab, since) == [
        "apply p1: started timeout=0.3",
        "apply p1: checked funcs=1 data=0 consistency=transition nodeps=False",
        "apply p1: hook-log message=pre_apply apply",
        "apply p1: hook hook=pre_apply result=ok",
        "apply p1: transition direction=patching funcs=1",
        f"apply p1: reversing blockers=[{SITTER}]",
        "apply p1: transition-reversed",
        f"apply p1: hook-log message=post_apply apply rc={errno.ETIMEDOUT}",
        f"apply p1: hook hook=post_apply rc={errno.ETIMEDOUT} result=ok",
        f"apply p1: finished rc={errno.ETIMEDOUT} error=timeout message=apply p1: the transition "
        f"did not complete within 0.3s and was reversed; blocked by {SITTER}",
        "apply p1: started",
        "apply p1: checked funcs=1 data=0 consistency=transition nodeps=False",
        "apply p1: hook-log message=pre_apply apply",
        "apply p1: hook hook=pre_apply result=ok",
        "apply p1: transition direction=patching funcs=1",
        "apply p1: transition-complete",
        "apply p1: swapped funcs=1 data=0",
        "apply p1: hook-log message=post_apply apply rc=0",
        "apply p1: hook hook=post_apply rc=0 result=ok",
        "apply p1: finished rc=0",
        "revert p1: started timeout=0.3",
        "revert p1: checked consistency=transition",
        "revert p1: hook-log message=pre_revert revert",
        "revert p1: hook hook=pre_revert result=ok",
        "revert p1: transition direction=unpatching funcs=1",
        f"revert p1: reversing blockers=[{sitter_new}]",
        "revert p1: transition-reversed",
        f"revert p1: hook-log message=post_revert revert rc={errno.ETIMEDOUT}",
        f"revert p1: hook hook=post_revert rc={errno.ETIMEDOUT} result=ok",
        f"revert p1: finished rc={errno.ETIMEDOUT} error=timeout message=revert p1: the "
        f"transition did not complete within 0.3s and was reversed; blocked by {sitter_new}",
    ]


@pytest.fixture
def late_source(lab):
    """The target on disk, not imported (payloads are packed against the directory)."""
    (lab.root / f"{lab.name('late')}.py").write_text(textwrap.dedent(TARGET))
    lab.modules.append(lab.name("late"))
    importlib.invalidate_caches()
    return lab.root


def test_callbacks_module_coming(lab, late_source):
    """test-callbacks "module_coming notifier": a payload applied before its target is
    imported patches it at the import, with its pre and post hooks around the swap."""
    e = lab.engine
    e.load(lab.pack(payload("p1", hooks=HOOKS, module="late"), against=str(late_source)))
    assert e.status("p1").pending == (lab.name("late"),)
    since = lab.mark()
    late = importlib.import_module(lab.name("late"))
    assert late.greet("x") == "p1 x" and e.status("p1").pending == ()
    assert transcript(lab, since) == [
        "apply p1: late-object module={m}late",
        "apply p1: hook-log message=pre_apply apply",
        "apply p1: hook hook=pre_apply result=ok",
        "apply p1: swapped module={m}late funcs=1 data=0",
        "apply p1: hook-log message=post_apply apply rc=0",
        "apply p1: hook hook=post_apply rc=0 result=ok",
    ]


# --- test-state.sh -------------------------------------------------------------------


def test_state_system_state_modification(lab, cb):
    """test-state "system state modification": the hooks keep data in the payload's
    state; payload code reads it with get_state."""
    e = lab.engine
    e.upload("s1", lab.pack(payload("s1", hooks=STATE_HOOKS, states=[(7, 1)])))
    since = lab.mark()
    e.apply("s1")
    assert get_state("s1", 7).data == ["s1"]
    e.revert("s1")
    assert get_state("s1", 7).data is None
    assert transcript(lab, since) == [
        "apply s1: started",
        "apply s1: checked funcs=1 data=0 consistency=atomic nodeps=False",
        "apply s1: hook-log message=pre_apply apply state 7 v1 prev=none data=['s1']",
        "apply s1: hook hook=pre_apply result=ok",
        "apply s1: swapped funcs=1 data=0",
        "apply s1: hook-log message=post_apply apply rc=0 data=['s1']",
        "apply s1: hook hook=post_apply rc=0 result=ok",
        "apply s1: finished rc=0",
        "revert s1: started",
        "revert s1: checked consistency=atomic",
        "revert s1: hook-log message=pre_revert data=['s1']",
        "revert s1: hook hook=pre_revert result=ok",
        "revert s1: swapped funcs=1 data=0",
        "revert s1: hook-log message=post_revert rc=0",
        "revert s1: hook hook=post_revert rc=0 result=ok",
        "revert s1: finished rc=0",
    ]


def test_state_taking_over_system_state_modification(lab, cb):
    """test-state "taking over system state modification": a replacing payload with
    the same state takes it over through prev_state; the replaced one's hooks never run."""
    e = lab.engine
    e.load(lab.pack(payload("s1", hooks=STATE_HOOKS, states=[(7, 1)])))
    e.upload("s2", lab.pack(payload("s2", hooks=STATE_HOOKS, states=[(7, 1)], replace=True)))
    since = lab.mark()
    e.replace("s2")
    assert get_state("s2", 7).data == ["s1", "s2"]
    e.revert("s2")
    assert transcript(lab, since) == [
        "replace s2: started",
        "replace s2: checked funcs=1 data=0 consistency=atomic replaces=[s1]",
        "replace s2: hook-log message=pre_apply replace state 7 v1 prev=s1 v1 data=['s1', 's2']",
        "replace s2: hook hook=pre_apply result=ok",
        "replace s2: swapped funcs=1 data=0",
        "replace s2: hook-log message=post_apply replace rc=0 data=['s1', 's2']",
        "replace s2: hook hook=post_apply rc=0 result=ok",
        "replace s2: finished rc=0",
        "revert s2: started",
        "revert s2: checked consistency=atomic",
        "revert s2: hook-log message=pre_revert data=['s1', 's2']",
        "revert s2: hook hook=pre_revert result=ok",
        "revert s2: swapped funcs=1 data=0",
        "revert s2: hook-log message=post_revert rc=0",
        "revert s2: hook hook=post_revert rc=0 result=ok",
        "revert s2: finished rc=0",
    ]


def test_state_compatible_cumulative_livepatches(lab, cb):
    """test-state "compatible cumulative livepatches": an upgrade (v1 -> v2), then the
    same version (v2 -> v2); each takes the state over from the one it replaces."""
    e = lab.engine
    e.load(lab.pack(payload("s1", hooks=STATE_HOOKS, states=[(7, 1)])))
    e.upload("s2", lab.pack(payload("s2", hooks=STATE_HOOKS, states=[(7, 2)], replace=True)))
    e.upload("s3", lab.pack(payload("s3", hooks=STATE_HOOKS, states=[(7, 2)], replace=True)))
    since = lab.mark()
    e.replace("s2")
    e.replace("s3")
    assert cb.greet("x") == "s3 x"
    assert [s.state for s in e.list()] == ["CHECKED", "CHECKED", "APPLIED"]
    assert transcript(lab, since) == [
        "replace s2: started",
        "replace s2: checked funcs=1 data=0 consistency=atomic replaces=[s1]",
        "replace s2: hook-log message=pre_apply replace state 7 v2 prev=s1 v1 data=['s1', 's2']",
        "replace s2: hook hook=pre_apply result=ok",
        "replace s2: swapped funcs=1 data=0",
        "replace s2: hook-log message=post_apply replace rc=0 data=['s1', 's2']",
        "replace s2: hook hook=post_apply rc=0 result=ok",
        "replace s2: finished rc=0",
        "replace s3: started",
        "replace s3: checked funcs=1 data=0 consistency=atomic replaces=[s2]",
        "replace s3: hook-log message=pre_apply replace state 7 v2 prev=s2 v2 "
        "data=['s1', 's2', 's3']",
        "replace s3: hook hook=pre_apply result=ok",
        "replace s3: swapped funcs=1 data=0",
        "replace s3: hook-log message=post_apply replace rc=0 data=['s1', 's2', 's3']",
        "replace s3: hook hook=post_apply rc=0 result=ok",
        "replace s3: finished rc=0",
    ]


def test_state_incompatible_cumulative_livepatches(lab, cb):
    """test-state "incompatible cumulative livepatches": a downgrade of a state is
    refused before anything changes, and no hook runs."""
    e = lab.engine
    e.load(lab.pack(payload("s2", hooks=STATE_HOOKS, states=[(7, 2)])))
    e.upload("s1", lab.pack(payload("s1", hooks=STATE_HOOKS, states=[(7, 1)], replace=True)))
    before = snapshot(cb.greet, cb)
    since = lab.mark()
    with pytest.raises(LivepatchError) as err:
        e.replace("s1")
    assert err.value.code == "incompatible-state"
    assert_identical(before, snapshot(cb.greet, cb))
    assert {s.name: s.state for s in e.list()} == {"s2": "APPLIED", "s1": "CHECKED"}
    assert transcript(lab, since) == [
        "replace s1: started",
        f"replace s1: finished rc={errno.EPROTO} error=incompatible-state message=s1: state 7 "
        "is at version 2 (payload s2); s1 has version 1, a downgrade",
    ]


# --- test-livepatch.sh ---------------------------------------------------------------


def test_livepatch_basic_function_patching(lab, cb):
    """test-livepatch "basic function patching", in the default consistency model."""
    e = lab.engine
    e.upload("p1", lab.pack(payload("p1", consistency="transition")))
    since = lab.mark()
    e.apply("p1")
    assert cb.greet("x") == "p1 x"
    e.revert("p1")
    assert cb.greet("x") == "hello x"
    assert transcript(lab, since) == [
        "apply p1: started",
        "apply p1: checked funcs=1 data=0 consistency=transition nodeps=False",
        "apply p1: transition direction=patching funcs=1",
        "apply p1: transition-complete",
        "apply p1: swapped funcs=1 data=0",
        "apply p1: finished rc=0",
        "revert p1: started",
        "revert p1: checked consistency=transition",
        "revert p1: transition direction=unpatching funcs=1",
        "revert p1: transition-complete",
        "revert p1: swapped funcs=1 data=0",
        "revert p1: finished rc=0",
    ]


def test_livepatch_multiple_livepatches(lab, cb):
    """test-livepatch "multiple livepatches": two stacked payloads on one function; the
    newest runs, reverting it exposes the one below."""
    e = lab.engine
    d1 = lab.pack(payload("p1", consistency="transition", depends="base"))
    d2 = lab.pack(payload("p2", consistency="transition", depends=build_id(d1)))
    e.upload("p1", d1)
    e.upload("p2", d2)
    since = lab.mark()
    e.apply("p1")
    e.apply("p2")
    assert cb.greet("x") == "p2 x"
    e.revert("p2")
    assert cb.greet("x") == "p1 x"
    e.revert("p1")
    assert cb.greet("x") == "hello x"
    assert transcript(lab, since) == [
        "apply p1: started",
        "apply p1: checked funcs=1 data=0 consistency=transition nodeps=False",
        "apply p1: transition direction=patching funcs=1",
        "apply p1: transition-complete",
        "apply p1: swapped funcs=1 data=0",
        "apply p1: finished rc=0",
        "apply p2: started",
        "apply p2: checked funcs=1 data=0 consistency=transition nodeps=False",
        "apply p2: transition direction=patching funcs=1",
        "apply p2: transition-complete",
        "apply p2: swapped funcs=1 data=0",
        "apply p2: finished rc=0",
        "revert p2: started",
        "revert p2: checked consistency=transition",
        "revert p2: transition direction=unpatching funcs=1",
        "revert p2: transition-complete",
        "revert p2: swapped funcs=1 data=0",
        "revert p2: finished rc=0",
        "revert p1: started",
        "revert p1: checked consistency=transition",
        "revert p1: transition direction=unpatching funcs=1",
        "revert p1: transition-complete",
        "revert p1: swapped funcs=1 data=0",
        "revert p1: finished rc=0",
    ]


THREE = """
    def a(name):
        return "a " + name

    def b(name):
        return "b " + name

    def c(name):
        return "c " + name
"""


def test_livepatch_atomic_replace(lab):
    """test-livepatch "atomic replace livepatch": three payloads replaced by one in one
    swap; functions only the earlier ones patched run their original code again."""
    rp = lab.module("rp", THREE)
    e = lab.engine
    before = snapshot(rp.a, rp.b, rp.c, rp)
    for name, func in (("p1", "a"), ("p2", "b"), ("p3", "c")):
        e.load(lab.pack(payload(name, func=func, module="rp")))
    assert (rp.a("x"), rp.b("x"), rp.c("x")) == ("p1 x", "p2 x", "p3 x")
    e.upload("cum", lab.pack(payload("cum", func="b", module="rp", replace=True)))
    since = lab.mark()
    e.replace("cum")
    assert (rp.a("x"), rp.b("x"), rp.c("x")) == ("a x", "cum x", "c x")
    e.revert("cum")
    assert_identical(before, snapshot(rp.a, rp.b, rp.c, rp))
    assert transcript(lab, since) == [
        "replace cum: started",
        "replace cum: checked funcs=1 data=0 consistency=atomic replaces=[p1,p2,p3]",
        "replace cum: swapped funcs=3 data=0",
        "replace cum: finished rc=0",
        "revert cum: started",
        "revert cum: checked consistency=atomic",
        "revert cum: swapped funcs=1 data=0",
        "revert cum: finished rc=0",
    ]


def test_livepatch_atomic_replace_in_transition_mode(lab, cb):
    """The same replace in the consistency model: a thread parked in the replaced
    payload's code holds the transition open until it leaves; new calls run the new code."""
    e = lab.engine
    e.load(lab.pack(payload("p1", hooks=HOOKS, states=[(1, 1)], consistency="transition")))
    e.upload(
        "cum",
        lab.pack(
            payload("cum", hooks=HOOKS, states=[(1, 1)], consistency="transition", replace=True)
        ),
    )
    parked, sitter = park(cb.greet, "sitter")  # in p1's code
    since = lab.mark()
    actor = None
    try:
        actor, out = in_background(lambda: e.replace("cum", timeout=10))
        st = wait_for(lambda: blocked(lab, "cum"), "the transition to report its blocker")
        assert st.in_progress["transition"] == "patching"
        assert cb.greet("x") == "cum x"
    finally:
        parked.release.set()
        sitter.join(5)
        if actor is not None:
            actor.join(10)
    assert out["result"].state == "APPLIED" and e.status("p1").state == "CHECKED"
    assert transcript(lab, since) == [
        "replace cum: started timeout=10",
        "replace cum: checked funcs=1 data=0 consistency=transition replaces=[p1]",
        "replace cum: hook-log message=pre_apply replace",
        "replace cum: hook hook=pre_apply result=ok",
        "replace cum: transition direction=patching funcs=1",
        "replace cum: transition-complete",
        "replace cum: swapped funcs=1 data=0",
        "replace cum: hook-log message=post_apply replace rc=0",
        "replace cum: hook hook=post_apply rc=0 result=ok",
        "replace cum: finished rc=0",
    ]


# --- Xen livepatch hooks -------------------------------------------------------------


def test_xen_vetoing_pre_hooks(lab, cb):
    """Xen prepost hooks that fail: a pre_apply that raises refuses the apply, a
    pre_revert that returns False refuses the revert; no post hook runs after a veto."""
    no_apply = """
@patch.pre_apply
def no(ctx):
    raise RuntimeError("not now")

@patch.post_apply
def post(ctx):
    ctx.log("post_apply must not run")
"""
    no_revert = """
@patch.pre_revert
def stay(ctx):
    ctx.log("pre_revert says no")
    return False

@patch.post_revert
def post(ctx):
    ctx.log("post_revert must not run")
"""
    e = lab.engine
    e.upload("p1", lab.pack(payload("p1", hooks=no_apply)))
    e.upload("p2", lab.pack(payload("p2", hooks=no_revert)))
    since = lab.mark()
    with pytest.raises(LivepatchError) as err:
        e.apply("p1")
    assert err.value.code == "vetoed" and cb.greet("x") == "hello x"
    e.apply("p2")
    with pytest.raises(LivepatchError) as err:
        e.revert("p2")
    assert err.value.code == "vetoed" and cb.greet("x") == "p2 x"
    assert e.status("p2").state == "APPLIED"
    assert transcript(lab, since) == [
        "apply p1: started",
        "apply p1: checked funcs=1 data=0 consistency=atomic nodeps=False",
        "apply p1: hook hook=pre_apply result=vetoed",
        f"apply p1: finished rc={errno.ECANCELED} error=vetoed "
        "message=p1: pre_apply hook refused: RuntimeError: not now",
        "apply p2: started",
        "apply p2: checked funcs=1 data=0 consistency=atomic nodeps=False",
        "apply p2: swapped funcs=1 data=0",
        "apply p2: finished rc=0",
        "revert p2: started",
        "revert p2: checked consistency=atomic",
        "revert p2: hook-log message=pre_revert says no",
        "revert p2: hook hook=pre_revert result=vetoed",
        f"revert p2: finished rc={errno.ECANCELED} error=vetoed "
        "message=p2: pre_revert hook refused (returned False)",
    ]


def test_xen_post_hooks_see_rc(lab, cb):
    """Post hooks run whenever their pre hook ran: after a quiescing timeout (where
    Xen would skip them) with rc ETIMEDOUT, after success with rc 0."""
    e = lab.engine
    e.upload("p1", lab.pack(payload("p1", hooks=HOOKS)))
    parked, sitter = park(cb.greet, "sitter")
    since = lab.mark()
    try:
        with pytest.raises(LivepatchError) as err:
            e.apply("p1", timeout=0.2)
    finally:
        parked.release.set()
        sitter.join(5)
    assert err.value.code == "timeout" and e.status("p1").state == "CHECKED"
    e.apply("p1")
    e.revert("p1")
    assert transcript(lab, since) == [
        "apply p1: started timeout=0.2",
        "apply p1: checked funcs=1 data=0 consistency=atomic nodeps=False",
        "apply p1: hook-log message=pre_apply apply",
        "apply p1: hook hook=pre_apply result=ok",
        f"apply p1: waiting blockers=[{SITTER}]",
        f"apply p1: hook-log message=post_apply apply rc={errno.ETIMEDOUT}",
        f"apply p1: hook hook=post_apply rc={errno.ETIMEDOUT} result=ok",
        f"apply p1: finished rc={errno.ETIMEDOUT} error=timeout message=apply p1: no quiescent "
        f"moment within 0.2s; blocked by {SITTER}",
        "apply p1: started",
        "apply p1: checked funcs=1 data=0 consistency=atomic nodeps=False",
        "apply p1: hook-log message=pre_apply apply",
        "apply p1: hook hook=pre_apply result=ok",
        "apply p1: swapped funcs=1 data=0",
        "apply p1: hook-log message=post_apply apply rc=0",
        "apply p1: hook hook=post_apply rc=0 result=ok",
        "apply p1: finished rc=0",
        "revert p1: started",
        "revert p1: checked consistency=atomic",
        "revert p1: hook-log message=pre_revert revert",
        "revert p1: hook hook=pre_revert result=ok",
        "revert p1: swapped funcs=1 data=0",
        "revert p1: hook-log message=post_revert revert rc=0",
        "revert p1: hook hook=post_revert rc=0 result=ok",
        "revert p1: finished rc=0",
    ]


def test_xen_replace_refused_for_hooks_without_state(lab, cb):
    """Xen refuses replace with vetoing hooks; we refuse it where their mutations are
    untracked: an applied payload with hooks and no state, named in the error."""
    e = lab.engine
    e.load(lab.pack(payload("p1", hooks=HOOKS)))
    e.upload("cum", lab.pack(payload("cum", replace=True)))
    before = snapshot(cb.greet, cb)
    since = lab.mark()
    with pytest.raises(LivepatchError) as err:
        e.replace("cum")
    assert err.value.code == "replace-refused"
    assert_identical(before, snapshot(cb.greet, cb))
    assert {s.name: s.state for s in e.list()} == {"p1": "APPLIED", "cum": "CHECKED"}
    assert transcript(lab, since) == [
        "replace cum: started",
        f"replace cum: finished rc={errno.EOPNOTSUPP} error=replace-refused message=replace "
        "cum: applied payload p1 has hooks (post_apply, post_revert, pre_apply, pre_revert) but "
        "declares no system state, so what its hooks changed would be lost untracked; "
        "revert it first",
    ]
