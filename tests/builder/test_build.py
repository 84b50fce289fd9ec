"""The builder (spec §8): each kind of change between two versions, supported (built,
applied to the old code in this process, behaving like the new code, reverted to the
identical objects) or refused (with the exact file, line, kind and reason)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pylivepatch.builder.build import BuildOptions, BuildResult, build

from conftest import assert_identical, snapshot

SRC = str(Path(__file__).resolve().parents[2] / "src")


class Versions:
    """A package in two versions: OLD is importable in this process, NEW only on disk."""

    def __init__(self, lab, files_old: dict[str, str], files_new: dict[str, str]) -> None:
        self.lab = lab
        self.pkg = lab.name("pkg")
        self.old, self.new = lab.root / "old", lab.root / "new"
        for root, files in ((self.old, files_old), (self.new, files_new)):
            (root / self.pkg).mkdir(parents=True)
            (root / self.pkg / "__init__.py").write_text("")
            for name, text in files.items():
                (root / self.pkg / name).write_text(textwrap.dedent(text))
        sys.path.insert(0, str(self.old))
        importlib.invalidate_caches()
        lab.modules.append(self.pkg)

    def module(self, name: str):
        full = f"{self.pkg}.{name}"
        self.lab.modules.append(full)
        return importlib.import_module(full)

    def build(self, *allow: str) -> BuildResult:
        options = BuildOptions(name="fix", consistency="atomic", allow=frozenset(allow))
        return build(str(self.old), str(self.new), options)

    def refusals(self, *allow: str) -> list[str]:
        result = self.build(*allow)
        assert not result.data
        return [str(r).replace(self.pkg, "pkg") for r in result.refusals]

    def close(self) -> None:
        sys.path.remove(str(self.old))


@pytest.fixture
def versions(lab):
    made: list[Versions] = []

    def make(old: dict[str, str], new: dict[str, str]) -> Versions:
        v = Versions(lab, old, new)
        made.append(v)
        return v

    yield make
    for v in made:
        v.close()


def kinds(result: BuildResult, pkg: str) -> list[tuple[str, str]]:
    return [(c.kind, c.target.replace(pkg, "pkg")) for c in result.changes]


# --- supported ----------------------------------------------------------------------------


def test_changed_function_and_method_bodies(lab, versions):
    v = versions(
        {
            "shop.py": """
            RATE = 2

            def price(x):
                # a comment
                return x * RATE

            class Base:
                def label(self):
                    return "base"

            class Cart(Base):
                def __init__(self):
                    self.__secret = 1

                def label(self):
                    return "cart:" + super().label()

                def secret(self):
                    return self.__secret
            """
        },
        {
            "shop.py": """
            RATE = 2

            def price(x):
                return x * RATE + 1

            class Base:
                def label(self):
                    return "base"

            class Cart(Base):
                def __init__(self):
                    self.__secret = 1

                def label(self):
                    return "new:" + super().label()

                def secret(self):
                    return self.__secret + 10
            """
        },
    )
    shop = v.module("shop")
    cart = shop.Cart()
    before = snapshot(shop.price, shop.Cart.label, shop.Cart.secret, shop)
    result = v.build()
    assert kinds(result, v.pkg) == [
        ("function", "pkg.shop:price"),
        ("method", "pkg.shop:Cart.label"),
        ("method", "pkg.shop:Cart.secret"),
    ]
    name = lab.engine.load(result.data).name
    assert (shop.price(3), cart.label(), cart.secret()) == (7, "new:base", 11)
    lab.engine.revert(name)
    assert (shop.price(3), cart.label(), cart.secret()) == (6, "cart:base", 1)
    assert_identical(before, snapshot(shop.price, shop.Cart.label, shop.Cart.secret, shop))


def test_nested_property_and_descriptor_changes(lab, versions):
    v = versions(
        {
            "m.py": """
            def outer(n):
                def inner(k):
                    return k + 1
                return inner(n)

            class Box:
                def __init__(self):
                    self._v = 1

                @property
                def v(self):
                    return self._v

                @v.setter
                def v(self, value):
                    self._v = value

                @staticmethod
                def make():
                    return "static"
            """
        },
        {
            "m.py": """
            def outer(n):
                def inner(k):
                    return k + 100
                return inner(n)

            class Box:
                def __init__(self):
                    self._v = 1

                @property
                def v(self):
                    return self._v

                @v.setter
                def v(self, value):
                    self._v = value * 2

                @classmethod
                def make(cls):
                    return cls.__name__
            """
        },
    )
    m = v.module("m")
    prop = m.Box.__dict__["v"]
    result = v.build()
    assert kinds(result, v.pkg) == [
        ("function", "pkg.m:outer"),
        ("method", "pkg.m:Box.v.setter"),
        ("descriptor", "pkg.m:Box.make"),
    ]
    name = lab.engine.load(result.data).name
    box = m.Box()
    box.v = 5
    assert (m.outer(1), box.v, m.Box.make()) == (101, 10, "Box")
    assert m.Box.__dict__["v"] is prop, "the property object stays; its setter's code changed"
    lab.engine.revert(name)
    box.v = 5
    assert (m.outer(1), box.v, m.Box.make()) == (2, 5, "static")


def test_new_function_class_method_import_and_name(lab, versions):
    v = versions(
        {
            "m.py": """
            class Parser:
                def parse(self, text):
                    return text.split(",")
            """
        },
        {
            "m.py": """
            import re

            _SPLIT = re.compile(r"[,;]")


            def _clean(parts):
                return [p.strip() for p in parts]


            class Token:
                def __init__(self, text):
                    self.text = text


            class Parser:
                def parse(self, text):
                    return [Token(p) for p in self._split(text)]

                def _split(self, text):
                    return _clean(_SPLIT.split(text))
            """
        },
    )
    m = v.module("m")
    parser = m.Parser()  # an instance made before the patch
    before = snapshot(m, m.Parser)
    result = v.build()
    assert kinds(result, v.pkg) == [
        ("new import", "pkg.m:re"),
        ("new name", "pkg.m:_SPLIT"),
        ("new function", "pkg.m:_clean"),
        ("new class", "pkg.m:Token"),
        ("method", "pkg.m:Parser.parse"),
        ("new method", "pkg.m:Parser._split"),
    ]
    name = lab.engine.load(result.data).name
    tokens = parser.parse("a, b;c")
    assert [t.text for t in tokens] == ["a", "b", "c"]
    assert type(tokens[0]) is m.Token and m.Token.__module__ == m.__name__
    assert m._clean.__globals__ is m.__dict__, "new functions run in the target module"
    assert m.Parser._split.__globals__ is m.__dict__
    lab.engine.revert(name)
    assert not hasattr(m, "Token") and not hasattr(m.Parser, "_split")
    assert parser.parse("a,b") == ["a", "b"]
    assert_identical(before, snapshot(m, m.Parser))


def test_new_method_with_super_and_private_names(lab, versions):
    v = versions(
        {
            "m.py": """
            class A:
                def hello(self):
                    return "A"

            class B(A):
                __tag = "b"

                def hello(self):
                    return "B"
            """
        },
        {
            "m.py": """
            class A:
                def hello(self):
                    return "A"

            class B(A):
                __tag = "b"

                def hello(self):
                    return "B"

                def both(self):
                    return super().hello() + self.hello() + self.__tag
            """
        },
    )
    m = v.module("m")
    result = v.build()
    assert kinds(result, v.pkg) == [("new method", "pkg.m:B.both")]
    name = lab.engine.load(result.data).name
    assert m.B().both() == "ABb"
    lab.engine.revert(name)
    assert not hasattr(m.B, "both")


def test_constants_and_the_modules_that_imported_them(lab, versions):
    v = versions(
        {
            "version.py": '__version__ = "1.0"\nLIMITS = (1, 2)\n',
            "api.py": """
            from .version import __version__, LIMITS

            def describe():
                return __version__, LIMITS
            """,
            "headers.py": """
            class Policy:
                STRIP = frozenset(["Cookie"])

                def drops(self, name):
                    return name in self.STRIP
            """,
        },
        {
            "version.py": '__version__ = "1.1"\nLIMITS = (1, 2, 3)\n',
            "api.py": """
            from .version import __version__, LIMITS

            def describe():
                return __version__, LIMITS
            """,
            "headers.py": """
            class Policy:
                STRIP = frozenset(["Cookie", "Authorization"])

                def drops(self, name):
                    return name in self.STRIP
            """,
        },
    )
    api, headers = v.module("api"), v.module("headers")
    result = v.build()
    assert kinds(result, v.pkg) == [
        ("constant", "pkg.headers:Policy.STRIP"),
        ("constant", "pkg.version:__version__"),
        ("constant", "pkg.version:LIMITS"),
    ]
    assert {c.qualname: c.importers for c in result.changes}["__version__"] == [f"{v.pkg}.api"]
    name = lab.engine.load(result.data).name
    assert api.describe() == ("1.1", (1, 2, 3))
    assert headers.Policy().drops("Authorization")
    lab.engine.revert(name)
    assert api.describe() == ("1.0", (1, 2))
    assert not headers.Policy().drops("Authorization")


def test_docstrings_comments_annotations_and_overloads_produce_nothing(versions):
    v = versions(
        {
            "m.py": '''
            from typing import overload

            @overload
            def f(x: int) -> int: ...
            @overload
            def f(x: str) -> str: ...
            def f(x):
                """Old words."""
                return x

            class C:
                attr: int

                def g(self, y: int) -> int:
                    return y
            '''
        },
        {
            "m.py": '''
            from typing import overload

            @overload
            def f(x: int) -> int: ...
            @overload
            def f(x: bytes) -> bytes: ...
            def f(x):
                """New words, a better explanation."""
                # and a comment
                return (
                    x
                )

            class C:
                attr: str

                def g(self, y: "float") -> "float":
                    return y
            '''
        },
    )
    result = v.build()
    assert result.no_change and not result.data
    assert [d.cosmetic for d in result.diffs] == [True]


def test_the_cli_reports_no_functional_change_and_writes_nothing(lab, versions):
    v = versions({"m.py": "def f():\n    return 1\n"}, {"m.py": "def f():\n    return 1  # x\n"})
    out = subprocess.run(
        [sys.executable, "-m", "pylivepatch", "build", str(v.old), str(v.new), "-o", "x.lpz"],
        cwd=lab.root, capture_output=True, text=True, env={"PYTHONPATH": SRC, "PATH": ""},
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr == "pylivepatch: build: no functional changes found; nothing written\n"
    assert f"nothing  {v.pkg}.m: comments, docstrings" in out.stdout
    assert not (lab.root / "x.lpz").exists()


# --- refused -------------------------------------------------------------------------------


def test_refused_decorators_bases_metaclass_slots_and_fields(versions):
    v = versions(
        {
            "m.py": """
            import dataclasses, functools

            def f(x):
                return x

            class A: pass
            class B: pass
            class Meta(type): pass

            class C(A):
                __slots__ = ("a",)

            class D(metaclass=Meta):
                pass

            @dataclasses.dataclass
            class E:
                x: int = 0
            """
        },
        {
            "m.py": """
            import dataclasses, functools

            @functools.lru_cache
            def f(x):
                return x

            class A: pass
            class B: pass
            class Meta(type): pass

            class C(B):
                __slots__ = ("a", "b")

            class D:
                pass

            @dataclasses.dataclass
            class E:
                x: int = 0
                y: int = 1
            """
        },
    )
    assert v.refusals() == [
        "pkg/m.py:5: decorator: pkg.m:f: decorators changed (none -> @functools.lru_cache); "
        "the function is wrapped by them at import and only its code can be swapped",
        "pkg/m.py:12: class-bases: pkg.m:C: base classes changed (A -> B); the MRO of the "
        "class and of its instances is fixed",
        "pkg/m.py:13: slots: pkg.m:C.__slots__: __slots__ changed; the layout of existing "
        "instances is fixed",
        "pkg/m.py:15: metaclass: pkg.m:D: the metaclass or class keywords changed; the class "
        "object was built by them",
        "pkg/m.py:19: dataclass-fields: pkg.m:E: dataclass fields changed; __init__, __eq__ and "
        "__repr__ were generated from them at import",
    ]


def test_refused_data_and_module_statements(versions):
    v = versions(
        {
            "m.py": """
            import datetime
            NAMES = ["a"]
            WHEN = datetime.date(2022, 1, 1)
            print("loaded")
            """
        },
        {
            "m.py": """
            import datetime
            NAMES = ["a", "b"]
            WHEN = datetime.date(2024, 1, 1)
            print("loaded", "again")
            """
        },
    )
    assert v.refusals() == [
        "pkg/m.py:5: side-effect: pkg.m: the module-level statement "
        "`print('loaded', 'again')` is new or changed; it ran at import and cannot run again",
        "pkg/m.py:3: mutable-data: pkg.m:NAMES: the value changed and is not an immutable "
        "literal (`['a']` -> `['a', 'b']`); code and objects that hold the old object would "
        "keep it (mutate the existing object in a post_apply hook and undo it in post_revert, "
        "then --allow mutable-data)",
        "pkg/m.py:4: computed-data: pkg.m:WHEN: the value changed and is not an immutable "
        "literal (`datetime.date(2022, 1, 1)` -> `datetime.date(2024, 1, 1)`); code and "
        "objects that hold the old object would keep it (set the new value in a post_apply "
        "hook and the old one back in post_revert, then --allow computed-data)",
    ]


def test_refused_constants_captured_at_import(versions):
    v = versions(
        {
            "m.py": """
            LIMIT = 10

            def check(n, limit=LIMIT):
                return n < limit

            class Retry:
                HEADERS = frozenset(["Cookie"])

                def __init__(self):
                    self.headers = self.HEADERS

            Retry.DEFAULT = Retry()
            """
        },
        {
            "m.py": """
            LIMIT = 20

            def check(n, limit=LIMIT):
                return n < limit

            class Retry:
                HEADERS = frozenset(["Cookie", "Authorization"])

                def __init__(self):
                    self.headers = self.HEADERS

            Retry.DEFAULT = Retry()
            """
        },
    )
    assert v.refusals() == [
        "pkg/m.py:2: captured-constant: pkg.m:LIMIT: its old value was captured at import by "
        "a default value of check() (line 4); rebinding it would leave that copy old: update "
        "the copy in a pre_apply hook (--hooks FILE, keeping the old value in a state to put "
        "back in post_revert) and --allow captured-constant, or patch the code that reads the "
        "copy",
        "pkg/m.py:8: captured-constant: pkg.m:Retry.HEADERS: its old value was captured at "
        "import by `Retry.DEFAULT = Retry()` (line 13), which built an object with Retry(); "
        "rebinding it would leave that copy old: update the copy in a pre_apply hook (--hooks "
        "FILE, keeping the old value in a state to put back in post_revert) and --allow "
        "captured-constant, or patch the code that reads the copy",
    ]


def test_refused_instance_state_unless_allowed(lab, versions):
    old = """
        class Conn:
            def __init__(self, **options):
                self.open = True

            def send(self, data):
                return len(data)
        """
    new = """
        class Conn:
            def __init__(self, sent=0, **options):
                self.open = True
                self.sent = sent

            def send(self, data):
                self.sent += len(data)
                return len(data)
        """
    v = versions({"m.py": old}, {"m.py": new})
    assert v.refusals() == [
        "pkg/m.py:5: instance-state: pkg.m:Conn.__init__: __init__ now sets self.sent, which "
        "pkg.m:Conn.send reads; instances created before the patch do not have it. Give them a "
        "default (0, what __init__ sets): `sent = 0` in class Conn in NEW, or `Conn.sent = 0` "
        "in a pre_apply hook (--hooks FILE, with --allow instance-state), or read it as "
        "getattr(self, 'sent', 0) in NEW",
    ]
    result = v.build("instance-state")
    assert result.data and [r.kind for r in result.allowed] == ["instance-state"]


def test_refused_new_module_removed_but_used_and_c_sources(versions):
    v = versions(
        {
            "m.py": """
            class K:
                def a(self):
                    return 1

                def b(self):
                    return self.a()
            """,
            "speed.c": "int f(void) { return 1; }\n",
        },
        {
            "m.py": """
            from .helpers import twice

            class K:
                def b(self):
                    return twice(self.a())
            """,
            "helpers.py": "def twice(x):\n    return 2 * x\n",
            "speed.c": "int f(void) { return 2; }\n",
        },
    )
    refusals = v.refusals()
    assert refusals == [
        "pkg/m.py:3: removed-referenced: pkg.m:K.a: removed, but the new code still uses it "
        "(line 6)",
        "pkg/m.py:2: new-module: pkg.helpers: the new code imports pkg.helpers, a module the "
        "old version does not have; a payload patches existing modules (ship the module first)",
        "pkg/speed.c:0: c-extension: pkg/speed.c: C/Cython source changed; compiled code "
        "cannot be live-patched",
    ]


def test_allow_names_only_refusal_kinds(versions):
    from pylivepatch import LivepatchError

    v = versions({"m.py": "X = 1\n"}, {"m.py": "X = 2\n"})
    with pytest.raises(LivepatchError) as err:
        v.build("everything")
    assert err.value.code == "invalid-payload"
    assert err.value.message.startswith("--allow everything: not a refusal kind; kinds are ")


# --- sources, the command line and `pylivepatch test` -------------------------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "pylivepatch", *args], cwd=cwd, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=SRC), timeout=300,
    )  # fmt: skip


FIXED = {"calc.py": "def div(a, b):\n    if b == 0:\n        return None\n    return a / b\n"}
BROKEN = {"calc.py": "def div(a, b):\n    return a / b\n"}
SUITE = """
from {pkg}.calc import div

def test_div_by_zero_is_none():
    assert div(1, 0) is None

def test_div():
    assert div(6, 3) == 2
"""


def test_build_from_git_revisions_sdists_and_wheels(lab, versions):
    import tarfile
    import zipfile

    v = versions(BROKEN, FIXED)
    repo = lab.root / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    for rev, tree in (("v1", v.old), ("v2", v.new)):
        dest = repo / v.pkg
        if dest.exists():
            for f in dest.iterdir():
                f.unlink()
        dest.mkdir(exist_ok=True)
        for f in (tree / v.pkg).iterdir():
            (dest / f.name).write_bytes(f.read_bytes())
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-qm", rev], check=True)
        subprocess.run([*git, "tag", rev], check=True)
    sdists, wheels = [], []
    for tag, tree in (("1.0", v.old), ("1.1", v.new)):
        sdist = lab.root / f"{v.pkg}-{tag}.tar.gz"
        with tarfile.open(sdist, "w:gz") as tf:
            tf.add(tree / v.pkg, arcname=f"{v.pkg}-{tag}/src/{v.pkg}")
        sdists.append(str(sdist))
        wheel = lab.root / f"{v.pkg}-{tag}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            for f in (tree / v.pkg).iterdir():
                zf.write(f, f"{v.pkg}/{f.name}")
        wheels.append(str(wheel))
    manifests = []
    for old, new, extra in (
        ("v1", "v2", ["--repo", str(repo)]), (*sdists, []), (*wheels, []),
        (str(v.old), str(v.new), []),
    ):  # fmt: skip
        out = _cli("build", old, new, "-o", "fix.lpz", "--json", *extra, cwd=lab.root)
        assert out.returncode == 0, out.stdout + out.stderr
        report = json.loads(out.stdout)
        assert [(c["kind"], c["target"]) for c in report["changes"]] == [
            ("function", f"{v.pkg}.calc:div")
        ]
        manifests.append(report["manifest"]["funcs"])
    assert all(m == manifests[0] for m in manifests), "the same payload from every kind of source"
    out = _cli("build", "v1", "nope", "-o", "x.lpz", "--repo", str(repo), cwd=lab.root)
    assert out.returncode == 1 and out.stderr.startswith(
        "pylivepatch: not-found: git revision 'nope' of "
    )


def test_pylivepatch_test_runs_a_suite_against_the_old_version_with_the_payload(lab, versions):
    v = versions(BROKEN, FIXED)
    (lab.root / "test_calc.py").write_text(textwrap.dedent(SUITE.format(pkg=v.pkg)))
    out = _cli(
        "build", str(v.old), str(v.new), "-o", "fix.lpz", "--name", "fix-div",
        "--metadata", "ticket=CALC-1", cwd=lab.root,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout.splitlines()[1]
        == f"  patch    {v.pkg}/calc.py:1  function      {v.pkg}.calc:div"
    )
    import os

    def run_suite(*payloads: str) -> subprocess.CompletedProcess[str]:
        prefix = ["test", *payloads, "--"] if payloads else []
        return subprocess.run(
            [sys.executable, "-m", "pylivepatch", *prefix, sys.executable, "-m", "pytest", "-q",
             "-p", "no:cacheprovider", "test_calc.py"] if payloads else
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_calc.py"],
            cwd=lab.root, capture_output=True, text=True, timeout=300,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, str(v.old)])),
        )  # fmt: skip

    without = run_suite()
    assert without.returncode == 1 and "1 failed, 1 passed" in without.stdout
    with_fix = run_suite("fix.lpz")
    assert with_fix.returncode == 0, with_fix.stdout + with_fix.stderr
    assert "2 passed" in with_fix.stdout
    assert with_fix.stderr.splitlines() == [
        "pylivepatch test: fix-div applied at start in 1 of 1 Python processes"
    ]
    (lab.root / "bad.lpz").write_bytes(b"not a zip")
    bad = run_suite("bad.lpz")
    assert bad.returncode == 1 and bad.stderr.startswith("pylivepatch: invalid-payload: ")


def test_refused_syntax_errors_and_name_collisions(lab, versions):
    from pylivepatch import LivepatchError

    v = versions(
        {"a.py": "def f():\n    return 1\n", "b.py": "def g():\n    return 1\n", "c.py": "X = 1\n"},
        {
            "a.py": "def _h():\n    return 'a'\n\ndef f():\n    return _h()\n",
            "b.py": "def _h():\n    return 'b'\n\ndef g():\n    return _h()\n",
            "c.py": "X = (\n",
        },
    )
    assert v.refusals() == [
        "pkg/c.py:1: syntax: pkg.c: does not parse: '(' was never closed",
    ]
    (v.new / v.pkg / "c.py").write_text("X = 1\n")
    # two new helpers of one name in two modules: each module gets its own
    a, b = v.module("a"), v.module("b")
    name = lab.engine.load(v.build().data).name
    assert (a.f(), b.g(), a._h.__name__, b._h.__name__) == ("a", "b", "_h", "_h")
    lab.engine.revert(name)
    lab.engine.unload(name)
    # values computed when the payload is imported read one name for two objects: each
    # target module has its own (before: name-collision)
    import os

    (v.new / v.pkg / "a.py").write_text(
        "from os import sep as S\nA = S + 'a'\n\ndef f():\n    return 1\n"
    )
    (v.new / v.pkg / "b.py").write_text(
        "from os import curdir as S\nB = S + 'b'\n\ndef g():\n    return 1\n"
    )
    name = lab.engine.load(v.build().data).name
    assert (os.sep + "a", os.curdir + "b", os.sep, os.curdir) == (a.A, b.B, a.S, b.S)
    lab.engine.revert(name)
    with pytest.raises(LivepatchError) as err:
        v.build("name-collision")
    assert (
        err.value.message == "--allow name-collision: no payload can be written with such a change"
    )
