"""The builder and instance state (issue 23, classes 1 and migration): a changed method
that reads ``self.X`` is checked against what every ``__init__`` on the class's MRO sets,
OLD and NEW, with the arguments a subclass passes up to a base ``__init__``; a new
attribute with an immutable literal value set whatever the arguments becomes a
class-level default, which objects made before the patch read."""

from __future__ import annotations

import textwrap

import pytest

from pylivepatch.builder.build import BuildOptions
from pylivepatch.builder.build import build as build_
from test_build import Versions


@pytest.fixture
def versions(lab):
    made: list[Versions] = []

    def make(old: dict[str, str], new: dict[str, str]) -> Versions:
        made.append(Versions(lab, old, new))
        return made[-1]

    yield make
    for v in made:
        v.close()


BASE = """
    class Base:
        def __init__(self, max_length=None, strict=False):
            self.max_length = max_length
            self.strict = strict

        def check(self, value):
            return True
"""


def test_an_argument_passed_up_to_a_base_init_is_refused(versions):
    """NEW gives F an __init__ that passes max_length=39 to Base.__init__, which stores
    it; the changed F.check reads self.max_length. An F made before the patch holds
    None: the payload would raise TypeError on every call. Refused, naming both."""
    old = (
        BASE
        + """
    class F(Base):
        def check(self, value):
            return True
    """
    )
    new = (
        BASE
        + """
    class F(Base):
        def __init__(self, **kw):
            super().__init__(max_length=39, **kw)

        def check(self, value):
            return len(value) <= self.max_length
    """
    )
    v = versions({"m.py": old}, {"m.py": new})
    assert v.refusals() == [
        "pkg/m.py:11: instance-state: pkg.m:F: self.max_length, which pkg.m:F.check reads, is "
        "set up differently when a F is made: F.__init__ now passes `max_length=39` up to a "
        "base __init__; objects made before the patch hold what the old construction gave "
        "them, and the new code would read that. Keep the construction as it was, or answer "
        "for existing objects in payload code: --hooks FILE with --allow instance-state (a "
        "FILE that does not exist gets a skeleton to complete)"
    ]
    assert v.build("instance-state").data, "--allow takes it, as for every instance-state"


def test_a_base_init_in_another_module_that_sets_an_attribute_another_way(versions):
    """Base lives in another module and its __init__ now computes strict differently;
    the subclass's changed method reads self.strict."""
    sub_old = """
    from .base import Base

    class G(Base):
        def run(self):
            return 1
    """
    sub_new = """
    from .base import Base

    class G(Base):
        def run(self):
            return 2 if self.strict else 1
    """
    base_new = BASE.replace("self.strict = strict", "self.strict = bool(strict)")
    v = versions({"base.py": BASE, "sub.py": sub_old}, {"base.py": base_new, "sub.py": sub_new})
    assert [r.split(": ")[2] for r in v.refusals()] == ["pkg.sub:G"]
    assert "self.strict, which pkg.sub:G.run reads" in v.refusals()[0]
    assert "Base.__init__ now sets it another way" in v.refusals()[0]


def test_an_unchanged_construction_is_not_refused(versions):
    old = (
        BASE
        + """
    class H(Base):
        def __init__(self, **kw):
            super().__init__(max_length=10, **kw)
            self.count = 0

        def check(self, value):
            return len(value) < 100
    """
    )
    new = old.replace("len(value) < 100", "len(value) <= self.max_length")
    v = versions({"m.py": old}, {"m.py": new})
    result = v.build()
    assert not result.refusals and result.data


def test_a_new_literal_attribute_becomes_a_class_default_for_old_objects(lab, versions):
    """`self.sent = 0` set whatever the arguments: objects made before the patch read
    Conn.sent (0); objects made after set their own."""
    old = """
        class Conn:
            def __init__(self):
                self.open = True

            def send(self, data):
                return len(data)
        """
    new = """
        class Conn:
            def __init__(self):
                self.open = True
                self.sent = 0

            def send(self, data):
                self.sent += len(data)
                return self.sent
        """
    v = versions({"m.py": old}, {"m.py": new})
    m = v.module("m")
    before = m.Conn()
    result = v.build()
    assert not result.refusals, result.refusals
    assert ("new name", f"{v.pkg}.m:Conn.sent") in [(c.kind, c.target) for c in result.changes]
    assert any("migrated" in w for w in result.warnings)
    name = lab.engine.load(result.data).name
    assert before.send(b"abc") == 3 and before.send(b"de") == 5, "the old object works"
    after = m.Conn()
    assert after.send(b"x") == 1 and "sent" in vars(after)
    lab.engine.revert(name)
    assert "sent" not in vars(m.Conn)


@pytest.mark.parametrize("value", ["limit", "[]"])
def test_a_new_attribute_from_an_argument_or_mutable_is_refused(versions, value):
    old = """
        class Conn:
            def __init__(self, limit=3):
                self.open = True

            def send(self, data):
                return len(data)
        """
    if True:
        new = old.replace(
            "self.open = True", f"self.open = True\n                self.seen = {value}"
        )
        new = new.replace("return len(data)", "return len(data) + len(self.seen)")
        v = versions({"m.py": old}, {"m.py": new})
        refusals = v.refusals()
        assert [r.split(": ")[1] for r in refusals] == ["instance-state"], refusals
        assert "self.seen" in refusals[0]


def test_a_new_parameter_stored_as_is_migrates_to_its_default(lab, versions):
    """werkzeug 2.2.3's shape: __init__ gains `max_parts=None` and stores it; no object
    made before the patch can have been given it, so each would have had None."""
    old = """
        class Decoder:
            def __init__(self, limit=10):
                self.limit = limit

            def feed(self, parts):
                return parts[: self.limit]
        """
    new = """
        class Decoder:
            def __init__(self, limit=10, max_parts=None):
                self.limit = limit
                self.max_parts = max_parts

            def feed(self, parts):
                if self.max_parts is not None and len(parts) > self.max_parts:
                    raise ValueError("too many parts")
                return parts[: self.limit]
        """
    v = versions({"m.py": old}, {"m.py": new})
    m = v.module("m")
    before = m.Decoder()
    result = v.build()
    assert not result.refusals, result.refusals
    name = lab.engine.load(result.data).name
    assert before.feed([1, 2, 3]) == [1, 2, 3], "the old object reads the default None"
    with pytest.raises(ValueError):
        m.Decoder(max_parts=2).feed([1, 2, 3])
    lab.engine.revert(name)
    # OLD's __init__ took **kwargs: an old object may have been given it: refused
    (v.old / v.pkg / "m.py").write_text(
        textwrap.dedent(old).replace("limit=10)", "limit=10, **kw)")
    )
    assert [r.kind for r in v.build().refusals] == ["instance-state"]


def test_build_hooks_writes_a_skeleton_that_does_not_build_until_completed(lab, versions):
    """`--hooks FILE` naming no file, with an instance-state refusal: the builder writes a
    skeleton (a descriptor per attribute, set with the code and taken away by the
    revert) and refuses; the skeleton as written refuses to build; completed, the payload
    answers for objects made before it."""
    old = """
        class Upload:
            def __init__(self, file):
                self.file = file

            def limit(self):
                return 0
        """
    new = """
        class Upload:
            def __init__(self, file):
                self.file = file
                self._max = len(file)

            def limit(self):
                return self._max
        """
    v = versions({"m.py": old}, {"m.py": new})
    m = v.module("m")
    before = m.Upload("abc")
    hooks = lab.root / "hooks.py"

    def build(*allow: str):
        options = BuildOptions(
            name="fix", consistency="atomic", allow=frozenset(allow), hooks=str(hooks)
        )
        return build_(str(v.old), str(v.new), options)

    first = build()
    assert [r.kind for r in first.refusals] == ["instance-state"] and not first.data
    text = hooks.read_text()
    assert f"patch.data('{v.pkg}.m:Upload._max', _upload_max)" in text
    unfinished = build("instance-state")
    assert "complete the hooks in hooks.py, then delete this line" in unfinished.error
    text = text.replace(
        "raise NotImplementedError('complete the hooks in hooks.py, then delete this line')", ""
    )
    text = text.replace("raise AttributeError('_max')", "return len(obj.file)")
    hooks.write_text(text)
    done = build("instance-state")
    assert done.data, done.error
    name = lab.engine.load(done.data).name
    assert before.limit() == 3 and m.Upload("abcd").limit() == 4
    lab.engine.revert(name)
    assert "_max" not in vars(m.Upload) and before.limit() == 0


def test_an_init_that_passes_everything_on_changes_no_state(versions):
    """NEW gives G an __init__ that only passes its arguments on (`super().__init__(*args,
    **kwargs)`) and a changed method reads what Base.__init__ stores: the same state."""
    old = (
        BASE
        + """
    class G(Base):
        def check(self, value):
            return True
    """
    )
    new = (
        BASE
        + """
    class G(Base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)

        def check(self, value):
            return self.max_length is None or len(value) <= self.max_length
    """
    )
    v = versions({"m.py": old}, {"m.py": new})
    result = v.build()
    assert not result.refusals and result.data, result.refusals
