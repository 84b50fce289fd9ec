"""The tools measured by ``run.py``, each driven through its own documented way of
changing code in a running process, and the worker that measures one tool in a
process of its own (so that import hooks, audit hooks and heaps do not meet).

- pylivepatch: ``engine().load(payload)`` in process (what the agent runs for
  ``pylivepatch load``); the payload is packed beforehand (on the build machine).
- jurigged: ``jurigged.watch()`` on the module's file; the new source is saved and
  the watcher's ``refresh`` runs, which is what its file-system event handler calls.
- IPython autoreload: an ``InteractiveShell`` with ``%load_ext autoreload`` and
  ``%autoreload 2``; the new source is saved and a cell is run (autoreload checks
  before each cell). IPython 9 first tries its "deduperreload" (re-executes only the
  changed definitions); ``%autoreload 2 --full`` is the classic ``superreload``.
- wrapt: ``wrapt.wrap_function_wrapper(module, name, wrapper)`` for each function,
  the wrapper calling the new implementation (monkeypatching).
- plain rebinding: ``setattr(module, name, new_function)``.

    python benchmarks/peers.py update --tool jurigged --heap 2000000 --sizes 1,100
    python benchmarks/peers.py calls

print one JSON object each.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import timeit
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

TOOLS = ["pylivepatch", "jurigged", "ipython", "ipython-full", "wrapt", "rebind"]
LABELS = {
    "pylivepatch": "pylivepatch",
    "jurigged": "jurigged",
    "ipython": "IPython autoreload",
    "ipython-full": "IPython autoreload --full (superreload)",
    "wrapt": "wrapt monkeypatch",
    "rebind": "plain rebinding",
}
# The target: modules of 100 functions. Each size of change gets modules of its own
# (1: module 0, 100: module 1, 1,000: modules 2-11, 5,000: modules 12-61), so that no
# change has to be undone before the next one (for jurigged and IPython an undo costs
# as much as the change).
PER_MODULE = 100
SIZES = (1, 100, 1000, 5000)
MODULES = sum(-(-n // PER_MODULE) for n in SIZES)


def module_name(m: int) -> str:
    return f"lpb_t{m:02d}"


def source(changed: int) -> str:
    """A target module: ``PER_MODULE`` functions, the first ``changed`` of them in the
    new version (``x - i - 1``), the others as imported (``x + i + 1``)."""
    return "".join(
        f"def f{i}(x):\n    return x {'-' if i < changed else '+'} {i + 1}\n\n"
        for i in range(PER_MODULE)
    )


def first_module(n: int) -> int:
    """The first module of the change of ``n`` functions."""
    before = [k for k in SIZES if k < n] if n in SIZES else list(SIZES)
    return sum(-(-k // PER_MODULE) for k in before)


def spread(size: int, count: int | None = None) -> list[tuple[int, int]]:
    """(module, functions changed in it) for the first ``count`` (all: None) functions
    of the change of ``size`` functions (fewer: a size measured in part)."""
    first, n = first_module(size), size if count is None else count
    return [(first + j, min(PER_MODULE, n - j * PER_MODULE)) for j in range(-(-n // PER_MODULE))]


def new_functions(changed: int) -> str:
    return "".join(f"def f{i}(x):\n    return x - {i + 1}\n\n" for i in range(changed))


def payload(size: int, n: int, name: str) -> str:
    body = ["import pylivepatch as lp", f"patch = lp.Patch({name!r}, consistency='atomic')"]
    for m, k in spread(size, n):
        for i in range(k):
            body += [
                f"@patch.function('{module_name(m)}:f{i}')",
                f"def f{m}_{i}(x):",
                f"    return x - {i + 1}",
            ]
    return "\n".join(body) + "\n"


def write(path: Path, text: str) -> None:
    """Write and move the mtime forward (autoreload compares mtimes)."""
    before = path.stat().st_mtime if path.exists() else 0.0
    path.write_text(text)
    st = path.stat()
    if st.st_mtime <= before + 1:
        os.utime(path, (st.st_atime, before + 2))


class Ticker(threading.Thread):
    """Runs Python code in a tight loop; keeps every gap over 0.2 ms between iterations."""

    def __init__(self) -> None:
        super().__init__(name="ticker", daemon=True)
        self.stop = threading.Event()
        self.gaps: list[tuple[int, int]] = []

    def run(self) -> None:
        last = time.perf_counter_ns()
        while not self.stop.is_set():
            now = time.perf_counter_ns()
            if now - last > 200_000:
                self.gaps.append((last, now))
            last = now

    def longest(self, start: int, end: int) -> int:
        return max((b - a for a, b in self.gaps if a <= end and b >= start), default=0)


# --- the tools ------------------------------------------------------------------------


class Tool:
    """Applies a change of the first ``n`` functions of the target (spread over the
    modules, 100 a module) and undoes it, through one tool."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.size = 0  # the size of change being measured (its modules)

    def path(self, m: int) -> Path:
        return self.root / f"{module_name(m)}.py"

    def setup(self) -> list[types.ModuleType]:
        for m in range(MODULES):
            write(self.path(m), source(0))
        importlib.invalidate_caches()
        self.mods = [importlib.import_module(module_name(m)) for m in range(MODULES)]
        return self.mods

    def prepare(self, n: int) -> None:
        """Work done before the change reaches the process (e.g. packing)."""

    def update(self, n: int) -> None:
        raise NotImplementedError

    undo: Callable[[int], None] | None  # put back what update changed (None: not needed)


class Pylivepatch(Tool):
    def setup(self) -> list[types.ModuleType]:
        import pylivepatch as lp

        self.engine = lp.engine()
        self.payloads: dict[int, bytes] = {}
        self.pack_seconds: dict[int, float] = {}
        return super().setup()

    def prepare(self, n: int) -> None:
        from pylivepatch.builder.pack import pack

        src = self.root / f"fix_{n}.py"
        src.write_text(payload(self.size, n, f"fix-{n}"))
        t0 = time.perf_counter()
        self.payloads[n] = pack(src).data
        self.pack_seconds[n] = time.perf_counter() - t0

    def update(self, n: int) -> None:
        self.engine.load(self.payloads[n])

    def undo(self, n: int) -> None:
        self.engine.revert(f"fix-{n}")
        self.engine.unload(f"fix-{n}")


class Jurigged(Tool):
    def setup(self) -> list[types.ModuleType]:
        mods = super().setup()
        import jurigged

        # Not started: the benchmark calls the watcher's refresh itself, as its file
        # event handler does, so that only the update is timed (not inotify + debounce).
        self.watcher = jurigged.watch(
            str(self.root / "*.py"), logger=lambda *a: None, autostart=False
        )
        return mods

    def update(self, n: int) -> None:
        for m, k in spread(self.size, n):
            write(self.path(m), source(k))
            self.watcher.refresh(str(self.path(m)))

    undo = None  # type: ignore[assignment]  # each size has modules of its own


class IPythonAutoreload(Tool):
    full = False

    def setup(self) -> list[types.ModuleType]:
        mods = super().setup()
        from IPython.core.interactiveshell import InteractiveShell

        self.shell = InteractiveShell.instance()
        self.shell.run_line_magic("load_ext", "autoreload")
        self.shell.run_line_magic("autoreload", "2 --full" if self.full else "2")
        self.shell.run_cell("\n".join(f"import {module_name(m)}" for m in range(MODULES)))
        self.baseline = min(self._cell() for _ in range(5))
        return mods

    def _cell(self) -> float:
        t0 = time.perf_counter()
        self.shell.run_cell("pass")
        return time.perf_counter() - t0

    def update(self, n: int) -> None:
        for m, k in spread(self.size, n):
            write(self.path(m), source(k))
        self.shell.run_cell("pass")

    undo = None  # type: ignore[assignment]  # each size has modules of its own


class IPythonFull(IPythonAutoreload):
    full = True


class Wrapt(Tool):
    def setup(self) -> list[types.ModuleType]:
        import wrapt

        self.wrapt = wrapt
        mods = super().setup()
        self.originals = [dict(vars(mod)) for mod in mods]
        return mods

    def news(self, n: int) -> list[tuple[types.ModuleType, str, Any]]:
        out = []
        for m, k in spread(self.size, n):
            mod, ns = self.mods[m], {}
            exec(compile(new_functions(k), str(self.path(m)), "exec"), mod.__dict__, ns)
            out += [(mod, f"f{i}", ns[f"f{i}"]) for i in range(k)]
        return out

    def update(self, n: int) -> None:
        for mod, name, impl in self.news(n):
            self.wrapt.wrap_function_wrapper(
                mod, name, lambda wrapped, instance, args, kwargs, impl=impl: impl(*args)
            )

    def undo(self, n: int) -> None:
        for m, k in spread(self.size, n):
            for i in range(k):
                setattr(self.mods[m], f"f{i}", self.originals[m][f"f{i}"])


class Rebind(Wrapt):
    def update(self, n: int) -> None:
        for mod, name, impl in self.news(n):
            setattr(mod, name, impl)


CLASSES: dict[str, type[Tool]] = {
    "pylivepatch": Pylivepatch,
    "jurigged": Jurigged,
    "ipython": IPythonAutoreload,
    "ipython-full": IPythonFull,
    "wrapt": Wrapt,
    "rebind": Rebind,
}


def available(tool: str) -> bool:
    need = {
        "jurigged": "jurigged",
        "ipython": "IPython",
        "ipython-full": "IPython",
        "wrapt": "wrapt",
    }
    name = need.get(tool)
    return name is None or importlib.util.find_spec(name) is not None


# --- the workers ----------------------------------------------------------------------


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


def update_worker(tool: str, heap: int, sizes: list[int], budget: float) -> dict[str, Any]:
    """Build a heap of ``heap`` GC-tracked objects, then time the update of each size
    (the longest gap a running thread sees during it too). A size whose projected time
    (a + b*n, fitted on the two sizes before) exceeds ``budget`` seconds is measured on
    fewer functions and extrapolated with that fit."""
    t0 = time.perf_counter()
    kept = [[] for _ in range(heap)]  # noqa: F841 - the heap, alive until the end
    built = time.perf_counter() - t0
    import gc

    tmp = tempfile.mkdtemp(prefix="lpb-")
    sys.path.insert(0, tmp)
    driver = CLASSES[tool](Path(tmp))
    mods = driver.setup()
    ticker = Ticker()
    ticker.start()
    # baseline: the longest gap while the main thread just runs Python
    b0 = time.perf_counter_ns()
    busy(0.5)
    baseline_gap = ticker.longest(b0, time.perf_counter_ns())
    rows: list[dict[str, Any]] = []
    for n in sizes:
        measured_n, extrapolated = n, False
        if len(rows) >= 2:  # cost = a + b * n from the last two sizes
            (n1, t1), (n2, t2) = [
                (r["measured_functions"], r["measured_seconds"]) for r in rows[-2:]
            ]
            b = max((t2 - t1) / (n2 - n1), 1e-9) if n2 != n1 else t2 / n2
            a = max(t1 - b * n1, 0.0)
            if a + b * n > budget:
                measured_n = max(n2, min(n, int((budget - a) / b)))
                extrapolated = measured_n < n
        driver.size = n
        driver.prepare(measured_n)
        last_mod, last_k = spread(n, measured_n)[-1]
        probe = getattr(mods[last_mod], f"f{last_k - 1}")  # a reference held from before
        s0 = time.perf_counter_ns()
        driver.update(measured_n)
        s1 = time.perf_counter_ns()
        seconds = (s1 - s0) / 1e9
        if isinstance(driver, IPythonAutoreload):
            seconds = max(0.0, seconds - driver.baseline)
        gap = ticker.longest(s0, s1)
        current = getattr(mods[last_mod], f"f{last_k - 1}")
        first = mods[spread(n, measured_n)[0][0]]
        applied = current(0) == -last_k and first.f0(0) == -1
        alias_new = probe(0) == -last_k
        undone = None
        if driver.undo is not None:
            driver.undo(measured_n)
            undone = getattr(mods[last_mod], f"f{last_k - 1}")(0) == last_k
        total = seconds
        if extrapolated:
            total = a + (seconds - a) / measured_n * n if measured_n else seconds
        rows.append(
            {
                "functions": n,
                "modules": len(spread(n)),
                "measured_functions": measured_n,
                "measured_seconds": seconds,
                "extrapolated": extrapolated,
                "seconds": total,
                "stall_ms": gap / 1e6,
                "applied": applied,
                "alias_runs_new_code": alias_new,
                "undone": undone,
                "pack_seconds": getattr(driver, "pack_seconds", {}).get(measured_n),
            }
        )
    ticker.stop.set()
    return {
        "tool": tool,
        "heap": heap,
        "gc_objects": len(gc.get_objects()),
        "heap_build_seconds": built,
        "baseline_gap_ms": baseline_gap / 1e6,
        "python": sys.version.split()[0],
        "rows": rows,
    }


CALL_TARGET = """
def plain(x):
    return x + 1

def patched(x):
    return x + 2

def make():
    a, b = 1, 0
    def closure(x):
        return x + a + b
    return closure

tramp = make()

def jur(x):
    return x + 2

def ipy(x):
    return x + 2

def wrapper(x):
    return plain(x)
"""

CALL_FIX = """
import pylivepatch as lp
patch = lp.Patch("calls", consistency="atomic")

@patch.function("lpb_calls:patched")
def patched(x):
    return x + 1

@patch.function("lpb_calls:tramp")
def tramp(x):
    return x + a
"""


def calls_worker(rounds: int, number: int) -> dict[str, Any]:
    """Steady-state call cost of a one-line function after each tool changed it."""
    import pylivepatch as lp
    from pylivepatch.builder.pack import pack

    tmp = Path(tempfile.mkdtemp(prefix="lpb-calls-"))
    sys.path.insert(0, str(tmp))
    write(tmp / "lpb_calls.py", CALL_TARGET)
    importlib.invalidate_caches()
    mod = importlib.import_module("lpb_calls")
    (tmp / "fix.py").write_text(CALL_FIX)
    lp.engine().load(pack(tmp / "fix.py").data)
    variants: dict[str, Callable[[int], int]] = {
        "never patched": mod.plain,
        "pylivepatch (in place)": mod.patched,
        "pylivepatch (trampoline: closure changed)": mod.tramp,
    }
    notes = {}
    try:
        import jurigged

        watcher = jurigged.watch(str(tmp / "lpb_calls.py"), logger=lambda *a: None, autostart=False)
        jur = mod.jur
        write(
            tmp / "lpb_calls.py",
            CALL_TARGET.replace("def jur(x):\n    return x + 2", "def jur(x):\n    return x + 1"),
        )
        watcher.refresh(str(tmp / "lpb_calls.py"))
        assert jur(1) == 2, "jurigged patched jur"
        variants["jurigged"] = jur
    except ImportError:
        notes["jurigged"] = "not installed"
    try:
        from IPython.core.interactiveshell import InteractiveShell

        shell = InteractiveShell.instance()
        shell.run_line_magic("load_ext", "autoreload")
        shell.run_line_magic("autoreload", "2")
        shell.run_cell("import lpb_calls")
        ipy = mod.ipy
        text = (tmp / "lpb_calls.py").read_text()
        write(
            tmp / "lpb_calls.py",
            text.replace("def ipy(x):\n    return x + 2", "def ipy(x):\n    return x + 1"),
        )
        shell.run_cell("pass")
        assert ipy(1) == 2, "IPython autoreload patched ipy"
        variants["IPython autoreload"] = ipy
    except ImportError:
        notes["ipython"] = "not installed"
    variants["plain wrapper function"] = mod.wrapper
    try:
        import wrapt

        variants["wrapt FunctionWrapper"] = wrapt.FunctionWrapper(
            mod.plain, lambda wrapped, instance, args, kwargs: wrapped(*args, **kwargs)
        )
    except ImportError:
        notes["wrapt"] = "not installed"
    assert all(f(1) == 2 for f in variants.values()), {k: f(1) for k, f in variants.items()}
    # CPU time of this process: time the machine gives to other processes is not counted
    timers = {
        k: timeit.Timer("f(1)", globals={"f": f}, timer=time.process_time)
        for k, f in variants.items()
    }
    best = {k: float("inf") for k in variants}
    for _ in range(rounds):  # interleaved
        for k, t in timers.items():
            best[k] = min(best[k], t.timeit(number) / number * 1e9)
    return {"python": sys.version.split()[0], "ns": best, "notes": notes}


def main() -> int:
    # the workers' module directories go when the process ends
    tempfile.tempdir = tempfile.mkdtemp(prefix="lpb-")
    atexit.register(shutil.rmtree, tempfile.tempdir, True)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    up = sub.add_parser("update")
    up.add_argument("--tool", choices=TOOLS, required=True)
    up.add_argument("--heap", type=int, default=200_000)
    up.add_argument("--sizes", default="1,100,1000,5000")
    up.add_argument("--budget", type=float, default=600.0)
    ca = sub.add_parser("calls")
    ca.add_argument("--rounds", type=int, default=25)
    ca.add_argument("--number", type=int, default=500_000)
    args = ap.parse_args()
    if args.what == "update":
        sizes = [int(s) for s in args.sizes.split(",")]
        out = update_worker(args.tool, args.heap, sizes, args.budget)
    else:
        out = calls_worker(args.rounds, args.number)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
