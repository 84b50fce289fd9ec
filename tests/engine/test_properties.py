"""Property-based: random sequences of upload/apply/revert/unload over overlapping
payloads, checked after every step against a model of spec §3 (state table, stacking,
function stacks): every function runs exactly the code of the top of its stack, and
with nothing applied every function is identical to its original."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pylivepatch import LivepatchError, engine
from pylivepatch.builder.pack import pack
from pylivepatch.payload import archive

FUNCS = ("f0", "f1", "f2", "f3")
# name -> (functions it patches, depends): i1..i3 independent, s1 base, s2 on s1.
LAYOUT = {
    "i1": (("f0", "f1"), None),
    "i2": (("f1", "f2"), None),
    "i3": (("f0", "f2", "f3"), None),
    "s1": (("f3", "f1"), "base"),
    "s2": (("f3",), "s1"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("prop")
    modname = "lpprop_target"
    (root / f"{modname}.py").write_text(
        "".join(f"def {f}():\n    return 'orig'\n\n" for f in FUNCS)
    )
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    module = importlib.import_module(modname)
    payloads: dict[str, bytes] = {}
    build_ids: dict[str, str] = {}
    for name, (funcs, depends) in LAYOUT.items():
        dep = build_ids.get(depends, depends) if depends else None
        body = [
            f"import pylivepatch as lp\npatch = lp.Patch({name!r}, depends={dep!r}, consistency='atomic')\n"
        ]
        for f in funcs:
            body.append(
                f"@patch.function('{modname}:{f}')\ndef {f}_{name}():\n    return {name!r}\n"
            )
        path = root / f"payload_{name}.py"
        path.write_text(textwrap.dedent("\n".join(body)))
        payloads[name] = pack(path).data
        build_ids[name] = archive.read(payloads[name]).manifest.build_id
    originals = {f: (getattr(module, f), getattr(module, f).__code__) for f in FUNCS}
    yield module, payloads, build_ids, originals
    sys.path.remove(str(root))
    sys.modules.pop(modname, None)


class Model:
    def __init__(self, build_ids):
        self.state: dict[str, str] = {}
        self.stacks: dict[str, list[str]] = {f: [] for f in FUNCS}
        self.order: list[str] = []  # applied, oldest first
        self.build_ids = build_ids

    def expect(self, verb, name):
        """The outcome the spec predicts: ('ok'|'noop'|error code)."""
        state = self.state.get(name)
        funcs, depends = LAYOUT[name]
        if verb == "upload":
            return "exists" if state else "ok"
        if state is None:
            return "not-found"
        if verb == "unload":
            return "ok" if state == "CHECKED" else "wrong-state"
        if verb == "apply":
            if state == "APPLIED":
                return "noop"
            if depends is not None:
                stacked = [n for n in self.order if LAYOUT[n][1] is not None]
                want = "base" if not stacked else stacked[-1]
                if depends != want:
                    return "dependency-mismatch"
            return "ok"
        if verb == "revert":
            if state == "CHECKED":
                return "noop"
            if any(LAYOUT[o][1] == name for o in self.order):
                return "busy"
            return "ok"
        raise AssertionError(verb)

    def commit(self, verb, name):
        funcs, _ = LAYOUT[name]
        if verb == "upload":
            self.state[name] = "CHECKED"
        elif verb == "unload":
            del self.state[name]
        elif verb == "apply":
            self.state[name] = "APPLIED"
            self.order.append(name)
            for f in funcs:
                self.stacks[f].append(name)
        elif verb == "revert":
            self.state[name] = "CHECKED"
            self.order.remove(name)
            for f in funcs:
                self.stacks[f].remove(name)


steps = st.lists(
    st.tuples(
        st.sampled_from(["upload", "apply", "revert", "unload"]), st.sampled_from(sorted(LAYOUT))
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps)
def test_random_action_sequences_match_the_model(world, sequence):
    module, payloads, build_ids, originals = world
    e = engine()
    model = Model(build_ids)
    try:
        for verb, name in sequence:
            want = model.expect(verb, name)
            try:
                if verb == "upload":
                    result = e.upload(name, payloads[name])
                else:
                    result = getattr(e, verb)(name)
                got = "noop" if result.noop else "ok"
            except LivepatchError as exc:
                got = exc.code
            assert got == want, f"{verb} {name}: got {got}, the model says {want}"
            if got == "ok":
                model.commit(verb, name)
            for f in FUNCS:
                top = model.stacks[f][-1] if model.stacks[f] else "orig"
                assert getattr(module, f)() == top, f"{f} should run {top}"
                fn, code = originals[f]
                assert getattr(module, f) is fn
                if top == "orig":
                    assert fn.__code__ is code
            for name2, state in model.state.items():
                assert e.status(name2).state == state
            assert {s.name for s in e.list()} == set(model.state)
    finally:
        for name in reversed(model.order):
            e.revert(name)
        for name in list(model.state):
            e.unload(name)
    for f in FUNCS:
        fn, code = originals[f]
        assert fn.__code__ is code and fn.__defaults__ is None
