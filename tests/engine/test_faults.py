"""Fault injection (issue: security and robustness): every step of every action made
to fail in turn.

For each scenario (an action from a state), a first run records the named points the
action passes (``pylivepatch.engine.faults``). Then, for every pass of every point, a
fresh engine is brought to the same state and the action is run with that pass made
to fail: at a plain point an exception is raised there, at a pause point the pause
itself fails half-way from C. After each: every touched function, its code, defaults
and keyword defaults, every attribute and module namespace is identical (``is``) to
before; every payload has the state it had, the acted-on payload the rc of the error;
the audit log records the failure; a pre hook that ran saw its post hook with rc != 0;
and the same action, run again without a fault, succeeds (no lock or leftover stays).
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from pylivepatch import LivepatchError
from pylivepatch.agent import store
from pylivepatch.agent.audit import Audit
from pylivepatch.engine import faults
from pylivepatch.engine.core import Engine

from conftest import assert_identical, snapshot

TARGET = """
    import functools

    RATE = 2
    LOG = []

    def price(x):
        return x * RATE

    def tax(x):
        return x // 10

    @functools.lru_cache(maxsize=None)
    def label(x):
        return "item %d" % x

    class Cart:
        LIMIT = 3

        def total(self, items):
            return sum(price(i) for i in items)

    def gen(n):
        for i in range(n):
            yield price(i)
"""

HOOKS = """
import {m}shop as _target

@patch.pre_apply
def pre_apply(ctx):
    _target.LOG.append(("pre_apply", ctx.payload.name))

@patch.post_apply
def post_apply(ctx):
    _target.LOG.append(("post_apply", ctx.payload.name, ctx.rc))

@patch.pre_revert
def pre_revert(ctx):
    _target.LOG.append(("pre_revert", ctx.payload.name))

@patch.post_revert
def post_revert(ctx):
    _target.LOG.append(("post_revert", ctx.payload.name, ctx.rc))
"""

FA = (
    """
import pylivepatch as lp
patch = lp.Patch("fa", consistency="atomic")
patch.state(id=1, version=1)

def _bump(x):
    return x + 1

@patch.function("{m}shop:price")
def price(x):
    return _bump(x * RATE)

@patch.function("{m}shop:tax")
def tax(x):
    return x // 5

@patch.function("{m}shop:label")
def label(x):
    return "article %d" % x

@patch.function("{m}shop:Cart.total")
def total(self, items):
    return sum(price(i) for i in items) + 1000

@patch.function("{m}shop:gen")
def gen(n):
    for i in range(n):
        yield price(i) + 100

patch.data("{m}shop:RATE", 3)
patch.data("{m}shop:Cart.LIMIT", 5)
"""
    + HOOKS
)

FB = """
import pylivepatch as lp
patch = lp.Patch("fb", consistency="atomic")

@patch.function("{m}shop:price")
def price(x):
    return -x

patch.data("{m}shop:RATE", 4)
"""

FC = """
import pylivepatch as lp
patch = lp.Patch("fc", consistency="atomic")

@patch.function("{m}shop:price")
def price(x):
    return -2 * x
"""

FR = (
    """
import pylivepatch as lp
patch = lp.Patch("fr", consistency="transition", replace=True)
patch.state(id=1, version=2)

@patch.function("{m}shop:tax")
def tax(x):
    return 0

patch.data("{m}shop:Cart.LIMIT", 9)
"""
    + HOOKS
)

FH = """
import pylivepatch as lp
patch = lp.Patch("fh", consistency="atomic")

@patch.function("{m}shop:tax")
def tax(x):
    return 1

@patch.function("{m}shop:Cart.total")
def total(self, items):
    return 2

patch.data("{m}shop:RATE", 7)

@patch.apply
def swap_in(ctx):
    ctx.mark_applied("{m}shop:tax")
    ctx.mark_applied("{m}shop:Cart.total")

@patch.revert
def swap_out(ctx):
    ctx.mark_reverted("{m}shop:tax")
    ctx.mark_reverted("{m}shop:Cart.total")
"""

LATE_TARGET = """
    def parse(text):
        return text.split(",")
"""

FL = """
import pylivepatch as lp
patch = lp.Patch("fl", consistency="atomic")

@patch.function("{m}late:parse")
def parse(text):
    return text.split(";")

patch.data("{m}late:SEPARATOR", ";")
""" + HOOKS.replace("{m}shop", "{m}shop")


@dataclass
class Scenario:
    setup: Callable[[World], None]
    action: Callable[[World], Any]
    payload: str  # the payload the action is about
    raises: type[BaseException] = LivepatchError


class World:
    """One fresh engine, with an audit log of its own, over the test's target module."""

    def __init__(self, lab: Any, shop: Any, packed: dict[str, bytes], app: str) -> None:
        self.lab, self.shop, self.packed, self.app = lab, shop, packed, app
        self.engine = Engine()
        self.engine.add_listener(Audit(app))

    def objects(self) -> list[Any]:
        m = self.shop
        objs = [m.price, m.tax, m.label.__wrapped__, m.Cart.total, m.gen, m, m.Cart]
        late = sys.modules.get(self.lab.name("late"))
        if late is not None:
            objs += [late.parse, late]
        return objs

    def statuses(self) -> dict[str, tuple[Any, ...]]:
        return {
            s.name: (
                s.state,
                s.rc,
                s.pending,
                tuple((f.applied, f.active, f.stack) for f in s.funcs),
            )
            for s in self.engine.list()
        }

    def audit(self) -> list[dict[str, Any]]:
        return store.read_audit(self.app)

    def teardown(self) -> None:
        e = self.engine
        applied = sorted(
            (r for r in e._payloads.values() if str(r.state) != "CHECKED"),
            key=lambda r: -r.applied_seq,
        )
        for rec in applied:
            rec.hooks.clear()
            e.revert(rec.name, force=True, consistency="immediate")
        for name in list(e._payloads):
            e.unload(name)
        sys.modules.pop(self.lab.name("late"), None)


def _load(*names: str) -> Callable[[World], None]:
    def setup(w: World) -> None:
        for n in names:
            w.engine.load(w.packed[n])

    return setup


def _upload(*names: str, then: Callable[[World], None] | None = None) -> Callable[[World], None]:
    def setup(w: World) -> None:
        if then is not None:
            then(w)
        for n in names:
            w.engine.upload(n, w.packed[n])

    return setup


def _import_late(w: World) -> Any:
    return importlib.import_module(w.lab.name("late"))


def _reload(w: World) -> Any:
    return importlib.reload(w.shop)


SCENARIOS: dict[str, Scenario] = {
    "upload": Scenario(lambda w: None, lambda w: w.engine.upload("fa", w.packed["fa"]), "fa"),
    "unload": Scenario(_upload("fa"), lambda w: w.engine.unload("fa"), "fa"),
    "load": Scenario(lambda w: None, lambda w: w.engine.load(w.packed["fa"]), "fa"),
    "apply atomic": Scenario(_upload("fa"), lambda w: w.engine.apply("fa"), "fa"),
    "apply transition": Scenario(
        _upload("fa"), lambda w: w.engine.apply("fa", consistency="transition"), "fa"
    ),
    "apply immediate": Scenario(
        _upload("fa"), lambda w: w.engine.apply("fa", consistency="immediate"), "fa"
    ),
    "apply on a stack": Scenario(
        _upload("fb", then=_load("fa")), lambda w: w.engine.apply("fb"), "fb"
    ),
    "revert atomic": Scenario(_load("fa"), lambda w: w.engine.revert("fa"), "fa"),
    "revert transition": Scenario(
        _load("fa"), lambda w: w.engine.revert("fa", consistency="transition"), "fa"
    ),
    "revert the middle of a stack": Scenario(
        _load("fa", "fb", "fc"), lambda w: w.engine.revert("fb"), "fb"
    ),
    "replace": Scenario(
        _upload("fr", then=_load("fa", "fb")), lambda w: w.engine.replace("fr"), "fr"
    ),
    "apply with action hooks": Scenario(_upload("fh"), lambda w: w.engine.apply("fh"), "fh"),
    "revert with action hooks": Scenario(_load("fh"), lambda w: w.engine.revert("fh"), "fh"),
    "late import": Scenario(_load("fl"), _import_late, "fl", ImportError),
    "reload": Scenario(_load("fa"), _reload, "fa", ImportError),
}


@pytest.fixture
def world_factory(lab):
    shop = lab.module("shop", TARGET)
    late_file = lab.root / f"{lab.name('late')}.py"
    late_file.write_text(textwrap.dedent(LATE_TARGET))
    importlib.invalidate_caches()
    packed = {n: lab.pack(src) for n, src in (("fa", FA), ("fb", FB), ("fc", FC), ("fr", FR))}
    packed["fh"] = lab.pack(FH)
    packed["fl"] = lab.pack(FL, against=str(lab.root))
    funcs = [shop.price, shop.tax, shop.label.__wrapped__, shop.Cart.total, shop.gen]
    pristine = snapshot(*funcs)  # these objects, even after a reload made new ones
    worlds: list[World] = []

    def make() -> World:
        w = World(lab, shop, packed, f"faults-{lab.prefix}{len(worlds)}")
        worlds.append(w)
        return w

    yield make
    for w in worlds:
        w.teardown()
    assert_identical(pristine, snapshot(*funcs))


def _passes(points: list[str]) -> list[tuple[str, int]]:
    """Every pass of every point: (point, n) for the n-th time it is reached."""
    seen: dict[str, int] = {}
    out = []
    for p in points:
        seen[p] = seen.get(p, 0) + 1
        out.append((p, seen[p]))
    return out


#: points reached over all scenarios (filled by the scenario tests, read by the last test)
REACHED: dict[str, set[tuple[str, int]]] = {}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_step_fails_in_turn_and_leaves_the_process_as_it_was(world_factory, scenario):
    sc = SCENARIOS[scenario]
    # the points this action passes, from a run without faults
    w = world_factory()
    sc.setup(w)
    with faults.record(w.engine) as seen:
        sc.action(w)
    w.teardown()
    passes = _passes(seen)
    assert passes, "the action passes named points"
    REACHED[scenario] = set(passes)

    for point, nth in passes:
        w = world_factory()
        sc.setup(w)
        if sc.raises is ImportError:
            sys.modules.pop(w.lab.name("late"), None)
        before = snapshot(*w.objects())
        states = w.statuses()
        log_len = len(w.shop.LOG)
        audit_len = len(w.audit())
        where = f"{scenario}: fault at {point} #{nth}"
        with faults.inject(w.engine, point, nth) as plan, pytest.raises(sc.raises) as err:
            sc.action(w)
        assert plan.fired, where
        exc = err.value
        # identity of everything the action touched
        assert_identical(before, snapshot(*w.objects()))
        if sc.raises is ImportError:
            assert "pylivepatch" in str(exc) and sc.payload in str(exc), where
            if scenario == "late import":
                assert w.lab.name("late") not in sys.modules, where
        # the states; the payload acted on carries the error's rc
        after = w.statuses()
        if isinstance(exc, LivepatchError):
            assert exc.code in ("internal", "inconsistent"), (where, exc)
            assert "nothing changed" in exc.message, (where, exc.message)
            if sc.payload in after:  # its rc is the error's; the rest as it was
                state, rc, *rest = after[sc.payload]
                assert rc == exc.errno, where
                after[sc.payload] = (state, states[sc.payload][1], *rest)
        assert after == states, where
        # the audit log has the failure
        new = [r for r in w.audit()[audit_len:] if r["payload"] == sc.payload]
        assert any(
            r["result"] in ("internal", "inconsistent")
            and r["rc"] in (errno.EIO, errno.ENOTRECOVERABLE)
            for r in new
        ), (where, new)
        # a pre hook that ran saw its post hook, told of the failure
        log = w.shop.LOG[log_len:]
        for i, entry in enumerate(log):
            if entry[0].startswith("pre_"):
                post = [e for e in log[i:] if e[0] == "post_" + entry[0][4:] and e[1] == entry[1]]
                assert post and post[0][2] != 0, (where, log)
        assert not any(e[0].startswith("post_") and e[2] == 0 for e in log), (where, log)
        # nothing is left behind: the same action now succeeds
        sc.action(w)
        w.teardown()


def test_every_declared_point_is_reached_by_some_scenario():
    """Runs after the scenario tests (file order): the harness covers every point the
    engine declares, so the count in docs/security.md is the count of what is tested."""
    if len(REACHED) < len(SCENARIOS):
        pytest.skip("run with the scenario tests")
    reached = {p for passes in REACHED.values() for p, _ in passes}
    assert reached == set(faults.POINTS)
    injected = sum(len(passes) for passes in REACHED.values())
    print(f"{len(faults.POINTS)} points, {injected} injections in {len(REACHED)} scenarios")


def test_a_fault_in_a_transition_under_load_never_mixes_versions(lab):
    """Threads call a serializer and its parser (whose format changes together, through
    a patched caller: a call chain is what keeps one version) all the time; each pause
    of the transition and its wait fail in turn. The engine puts the dispatchers
    back, reverses, and only then restores the old code: no call chain ever sees the
    old serializer with the new parser or the reverse, and every caller keeps working."""
    codec = lab.module(
        "codec",
        """
        def dump(items):
            return ",".join(items)

        def load(text):
            return text.split(",")

        def roundtrip(items):
            return load(dump(items))
        """,
    )
    data = lab.pack(
        """
        import pylivepatch as lp
        patch = lp.Patch("codec-v2")

        @patch.function("{m}codec:dump")
        def dump(items):
            return ";".join(items)

        @patch.function("{m}codec:load")
        def load(text):
            return text.split(";")

        @patch.function("{m}codec:roundtrip")  # the call chain: it picks the version
        def roundtrip(items):
            return load(dump(items))
        """
    )
    e = Engine()
    e.upload("codec-v2", data)
    before = snapshot(codec.dump, codec.load, codec.roundtrip, codec)
    stop = threading.Event()
    bad: list[Any] = []
    calls = [0]

    def caller() -> None:
        items = ["a", "b", "c"]
        for _ in range(2_000_000):
            if stop.is_set():
                return
            got = codec.roundtrip(items)
            calls[0] += 1
            if got != items:
                bad.append(got)

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while calls[0] < 1000 and time.monotonic() < deadline:
            time.sleep(0.01)
        points = ("pause:transition-final", "transition.wait", "pause:transition-start")
        for point in points * 3:
            with faults.inject(e, point) as plan, pytest.raises(LivepatchError) as err:
                e.apply("codec-v2")
            assert plan.fired and err.value.code == "internal"
            assert_identical(before, snapshot(codec.dump, codec.load, codec.roundtrip, codec))
            assert e.status("codec-v2").state == "CHECKED"
        e.apply("codec-v2")
        e.revert("codec-v2")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert bad == [], f"a call chain mixed versions: {bad[:3]}"
    assert_identical(before, snapshot(codec.dump, codec.load, codec.roundtrip, codec))


def test_points_are_declared_once_and_unknown_ones_refused(lab):
    e = Engine()
    with pytest.raises(ValueError, match="unknown fault point"), faults.inject(e, "apply.nowhere"):
        pass
    assert e._inject is None
    assert all(isinstance(v, str) and v for v in faults.POINTS.values())


# --- the faults the issue names, caused for real -----------------------------------

HOOKED = """
import pylivepatch as lp
patch = lp.Patch("fx", consistency="atomic")

@patch.function("{m}shop:price")
def price(x):
    return x * 100

@patch.function("{m}shop:tax")
def tax(x):
    return 0

@patch.function("{m}shop:Cart.total")
def total(self, items):
    return -1

@patch.function("{m}shop:gen")
def gen(n):
    yield -1

patch.data("{m}shop:RATE", 30)
"""

REAL_FAULTS: dict[str, tuple[str, str, str]] = {
    # name: (extra payload code, the action, the error code)
    "a pre_apply hook raises": (
        "@patch.pre_apply\ndef pre(ctx):\n    raise OSError('no disk')\n",
        "apply",
        "vetoed",
    ),
    "a pre_revert hook says no": (
        "@patch.pre_revert\ndef pre(ctx):\n    return False\n",
        "revert",
        "vetoed",
    ),
    "an apply hook raises half-way": (
        "@patch.apply\ndef half(ctx):\n"
        "    ctx.mark_applied('{m}shop:price')\n    ctx.mark_applied('{m}shop:tax')\n"
        "    raise RuntimeError('lost the lock')\n",
        "apply",
        "inconsistent",
    ),
    "an apply hook leaves a half state": (
        "@patch.apply\ndef half(ctx):\n    ctx.mark_applied('{m}shop:price')\n",
        "apply",
        "inconsistent",
    ),
    "a revert hook raises half-way": (
        "@patch.apply\ndef on(ctx):\n"
        "    for t in ('price', 'tax', 'Cart.total', 'gen'):\n"
        "        ctx.mark_applied('{m}shop:' + t)\n"
        "@patch.revert\ndef off(ctx):\n"
        "    ctx.mark_reverted('{m}shop:price')\n    raise RuntimeError('stuck')\n",
        "revert",
        "inconsistent",
    ),
    "a transition times out": ("", "apply-blocked", "timeout"),
    "the payload's code raises during import": (
        "import os\nif os.environ.get('FX_FAIL'):  # not while packing\n"
        "    raise LookupError('config missing')\n",
        "upload",
        "invalid-payload",
    ),
}


@pytest.mark.parametrize("fault", list(REAL_FAULTS))
def test_named_faults_leave_the_process_as_it_was_and_are_audited(
    world_factory, monkeypatch, fault
):
    extra, action, code = REAL_FAULTS[fault]
    w = world_factory()
    data = w.lab.pack(HOOKED + extra)
    monkeypatch.setenv("FX_FAIL", "1")
    e = w.engine
    if action != "upload":
        e.upload("fx", data)
    if action == "revert":
        e.apply("fx")
    before = snapshot(*w.objects())
    states = w.statuses()
    audit_len = len(w.audit())
    parked = None
    try:
        with pytest.raises(LivepatchError) as err:
            if action == "upload":
                e.upload("fx", data)
            elif action == "apply-blocked":
                parked = _park_in(w.shop.price)
                e.apply("fx", consistency="transition", timeout=0.2)
            else:
                getattr(e, action)("fx")
    finally:
        if parked is not None:
            parked.release.set()
    exc = err.value
    assert exc.code == code, exc
    assert "fx" in exc.message
    assert_identical(before, snapshot(*w.objects()))
    after = w.statuses()
    if action == "upload":
        assert after == states == {}
    else:
        state, rc, *rest = after["fx"]
        assert (state, rest) == (states["fx"][0], list(states["fx"][2:]))
        assert rc == exc.errno
    records = [r for r in w.audit()[audit_len:] if r["payload"] == "fx"]
    assert records and records[-1]["result"] == code and records[-1]["rc"] == exc.errno
    assert records[-1]["message"] == exc.message


def test_an_expectation_failing_on_the_nth_function_changes_nothing(world_factory):
    """Someone else changed one function after the upload: apply names that function
    and both fingerprints, whichever of the four it is, and touches none of them."""
    w = world_factory()
    targets = ["price", "tax", "Cart.total", "gen"]
    for n, target in enumerate(targets):
        e = w.engine
        e.upload("fx", w.lab.pack(HOOKED))
        holder = w.shop.Cart if target.startswith("Cart.") else w.shop
        fn = getattr(holder, target.split(".")[-1])
        original = fn.__code__
        fn.__code__ = fn.__code__.replace(co_consts=(*fn.__code__.co_consts, "changed"))
        try:
            before = snapshot(*w.objects())
            audit_len = len(w.audit())
            with pytest.raises(LivepatchError) as err:
                e.apply("fx")
            assert err.value.code == "expectation-failed", n
            assert f"{w.lab.name('shop')}:{target} " in err.value.message
            assert "expected fingerprint" in err.value.message
            assert_identical(before, snapshot(*w.objects()))
            assert e.status("fx").state == "CHECKED" and e.status("fx").rc == err.value.errno
            record = [r for r in w.audit()[audit_len:] if r["payload"] == "fx"][-1]
            assert record["result"] == "expectation-failed"
        finally:
            fn.__code__ = original
            e.unload("fx")


def _park_in(func: Callable[..., Any]) -> Any:
    from conftest import park

    arg, _ = park(func, "parked-in-old-code")
    return arg


# --- found in review: failures that are not exceptions, nested imports, the dispatcher ---

PAIR = """
    def inner():
        return "v1"

    def outer(hold=None):
        if hold is not None:
            hold.wait(10)
        return ("v1", inner())
"""

PAIR_FIX = """
    import pylivepatch as lp
    patch = lp.Patch("pair-fix", consistency="transition")

    @patch.function("{m}pair:inner")
    def inner():
        return "v2"

    @patch.function("{m}pair:outer")
    def outer(hold=None):
        if hold is not None:
            hold.wait(10)
        return ("v2", inner())
"""


def test_a_keyboard_interrupt_during_a_transition_reverses_it_before_it_goes_on(lab):
    """KeyboardInterrupt is not an Exception, and is undone all the same — but by the
    transition's reversal, not at once: a call chain that started in new code while the
    transition ran finishes in new code."""
    mod = lab.module("pair", PAIR)
    e = Engine()
    e.upload("pair-fix", lab.pack(PAIR_FIX))
    before = snapshot(mod.inner, mod.outer, mod)
    old_hold, entered = threading.Event(), threading.Event()

    class Hold:
        """The new chain's pause: it says it is inside, then goes on after a while."""

        def wait(self, timeout: float) -> None:
            entered.set()
            time.sleep(0.3)

    old = threading.Thread(target=mod.outer, args=(old_hold,), daemon=True)
    old.start()
    chains: list[Any] = []

    def new_caller() -> None:
        for _ in range(5000):  # until the transition runs
            if "transition" in e._progress.get("pair-fix", {}):
                break
            time.sleep(0.001)
        chains.append(mod.outer(Hold()))

    fired: list[str] = []

    def interrupt(point: str, ops: Any) -> None:  # once the new chain is inside
        if point == "transition.wait" and entered.is_set() and not fired:
            fired.append(point)
            raise KeyboardInterrupt

    new = threading.Thread(target=new_caller, daemon=True)
    new.start()
    e._inject = interrupt
    try:
        with pytest.raises(KeyboardInterrupt):
            e.apply("pair-fix", timeout=10)
    finally:
        e._inject = None
        old_hold.set()
        old.join(10)
        new.join(10)
    assert fired
    assert chains == [("v2", "v2")], "the chain that began in new code ended in new code"
    assert_identical(before, snapshot(mod.inner, mod.outer, mod))
    assert e.status("pair-fix").state == "CHECKED"
    kinds = [ev.kind for ev in e.history() if ev.payload == "pair-fix"]
    assert "reversing" in kinds and "transition-reversed" in kinds and "forced" not in kinds


def test_a_module_imported_during_an_action_that_fails_stays_patched(lab, monkeypatch):
    """Payload A waits for module lib; payload B's own code imports lib, then B's upload
    fails. The import happened and cannot be taken back, so A's patch of lib must stay:
    known-unpatched code never runs."""
    (lab.root / f"{lab.name('lib')}.py").write_text("def version():\n    return 'v1'\n")
    lab.modules.append(lab.name("lib"))
    importlib.invalidate_caches()
    e = Engine()
    e.load(
        lab.pack(
            """
            import pylivepatch as lp
            patch = lp.Patch("needs-lib")

            @patch.function("{m}lib:version")
            def version():
                return "v2"
            """,
            against=str(lab.root),
        )
    )
    assert e.status("needs-lib").pending == (lab.name("lib"),)
    b = lab.pack(
        """
        import os
        import pylivepatch as lp
        patch = lp.Patch("imports-lib")
        if os.environ.get("FAIL_AFTER_IMPORT"):
            import {m}lib
            raise RuntimeError("B fails after importing lib")

        @patch.pre_apply
        def ready(ctx):
            pass
        """
    )
    monkeypatch.setenv("FAIL_AFTER_IMPORT", "1")
    try:
        with pytest.raises(LivepatchError) as err:
            e.upload("imports-lib", b)
        assert err.value.code == "invalid-payload"
        lib = sys.modules[lab.name("lib")]
        assert lib.version() == "v2", "imported during the failed action, and patched"
        assert e.status("needs-lib").pending == ()
        assert [f.applied for f in e.status("needs-lib").funcs] == [True]
        e.revert("needs-lib")
        assert lib.version() == "v1"
    finally:
        for rec in [r for r in e._payloads.values() if str(r.state) == "APPLIED"]:
            e.revert(rec.name, force=True, consistency="immediate")


def test_a_thread_that_chose_a_version_the_transition_then_left_blocks_it(lab):
    """A dispatcher reads which version to run, then calls it: a thread switched out in
    between has no frame of either version yet. If the transition is reversed meanwhile,
    the version it chose is the one being left: it is a blocker until it has called it
    and returned, else it would run new code after the old was back. (Held there by a
    trace function, as a debugger or coverage could.)"""
    from pylivepatch.engine import transition

    mod = lab.module("pair", PAIR)
    e = Engine()
    e.upload("pair-fix", lab.pack(PAIR_FIX))
    before = snapshot(mod.inner, mod.outer, mod)
    dispatch = transition.Dispatch.__call__.__code__
    inside, go = threading.Event(), threading.Event()
    chains: list[Any] = []

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is not dispatch or inside.is_set():
            return None

        def local(f: Any, ev: str, a: Any) -> Any:
            if ev == "line" and not inside.is_set() and f.f_locals.get("frame", 0) is None:
                inside.set()  # chose the new version; not called yet
                go.wait(10)
            return local

        return local

    def chooser() -> None:
        for _ in range(5000):
            if "transition" in e._progress.get("pair-fix", {}):
                break
            time.sleep(0.001)
        sys.settrace(tracer)
        try:
            chains.append(mod.outer())
        finally:
            sys.settrace(None)

    old_hold = threading.Event()  # an old chain holds the transition past its timeout
    old = threading.Thread(target=mod.outer, args=(old_hold,), daemon=True)
    old.start()
    t = threading.Thread(target=chooser, daemon=True)
    t.start()
    out: dict[str, Any] = {}

    def apply() -> None:
        try:
            e.apply("pair-fix", timeout=1.0)
        except LivepatchError as exc:
            out["error"] = exc

    applier = threading.Thread(target=apply)
    applier.start()
    try:
        assert inside.wait(10)
        blockers: list[str] = []
        for _ in range(1000):
            st = e.status("pair-fix")
            progress = st.in_progress or {}
            blockers = progress.get("blockers") or []
            if progress.get("transition") == "reversing" and blockers:
                break
            time.sleep(0.005)
        assert [b for b in blockers if "choosing a version in a dispatcher" in b] == blockers
        assert blockers, "the reversal waits for the thread that chose the new version"
        old_hold.set()  # the old chain is no blocker of the way back
    finally:
        go.set()
        old_hold.set()
        t.join(10)
        old.join(10)
        applier.join(20)
    assert out["error"].code == "timeout"
    assert chains == [("v2", "v2")], "the chain that chose the new version stayed in it"
    assert_identical(before, snapshot(mod.inner, mod.outer, mod))
    assert e.status("pair-fix").state == "CHECKED"


def test_a_patched_async_generator_left_open_is_closed_once_by_asyncio(lab):
    """An async generator behind a trampoline, left un-exhausted under asyncio.run: the
    loop's shutdown closes it and its finally runs, with no 'already running' error."""
    mod = lab.module(
        "agen2",
        """
        import asyncio
        DONE = []

        class Base:
            async def items(self):
                yield 0

        class Feed(Base):
            async def items(self):
                try:
                    yield 1
                    yield 2
                finally:
                    await asyncio.sleep(0)
                    DONE.append("v1")
        """,
    )
    e = Engine()
    e.load(
        lab.pack(
            """
            import asyncio
            import pylivepatch as lp
            patch = lp.Patch("agen-fix", consistency="atomic")

            @patch.function("{m}agen2:Feed.items")
            async def items(self):
                try:
                    yield 10
                    async for x in super().items():
                        yield x
                finally:
                    await asyncio.sleep(0)
                    DONE.append("v2")
            """
        )
    )
    assert [f.trampoline for f in e.status("agen-fix").funcs] == [True]
    errors: list[Any] = []
    keep: list[Any] = []

    async def main() -> Any:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        g = mod.Feed().items()
        keep.append(g)
        async for x in g:
            return x

    try:
        assert asyncio.run(main()) == 10
        assert errors == [] and mod.DONE == ["v2"]
    finally:
        keep.clear()
        e.revert("agen-fix")
