"""Objects imported later (spec §5, Linux klp_module_coming): a payload applied before
its target module is imported applies to it when it is imported, before the importer
sees it; a module whose code is not what the payload expects is refused."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from conftest import assert_identical, snapshot

TARGET = """
    RATE = 2

    def price(x):
        return x * RATE
"""
FIX = """
    import pylivepatch as lp
    patch = lp.Patch("late-fix", consistency="atomic")

    @patch.function("{m}late:price")
    def price(x):
        return x * RATE + 1
"""


def hook_installed(engine) -> bool:
    return engine._late in sys.meta_path


@pytest.fixture
def late_source(lab):
    """The target on disk, not imported; payloads are packed against the source tree."""
    (lab.root / f"{lab.name('late')}.py").write_text(textwrap.dedent(TARGET))
    lab.modules.append(lab.name("late"))
    importlib.invalidate_caches()
    return lab.root


def test_applies_when_the_module_is_imported(lab, late_source):
    e = lab.engine
    e.upload("late-fix", lab.pack(FIX, against=str(late_source)))
    assert lab.name("late") not in sys.modules, "upload must not import the target"
    assert e.status("late-fix").pending == (lab.name("late"),)
    assert not hook_installed(e), "nothing on the import path while no applied payload waits"
    e.apply("late-fix")
    assert hook_installed(e)
    mod = importlib.import_module(lab.name("late"))
    assert mod.price(2) == 5
    assert e.status("late-fix").pending == ()
    assert hook_installed(e), "still there while applied: it catches reloads of patched modules"
    assert [f.applied for f in e.status("late-fix").funcs] == [True]
    e.revert("late-fix")
    assert mod.price(2) == 4
    assert mod.price.__code__ is e.original_code(mod.price)
    assert not hook_installed(e), "nothing on the import path once nothing is applied"


def test_a_module_with_other_code_is_refused_at_import(lab, late_source):
    e = lab.engine
    e.load(lab.pack(FIX, against=str(late_source)))
    (late_source / f"{lab.name('late')}.py").write_text(
        textwrap.dedent(TARGET).replace("x * RATE", "x * RATE * 10")
    )
    importlib.invalidate_caches()
    with pytest.raises(ImportError) as err:
        importlib.import_module(lab.name("late"))
    msg = str(err.value)
    assert "late-fix" in msg and lab.name("late") in msg
    assert "expectation-failed" in msg or "dependency-mismatch" in msg
    assert lab.name("late") not in sys.modules, "known-unpatched code must not be importable"
    assert e.status("late-fix").pending == (lab.name("late"),) and hook_installed(e)


def test_a_late_pre_hook_veto_refuses_the_import(lab, late_source):
    e = lab.engine
    veto = FIX + "\n    @patch.pre_apply\n    def no(ctx):\n        return False\n"
    # The veto must not stop the payload itself (no target is imported at apply time):
    # make the hook refuse only when the module is there.
    veto = veto.replace(
        "return False", f"return {lab.name('late')!r} not in __import__('sys').modules"
    )
    e.load(lab.pack(veto, against=str(late_source)))
    with pytest.raises(ImportError) as err:
        importlib.import_module(lab.name("late"))
    assert "vetoed" in str(err.value)
    assert lab.name("late") not in sys.modules


def test_modules_imported_before_are_patched_at_apply_and_later_ones_at_import(lab, late_source):
    """One payload, two modules: one imported now, one later."""
    now = lab.module("now", "def tax(x):\n    return x // 10\n")
    before = snapshot(now.tax, now)
    src = FIX + ('\n    @patch.function("{m}now:tax")\n    def tax(x):\n        return x // 5\n')
    e = lab.engine
    e.load(lab.pack(src, against=str(late_source)))
    assert now.tax(100) == 20
    late = importlib.import_module(lab.name("late"))
    assert late.price(2) == 5
    e.revert("late-fix")
    assert_identical(before, snapshot(now.tax, now))
    assert late.price(2) == 4


def test_a_module_imported_between_upload_and_apply_is_patched_at_apply(lab, late_source):
    e = lab.engine
    e.upload("late-fix", lab.pack(FIX, against=str(late_source)))
    mod = importlib.import_module(lab.name("late"))  # imported while the payload is CHECKED
    assert mod.price(2) == 4
    e.apply("late-fix")
    assert mod.price(2) == 5 and e.status("late-fix").pending == ()


def test_reload_reapplies_to_the_new_function_objects(lab):
    mod = lab.module("late", TARGET)
    e = lab.engine
    old_price = mod.price
    before = snapshot(old_price)
    e.load(lab.pack(FIX))
    importlib.reload(mod)
    assert mod.price is not old_price, "reload made a new function object"
    assert mod.price(2) == 5 and old_price(2) == 5, "both the new and the old object are patched"
    new_price = mod.price
    e.revert("late-fix")
    assert new_price(2) == 4 and old_price(2) == 4
    assert_identical(before, snapshot(old_price))
    e.apply("late-fix")  # the old plans are stale, not a reason to refuse
    assert mod.price(2) == 5


def test_a_reload_of_other_code_is_refused_and_leaves_the_module_patched(lab):
    mod = lab.module("late", TARGET)
    e = lab.engine
    e.load(lab.pack(FIX))
    patched = mod.price
    (lab.root / f"{lab.name('late')}.py").write_text(
        textwrap.dedent(TARGET).replace("x * RATE", "x * RATE * 10") + "\nNEW = 1\n"
    )
    importlib.invalidate_caches()
    with pytest.raises(ImportError) as err:
        importlib.reload(mod)
    msg = str(err.value)
    assert "late-fix" in msg and ("dependency-mismatch" in msg or "expectation-failed" in msg)
    assert "keeps its patched code" in msg
    assert mod.price is patched and mod.price(2) == 5 and not hasattr(mod, "NEW")


DATACLASS_MODULE = """
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Point:
        x: int
        y: int

    def norm(p):
        return abs(p.x) + abs(p.y)
"""


@pytest.mark.parametrize("imported_first", [True, False])
def test_code_generated_at_import_does_not_hide_the_module_build_id(lab, imported_first):
    """dataclasses writes ``Point.__init__`` with exec: it is the module's function but
    not the file's code. The object build id check must leave it out, at upload and
    when the module is imported later (werkzeug's sansio.multipart has such classes)."""
    name = lab.name("geom")
    (lab.root / f"{name}.py").write_text(textwrap.dedent(DATACLASS_MODULE))
    importlib.invalidate_caches()
    fix = lab.pack(
        """
        import pylivepatch as lp
        patch = lp.Patch("fix-norm", consistency="atomic")

        @patch.function("{m}geom:norm")
        def norm(p):
            return p.x * p.x + p.y * p.y
        """
    )
    lab.modules.append(name)
    if imported_first:
        mod = importlib.import_module(name)
        lab.engine.load(fix)
    else:
        sys.modules.pop(name, None)
        lab.engine.load(fix, wait_imports=True)
        mod = importlib.import_module(name)
    assert mod.norm(mod.Point(3, 4)) == 25


def test_a_reload_of_a_module_whose_only_patched_objects_are_data(lab):
    """A payload that sets only data in a module: its reload sets the data again. Before,
    ``_apply_late`` and ``_reapply`` called each other until a RecursionError, and the
    import of the module failed."""
    mod = lab.module("consts", "LIMIT = 1\n\ndef limit():\n    return LIMIT\n")
    e = lab.engine
    e.load(
        lab.pack(
            """
            import pylivepatch as lp
            patch = lp.Patch("more", consistency="atomic")
            patch.data("{m}consts:LIMIT", 2)
            """
        )
    )
    assert mod.limit() == 2
    importlib.reload(mod)
    assert mod.LIMIT == 2 and mod.limit() == 2, "the reload's value is patched again"
    e.revert("more")
    assert mod.LIMIT == 1


HELPER_HOME = """
    def helper(x):
        return "old"
"""
HELPER_USER = """
    from {m}home import helper

    def render():
        return helper(1)
"""
HELPER_FIX = """
    import pylivepatch as lp
    patch = lp.Patch("helper-fix", consistency="atomic")

    @patch.function("{m}home:helper")
    def helper(x):
        return "new"

    @patch.function("{m}user:render")
    def render():
        return helper(1) + "!"
"""


def test_a_late_module_may_read_a_function_the_payload_patches_in_another(lab):
    """A module imported after the apply reads, through its own global, a function the
    payload patched in the module it came from: the payload's replacement stands in for
    it there too, as at apply time (it used to be refused with ``exists``, because only
    the late module's own entries were counted)."""
    lab.module("home", HELPER_HOME)
    user = lab.root / f"{lab.name('user')}.py"
    user.write_text(textwrap.dedent(HELPER_USER).replace("{m}", lab.prefix))
    lab.modules.append(lab.name("user"))
    importlib.invalidate_caches()
    e = lab.engine
    e.load(lab.pack(HELPER_FIX, against=str(lab.root)))
    assert e.status("helper-fix").pending == (lab.name("user"),)
    mod = importlib.import_module(lab.name("user"))
    assert mod.render() == "new!"
    assert e.status("helper-fix").pending == ()
    e.revert("helper-fix")
    assert mod.render() == "old"


def test_modules_imported_between_upload_and_apply_may_read_each_others_patches(lab):
    """Both modules are imported after the upload and before the apply, so the apply
    plans them one by one, in name order: the first (``a_user``) reads, through its own
    global, a function the payload patches in the second (``z_home``), planned after it
    (black 24.3.0 was refused so: ``black`` reads ``black.parsing``'s stringify_ast)."""
    names = {"{m}home": "{m}z_home", "{m}user": "{m}a_user"}

    def renamed(text: str) -> str:
        for old, new in names.items():
            text = text.replace(old, new)
        return text.replace("{m}", lab.prefix)

    for base, text in (("z_home", HELPER_HOME), ("a_user", HELPER_USER)):
        (lab.root / f"{lab.name(base)}.py").write_text(renamed(textwrap.dedent(text)))
        lab.modules.append(lab.name(base))
    importlib.invalidate_caches()
    e = lab.engine
    e.upload("helper-fix", lab.pack(renamed(HELPER_FIX), against=str(lab.root)))
    assert e.status("helper-fix").pending == (lab.name("a_user"), lab.name("z_home"))
    mod = importlib.import_module(lab.name("a_user"))
    e.apply("helper-fix")
    assert mod.render() == "new!"
    e.revert("helper-fix")
    assert mod.render() == "old"
