"""What a payload can replace and how the swap reaches every caller (spec §2, §3, §5).

One test (or a small parametrized group) per kind of target: each checks that the
patched behaviour is what the new code does, and that after ``revert`` every touched
function (``__code__``, ``__defaults__``, ``__kwdefaults__``) and namespace is identical
(``is``) to what it was before the apply (spec §3, "Everything or nothing").
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import textwrap
import threading

import pytest

from pylivepatch import LivepatchError
from pylivepatch.payload import archive
from pylivepatch.payload.fingerprint import live_object_build_id, python_tag

from conftest import assert_identical, snapshot

HEAD = """
    import pylivepatch as lp
    patch = lp.Patch("fix", consistency="atomic")
"""


def payload(body: str) -> str:
    """A payload module named ``fix`` (atomic) with ``body`` below the ``Patch``."""
    return textwrap.dedent(HEAD) + textwrap.dedent(body)


def func_status(lab, name: str, target_suffix: str):
    (fs,) = [f for f in lab.engine.status(name).funcs if f.target.endswith(target_suffix)]
    return fs


# --- 1. plain module function ------------------------------------------------------------


def test_module_function(lab):
    """A module function is patched in place: the same function object runs the new
    code, which sees the target's globals; revert restores code and defaults exactly."""
    mod = lab.module(
        "plain",
        """
        RATE = 2
        def price(x, extra=1):
            return x * RATE + extra
        def checkout(x):
            return price(x) + 100
    """,
    )
    func = mod.price
    before = snapshot(mod.price, mod.checkout, mod)
    name = lab.load(
        payload("""
        @patch.function("{m}plain:price")
        def price_v2(x, extra=5):
            return x * RATE * 10 + extra
    """)
    )
    assert mod.price is func
    assert mod.price(1) == 25
    assert mod.checkout(1) == 125  # unpatched caller reaches the new code
    assert func_status(lab, name, ":price").trampoline is False  # no wrapper (spec §5)
    lab.engine.revert(name)
    assert mod.price(1) == 3 and mod.checkout(1) == 103
    assert_identical(before, snapshot(mod.price, mod.checkout, mod))


# --- 2-4. methods, classmethods, staticmethods -------------------------------------------

CLASSES = """
    class Cart:
        TAX = 2
        def __init__(self, items):
            self.items = items
        def total(self):
            return sum(self.items)
        @classmethod
        def empty(cls):
            return (cls.__name__, 0)
        @staticmethod
        def fmt(x):
            return f"${x}"

    class SubCart(Cart):
        pass
"""


def test_method(lab):
    """A method is patched in the class dict; instances made before and after the apply,
    and subclass instances, run the new code."""
    mod = lab.module("meth", CLASSES)
    old_cart = mod.Cart([1, 2])
    fn = mod.Cart.__dict__["total"]
    before = snapshot(fn, mod.Cart, mod.SubCart, mod)
    name = lab.load(
        payload("""
        @patch.function("{m}meth:Cart.total")
        def total(self):
            return sum(self.items) * self.TAX
    """)
    )
    assert mod.Cart.__dict__["total"] is fn
    assert old_cart.total() == 6
    assert mod.Cart([5]).total() == 10
    assert mod.SubCart([1]).total() == 2
    lab.engine.revert(name)
    assert old_cart.total() == 3
    assert_identical(before, snapshot(fn, mod.Cart, mod.SubCart, mod))


def test_classmethod(lab):
    """A classmethod's ``__func__`` is patched behind the classmethod object: ``cls`` is
    still bound (a subclass sees itself)."""
    mod = lab.module("cm", CLASSES)
    cm = mod.Cart.__dict__["empty"]
    before = snapshot(cm.__func__, mod.Cart, mod)
    name = lab.load(
        payload("""
        @patch.function("{m}cm:Cart.empty")
        def empty(cls):
            return (cls.__name__, cls.TAX)
    """)
    )
    assert mod.Cart.__dict__["empty"] is cm
    assert mod.Cart.empty() == ("Cart", 2)
    assert mod.SubCart.empty() == ("SubCart", 2)
    assert mod.Cart([]).empty() == ("Cart", 2)
    lab.engine.revert(name)
    assert mod.SubCart.empty() == ("SubCart", 0)
    assert_identical(before, snapshot(cm.__func__, mod.Cart, mod))


def test_staticmethod(lab):
    """A staticmethod's function is patched behind the staticmethod object; called through
    the class and through an instance."""
    mod = lab.module("sm", CLASSES)
    sm = mod.Cart.__dict__["fmt"]
    before = snapshot(sm.__func__, mod.Cart, mod)
    name = lab.load(
        payload("""
        @patch.function("{m}sm:Cart.fmt")
        def fmt(x):
            return f"{x:.2f} EUR"
    """)
    )
    assert mod.Cart.__dict__["fmt"] is sm
    assert mod.Cart.fmt(3) == "3.00 EUR"
    assert mod.Cart([]).fmt(1) == "1.00 EUR"
    lab.engine.revert(name)
    assert mod.Cart.fmt(3) == "$3"
    assert_identical(before, snapshot(sm.__func__, mod.Cart, mod))


@pytest.mark.parametrize(
    "kind,target,call",
    [
        ("classmethod", "Cart.empty", lambda C: C.empty()),
        ("staticmethod", "Cart.fmt", lambda C: C.fmt(3)),
    ],
)
def test_decorated_replacement_for_classmethod_and_staticmethod(lab, kind, target, call):
    """A replacement written *as* a classmethod/staticmethod (as the author of the class
    would) is accepted: the engine unwraps ``__func__`` (compile.py), so pack must too."""
    mod = lab.module("cmdeco", CLASSES)
    before = snapshot(mod.Cart, mod)
    args = "cls" if kind == "classmethod" else "x"
    name = lab.load(
        payload(f"""
        @patch.function("{{m}}cmdeco:{target}")
        @{kind}
        def repl({args}):
            return "new"
    """)
    )
    assert call(mod.Cart) == "new"
    lab.engine.revert(name)
    assert_identical(before, snapshot(mod.Cart, mod))


# --- 5. property getter, setter, deleter -------------------------------------------------


def test_property_getter_setter_deleter(lab):
    """``C.prop`` is the getter, ``C.prop.setter`` / ``C.prop.deleter`` the others; all three
    are patched behind the same property object."""
    mod = lab.module(
        "prop",
        """
        class Box:
            def __init__(self):
                self._size = 1
            @property
            def size(self):
                return self._size
            @size.setter
            def size(self, value):
                self._size = value
            @size.deleter
            def size(self):
                self._size = 0
    """,
    )
    prop = mod.Box.__dict__["size"]
    parts = (prop.fget, prop.fset, prop.fdel)
    before = snapshot(*parts, mod.Box, mod)
    name = lab.load(
        payload("""
        @patch.function("{m}prop:Box.size")
        def size_get(self):
            return ("got", self._size)
        @patch.function("{m}prop:Box.size.setter")
        def size_set(self, value):
            self._size = value * 10
        @patch.function("{m}prop:Box.size.deleter")
        def size_del(self):
            self._size = -1
    """)
    )
    assert mod.Box.__dict__["size"] is prop
    assert (prop.fget, prop.fset, prop.fdel) == parts
    box = mod.Box()
    assert box.size == ("got", 1)
    box.size = 4
    assert box._size == 40 and box.size == ("got", 40)
    del box.size
    assert box._size == -1
    lab.engine.revert(name)
    box.size = 4
    assert box.size == 4
    del box.size
    assert box.size == 0
    assert_identical(before, snapshot(*parts, mod.Box, mod))


# --- 6. async function -------------------------------------------------------------------


def test_async_function(lab):
    """An ``async def`` is patched like any function; coroutines made after the apply run
    the new code (the payload's ``import asyncio`` is the target's own module: no clash)."""
    mod = lab.module(
        "aio",
        """
        import asyncio
        async def fetch(x):
            await asyncio.sleep(0)
            return x * 2
        async def main(x):
            return await fetch(x) + 1
    """,
    )
    before = snapshot(mod.fetch, mod.main, mod)
    name = lab.load(
        payload("""
        import asyncio
        @patch.function("{m}aio:fetch")
        async def fetch(x):
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            return x * 3
    """)
    )
    assert asyncio.run(mod.fetch(5)) == 15
    assert asyncio.run(mod.main(5)) == 16
    lab.engine.revert(name)
    assert asyncio.run(mod.fetch(5)) == 10
    assert_identical(before, snapshot(mod.fetch, mod.main, mod))


def test_async_generator_whose_free_variables_change_runs_behind_a_trampoline(lab):
    """An async generator function whose closure changes gets a trampoline that drives
    the real one: values, ``asend``, ``athrow`` and ``aclose`` pass through, and the
    function stays an async generator function."""
    mod = lab.module(
        "agen",
        """
        def make(step):
            async def ticks(n):
                for i in range(n):
                    got = yield i * step
                    if got is not None:
                        yield ("got", got)
            return ticks

        ticks = make(1)
    """,
    )
    before = snapshot(mod.ticks, mod)
    name = lab.load(
        payload("""
        SCALE = 10

        @patch.function("{m}agen:ticks")
        async def ticks(n):  # no free variable now: the target's closure differs
            for i in range(n):
                try:
                    got = yield i * SCALE
                except KeyError:
                    yield "caught"
                    continue
                if got is not None:
                    yield ("got", got)
    """)
    )
    assert [f.trampoline for f in lab.engine.status(name).funcs] == [True]
    assert inspect.isasyncgenfunction(mod.ticks)

    async def drive() -> list:
        out = [x async for x in mod.ticks(3)]
        agen = mod.ticks(3)
        out.append(await agen.__anext__())
        out.append(await agen.asend("hi"))
        out.append(await agen.asend(None))
        out.append(await agen.athrow(KeyError("k")))
        await agen.aclose()
        return out

    assert asyncio.run(drive()) == [0, 10, 20, 0, ("got", "hi"), 10, "caught"]
    lab.engine.revert(name)
    assert asyncio.run(_old(mod)) == [0, 1, 2]
    assert_identical(before, snapshot(mod.ticks, mod))


async def _old(mod) -> list:
    return [x async for x in mod.ticks(3)]


# --- 7. generator function ---------------------------------------------------------------


def test_generator_function(lab):
    """A generator made before the apply (started or not) keeps the old code; new ones run
    the new code; and symmetrically across the revert."""
    mod = lab.module(
        "gen",
        """
        def counter(n):
            for i in range(n):
                yield i
    """,
    )
    before = snapshot(mod.counter, mod)
    started = mod.counter(3)
    assert next(started) == 0
    unstarted = mod.counter(3)
    name = lab.load(
        payload("""
        @patch.function("{m}gen:counter")
        def counter(n):
            for i in range(n):
                yield i * 100
    """)
    )
    assert list(started) == [1, 2]
    assert list(unstarted) == [0, 1, 2]
    assert list(mod.counter(3)) == [0, 100, 200]
    during = mod.counter(3)
    assert next(during) == 0
    lab.engine.revert(name)
    assert list(during) == [100, 200]
    assert list(mod.counter(3)) == [0, 1, 2]
    assert_identical(before, snapshot(mod.counter, mod))


# --- 8. functools.wraps chains -----------------------------------------------------------


def test_function_behind_two_wraps_decorators(lab):
    """A decorated function is named by its own qualname and patched behind both
    wrappers: the module attribute stays the outer wrapper and runs the new inner code."""
    mod = lab.module(
        "deco",
        """
        import functools
        def tag(label):
            def deco(fn):
                @functools.wraps(fn)
                def wrapper(*args, **kwargs):
                    return f"{label}({fn(*args, **kwargs)})"
                return wrapper
            return deco

        @tag("outer")
        @tag("inner")
        def compute(x):
            return x + 1
    """,
    )
    outer = mod.compute
    middle = outer.__wrapped__
    inner = middle.__wrapped__
    assert mod.compute(1) == "outer(inner(2))"
    before = snapshot(outer, middle, inner, mod)
    name = lab.load(
        payload("""
        @patch.function("{m}deco:compute")
        def compute(x):
            return x * 100
    """)
    )
    assert mod.compute is outer and outer.__wrapped__ is middle and middle.__wrapped__ is inner
    assert mod.compute(2) == "outer(inner(200))"
    assert inner(2) == 200
    lab.engine.revert(name)
    assert mod.compute(2) == "outer(inner(3))"
    assert_identical(before, snapshot(outer, middle, inner, mod))


# --- 9. lru_cache and cache --------------------------------------------------------------


def test_lru_cache_and_cache(lab):
    """Functions behind ``lru_cache`` / ``cache`` are patched behind the cache, and results
    cached by the old code are gone after the apply (and the new code's after the revert)."""
    mod = lab.module(
        "cached",
        """
        import functools
        @functools.lru_cache(maxsize=32)
        def square(x):
            return x * x
        @functools.cache
        def cube(x):
            return x ** 3
    """,
    )
    square_inner, cube_inner = mod.square.__wrapped__, mod.cube.__wrapped__
    assert mod.square(3) == 9 and mod.cube(2) == 8  # now cached
    assert mod.square.cache_info().currsize == 1
    before = snapshot(square_inner, cube_inner, mod)
    name = lab.load(
        payload("""
        @patch.function("{m}cached:square")
        def square(x):
            return x * x + 1
        @patch.function("{m}cached:cube")
        def cube(x):
            return x ** 3 + 1
    """)
    )
    assert mod.square(3) == 10 and mod.cube(2) == 9
    assert mod.square(3) == 10 and mod.cube(2) == 9  # cached new results
    lab.engine.revert(name)
    assert mod.square(3) == 9 and mod.cube(2) == 8
    assert_identical(before, snapshot(square_inner, cube_inner, mod))


# --- 10. zero-argument super() -----------------------------------------------------------

SUPER = """
    class Base:
        def greet(self):
            return "base"
        def size(self):
            return 1

    class Child(Base):
        def greet(self):
            return "child+" + super().greet()
        def size(self):
            return 2

    class GrandChild(Child):
        def greet(self):
            return "grand+" + super().greet()
        def size(self):
            return 10 + super().size()
"""


def _super_roundtrip(lab, base, body, attr, new, old):
    """Patch ``Child.<attr>``; ``new``/``old`` are what Child() and GrandChild() return."""
    mod = lab.module(base, SUPER)
    fn = mod.Child.__dict__[attr]
    before = snapshot(fn, mod.Child, mod.GrandChild, mod)
    name = lab.load(payload(body))
    # super() in the new code is relative to Child, not to type(self): a GrandChild
    # instance does not loop back into Child
    assert (getattr(mod.Child(), attr)(), getattr(mod.GrandChild(), attr)()) == new
    lab.engine.revert(name)
    assert (getattr(mod.Child(), attr)(), getattr(mod.GrandChild(), attr)()) == old
    assert_identical(before, snapshot(fn, mod.Child, mod.GrandChild, mod))


def test_super_in_original_and_replacement(lab):
    """Original and replacement both use zero-argument ``super()``: a direct swap (same
    ``__class__`` free variable), no wrapper."""
    # the replacement is written inside a payload class (any name): super() still binds
    # to the target class
    body = """
        class Patched:
            @patch.function("{m}sup1:Child.greet")
            def greet(self):
                return "CHILD+" + super().greet()
    """
    mod = lab.module("sup1", SUPER)
    fn = mod.Child.__dict__["greet"]
    before = snapshot(fn, mod.Child, mod.GrandChild, mod)
    name = lab.load(payload(body))
    assert func_status(lab, name, "Child.greet").trampoline is False
    assert mod.Child().greet() == "CHILD+base"
    assert mod.GrandChild().greet() == "grand+CHILD+base"
    lab.engine.revert(name)
    assert mod.GrandChild().greet() == "grand+child+base"
    assert_identical(before, snapshot(fn, mod.Child, mod.GrandChild, mod))


def test_super_only_in_replacement(lab):
    """The original does not use ``super()`` but the replacement does (the function has no
    ``__class__`` cell; a trampoline supplies one bound to the target class)."""
    body = """
        @patch.function("{m}sup2:Child.size")
        def size(self):
            return 20 + super().size()
    """
    _super_roundtrip(lab, "sup2", body, "size", new=(21, 31), old=(2, 12))


def test_super_only_in_original(lab):
    """The original uses ``super()`` and the replacement does not (the reverse: the target
    keeps its ``__class__`` cell, the new code ignores it)."""
    body = """
        @patch.function("{m}sup3:Child.greet")
        def greet(self):
            return "plain"
    """
    _super_roundtrip(
        lab,
        "sup3",
        body,
        "greet",
        new=("plain", "grand+plain"),
        old=("child+base", "grand+child+base"),
    )


# --- 11. closures ------------------------------------------------------------------------

CLOSURE = """
    def make(step):
        count = 0
        def handler(x):
            nonlocal count
            count += 1
            return x * step + count
        def peek():
            return count
        def bump():
            nonlocal count
            count += 100
        return handler, peek, bump

    handler, peek, bump = make(10)
    other_handler, other_peek, _ = make(1000)

    def make_calc(a, b, c):
        def calc(x):
            return (x + a) * b - c
        return calc

    calc = make_calc(1, 10, 3)
"""

# A replacement that writes a free variable with ``nonlocal`` cannot be a module-level
# function of the payload (``nonlocal`` is a SyntaxError there), so it is written inside
# a helper scope and given the qualname the payload exposes it under.
CLOSURE_SAME_VARS = """
    def _scope():
        count = step = None
        def handler(x):
            nonlocal count
            count += 2
            return x * step * 2 + count
        return handler
    handler = _scope()
    handler.__qualname__ = "handler"
    patch.function("{m}clo1:handler")(handler)
"""


def test_closure_same_free_variables(lab):
    """A closure target whose replacement uses the same free variables is swapped
    directly; ``nonlocal`` writes go to the original cell, shared with the other
    closures of the same factory call (and only those)."""
    mod = lab.module("clo1", CLOSURE)
    cells = mod.handler.__closure__
    assert mod.handler(1) == 11 and mod.peek() == 1
    before = snapshot(mod.handler, mod.other_handler, mod)
    name = lab.load(payload(CLOSURE_SAME_VARS))
    assert func_status(lab, name, ":handler").trampoline is False
    assert mod.handler(1) == 20 + 3  # step still 10, count 1 -> 3
    assert mod.peek() == 3  # the factory's other closure sees the write
    mod.bump()
    assert mod.handler(0) == 105  # and the new code sees the other closure's write
    assert mod.other_handler(1) == 1001 and mod.other_peek() == 1  # another call: untouched
    assert mod.handler.__closure__ is cells
    lab.engine.revert(name)
    assert mod.handler(0) == 106 and mod.peek() == 106
    assert mod.handler.__closure__ is cells
    assert_identical(before, snapshot(mod.handler, mod.other_handler, mod))


@pytest.mark.parametrize(
    "body,expect",
    [
        # subset: only ``b``; by position it would get the cell of ``a`` (1), giving 1 - 1 = 0
        ("return x - b", lambda x: x - 10),
        # another subset, written in another order: ``c`` then ``a``; by position the cells
        # of ``a`` and ``b`` would be used
        ("return x * 1000 + c * 10 + a", lambda x: x * 1000 + 3 * 10 + 1),
        # all of them, written in reverse order (the compiler orders free variables by
        # name, so this one is a direct swap)
        ("return ((c * 100) + (b * 10) + a) * x", lambda x: (300 + 100 + 1) * x),
    ],
)
def test_closure_other_free_variables_by_name(lab, body, expect):
    """A replacement that uses a subset / another order of the target's free variables
    gets their values by *name*, never by position."""
    mod = lab.module("clo2", CLOSURE)
    before = snapshot(mod.calc, mod)
    name = lab.load(
        payload(f"""
        @patch.function("{{m}}clo2:calc")
        def calc(x):
            {body}
    """)
    )
    assert mod.calc(7) == expect(7)
    lab.engine.revert(name)
    assert mod.calc(7) == (7 + 1) * 10 - 3
    assert_identical(before, snapshot(mod.calc, mod))


@pytest.mark.parametrize(
    "body,trampoline,expect",
    [
        # a subset: other free variables than the target's
        ("return x - b", True, 7 - 10),
        # another subset, in another order
        ("return x * 1000 + c * 10 + a", True, 7000 + 30 + 1),
        # the same ones, in another order
        ("return ((c * 100) + (b * 10) + a) * x", False, 401 * 7),
    ],
)
def test_closure_free_variables_decide_trampoline_or_direct_swap(lab, body, trampoline, expect):
    """A replacement whose free variables differ from the target's runs behind a
    trampoline (status says so; the target keeps its free variables and calls the real
    replacement); one with the same free variables in another order is swapped directly:
    ``__code__`` is the payload's compiled code itself."""
    mod = lab.module("clo4", CLOSURE)
    func, original = mod.calc, mod.calc.__code__
    name = lab.load(
        payload(f"""
        @patch.function("{{m}}clo4:calc")
        def calc(x):
            {body}
    """)
    )
    assert func_status(lab, name, ":calc").trampoline is trampoline
    (plan,) = lab.engine._payloads[name].funcs
    payload_files = set(lab.engine._payloads[name].loaded.filenames.values())
    assert mod.calc is func and func.__code__ is plan.variant.code
    assert func.__code__.co_freevars == original.co_freevars == ("a", "b", "c")
    if trampoline:
        real = plan.variant.impl
        assert real is not None and real.__code__.co_freevars != original.co_freevars
        assert real.__code__.co_filename in payload_files
        assert func.__code__.co_filename not in payload_files  # the trampoline's own code
    else:
        assert plan.variant.impl is None
        assert func.__code__.co_filename in payload_files
    assert mod.calc(7) == expect
    lab.engine.revert(name)
    assert func.__code__ is original


def test_closure_subset_with_nonlocal_write(lab):
    """A replacement that uses only some free variables and writes one with ``nonlocal``
    (through the trampoline) still writes the target's own cell."""
    mod = lab.module("clo3", CLOSURE)
    before = snapshot(mod.handler, mod)
    name = lab.load(
        payload("""
        def _scope():
            count = None
            def handler(x):
                nonlocal count
                count += 1000
                return count
            return handler
        handler = _scope()
        handler.__qualname__ = "handler"
        patch.function("{m}clo3:handler")(handler)
    """)
    )
    assert mod.handler(5) == 1000
    assert mod.peek() == 1000
    mod.bump()
    assert mod.handler(5) == 2100
    lab.engine.revert(name)
    assert mod.handler(1) == 10 + 2101 and mod.peek() == 2101
    assert_identical(before, snapshot(mod.handler, mod))


# --- 12. defaults and keyword-only defaults ----------------------------------------------


def test_changed_defaults_and_signature(lab):
    """New defaults, new keyword-only defaults and an added parameter take effect with the
    new code; ``inspect.signature`` shows the new signature, then the old one after revert
    (including ``__kwdefaults__`` going back to ``None``)."""
    mod = lab.module(
        "dflt",
        """
        def fee(amount, rate=2, *, minimum=1):
            return max(amount * rate, minimum)
        def label(x):
            return str(x)
    """,
    )
    old_fee, old_label = str(inspect.signature(mod.fee)), str(inspect.signature(mod.label))
    assert mod.label.__kwdefaults__ is None
    before = snapshot(mod.fee, mod.label, mod)
    name = lab.load(
        payload("""
        @patch.function("{m}dflt:fee")
        def fee(amount, rate=3, surcharge=5, *, minimum=50, cap=1000):
            return min(max(amount * rate + surcharge, minimum), cap)
        @patch.function("{m}dflt:label")
        def label(x, *, prefix="<", suffix=">"):
            return prefix + str(x) + suffix
    """)
    )
    assert (
        str(inspect.signature(mod.fee)) == "(amount, rate=3, surcharge=5, *, minimum=50, cap=1000)"
    )
    assert str(inspect.signature(mod.label)) == "(x, *, prefix='<', suffix='>')"
    assert mod.fee(10) == 50
    assert mod.fee(100) == 305
    assert mod.fee(100, 1, 0, cap=60) == 60
    assert mod.label(1) == "<1>" and mod.label(1, suffix="]") == "<1]"
    lab.engine.revert(name)
    assert str(inspect.signature(mod.fee)) == old_fee == "(amount, rate=2, *, minimum=1)"
    assert str(inspect.signature(mod.label)) == old_label == "(x)"
    assert mod.fee(10) == 20
    with pytest.raises(TypeError):
        mod.fee(100, cap=60)
    assert_identical(before, snapshot(mod.fee, mod.label, mod))


# --- 13. names the new code needs --------------------------------------------------------

TEXT = """
    def base_clean(s):
        return s.strip()

    def words(s):
        return base_clean(s).split()
"""


def test_new_helpers_added_and_removed(lab):
    """Helpers the new code needs (a function, a compiled regex, a module import, a helper
    of a helper) are added to the target module on apply and removed on revert; helpers
    run with the target's globals; a name bound to the target's own object is no clash."""
    mod = lab.module("text", TEXT)
    before = snapshot(mod.words, mod.base_clean, mod)
    name = lab.load(
        payload("""
        import re
        from {m}text import base_clean          # the target's own object: not a clash

        _WORD = re.compile(r"[a-z]+")

        def _lower(s):
            return s.lower()

        def _normalize(s):
            return _lower(base_clean(s))         # a target function, through the target's globals

        @patch.function("{m}text:words")
        def words(s):
            return _WORD.findall(_normalize(re.sub(r"[0-9]", "", s)))
    """)
    )
    assert mod.words("  Hello, W0rld 42 ") == ["hello", "wrld"]
    for added in ("_WORD", "_normalize", "_lower", "re"):
        assert added in vars(mod), added
    assert mod._normalize.__globals__ is vars(mod)
    assert mod._normalize.__module__ == mod.__name__
    assert hasattr(mod._WORD, "findall")
    assert mod.base_clean is before[1][0]
    lab.engine.revert(name)
    for added in ("_WORD", "_normalize", "_lower", "re"):
        assert added not in vars(mod), added
    assert mod.words("  Hello, W0rld 42 ") == ["Hello,", "W0rld", "42"]
    assert_identical(before, snapshot(mod.words, mod.base_clean, mod))


def test_helper_calls_patched_target_function(lab):
    """A helper that calls a target-module function runs with the target's globals, so it
    reaches the *patched* version of that function when the same payload patches it."""
    mod = lab.module("text2", TEXT)
    before = snapshot(mod.words, mod.base_clean, mod)
    name = lab.load(
        payload("""
        def _shout(s):
            return base_clean(s) + "!"

        @patch.function("{m}text2:base_clean")
        def base_clean_v2(s):
            return s.strip().upper()

        @patch.function("{m}text2:words")
        def words_v2(s):
            return [_shout(s)]
    """)
    )
    assert mod.words(" ab ") == ["AB!"]
    lab.engine.revert(name)
    assert "_shout" not in vars(mod)
    assert mod.words(" ab ") == ["ab"]
    assert_identical(before, snapshot(mod.words, mod.base_clean, mod))


def test_new_code_calls_replaced_function_by_name(lab):
    """spec §2: the new code sees the module's other functions, patched or not. A payload
    replacing ``price`` and ``checkout`` (whose new code calls ``price``), and a recursive
    replacement calling itself, are ordinary payloads, not name clashes."""
    mod = lab.module(
        "two",
        """
        def price(x):
            return x * 2
        def checkout(x):
            return price(x) + 1
        def fact(n):
            return 1 if n <= 1 else n * fact(n - 1)
    """,
    )
    before = snapshot(mod.price, mod.checkout, mod.fact, mod)
    name = lab.load(
        payload("""
        @patch.function("{m}two:price")
        def price(x):
            return x * 3
        @patch.function("{m}two:checkout")
        def checkout(x):
            return price(x) + 2
        @patch.function("{m}two:fact")
        def fact(n):
            return 1 if n <= 1 else n * fact(n - 1) + 1
    """)
    )
    assert mod.checkout(1) == 5
    assert mod.fact(3) == 3 * (2 * 1 + 1) + 1
    lab.engine.revert(name)
    assert_identical(before, snapshot(mod.price, mod.checkout, mod.fact, mod))


CLASH_TARGET = """
    def _helper(s):
        return s.strip()

    def clean(s):
        return _helper(s)
"""

CLASH_PAYLOAD = """
    def _helper(s):
        return s.upper()

    @patch.function("{m}clash:clean")
    def clean(s):
        return _helper(s) + "!"
"""


def test_helper_name_clash_refused_at_upload(lab):
    """A payload helper whose name the target module already binds to a different object
    (which the new code would then see instead) is refused with ``exists`` at upload, and
    the process is unchanged; pack refuses it too."""
    mod = lab.module("clash", CLASH_TARGET)
    before = snapshot(mod.clean, mod._helper, mod)
    with pytest.raises(LivepatchError) as packed:
        lab.pack(payload(CLASH_PAYLOAD))
    assert packed.value.code == "exists"
    # Packed against the source tree, pack cannot see the live objects: upload must catch it.
    data = lab.pack(payload(CLASH_PAYLOAD), against=str(lab.root))
    since = max((e.seq for e in lab.engine.history()), default=0)
    with pytest.raises(LivepatchError) as exc:
        lab.engine.upload("fix", data)
    assert exc.value.code == "exists"
    assert "_helper" in exc.value.message
    assert lab.engine.list() == []
    assert mod.clean(" a ") == "a"
    assert_identical(before, snapshot(mod.clean, mod._helper, mod))
    finished = [e for e in lab.engine.history(since) if e.kind == "finished"]
    assert finished and finished[-1].detail.get("error") == "exists"


# --- 14. data targets --------------------------------------------------------------------


def test_data_targets(lab):
    """Module constants and class attributes are replaced by value on apply and restored
    (the same objects) on revert; data targets that did not exist are removed."""
    mod = lab.module(
        "cfg",
        """
        LIMIT = 1000
        NAMES = ("a", "b")

        class Config:
            RATE = 2.5
            def charge(self, x):
                return x * self.RATE

        def allowed(n):
            return n <= LIMIT

        def flag():
            return globals().get("NEW_FLAG", "unset")
    """,
    )
    limit, names, rate = mod.LIMIT, mod.NAMES, vars(mod.Config)["RATE"]
    before = snapshot(mod.allowed, mod.Config, mod)
    name = lab.load(
        payload("""
        patch.data("{m}cfg:LIMIT", 5)
        patch.data("{m}cfg:NAMES", ("x",))
        patch.data("{m}cfg:Config.RATE", 0.5)
        patch.data("{m}cfg:NEW_FLAG", "on")
        patch.data("{m}cfg:Config.EXTRA", 7)
    """)
    )
    assert mod.LIMIT == 5 and mod.allowed(6) is False
    assert mod.NAMES == ("x",)
    assert mod.Config().charge(10) == 5.0
    assert mod.flag() == "on"
    assert mod.Config.EXTRA == 7
    assert set(lab.engine.status(name).data) == {
        f"{lab.prefix}cfg:{t}"
        for t in ("LIMIT", "NAMES", "Config.RATE", "NEW_FLAG", "Config.EXTRA")
    }
    lab.engine.revert(name)
    assert mod.LIMIT is limit and mod.NAMES is names and vars(mod.Config)["RATE"] is rate
    assert "NEW_FLAG" not in vars(mod) and "EXTRA" not in vars(mod.Config)
    assert mod.flag() == "unset" and mod.allowed(6) is True
    assert_identical(before, snapshot(mod.allowed, mod.Config, mod))


# --- 15. unsupported targets -------------------------------------------------------------

UNSUPPORTED = """
    import functools
    import math

    def add(a, b):
        return a + b

    length = len
    root = math.sqrt
    add_one = functools.partial(add, 1)

    class Thing:
        upper = str.upper
        def method(self):
            return 1
"""


def hand_made(lab, module, target: str) -> bytes:
    """An archive written as another tool might (pack refuses these targets itself)."""
    source = "def repl(*args, **kwargs):\n    return 'new'\n"
    tag = python_tag()
    bid, why = live_object_build_id(module)
    assert bid, why
    doc = {
        "format": 1, "name": "fix", "version": "", "description": "", "depends": None,
        "objects": {module.__name__: {tag: bid}},
        "funcs": [{"target": f"{module.__name__}:{target}", "new": "repl", "expect": {tag: "0" * 64}}],
        "data": [], "hooks": {}, "states": [], "replace": False, "consistency": "atomic",
        "metadata": {}, "python": [tag],
    }  # fmt: skip
    files = {"payload/__init__.py": source.encode()}
    return archive.write(archive.seal(doc, files), files)


@pytest.mark.parametrize(
    "target,what",
    [
        ("length", "C function (len)"),
        ("root", "C function (math.sqrt)"),
        ("Thing", "class"),
        ("add_one", "functools.partial"),
        ("Thing.upper", "C method descriptor"),
    ],
)
def test_unsupported_targets_refused(lab, target, what):
    """A target that is not a Python function (a C function, a class, a
    ``functools.partial``) is refused with ``unsupported-target``: by pack, and at upload
    of a payload made elsewhere, leaving no payload and no change."""
    mod = lab.module("unsup", UNSUPPORTED)
    before = snapshot(mod.add, mod.Thing, mod)
    with pytest.raises(LivepatchError) as packed:
        lab.pack(
            payload(f"""
            @patch.function("{{m}}unsup:{target}")
            def repl(*args, **kwargs):
                return "new"
        """)
        )
    assert packed.value.code == "unsupported-target", what
    with pytest.raises(LivepatchError) as exc:
        lab.engine.upload("fix", hand_made(lab, mod, target))
    assert exc.value.code == "unsupported-target", what
    assert target in exc.value.message
    assert lab.engine.list() == []
    assert mod.length("ab") == 2 and mod.add_one(2) == 3
    assert_identical(before, snapshot(mod.add, mod.Thing, mod))


# --- 16. references held elsewhere -------------------------------------------------------

REFS = """
    import functools

    def price(x):
        return x * 2

    class Shop:
        def __init__(self, factor):
            self.factor = factor
        def scale(self, x):
            return x * self.factor

    @functools.singledispatch
    def describe(obj):
        return "thing"

    @describe.register(int)
    def describe_int(obj):
        return f"int {obj}"

    class Registry:
        def __init__(self):
            self.callbacks = {}
        def on(self, event):
            def add(fn):
                self.callbacks[event] = fn
                return fn
            return add
        def fire(self, event, *args):
            return self.callbacks[event](*args)

    registry = Registry()
    HANDLERS = {}

    @registry.on("paid")
    def on_paid(amount):
        return f"paid {amount}"

    HANDLERS["paid"] = on_paid

    def work(out):
        out.append("old")
"""


def test_reference_via_from_import_alias(lab):
    """``from mod import f`` in another module (and calls through it) see the new code."""
    mod = lab.module("refs1", REFS)
    user = lab.module(
        "user1",
        f"""
        from {lab.prefix}refs1 import price
        from {lab.prefix}refs1 import price as cost
        def checkout(x):
            return price(x) + 1
    """,
    )
    before = snapshot(mod.price, mod, user)
    name = lab.load(
        payload("""
        @patch.function("{m}refs1:price")
        def price(x):
            return x * 3
    """)
    )
    assert user.price(1) == 3 and user.cost(1) == 3 and user.checkout(1) == 4
    lab.engine.revert(name)
    assert user.checkout(1) == 3
    assert_identical(before, snapshot(mod.price, mod, user))


def test_reference_via_bound_method_and_partial(lab):
    """A bound method stored in a list and ``functools.partial(f, 1)`` made before the apply
    run the new code."""
    mod = lab.module("refs2", REFS)
    shop = mod.Shop(10)
    stored = [shop.scale]
    part = functools.partial(mod.price, 1)
    fn = mod.Shop.__dict__["scale"]
    before = snapshot(fn, mod.price, mod.Shop, mod)
    name = lab.load(
        payload("""
        @patch.function("{m}refs2:Shop.scale")
        def scale(self, x):
            return x * self.factor + 1
        @patch.function("{m}refs2:price")
        def price(x):
            return x * 3
    """)
    )
    assert stored[0](2) == 21
    assert part() == 3
    lab.engine.revert(name)
    assert stored[0](2) == 20 and part() == 2
    assert_identical(before, snapshot(fn, mod.price, mod.Shop, mod))


def test_reference_via_singledispatch_registration(lab):
    """A ``singledispatch`` implementation patched by its module-level name: dispatch (even
    through its cache, warmed before) reaches the new code."""
    mod = lab.module("refs3", REFS)
    assert mod.describe(3) == "int 3" and mod.describe("x") == "thing"
    impl = mod.describe_int
    before = snapshot(impl, mod)
    name = lab.load(
        payload("""
        @patch.function("{m}refs3:describe_int")
        def describe_int(obj):
            return f"integer {obj * 2}"
    """)
    )
    assert mod.describe.dispatch(int) is impl
    assert mod.describe(3) == "integer 6" and mod.describe("x") == "thing"
    lab.engine.revert(name)
    assert mod.describe(3) == "int 3"
    assert_identical(before, snapshot(impl, mod))


def test_reference_via_registry_and_dict(lab):
    """A callback stored in a dict and in a registry object runs the new code."""
    mod = lab.module("refs4", REFS)
    before = snapshot(mod.on_paid, mod.Registry, mod)
    name = lab.load(
        payload("""
        @patch.function("{m}refs4:on_paid")
        def on_paid(amount):
            return f"PAID {amount:.2f}"
    """)
    )
    assert mod.registry.fire("paid", 3) == "PAID 3.00"
    assert mod.HANDLERS["paid"](1) == "PAID 1.00"
    lab.engine.revert(name)
    assert mod.registry.fire("paid", 3) == "paid 3"
    assert_identical(before, snapshot(mod.on_paid, mod.Registry, mod))


def test_reference_via_thread_target(lab):
    """A ``threading.Thread`` made before the apply with a patched target runs the new code
    when it starts after the apply."""
    mod = lab.module("refs5", REFS)
    before = snapshot(mod.work, mod)
    out: list[str] = []
    thread = threading.Thread(target=mod.work, args=(out,))
    name = lab.load(
        payload("""
        @patch.function("{m}refs5:work")
        def work(out):
            out.append("new")
    """)
    )
    thread.start()
    thread.join(5)
    assert out == ["new"]
    lab.engine.revert(name)
    again = threading.Thread(target=mod.work, args=(out,))
    again.start()
    again.join(5)
    assert out == ["new", "old"]
    assert_identical(before, snapshot(mod.work, mod))


# --- 17. name mangling -------------------------------------------------------------------

VAULT = """
    class Vault:
        __fee = 5
        def __init__(self, amount):
            self.__amount = amount
        def __audit(self):
            return "audited"
        def report(self):
            return (self.__amount, self.__fee, self.__audit())
"""


@pytest.mark.parametrize(
    "body",
    [
        # a module-level function of the payload
        """
        @patch.function("{m}vault:Vault.report")
        def report(self):
            return (self.__amount * 2, self.__fee + 1, self.__audit().upper())
    """,
        # a method of a payload class with another name: mangled with the *target's* class
        """
        class _Other:
            @patch.function("{m}vault:Vault.report")
            def report(self):
                return (self.__amount * 2, self.__fee + 1, self.__audit().upper())
    """,
    ],
)
def test_name_mangled_private_attributes(lab, body):
    """``__private`` names in the replacement are mangled with the target class's name,
    as in the original (attributes, class attributes, private methods)."""
    mod = lab.module("vault", VAULT)
    fn = mod.Vault.__dict__["report"]
    vault = mod.Vault(10)
    before = snapshot(fn, mod.Vault, mod)
    name = lab.load(payload(body))
    assert vault.report() == (20, 6, "AUDITED")
    lab.engine.revert(name)
    assert vault.report() == (10, 5, "audited")
    assert_identical(before, snapshot(fn, mod.Vault, mod))


def test_a_wrapper_whose_getattr_raises_something_else_is_followed(lab):
    """A wrapper's ``__getattr__`` may raise KeyError instead of AttributeError for a
    name it lacks (``cache_clear``): it counts as absent, and the function behind
    ``__wrapped__`` is patched."""
    mod = lab.module(
        "oddwrap",
        """
        class Wrapper:
            def __init__(self, fn):
                self.__dict__.update(fn=fn, __wrapped__=fn)

            def __call__(self, *args):
                return self.fn(*args)

            def __getattr__(self, name):
                return self.__dict__["_settings"][name]  # KeyError, not AttributeError

        def _area(r):
            return 3 * r * r

        area = Wrapper(_area)
        """,
    )
    inner = mod.area.__wrapped__
    before = snapshot(inner, mod)
    name = lab.load(
        payload("""
        @patch.function("{m}oddwrap:area")
        def area(r):
            return 314 * r * r // 100
    """)
    )
    assert mod.area(10) == 314
    lab.engine.revert(name)
    assert mod.area(10) == 300
    assert_identical(before, snapshot(inner, mod))
