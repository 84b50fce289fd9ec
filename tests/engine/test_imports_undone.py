"""A refused or failed action leaves the process as it was, modules included (issue 20).

A payload's own code imports a module the process never imported (``import
django.utils.log`` in a Django fix): running that code at upload imports it, its
dependencies, sets it as an attribute of its parent package and may register import
hooks. When the action is refused (a veto, an expectation, a name the new code
lacks) or the payload is unloaded, all of that is taken out again: ``sys.modules``,
the parent package's namespace and ``sys.meta_path`` are what they were. In one
process, and in every process of an app under ``pylivepatch run`` where one process
refuses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pylivepatch import LivepatchError

SRC = str(Path(__file__).resolve().parents[2] / "src")

SHOP = "def price(x):\n    return x * 2\n"

# lib is imported by the program; lib.helper is not. helper imports a top-level module
# (deep) the process never imported either, and puts an import hook on sys.meta_path.
LIB_INIT = "helper = 'the name lib had before'\n"
HELPER = """
import sys
import {m}deep

class Finder:
    def find_spec(self, name, path=None, target=None):
        return None

    def invalidate_caches(self):
        pass

def path_hook(entry):
    raise ImportError(entry)

sys.meta_path.append(Finder())
sys.path_hooks.insert(0, path_hook)
sys.path_importer_cache["/pylivepatch-test-nowhere"] = Finder()

def shout(text):
    return {m}deep.upper(text)
"""
DEEP = "def upper(text):\n    return text.upper()\n"
OTHER = "READY = True\n"

PAYLOAD = """
    import os
    import pylivepatch as lp
    import {m}lib.helper as helper

    patch = lp.Patch({name!r}, consistency="atomic")

    @patch.function("{m}shop:price")
    def price(x):
        return x * 3

    @patch.pre_apply
    def refuse(ctx):
        import {m}lib.other  # the hook's own import: taken out with the payload's
        veto = os.environ.get("VETO_FILE")
        if veto is None:
            return {veto!r} is False
        with open(veto) as f:
            return str(os.getpid()) not in f.read().split()
"""

LACKING = """
    import pylivepatch as lp
    import {m}lib.helper as helper

    patch = lp.Patch("lacking", consistency="atomic")

    @patch.function("{m}shop:price")
    def price(x):
        return no_such_name(x)
"""


def payload(name: str, *, veto: bool) -> str:
    return PAYLOAD.replace("{name!r}", repr(name)).replace("{veto!r}", repr(veto))


@pytest.fixture
def app(lab):
    files = (("deep", DEEP), ("lib.helper", HELPER), ("lib.other", OTHER), ("lib", LIB_INIT))
    for base, text in files:
        path = lab.root.joinpath(*(lab.prefix + base).split(".")).with_suffix(".py")
        if base == "lib":
            path = lab.root / (lab.prefix + "lib") / "__init__.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace("{m}", lab.prefix))
    lab.module("shop", SHOP)
    lib = lab.module("lib", LIB_INIT)  # imported by the program; its helper is not
    for base in ("lib.helper", "lib.other", "deep"):
        lab.modules.append(lab.name(base))
    return lib


def state(lib) -> tuple[frozenset[str], dict[str, object], list[int]]:
    hooks = [*sys.meta_path, *sys.path_hooks, *sys.path_importer_cache.values()]
    return frozenset(sys.modules), dict(vars(lib)), [id(f) for f in hooks]


def assert_same(before, after) -> None:
    assert after[0] == before[0], f"sys.modules changed: {sorted(after[0] ^ before[0])}"
    assert after[1].keys() == before[1].keys()
    for key, value in before[1].items():
        assert after[1][key] is value, f"lib.{key} changed"
    assert after[2] == before[2], "sys.meta_path, sys.path_hooks or the importer cache changed"


def test_a_vetoed_load_takes_out_what_the_payload_imported(lab, app):
    data = lab.pack(payload("vetoed", veto=True))
    before = state(app)
    assert not {lab.name(n) for n in ("lib.helper", "lib.other", "deep")} & before[0]
    with pytest.raises(LivepatchError) as err:
        lab.engine.load(data)
    assert err.value.code == "vetoed"
    assert_same(before, state(app))
    assert app.helper == "the name lib had before"


def test_a_payload_whose_code_fails_after_importing_takes_out_what_it_imported(
    lab, app, monkeypatch
):
    source = (
        payload("boom", veto=False)
        + """
    if os.environ.get("PAYLOAD_BOOM"):
        raise RuntimeError("the payload's own code failed after its imports")
"""
    )
    data = lab.pack(source)
    before = state(app)
    monkeypatch.setenv("PAYLOAD_BOOM", "1")
    with pytest.raises(LivepatchError) as err:
        lab.engine.upload("boom", data)
    assert err.value.code == "invalid-payload" and "failed after its imports" in err.value.message
    assert_same(before, state(app))


def test_an_expectation_refused_at_apply_then_unloaded_takes_out_what_it_imported(lab, app):
    shop = sys.modules[lab.name("shop")]
    data = lab.pack(payload("stale", veto=False))
    before = state(app)
    lab.engine.upload("stale", data)
    original = shop.price.__code__
    shop.price.__code__ = (lambda x: x * 7).__code__  # no longer what it was built against
    try:
        with pytest.raises(LivepatchError) as err:
            lab.engine.apply("stale")
        assert err.value.code == "expectation-failed"
    finally:
        shop.price.__code__ = original
    lab.engine.unload("stale")
    assert_same(before, state(app))


def test_an_unload_takes_out_what_the_payload_imported(lab, app):
    before = state(app)
    lab.engine.upload("kept", lab.pack(payload("kept", veto=False)))
    assert lab.name("lib.helper") in sys.modules and lab.name("deep") in sys.modules
    lab.engine.unload("kept")
    assert_same(before, state(app))


def test_a_module_the_program_took_up_meanwhile_stays(lab, app):
    """While the payload was uploaded, the program's own code imported ``deep`` too
    (its namespace holds it): taking it out would give the program a second copy at its
    next import. It stays; what only the payload held goes."""
    before = state(app)
    lab.engine.upload("shared", lab.pack(payload("shared", veto=False)))
    program = lab.module("user", f"import {lab.prefix}deep as deep\n")
    lab.engine.unload("shared")
    assert sys.modules.get(lab.name("deep")) is program.deep
    assert lab.name("lib.helper") not in sys.modules
    assert dict(vars(app)).keys() == before[1].keys() and app.helper == before[1]["helper"]


EXTENSION = """
    import importlib
    import os
    import pylivepatch as lp
    import {m}lib.helper as helper

    extension = importlib.import_module(os.environ["PAYLOAD_EXTENSION"])
    patch = lp.Patch("extension", consistency="atomic")

    @patch.function("{m}shop:price")
    def price(x):
        return x * 3
"""


def test_an_extension_module_the_payload_imported_stays(lab, app, monkeypatch):
    """An extension module may refuse to be loaded twice in one process (numpy's does):
    it stays, and so does what holds it; the Python modules only the payload held go."""
    import importlib.util

    names = ["_lzma", "_bz2", "mmap", "_uuid", "_zoneinfo", "_multibytecodec", "audioop"]
    free = [
        n
        for n in names
        if n not in sys.modules
        and (spec := importlib.util.find_spec(n)) is not None
        and str(spec.origin).endswith(".so")
    ]
    if not free:
        pytest.skip("every extension module of the list is imported already")
    monkeypatch.setenv("PAYLOAD_EXTENSION", free[0])
    data = lab.pack(EXTENSION)
    sys.modules.pop(free[0], None)  # pack imported it: the process had not
    before = state(app)
    lab.engine.upload("extension", data)
    assert free[0] in sys.modules
    lab.engine.unload("extension")
    assert free[0] in sys.modules
    assert_same((before[0] | {free[0]}, *before[1:]), state(app))


# --- every process of an app ------------------------------------------------------------

PROGRAM = """
import os, signal, sys, time
import {m}shop, {m}lib

def report(signum, frame):
    path = os.path.join({root!r}, "modules-%d" % os.getpid())
    with open(path + ".tmp", "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
        f.write("\\n--lib--\\n" + "\\n".join(sorted(vars({m}lib))))
        f.write("\\n--meta--\\n%d" % len(sys.meta_path))
    os.replace(path + ".tmp", path)

signal.signal(signal.SIGUSR1, report)
children = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        while True:
            time.sleep(0.05)
    children.append(pid)
print("ready", os.getpid(), *children, flush=True)
try:
    sys.stdin.read()
finally:
    for pid in children:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
"""


def _modules_of(root: Path, pid: int) -> str:
    path = root / f"modules-{pid}"
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    for _ in range(2000):  # the handler runs at the process's next bytecode
        if path.exists():
            return path.read_text()
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not report its modules")


def _theirs(report: str) -> list[str]:
    """A process's report without pylivepatch's own modules: the agent imports what a
    request needs at the first such request (the engine at the first action, the store
    at the first upload), and those are no payload's imports."""
    return [line for line in report.split("\n") if not line.startswith("pylivepatch")]


def _cli(lab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pylivepatch", *args], cwd=lab.root, text=True,
        capture_output=True, env=dict(os.environ, PYTHONPATH=SRC), timeout=300,
    )  # fmt: skip


def test_refused_in_one_process_of_an_app_every_process_keeps_its_modules(lab, app):
    appname = f"imports-{lab.prefix}".rstrip("_")
    (lab.root / "fix.lpz").write_bytes(lab.pack(payload("fix-imports", veto=False)))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([SRC, str(lab.root)]),
        VETO_FILE=str(lab.root / "veto"),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pylivepatch", "run", "--app", appname, "--", sys.executable,
         "-c", PROGRAM.replace("{m}", lab.prefix).replace("{root!r}", repr(str(lab.root)))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=lab.root,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdin is not None
        word, *pids_text = proc.stdout.readline().split()
        assert word == "ready"
        pids = [int(p) for p in pids_text]
        for _ in range(2000):  # every process has its agent
            listed = _cli(lab, "ps", "--app", appname).stdout
            if all(str(pid) in listed for pid in pids):
                break
            time.sleep(0.05)
        # The agents start their engine at its first use: pylivepatch's own modules are
        # no payload's imports (and are left out of the comparison: _theirs).
        assert _cli(lab, "list", "--app", appname).returncode == 0
        (lab.root / "veto").write_text(str(pids[-1]))  # the last worker refuses
        before = {pid: _modules_of(lab.root, pid) for pid in pids}
        assert all(lab.name("lib.helper") not in text.split() for text in before.values())
        out = _cli(lab, "load", "fix.lpz", "--app", appname)
        assert out.returncode != 0, out.stdout + out.stderr
        assert "vetoed" in out.stdout + out.stderr
        after = {pid: _modules_of(lab.root, pid) for pid in pids}
        for pid in pids:
            changed = set(_theirs(after[pid])) ^ set(_theirs(before[pid]))
            assert _theirs(after[pid]) == _theirs(before[pid]), (
                f"process {pid}: {sorted(changed)} changed"
            )
        # and with no veto the same payload loads everywhere: the helper is then imported
        (lab.root / "veto").write_text("")
        out = _cli(lab, "load", "fix.lpz", "--app", appname)
        assert out.returncode == 0, out.stdout + out.stderr
        loaded = {pid: _modules_of(lab.root, pid) for pid in pids}
        assert all(lab.name("lib.helper") in text.split() for text in loaded.values())
        assert _cli(lab, "revert", "fix-imports", "--app", appname).returncode == 0
        assert _cli(lab, "unload", "fix-imports", "--app", appname).returncode == 0
        final = {pid: _modules_of(lab.root, pid) for pid in pids}
        for pid in pids:
            changed = set(_theirs(final[pid])) ^ set(_theirs(before[pid]))
            assert _theirs(final[pid]) == _theirs(before[pid]), (
                f"process {pid}: {sorted(changed)} changed"
            )
    finally:
        proc.stdin.close()
        proc.wait(30)
