"""Shadow variables (spec §6), after the kernel's test-shadow-vars: get / alloc /
get_or_alloc with a ctor on 3 objects x 2 ids, free with a dtor, free_all; plus what
Python adds: one instance under concurrency, lifetimes tied to weakly referenceable
objects, objects that cannot be weakly referenced, and nothing kept alive by accident."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

import pylivepatch
from pylivepatch import LivepatchError, shadow

ID_A, ID_B = 0x1234, 0x1235


class Obj:
    pass


class Slotted:
    __slots__ = ("x",)


@pytest.fixture(autouse=True)
def clean():
    yield
    for sid in (ID_A, ID_B, 7, 8, 9):
        shadow.free_all(sid)


def test_kernel_scenario_transcript():
    log: list[str] = []
    objs = [Obj(), Obj(), Obj()]

    def ctor(obj, n):
        log.append(f"ctor obj{objs.index(obj)} n={n}")
        return {"n": n}

    def dtor(obj, data):
        log.append(f"dtor obj{objs.index(obj)} n={data['n']}")

    for i, obj in enumerate(objs):
        assert shadow.get(obj, ID_A) is None
        a = shadow.alloc(obj, ID_A, ctor, i)
        b = shadow.get_or_alloc(obj, ID_B, ctor, i + 10)
        assert shadow.get(obj, ID_A) is a and shadow.get(obj, ID_B) is b
        assert shadow.get_or_alloc(obj, ID_B, ctor, 99) is b, "same instance, no second ctor"
    with pytest.raises(LivepatchError) as err:
        shadow.alloc(objs[0], ID_A, ctor, 5)
    assert err.value.code == "exists"
    for obj in objs:
        shadow.free(obj, ID_A, dtor)
        assert shadow.get(obj, ID_A) is None
    shadow.free_all(ID_B)  # without a dtor
    assert all(shadow.get(o, ID_B) is None for o in objs)
    assert log == [
        "ctor obj0 n=0", "ctor obj0 n=10",
        "ctor obj1 n=1", "ctor obj1 n=11",
        "ctor obj2 n=2", "ctor obj2 n=12",
        "dtor obj0 n=0", "dtor obj1 n=1", "dtor obj2 n=2",
    ]  # fmt: skip


def test_default_data_and_free_all_with_dtor():
    objs = [Obj() for _ in range(4)]
    for obj in objs:
        shadow.alloc(obj, 7)["seen"] = True
    freed = []
    shadow.free_all(7, lambda obj, data: freed.append((obj, data)))
    assert [o for o, _ in freed] == objs and all(d == {"seen": True} for _, d in freed)


def test_a_ctor_that_raises_attaches_nothing():
    obj = Obj()

    def bad(obj):
        raise ValueError("no")

    with pytest.raises(ValueError):
        shadow.get_or_alloc(obj, 7, bad)
    assert shadow.get(obj, 7) is None
    assert shadow.get_or_alloc(obj, 7, lambda o: "ok") == "ok"


def test_one_instance_per_pair_under_concurrency():
    obj = Obj()
    calls = []
    barrier = threading.Barrier(16)
    results = []

    def ctor(o):
        calls.append(threading.get_ident())
        return object()

    def worker():
        barrier.wait()
        for _ in range(200):
            results.append(shadow.get_or_alloc(obj, 8, ctor))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len({id(r) for r in results}) == 1 and results[0] is shadow.get(obj, 8)


def test_entries_die_with_their_object_and_keep_nothing_alive():
    obj = Obj()
    shadow.alloc(obj, 9, lambda o: [1, 2, 3])
    gone = weakref.ref(obj)
    size = len(shadow._registry)
    del obj
    gc.collect()
    assert gone() is None, "the registry kept the object alive"
    assert len(shadow._registry) == size - 1, "the entry died with its object"


def test_a_freed_shadow_releases_an_object_held_strongly():
    import sys

    obj = Slotted()
    base = sys.getrefcount(obj)
    shadow.alloc(obj, 9)
    assert sys.getrefcount(obj) == base + 1, "held while attached (it cannot be weakly referenced)"
    shadow.free(obj, 9)
    assert sys.getrefcount(obj) == base


@pytest.mark.parametrize("make", [lambda: 10**30 + 7, lambda: (1, "x", 2.5), lambda: Slotted()])
def test_objects_that_cannot_be_weakly_referenced(make):
    obj = make()
    with pytest.raises(TypeError):
        weakref.ref(obj)
    shadow.alloc(obj, 9, lambda o: "attached")
    assert shadow.get(obj, 9) == "attached"
    assert shadow.get(make(), 9) is None or make() is obj, "keyed by identity, not equality"
    freed = []
    shadow.free(obj, 9, lambda o, d: freed.append(d))
    assert freed == ["attached"] and shadow.get(obj, 9) is None


def test_the_public_api_names():
    assert pylivepatch.shadow is shadow
    for name in ("get", "alloc", "get_or_alloc", "free", "free_all"):
        assert callable(getattr(shadow, name))
