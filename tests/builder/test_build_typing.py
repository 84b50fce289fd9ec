"""The builder's rules for changes running code never sees (docs/patch-author-guide.md,
"Changes that running code never sees"): each rule both ways — the typing-only or
release-only change builds, listed as a warning with file, line and why; the same
kind of change read by running code is patched or refused with its reason."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from pylivepatch.builder.build import BuildOptions, BuildResult, build


class Versions:
    """A package in two versions: OLD importable in this process, NEW only on disk."""

    def __init__(self, lab, old: dict[str, str], new: dict[str, str]) -> None:
        self.lab, self.pkg = lab, lab.name("pkg")
        self.old, self.new = lab.root / "old", lab.root / "new"
        for root, files in ((self.old, old), (self.new, new)):
            (root / self.pkg).mkdir(parents=True)
            (root / self.pkg / "__init__.py").write_text("")
            for name, text in files.items():
                (root / self.pkg / name).write_text(textwrap.dedent(text))
        sys.path.insert(0, str(self.old))
        importlib.invalidate_caches()
        lab.modules.append(self.pkg)

    def module(self, name: str):
        self.lab.modules.append(f"{self.pkg}.{name}")
        return importlib.import_module(f"{self.pkg}.{name}")

    def build(self, pythons: list[str] | None = None) -> BuildResult:
        options = BuildOptions(name="fix", consistency="atomic", pythons=pythons)
        return build(str(self.old), str(self.new), options)

    def close(self) -> None:
        sys.path.remove(str(self.old))


@pytest.fixture
def versions(lab):
    made: list[Versions] = []

    def make(old: dict[str, str], new: dict[str, str]) -> Versions:
        made.append(Versions(lab, old, new))
        return made[-1]

    yield make
    for v in made:
        v.close()


def report(result: BuildResult, pkg: str) -> dict[str, list[str]]:
    """What a user reads: changes, refusals and warnings, with the package named pkg."""
    return {
        "changes": [f"{c.kind} {c.target}".replace(pkg, "pkg") for c in result.changes],
        "refusals": [str(r).replace(pkg, "pkg") for r in result.refusals],
        "warnings": [w.replace(pkg, "pkg") for w in result.warnings],
    }


FIX_OLD = "def check(n):\n    return n > 0\n"
FIX_NEW = "def check(n):\n    return n >= 0\n"  # the security fix every test carries


def with_fix(head: str, fix: str) -> str:
    return textwrap.dedent(head) + "\n\n" + fix


# --- TYPE_CHECKING blocks ------------------------------------------------------------------


def test_a_changed_type_checking_block_is_a_warning_and_its_runtime_branch_is_patched(
    lab, versions
):
    old = """
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            from collections.abc import Sequence
        else:
            def helper():
                return "old"
        """
    new = """
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            from collections.abc import Sequence, Mapping
            import typing_extensions as te
        else:
            def helper():
                return "new"
        """
    v = versions({"m.py": with_fix(old, FIX_OLD)}, {"m.py": with_fix(new, FIX_NEW)})
    m = v.module("m")
    result = v.build()
    assert report(result, v.pkg) == {
        "changes": ["function pkg.m:helper", "function pkg.m:check"],
        "refusals": [],
        "warnings": [
            "pkg/m.py:5: pkg.m:<module>: `from collections.abc import Sequence, Mapping` is new "
            "or changed; ignored: code under TYPE_CHECKING never runs (typing-only)",
            "pkg/m.py:6: pkg.m:<module>: `import typing_extensions as te` is new or changed; "
            "ignored: code under TYPE_CHECKING never runs (typing-only)",
        ],
    }
    name = lab.engine.load(result.data).name
    assert (m.helper(), m.check(0)) == ("new", True)
    assert not hasattr(m, "te"), "nothing under TYPE_CHECKING reaches the module"
    lab.engine.revert(name)


def test_code_under_not_type_checking_runs_and_a_change_there_is_refused(versions):
    old = """
        import typing
        REGISTRY = {}
        if not typing.TYPE_CHECKING:
            REGISTRY["a"] = 1
        """
    new = """
        import typing
        REGISTRY = {}
        if not typing.TYPE_CHECKING:
            REGISTRY["a"] = 2
        """
    v = versions({"m.py": with_fix(old, FIX_OLD)}, {"m.py": with_fix(new, FIX_NEW)})
    assert report(v.build(), v.pkg)["refusals"] == [
        "pkg/m.py:5: side-effect: pkg.m: the module-level statement `REGISTRY['a'] = 2` is new "
        "or changed; it ran at import and cannot run again",
    ]


# --- type aliases ----------------------------------------------------------------------------


ALIAS_OLD = """
    from typing import Union

    Number = Union[int, float]

    def scale(x: Number) -> Number:
        return x * 2
    """
ALIAS_NEW = """
    from typing import Union

    Number = Union[int, float, complex]

    def scale(x: Number) -> Number:
        return x * 2
    """


def test_a_type_alias_that_gained_a_member_and_only_annotations_read_is_ignored(lab, versions):
    v = versions({"m.py": with_fix(ALIAS_OLD, FIX_OLD)}, {"m.py": with_fix(ALIAS_NEW, FIX_NEW)})
    m = v.module("m")
    old_alias = m.Number
    result = v.build()
    assert report(result, v.pkg) == {
        "changes": ["function pkg.m:check"],
        "refusals": [],
        "warnings": [
            "pkg/m.py:4: pkg.m:Number: a type alias changed (`Union[int, float]` -> "
            "`Union[int, float, complex]`); ignored: no running code reads it (only annotations "
            "and typing code); typing-only",
        ],
    }
    name = lab.engine.load(result.data).name
    assert m.Number is old_alias and m.check(0)
    lab.engine.revert(name)


def test_a_type_alias_read_by_running_code_is_refused_naming_the_read(versions):
    reads = "\ndef accepts(x):\n    return isinstance(x, Number)\n"
    v = versions(
        {"m.py": with_fix(textwrap.dedent(ALIAS_OLD) + reads, FIX_OLD)},
        {"m.py": with_fix(textwrap.dedent(ALIAS_NEW) + reads, FIX_NEW)},
    )
    assert report(v.build(), v.pkg)["refusals"] == [
        "pkg/m.py:4: computed-data: pkg.m:Number: the value changed and is not an immutable "
        "literal (`Union[int, float]` -> `Union[int, float, complex]`); a type, but running "
        "code reads it (line 10); code and objects that hold the old object would keep it (set "
        "the new value in a post_apply hook and the old one back in post_revert, then --allow "
        "computed-data)",
    ]


def test_a_typeddict_only_annotations_read_is_ignored(versions):
    old = """
        from typing import TypedDict

        class Options(TypedDict):
            depth: int

        def run(opts: Options) -> int:
            return opts["depth"]
        """
    new = old.replace("    depth: int\n", "    depth: int\n            width: int\n")
    v = versions({"m.py": with_fix(old, FIX_OLD)}, {"m.py": with_fix(new, FIX_NEW)})
    assert report(v.build(), v.pkg)["warnings"] == [
        "pkg/m.py:4: pkg.m:Options: a TypedDict/Protocol class changed; ignored: no running "
        "code reads it (only annotations); typing-only",
    ]


def test_a_typeddict_built_at_run_time_is_compared_as_a_class(lab, versions):
    old = """
        from typing import TypedDict

        class Options(TypedDict):
            depth: int

        def default():
            return Options(depth=1)
        """
    new = old.replace("class Options(TypedDict):", "class Options(TypedDict, total=False):")
    v = versions({"m.py": with_fix(old, FIX_OLD)}, {"m.py": with_fix(new, FIX_NEW)})
    assert report(v.build(), v.pkg)["refusals"] == [
        "pkg/m.py:4: metaclass: pkg.m:Options: the metaclass or class keywords changed; the "
        "class object was built by them",
    ]


# --- imports -----------------------------------------------------------------------------------


def test_an_annotation_only_import_is_not_added_and_a_runtime_one_is(lab, versions):
    old = """
        from __future__ import annotations

        def total(xs):
            return sum(xs)
        """
    new = """
        from __future__ import annotations
        from decimal import Decimal
        from fractions import Fraction

        def total(xs: list[Decimal]) -> Decimal:
            return sum(xs, Fraction(0))
        """
    v = versions({"m.py": with_fix(old, FIX_OLD)}, {"m.py": with_fix(new, FIX_NEW)})
    m = v.module("m")
    result = v.build()
    assert report(result, v.pkg) == {
        "changes": ["new import pkg.m:Fraction", "function pkg.m:total", "function pkg.m:check"],
        "refusals": [],
        "warnings": [
            "pkg/m.py:3: pkg.m:Decimal: new import `from decimal import Decimal`; ignored: only "
            "annotations read it (line 6); an annotation-only import is typing-only",
        ],
    }
    name = lab.engine.load(result.data).name
    assert m.total([1]) == 1 and not hasattr(m, "Decimal") and hasattr(m, "Fraction")
    lab.engine.revert(name)


def test_an_import_of_the_same_object_from_elsewhere_is_a_warning(versions):
    files_old = {
        "core.py": "class Thing:\n    pass\n",
        "api.py": "from .core import Thing\n",
        "use.py": "from {pkg}.core import Thing\n\ndef make():\n    return Thing()\n",
    }
    v = versions({}, {})
    for side, use in ((v.old, "from {pkg}.core import Thing"), (v.new, "from .api import Thing")):
        for name, text in files_old.items():
            text = text.replace("{pkg}", v.pkg)
            if name == "use.py":
                text = text.replace(f"from {v.pkg}.core import Thing", use.replace("{pkg}", v.pkg))
            (side / v.pkg / name).write_text(text)
        (side / v.pkg / "fix.py").write_text(FIX_OLD if side == v.old else FIX_NEW)
    assert report(v.build(), v.pkg) == {
        "changes": ["function pkg.fix:check"],
        "refusals": [],
        "warnings": [
            "pkg/use.py:1: pkg.use:Thing: 'Thing' is now imported from another place (from "
            "pkg.core import Thing -> from .api import Thing); ignored: both name the same "
            "object (a relative import, or a re-export of it)",
        ],
    }


def test_an_import_of_another_object_is_rebound_unless_copied_at_import(lab, versions):
    old = "from json import dumps as encode\n\ndef show(x):\n    return encode(x)\n"
    new = "from repr import repr as encode\n\ndef show(x):\n    return encode(x)\n"
    new = new.replace("from repr import repr", "from reprlib import repr")
    v = versions({"m.py": with_fix(old, FIX_OLD)}, {"m.py": with_fix(new, FIX_NEW)})
    m = v.module("m")
    result = v.build()
    assert report(result, v.pkg)["changes"] == ["import pkg.m:encode", "function pkg.m:check"]
    name = lab.engine.load(result.data).name
    assert m.show("a") == "'a'"
    lab.engine.revert(name)
    assert m.show("a") == '"a"'
    copied = "\n\nDEFAULT = encode\n"
    (v.new / v.pkg / "m.py").write_text(with_fix(new + copied, FIX_NEW))
    (v.old / v.pkg / "m.py").write_text(with_fix(old + copied, FIX_OLD))
    assert report(v.build(), v.pkg)["refusals"] == [
        "pkg/m.py:1: captured-constant: pkg.m:encode: its old value was captured at import by "
        "the module-level statement at line 7; rebinding it would leave that copy old: update "
        "the copy in a pre_apply hook (--hooks FILE, keeping the old value in a state to put "
        "back in post_revert) and --allow captured-constant, or patch the code that reads the copy",
    ]


# --- deprecation shims and removed names ---------------------------------------------------------


def test_a_deprecation_getattr_shim_is_added_and_the_old_name_stays(lab, versions):
    old = "from html import escape\n"
    new = """
        def __getattr__(name):
            if name == "escape":
                import warnings
                from html import escape

                warnings.warn("import escape from html", DeprecationWarning, stacklevel=2)
                return escape
            raise AttributeError(name)
        """
    v = versions({"m.py": with_fix(old, FIX_OLD)}, {"m.py": with_fix(new, FIX_NEW)})
    m = v.module("m")
    result = v.build()
    assert report(result, v.pkg) == {
        "changes": ["new function pkg.m:__getattr__", "function pkg.m:check"],
        "refusals": [],
        "warnings": [
            "pkg/m.py:1: pkg.m:escape was removed; the payload leaves it in place (the new code "
            "does not use it)",
        ],
    }
    name = lab.engine.load(result.data).name
    import html

    assert m.escape is html.escape, "old importers keep working, without a warning"
    with pytest.raises(AttributeError):
        m.unknown  # noqa: B018 - the shim answers for other names
    lab.engine.revert(name)


def test_a_removed_name_only_annotations_read_is_a_warning_and_one_code_reads_is_refused(
    versions,
):
    old = "from __future__ import annotations\nfrom decimal import Decimal\n\n"
    old += "def f(x: Decimal) -> Decimal:\n    return x\n"
    new = old.replace("from decimal import Decimal\n", "")
    v = versions({"m.py": with_fix(old, FIX_OLD)}, {"m.py": with_fix(new, FIX_NEW)})
    assert report(v.build(), v.pkg)["warnings"] == [
        "pkg/m.py:2: pkg.m:Decimal was removed; the payload leaves it in place (the new code "
        "does not use it)",
    ]
    (v.new / v.pkg / "m.py").write_text(
        with_fix(new.replace("return x", "return Decimal(x)"), FIX_NEW)
    )
    assert report(v.build(), v.pkg)["refusals"] == [
        "pkg/m.py:2: removed-referenced: pkg.m:Decimal: removed, but the new code still uses "
        "it (line 4)",
    ]


# --- release metadata ------------------------------------------------------------------------


def test_version_strings_literal_rebound_computed_ignored_copies_left(lab, versions):
    old = '__version__ = "1.0"\n__version_info__ = tuple(__version__.split("."))\n'
    old += 'AGENT = "pkg/" + __version__\n__author__ = "someone"\n'
    new = old.replace('"1.0"', '"1.1"').replace('"someone"', '"some" + "one else"')
    v = versions({"m.py": with_fix(old, FIX_OLD)}, {"m.py": with_fix(new, FIX_NEW)})
    m = v.module("m")
    result = v.build()
    assert report(result, v.pkg) == {
        "changes": ["function pkg.m:check"],
        "refusals": [],
        "warnings": [
            "pkg/m.py:1: pkg.m:__version__: changed, and its old value was captured at import "
            "by the module-level statement at line 2; ignored: release metadata describes the "
            "release and no code of it decides on it; the payload leaves the name and its copy "
            "as OLD had them",
            "pkg/m.py:4: pkg.m:__author__: changed (`'someone'` -> `'some' + 'one else'`); "
            "ignored: release metadata (a version, __doc__, __author__...) describes the release "
            "and no code of it decides on it; the payload leaves OLD's value (an immutable "
            "literal is rebound)",
        ],
    }
    name = lab.engine.load(result.data).name
    assert (m.__version__, m.__version_info__, m.AGENT) == ("1.0", ("1", "0"), "pkg/1.0")
    lab.engine.revert(name)


def test_a_literal_version_nothing_copied_is_rebound_and_other_computed_names_refused(
    lab, versions
):
    old = '__version__ = "1.0"\nimport os\nLIMIT = int(os.environ.get("L", "10"))\n'
    new = old.replace('"1.0"', '"1.1"').replace('"10"', '"20"')
    v = versions({"m.py": with_fix(old, FIX_OLD)}, {"m.py": with_fix(new, FIX_NEW)})
    result = v.build()
    assert [r.kind + " " + r.target.replace(v.pkg, "pkg") for r in result.refusals] == [
        "computed-data pkg.m:LIMIT"
    ]
    (v.new / v.pkg / "m.py").write_text(with_fix(new.replace('"20"', '"10"'), FIX_NEW))
    m = v.module("m")
    result = v.build()
    assert report(result, v.pkg)["changes"] == [
        "constant pkg.m:__version__",
        "function pkg.m:check",
    ]
    name = lab.engine.load(result.data).name
    assert m.__version__ == "1.1"
    lab.engine.revert(name)


# --- code that never runs on the payload's interpreters ------------------------------------------


def test_version_checks_are_decided_for_the_payload_interpreters(lab, versions):
    old = """
        import sys

        if sys.version_info >= (3, 99):
            def fast():
                return "future"
        else:
            def fast():
                return "old"

        if __name__ == "__main__":
            print("demo")
        """
    new = """
        import sys

        if sys.version_info >= (3, 99):
            def fast():
                return "future, changed"
        else:
            def fast():
                return "new"

        if __name__ == "__main__":
            print("demo", "changed")
        """
    v = versions({"m.py": with_fix(old, FIX_OLD)}, {"m.py": with_fix(new, FIX_NEW)})
    m = v.module("m")
    result = v.build()
    tag = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert report(result, v.pkg) == {
        "changes": ["function pkg.m:fast", "function pkg.m:check"],
        "refusals": [],
        "warnings": [
            "pkg/m.py:5: pkg.m:<module>: `def fast(): return 'future, changed'` is new or "
            f"changed; ignored: `sys.version_info >= (3, 99)` decides it on Python {tag}: it "
            "never runs",
            "pkg/m.py:12: pkg.m:<module>: `print('demo', 'changed')` is new or changed; "
            "ignored: a module's `__main__` block never runs when it is imported",
        ],
    }
    name = lab.engine.load(result.data).name
    assert m.fast() == "new"
    lab.engine.revert(name)


def test_a_version_check_that_differs_between_the_interpreters_is_compared_as_code(versions):
    old = "import sys\nif sys.version_info >= (3, 12):\n    MODE = 'a'\nelse:\n    MODE = 'b'\n"
    new = old.replace("'a'", "'c'")
    v = versions({"m.py": with_fix(old, FIX_OLD)}, {"m.py": with_fix(new, FIX_NEW)})
    result = v.build(pythons=["3.11", "3.12"])
    assert [str(r).replace(v.pkg, "pkg") for r in result.refusals] == [
        "pkg/m.py:2: side-effect: pkg.m: the module-level statement `if sys.version_info >= "
        "(3, 12): MODE = 'c' else: MODE = 'b'` is new or changed; it ran at import and cannot "
        "run again",
    ]


# --- statements that only bind names, patterns, spelling ------------------------------------------


def test_a_new_statement_that_only_binds_a_new_name_is_added(lab, versions):
    old = "import os\n\ndef mode():\n    return 'plain'\n"
    new = """
        import os

        try:
            FAST = int(os.environ["PKG_FAST"]) == 1
        except (KeyError, ValueError):
            FAST = False

        def mode():
            return "fast" if FAST else "safe"
        """
    v = versions({"m.py": with_fix(old, FIX_OLD)}, {"m.py": with_fix(new, FIX_NEW)})
    m = v.module("m")
    result = v.build()
    assert report(result, v.pkg)["changes"] == [
        "new names pkg.m:FAST",
        "function pkg.m:mode",
        "function pkg.m:check",
    ]
    name = lab.engine.load(result.data).name
    assert (m.FAST, m.mode()) == (False, "safe")
    lab.engine.revert(name)
    assert not hasattr(m, "FAST")


def test_a_changed_pattern_is_rebound_and_one_copied_at_import_refused(lab, versions):
    old = "import re\n\nWORD = re.compile(r'(\\w+)+$')\n\ndef ok(s):\n    return bool(WORD.match(s))\n"
    new = old.replace("(\\w+)+$", "\\w+$")
    v = versions({"m.py": with_fix(old, FIX_OLD)}, {"m.py": with_fix(new, FIX_NEW)})
    m = v.module("m")
    result = v.build()
    assert report(result, v.pkg)["changes"] == ["pattern pkg.m:WORD", "function pkg.m:check"]
    name = lab.engine.load(result.data).name
    assert m.WORD.pattern == "\\w+$" and m.ok("abc")
    lab.engine.revert(name)
    assert m.WORD.pattern == "(\\w+)+$"
    copied = "\n\ndef first(s, pattern=WORD):\n    return pattern.match(s)\n"
    (v.old / v.pkg / "m.py").write_text(with_fix(old + copied, FIX_OLD))
    (v.new / v.pkg / "m.py").write_text(with_fix(new + copied, FIX_NEW))
    assert [r.kind for r in v.build().refusals] == ["captured-constant"]


def test_format_and_fstring_spellings_of_one_value_compare_equal(versions):
    old = "HOST = 'h'\nPORT = 1\nLISTEN = ['{}:{}'.format(HOST, PORT)]\n"
    new = "HOST = 'h'\nPORT = 1\nLISTEN = [f'{HOST}:{PORT}']\n"
    v = versions({"m.py": with_fix(old, FIX_OLD)}, {"m.py": with_fix(new, FIX_NEW)})
    assert report(v.build(), v.pkg) == {
        "changes": ["function pkg.m:check"],
        "refusals": [],
        "warnings": [
            "pkg/m.py:3: pkg.m:LISTEN: spelled differently (`['{}:{}'.format(HOST, PORT)]` -> "
            "`[f'{HOST}:{PORT}']`), the same value; ignored",
        ],
    }
    (v.new / v.pkg / "m.py").write_text(with_fix(new.replace("{HOST}:", "{HOST}/"), FIX_NEW))
    assert [r.kind for r in v.build().refusals] == ["mutable-data"]


def test_an_import_of_another_class_is_refused(versions):
    files = {
        "errors.py": "class Denied(Exception):\n    pass\n",
        "other.py": "class Denied(Exception):\n    pass\n",
    }
    old = "from .errors import Denied\n\ndef deny():\n    raise Denied()\n"
    new = old.replace(".errors", ".other")
    v = versions(
        {**files, "m.py": with_fix(old, FIX_OLD)}, {**files, "m.py": with_fix(new, FIX_NEW)}
    )
    assert report(v.build(), v.pkg)["refusals"] == [
        "pkg/m.py:1: computed-data: pkg.m:Denied: 'Denied' is now imported from another place "
        "(from .errors import Denied -> from .other import Denied); it names another class, and "
        "objects made from the old one would fail isinstance() checks of the new code",
    ]


def test_a_new_instance_attribute_read_with_a_default_builds_and_one_read_plainly_is_refused(
    lab, versions
):
    old = (
        "class Conn:\n    def __init__(self):\n        self.open = True\n\n"
        "    def send(self, data):\n        return len(data)\n"
    )
    new = old.replace("self.open = True\n", "self.open = True\n        self.sent = 0\n").replace(
        "return len(data)",
        "self.sent = getattr(self, 'sent', 0) + len(data)\n        return getattr(self, 'sent', 0)",
    )
    v = versions({"m.py": with_fix(old, FIX_OLD)}, {"m.py": with_fix(new, FIX_NEW)})
    m = v.module("m")
    before = m.Conn()  # made by the old __init__: no `sent`
    result = v.build()
    assert report(result, v.pkg)["refusals"] == []
    name = lab.engine.load(result.data).name
    assert (before.send(b"ab"), before.send(b"c"), m.Conn().send(b"x")) == (2, 3, 1)
    lab.engine.revert(name)
    plain = new.replace("getattr(self, 'sent', 0)", "getattr(self, 'sent')")
    (v.new / v.pkg / "m.py").write_text(with_fix(plain, FIX_NEW))
    migrated = v.build()  # 0 whatever the arguments: a class-level default for old objects
    assert not migrated.refusals and f"{v.pkg}.m:Conn.sent" in [c.target for c in migrated.changes]
    computed = plain.replace("self.sent = 0", "self.sent = len(b'')")
    (v.new / v.pkg / "m.py").write_text(with_fix(computed, FIX_NEW))
    assert [r.kind for r in v.build().refusals] == ["instance-state"]
