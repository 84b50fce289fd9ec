"""The call cost of a patched function and the interpreter's function versions.

    python3.12 benchmarks/call_versions.py [--quick] [--json]
    python3.13 benchmarks/call_versions.py [--quick] [--json]

From CPython 3.11 on, a call site specialises for the function it calls, guarded by the
function's ``func_version``. Assigning ``__code__`` (or ``__defaults__``,
``__kwdefaults__``) sets that version to 0. CPython 3.12 gives the function a new one
the next time a call site specialises; 3.13 never does (only ``MAKE_FUNCTION``, the
bytecode of a ``def``, gives a function a version), so every call of a function patched
in place takes the generic path. This measures, in one run and interleaved, the ways a
patched function can be reached:

- never patched (a ``def``);
- patched in place by the engine (what pylivepatch does), and then reverted;
- a new function object made by ``types.FunctionType`` (the public constructor);
- a new function object made by ``MAKE_FUNCTION`` (a ``def`` around the new code):
  called through the new object, and through an alias of the old object (still
  patched in place: what every reference the engine cannot rebind would see);
- diagnostic only, never done by pylivepatch: the patched function's private
  ``func_version`` written with ctypes.

``--json`` prints one JSON object (``run.py`` reads it).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import sys
import tempfile
import textwrap
import time
import timeit
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import pylivepatch as lp  # noqa: E402
from pylivepatch.builder.pack import pack  # noqa: E402

TARGET = """
def plain(x):
    return x + 1

def patched(x):
    return x + 2          # replaced by 'return x + 1'

def reverted(x):
    return x + 1          # patched, then reverted

def alias_of_old(x):
    return x + 2          # replaced; called through the old object while the module
                          # holds a new one made by MAKE_FUNCTION

def work(items):
    total = 0
    for price, qty in items:
        total += price * qty
    return total

def work_patched(items):
    total = 1             # replaced by the same body as work()
    for price, qty in items:
        total += price * qty
    return total
"""

FIX = """
import pylivepatch as lp
patch = lp.Patch("call-versions", consistency="atomic")

@patch.function("lp_callv:patched")
def patched(x):
    return x + 1

@patch.function("lp_callv:alias_of_old")
def alias_of_old(x):
    return x + 1

@patch.function("lp_callv:work_patched")
def work_patched(items):
    total = 0
    for price, qty in items:
        total += price * qty
    return total
"""

FIX_REVERTED = """
import pylivepatch as lp
patch = lp.Patch("call-versions-revert", consistency="atomic")

@patch.function("lp_callv:reverted")
def reverted(x):
    return x + 3
"""


def made_by_def(code: types.CodeType, globals_: dict[str, Any]) -> types.FunctionType:
    """A function made by ``MAKE_FUNCTION`` (as a ``def`` makes it) for ``code``, which
    must have no free variables."""
    maker_src = compile(
        "def _maker():\n    def _f():\n        pass\n    return _f\n", "<m>", "exec"
    )
    outer = next(c for c in maker_src.co_consts if isinstance(c, types.CodeType))
    inner = next(c for c in outer.co_consts if isinstance(c, types.CodeType))
    outer = outer.replace(co_consts=tuple(code if c is inner else c for c in outer.co_consts))
    fn = types.FunctionType(outer, globals_)()
    assert isinstance(fn, types.FunctionType) and fn.__code__ is code
    return fn


def version_offset() -> int | None:
    """Offset of ``func_version`` in a function object: the 32-bit field that a ``def``
    sets and assigning ``__code__`` clears (None where it cannot be told: 3.10/3.11)."""

    def probe(x: int) -> int:
        return x

    fresh = made_by_def(probe.__code__, globals())
    before = {o: ctypes.c_uint32.from_address(id(fresh) + o).value for o in range(16, 256, 4)}
    fresh.__code__ = fresh.__code__
    after = {o: ctypes.c_uint32.from_address(id(fresh) + o).value for o in range(16, 256, 4)}
    found = [o for o in before if before[o] and not after[o]]
    return found[0] if len(found) == 1 else None


def measure(rounds: int, number: int) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="lp-callv-")
    sys.path.insert(0, tmp)
    (Path(tmp) / "lp_callv.py").write_text(textwrap.dedent(TARGET))
    mod = importlib.import_module("lp_callv")
    e = lp.engine()
    for name, src in (("fix.py", FIX), ("fix_r.py", FIX_REVERTED)):
        (Path(tmp) / name).write_text(textwrap.dedent(src))
    old_alias = mod.alias_of_old
    e.load(pack(Path(tmp) / "fix.py").data)
    e.load(pack(Path(tmp) / "fix_r.py").data)
    e.revert("call-versions-revert")
    assert mod.reverted(1) == 2 and mod.patched(1) == 2
    # the module now holds a new object made by MAKE_FUNCTION; old_alias keeps the old
    mod.alias_of_old = made_by_def(old_alias.__code__, mod.__dict__)
    public = types.FunctionType(mod.patched.__code__, mod.__dict__, "public")
    items = [(3, 2), (5, 1), (7, 4), (2, 2), (9, 1)]
    variants: dict[str, tuple[Any, Any]] = {
        "never patched": (mod.plain, 1),
        "patched in place (pylivepatch)": (mod.patched, 1),
        "patched, then reverted (pylivepatch)": (mod.reverted, 1),
        "new object, types.FunctionType": (public, 1),
        "new object, MAKE_FUNCTION": (mod.alias_of_old, 1),
        "  ...its old object through an alias": (old_alias, 1),
        "5-item loop, never patched": (mod.work, items),
        "5-item loop, patched in place": (mod.work_patched, items),
    }
    offset = version_offset()
    if offset is not None:
        # Diagnostic only: the version a def would give this code, written into the
        # patched function's private field (unsupported; pylivepatch never does this).
        hacked = made_by_def(mod.patched.__code__, mod.__dict__)
        twin = types.FunctionType(mod.patched.__code__, mod.__dict__, "twin")
        version = ctypes.c_uint32.from_address(id(hacked) + offset).value
        ctypes.c_uint32.from_address(id(twin) + offset).value = version
        variants["diagnostic: func_version written (ctypes)"] = (twin, 1)
    # CPU time of this process: time the machine gives to other processes is not counted
    timers = {
        k: timeit.Timer("f(a)", globals={"f": f, "a": a}, timer=time.process_time)
        for k, (f, a) in variants.items()
    }
    best = {k: float("inf") for k in variants}
    for _ in range(rounds):  # interleaved: A B C ... A B C ...
        for k, t in timers.items():
            best[k] = min(best[k], t.timeit(number) / number * 1e9)
    e.revert("call-versions")
    return {
        "python": sys.version.split()[0],
        "version_offset": offset,
        "ns": best,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--smoke", action="store_true", help="2 rounds of 2,000 calls: runs, no figures"
    )
    args = ap.parse_args()
    # Many short rounds: on a busy machine the minimum needs clean windows to land in.
    rounds, number = (20, 100_000) if args.quick else (100, 100_000)
    if args.smoke:
        rounds, number = 2, 2_000
    out = measure(rounds, number)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"Python {out['python']}: best of {rounds} interleaved rounds of {number:,} calls")
    base, loop = out["ns"]["never patched"], out["ns"]["5-item loop, never patched"]
    for k, ns in out["ns"].items():
        ref = loop if k.startswith("5-item") else base
        print(f"  {k:<44} {ns:7.1f} ns  x{ns / ref:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
