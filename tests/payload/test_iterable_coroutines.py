"""Generator functions decorated with ``types.coroutine`` (spec §2 fingerprints and object
build id, §5 swapping in place).

The decorator replaces the function's ``__code__`` with a copy flagged
CO_ITERABLE_COROUTINE, a flag the compiler never sets. Fingerprints leave it out, so
what ``pack`` computes in the process and from the source tree (``--against``, the
builder) is the same; the engine puts it on the replacement, so ``await f()`` and
``yield from coroutine`` inside ``f`` keep working before, during and after a swap, and a
revert puts the original code object back.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import textwrap
import types

import pytest

from pylivepatch.builder.build import BuildOptions, build
from pylivepatch.payload import archive
from pylivepatch.payload.fingerprint import fingerprint, live_object_build_id

from conftest import assert_identical, snapshot

CO_ITERABLE_COROUTINE = 0x100

TARGET = """
    import asyncio
    import types

    @types.coroutine
    def tick(n):
        yield                       # a bare yield: one turn of the event loop
        return ("v1", n)

    @types.coroutine
    def legacy(n):                  # a generator-based coroutine delegating to tick
        return (yield from tick(n))

    async def run(n):
        return await tick(n)

    def other(x):
        return x + 1
"""

# The new tick delegates to a native coroutine with ``yield from``, which only a code
# object flagged CO_ITERABLE_COROUTINE may do.
FIX_TICK = """
    import asyncio
    import pylivepatch as lp
    patch = lp.Patch("tick-v2", consistency="{mode}")

    @patch.function("{m}aio:tick")
    def tick(n):
        yield from asyncio.sleep(0)
        return ("v2", n)
"""

FIX_OTHER = """
    import pylivepatch as lp
    patch = lp.Patch("other-v2", consistency="atomic")

    @patch.function("{m}aio:other")
    def other(x):
        return x + 2
"""


def manifest(data: bytes):
    return archive.read(data).manifest


def flagged(func: types.FunctionType) -> bool:
    return bool(func.__code__.co_flags & CO_ITERABLE_COROUTINE)


async def both(mod, n: int) -> list:
    return [await mod.run(n), await mod.legacy(n)]


def test_a_module_using_types_coroutine_packs_with_the_same_ids_live_and_from_source(lab):
    """A payload for another function of the module is not refused: the object build id
    computed in the process equals the one compiled from the source tree."""
    mod = lab.module("aio", TARGET)
    assert flagged(mod.tick) and flagged(mod.legacy)
    live = manifest(lab.pack(FIX_OTHER))
    source = manifest(lab.pack(FIX_OTHER, against=str(lab.root)))
    assert live.objects == source.objects
    assert [f.expect for f in live.funcs] == [f.expect for f in source.funcs]
    bid, why = live_object_build_id(mod)
    assert (bid, why) == (next(iter(live.objects[mod.__name__].values())), "")
    before = snapshot(mod.other, mod.tick, mod)
    name = lab.engine.load(lab.pack(FIX_OTHER)).name
    assert mod.other(1) == 3
    assert asyncio.run(both(mod, 1)) == [("v1", 1), ("v1", 1)]
    lab.engine.revert(name)
    assert mod.other(1) == 2
    assert_identical(before, snapshot(mod.other, mod.tick, mod))


def test_the_expectation_of_an_iterable_coroutine_is_its_source_fingerprint(lab):
    mod = lab.module("aio", TARGET)
    fix = FIX_TICK.replace("{mode}", "atomic")
    live, source = manifest(lab.pack(fix)), manifest(lab.pack(fix, against=str(lab.root)))
    assert [f.expect for f in live.funcs] == [f.expect for f in source.funcs]
    assert live.objects == source.objects
    plain = mod.tick.__code__.replace(co_flags=mod.tick.__code__.co_flags & ~CO_ITERABLE_COROUTINE)
    assert fingerprint(mod.tick.__code__) == fingerprint(plain)


@pytest.mark.parametrize("mode", ["atomic", "transition"])
def test_patched_iterable_coroutine_is_awaited_before_during_and_after(lab, mode):
    """An event loop awaits the function (``await`` and ``yield from``) without pause while
    the payload is applied and reverted from another thread: no call fails, both versions
    run, the replacement carries the flag while applied and the original code object (the
    flagged one) is back after the revert."""
    mod = lab.module("aio", TARGET)
    original = mod.tick.__code__
    before = snapshot(mod.tick, mod.legacy, mod.run, mod)
    data = lab.pack(FIX_TICK.replace("{mode}", mode), against=str(lab.root))
    lab.engine.upload("tick-v2", data)
    results: list[tuple[str, int]] = []
    seen: dict[str, object] = {}

    async def main() -> None:
        stop = asyncio.Event()

        async def client(i: int) -> None:
            while not stop.is_set():
                results.extend(await both(mod, i))

        tasks = [asyncio.create_task(client(i)) for i in range(10)]
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.02)
        applied = await loop.run_in_executor(None, lambda: lab.engine.apply("tick-v2", timeout=10))
        seen["applied"] = (applied.state, flagged(mod.tick), mod.tick.__code__ is original)
        await asyncio.sleep(0.02)
        seen["new"] = await both(mod, -1)
        reverted = await loop.run_in_executor(
            None, lambda: lab.engine.revert("tick-v2", timeout=10)
        )
        seen["reverted"] = reverted.state
        await asyncio.sleep(0.02)
        seen["old"] = await both(mod, -1)
        stop.set()
        await asyncio.gather(*tasks)  # a failed await would raise here

    asyncio.run(main())
    assert seen["applied"] == ("APPLIED", True, False)
    assert seen["new"] == [("v2", -1), ("v2", -1)]
    assert seen["reverted"] == "CHECKED"
    assert seen["old"] == [("v1", -1), ("v1", -1)]
    assert {v for v, _ in results} == {"v1", "v2"}
    assert mod.tick.__code__ is original
    assert_identical(before, snapshot(mod.tick, mod.legacy, mod.run, mod))


def test_a_trampoline_for_an_iterable_coroutine_carries_the_flag(lab):
    """A replacement whose free variables differ (``super()`` appears) runs behind a
    trampoline: both the trampoline and the real replacement are iterable coroutines."""
    mod = lab.module(
        "clock",
        """
        import types

        class Base:
            def label(self, n):
                return ("base", n)

        class Clock(Base):
            @types.coroutine
            def tick(self, n):
                yield
                return ("v1", n)

        async def run(n):
            return await Clock().tick(n)
        """,
    )
    original = mod.Clock.tick.__code__
    name = lab.engine.load(
        lab.pack("""
        import asyncio
        import pylivepatch as lp
        patch = lp.Patch("clock-v2", consistency="atomic")

        class Clock:
            @patch.function("{m}clock:Clock.tick")
            def tick(self, n):
                yield from asyncio.sleep(0)
                return ("v2", super().label(n))
        """)
    ).name
    tramp = mod.Clock.tick.__code__
    assert tramp.co_freevars == () and tramp.co_flags & CO_ITERABLE_COROUTINE
    (impl,) = [c for c in tramp.co_consts if isinstance(c, types.FunctionType)]
    assert flagged(impl)
    assert asyncio.run(mod.run(1)) == ("v2", ("base", 1))
    lab.engine.revert(name)
    assert mod.Clock.tick.__code__ is original
    assert asyncio.run(mod.run(1)) == ("v1", 1)


def test_a_payload_that_applies_types_coroutine_itself_keeps_the_flag_until_revert(lab):
    """The payload's own ``@types.coroutine`` (dropped when the replacement is compiled
    again) still makes the new code an iterable coroutine; the revert puts back the
    original, unflagged code."""
    mod = lab.module(
        "pump",
        """
        def pump(n):
            yield n
        """,
    )
    original = mod.pump.__code__
    name = lab.engine.load(
        lab.pack("""
        import asyncio
        import types
        import pylivepatch as lp
        patch = lp.Patch("pump-v2", consistency="atomic")

        @patch.function("{m}pump:pump")
        @types.coroutine
        def pump(n):
            yield from asyncio.sleep(0)
            return n * 2
        """)
    ).name
    assert flagged(mod.pump)

    async def main() -> int:
        return await mod.pump(4)

    assert asyncio.run(main()) == 8
    lab.engine.revert(name)
    assert mod.pump.__code__ is original and not flagged(mod.pump)
    assert list(mod.pump(3)) == [3]


def test_the_builder_patches_a_module_using_types_coroutine(lab):
    """``pylivepatch build OLD NEW`` compiles both trees without running them; its
    payload (expectations and object build id from OLD's source) is accepted by the
    process running OLD, and the new code can be awaited."""
    pkg = lab.name("pkg")
    old, new = lab.root / "old", lab.root / "new"
    for root, version in ((old, '"v1"'), (new, '"v2"')):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
        (root / pkg / "aio.py").write_text(textwrap.dedent(TARGET).replace('"v1"', version))
    sys.path.insert(0, str(old))
    try:
        importlib.invalidate_caches()
        lab.modules += [pkg, f"{pkg}.aio"]
        mod = importlib.import_module(f"{pkg}.aio")
        original = mod.tick.__code__
        result = build(str(old), str(new), BuildOptions(name="fix", consistency="atomic"))
        assert result.ok, result.refusals
        assert [(c.kind, c.qualname) for c in result.changes] == [("function", "tick")]
        name = lab.engine.load(result.data).name
        assert flagged(mod.tick)
        assert asyncio.run(both(mod, 2)) == [("v2", 2), ("v2", 2)]
        lab.engine.revert(name)
        assert mod.tick.__code__ is original
        assert asyncio.run(both(mod, 2)) == [("v1", 2), ("v1", 2)]
    finally:
        sys.path.remove(str(old))
