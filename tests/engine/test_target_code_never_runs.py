"""Checks never run the target's code (issue 20, issue 23 item 9).

Fingerprints, object build ids, expectations, resolution and every check of upload,
apply, revert and replace read a target's objects with ``type()`` and static lookups
only. The target module below holds what a real service holds and what ordinary
attribute access would set off:

- a Django-style lazy object whose setup raises (``isinstance`` asks it for
  ``__class__``, which sets it up — Django's ``LazySettings`` in a gunicorn master that
  never loaded the settings);
- a module-level ``__getattr__`` that raises;
- a class whose metaclass records every ``__instancecheck__``, ``__subclasscheck__``,
  ``__getattr__`` and ``__getattribute__``;
- an object whose ``__getattr__`` raises something else than AttributeError (ASN.1
  schema objects do).

Each records the call in ``CALLS`` (a module of its own): the recorder must stay empty
through load, revert, replace and a transition-mode apply, in this process and in a real
child process under the agent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pylivepatch import Client, LivepatchError
from pylivepatch.engine.resolve import resolve_function

SRC = str(Path(__file__).resolve().parents[2] / "src")

RECORDER = "CALLS = []\n"

HEAD = """
    import functools

    from {m}recorder import CALLS
"""

HAZARDS = {
    "lazy-settings": """
    class _LazySettings:
        \"\"\"Like django.conf.LazySettings: any look at it sets it up, which fails here.\"\"\"

        def __init__(self):
            object.__setattr__(self, "_wrapped", None)

        def _setup(self, why):
            CALLS.append("lazy " + why)
            raise RuntimeError("ImproperlyConfigured: Requested settings, but settings are not configured")

        def __getattr__(self, name):
            self._setup("__getattr__ " + name)

        @property
        def __class__(self):
            self._setup("__class__")


    settings = _LazySettings()
""",
    "metaclass": """
    class Meta(type):
        def __instancecheck__(cls, obj):
            CALLS.append("__instancecheck__")
            return False

        def __subclasscheck__(cls, sub):
            CALLS.append("__subclasscheck__")
            return False

        def __getattr__(cls, name):
            CALLS.append("metaclass __getattr__ " + name)
            raise AttributeError(name)

        def __getattribute__(cls, name):
            CALLS.append("metaclass __getattribute__ " + name)
            return type.__getattribute__(cls, name)


    class Recorded(metaclass=Meta):
        LIMIT = 1

        def method(self):
            return "old method"


    recorded = Recorded()
""",
    "raising-getattr": """
    class Schema:
        \"\"\"An object whose __getattr__ raises a non-AttributeError (asn1 schemas do).\"\"\"

        def __getattr__(self, name):
            CALLS.append("schema __getattr__ " + name)
            raise KeyError(name)


    schema = Schema()
""",
    "module-getattr": """
    def __getattr__(name):
        CALLS.append("module __getattr__ " + name)
        raise RuntimeError("module attribute " + name)
""",
}

TAIL = """
    class Plain:
        LIMIT = 1

        def method(self):
            return "old method"


    def price(x):
        return x * 2


    @functools.wraps(price)
    def priced(x):
        return price(x)
"""


def target_source(hazards) -> str:
    return (
        textwrap.dedent(HEAD)
        + "".join(textwrap.dedent(HAZARDS[h]) for h in hazards)
        + textwrap.dedent(TAIL)
    )


def fix(
    name: str,
    mode: str,
    *,
    replace: bool = False,
    factor: int = 3,
    tag: str = "new",
    cls: str = "Recorded",
) -> str:
    return f"""
    import pylivepatch as lp
    patch = lp.Patch({name!r}, consistency={mode!r}, replace={replace!r})

    @patch.function("{{m}}tgt:price")
    def price(x):
        return x * {factor}

    @patch.function("{{m}}tgt:{cls}.method")
    def method(self):
        return {tag + " method"!r}

    patch.data("{{m}}tgt:{cls}.LIMIT", {factor})
    """


def make_target(lab, hazards):
    recorder = lab.module("recorder", RECORDER)
    module = lab.module("tgt", target_source(hazards).replace("{m}", lab.prefix))
    assert recorder.CALLS == []
    return module, recorder.CALLS


@pytest.fixture
def tgt(lab):
    return make_target(lab, list(HAZARDS))


def _calls(module, cls: str = "Recorded") -> tuple[int, int, str, int]:
    instance = vars(module)[cls]()
    return module.price(2), module.priced(2), instance.method(), instance.LIMIT


@pytest.mark.parametrize("hazard", [*HAZARDS, "all"])
@pytest.mark.parametrize("mode", ["atomic", "transition"])
def test_load_revert_replace_never_run_the_target(lab, mode, hazard):
    hazards = list(HAZARDS) if hazard == "all" else [hazard]
    module, calls = make_target(lab, hazards)
    cls = "Recorded" if "metaclass" in hazards else "Plain"
    e = lab.engine
    before = _calls(module, cls)
    assert calls == []  # calling the code does not set anything off
    assert before == (4, 4, "old method", 1)
    p1 = lab.pack(fix("p1", mode, cls=cls))
    p2 = lab.pack(fix("p2", mode, replace=True, factor=5, tag="cum", cls=cls))
    e.load(p1)
    assert _calls(module, cls) == (6, 6, "new method", 3)
    e.load(p2)
    assert _calls(module, cls) == (10, 10, "cum method", 5)
    e.revert("p2")
    assert _calls(module, cls) == before
    for name in ("p2", "p1"):
        e.unload(name)
    assert calls == []


def test_a_refused_upload_never_runs_the_target(lab, tgt):
    module, calls = tgt
    data = lab.pack(fix("p3", "atomic"))
    (lab.root / f"{lab.prefix}tgt.py").write_text(
        (lab.root / f"{lab.prefix}tgt.py").read_text() + "\n# edited after import\n"
    )
    module.price.__code__ = (lambda x: x * 7).__code__  # not the code it was built against
    with pytest.raises(LivepatchError) as err:
        lab.engine.load(data)
    assert err.value.code in ("expectation-failed", "dependency-mismatch")
    assert calls == []


def test_resolving_under_a_module_with_a_raising_getattr_is_not_found(lab, tgt):
    """``mod.sub`` where ``mod`` is a plain module whose ``__getattr__`` raises:
    finding whether ``sub`` exists must not ask ``mod`` for ``__path__``."""
    _, calls = tgt
    with pytest.raises(LivepatchError) as err:
        resolve_function(f"{lab.prefix}tgt.sub:f")
    assert err.value.code == "not-found"
    for target in ("tgt:schema", "tgt:settings", "tgt:Recorded", "tgt:recorded"):
        with pytest.raises(LivepatchError) as err:
            resolve_function(lab.prefix + target)
        assert err.value.code == "unsupported-target"
    assert calls == []


CHILD = """
import sys
sys.path[:0] = [{root!r}]
import pylivepatch
import {prefix}tgt as tgt
from {prefix}recorder import CALLS
pylivepatch.start()
print("ready", flush=True)
for line in sys.stdin:
    print(tgt.price(2), tgt.Recorded().method(), len(CALLS), CALLS, flush=True)
"""


def test_in_a_child_process_under_the_agent(lab, tgt):
    program = CHILD.format(root=str(lab.root), prefix=lab.prefix)
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(program)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=SRC),
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"

        def ask() -> str:
            proc.stdin.write("x\n")
            proc.stdin.flush()
            return proc.stdout.readline().strip()

        client = Client(proc.pid)
        c1 = lab.pack(fix("c1", "transition"))
        c2 = lab.pack(fix("c2", "atomic", replace=True, factor=5, tag="cum"))
        assert ask() == "4 old method 0 []"
        assert client.load(c1).state == "APPLIED"
        assert ask() == "6 new method 0 []"
        client.load(c2)
        assert ask() == "10 cum method 0 []"
        client.action("c2", "revert")
        assert ask() == "4 old method 0 []"
    finally:
        proc.stdin.close()
        proc.wait(10)
