"""Shared fixtures: real target modules on disk, payloads packed by the real ``pack``.

``lab`` gives each test a fresh directory on ``sys.path`` and the process engine (left clean after each test);
``lab.module(name, source)`` writes and imports a target module (unique names per test
so tests never share targets), ``lab.pack(source)`` packs a payload module with
``pylivepatch pack``'s code and returns the archive bytes. At the end every payload the
test left is reverted and unloaded and its modules are removed from ``sys.modules``.
"""

from __future__ import annotations

import atexit
import importlib
import itertools
import os
import shutil
import sys
import tempfile
import textwrap
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pylivepatch import LivepatchError, engine
from pylivepatch.builder.pack import pack

_counter = itertools.count()

# Installed payloads and audit logs of every process the tests start go to a directory
# of this test run, never to the user's own state directory.
os.environ["PYLIVEPATCH_STATE_DIR"] = tempfile.mkdtemp(prefix="pylivepatch-state-")
atexit.register(shutil.rmtree, os.environ["PYLIVEPATCH_STATE_DIR"], ignore_errors=True)
# Agents' sockets too: they live in $XDG_RUNTIME_DIR/pylivepatch (agent/protocol.py), so
# every agent the tests start (subprocesses inherit the environment) and every command
# line they run use a directory of this test run; `ps` sees only the tests' processes and
# the user's own agents are never touched.
os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="pylivepatch-run-")
atexit.register(shutil.rmtree, os.environ["XDG_RUNTIME_DIR"], ignore_errors=True)
# The caller's own PYLIVEPATCH_SOCKET_DIR would win over it (and an agent makes its
# directory private): the tests never use it.
os.environ.pop("PYLIVEPATCH_SOCKET_DIR", None)


class Lab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.engine = engine()
        self.modules: list[str] = []
        self.prefix = f"lpt{next(_counter)}_"

    def mark(self) -> int:
        """The history position now (the process engine's history spans tests)."""
        events = self.engine.history()
        return events[-1].seq if events else 0

    def name(self, base: str) -> str:
        """A module name unique to this test: ``lab.name("shop")`` -> ``lpt3_shop``."""
        return self.prefix + base

    def module(self, base: str, source: str) -> types.ModuleType:
        name = self.name(base)
        parts = name.split(".")
        path = self.root.joinpath(*parts[:-1], parts[-1] + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        for i in range(1, len(parts)):
            init = self.root.joinpath(*parts[:i], "__init__.py")
            if not init.exists():
                init.write_text("")
        path.write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        module = importlib.import_module(name)
        self.modules.append(name)
        return module

    def write(self, filename: str, source: str) -> Path:
        path = self.root / filename
        path.write_text(textwrap.dedent(source))
        return path

    def pack(self, source: str, filename: str | None = None, **options: Any) -> bytes:
        """Pack a payload module whose text may use ``{m}`` for the test's module prefix."""
        filename = filename or f"payload_{next(_counter)}.py"
        path = self.write(filename, textwrap.dedent(source).replace("{m}", self.prefix))
        return pack(path, **options).data

    def load(self, source: str, **options: Any) -> str:
        data = self.pack(source)
        result = self.engine.load(data, **options)
        return result.name

    def cleanup(self) -> None:
        applied = sorted(
            (r for r in self.engine._payloads.values() if str(r.state) == "APPLIED"),
            key=lambda r: -r.applied_seq,
        )
        for rec in applied:
            rec.hooks.clear()  # a test's vetoing hook must not keep its payload applied
            try:
                self.engine.revert(rec.name, force=True, consistency="immediate")
            except LivepatchError:
                pass
        for name in list(self.engine._payloads):
            try:
                self.engine.unload(name)
            except LivepatchError:
                pass
        for name in self.modules:
            sys.modules.pop(name, None)


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.cleanup()


def snapshot(*objs: Any) -> list[tuple[Any, ...]]:
    """Everything an action may touch, by identity: functions' code/defaults/kwdefaults,
    namespaces' items."""
    out: list[tuple[Any, ...]] = []
    for obj in objs:
        if isinstance(obj, types.FunctionType):
            out.append((obj, obj.__code__, obj.__defaults__, obj.__kwdefaults__))
        elif isinstance(obj, (types.ModuleType, type)):
            out.append((obj, tuple((k, v) for k, v in vars(obj).items())))
        else:
            raise TypeError(obj)
    return out


def assert_identical(before: list[tuple[Any, ...]], after: list[tuple[Any, ...]]) -> None:
    assert len(before) == len(after)
    for b, a in zip(before, after, strict=True):
        assert b[0] is a[0]
        if isinstance(b[0], types.FunctionType):
            assert a[1] is b[1], f"{b[0].__qualname__}.__code__ changed"
            assert a[2] is b[2], f"{b[0].__qualname__}.__defaults__ changed"
            assert a[3] is b[3], f"{b[0].__qualname__}.__kwdefaults__ changed"
        else:
            bk, ak = dict(b[1]), dict(a[1])
            assert bk.keys() == ak.keys(), f"names of {b[0]!r} changed: {set(bk) ^ set(ak)}"
            for k in bk:
                assert ak[k] is bk[k], f"{b[0]!r}.{k} changed"


class Parked:
    """An argument whose ``*`` (or ``str + it``) blocks: price(Parked()) parks a thread
    inside price's code."""

    def __init__(self) -> None:
        self.inside, self.release = threading.Event(), threading.Event()

    def __mul__(self, other):
        self.inside.set()
        self.release.wait(10)
        return 0

    def __radd__(self, other):  # "text" + parked blocks too
        return self.__mul__(other)


def park(func, name: str) -> tuple[Parked, threading.Thread]:
    arg = Parked()
    t = threading.Thread(target=func, args=(arg,), name=name, daemon=True)
    t.start()
    assert arg.inside.wait(5)
    return arg, t


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Figures tests record with ``record_property("report", text)`` (attach's freeze
    times, for one): printed at the end of the run."""
    lines = [
        f"{report.nodeid.split('::')[-1]}: {value}"
        for report in terminalreporter.stats.get("passed", [])
        if report.when == "call"
        for name, value in report.user_properties
        if name == "report"
    ]
    if lines:
        terminalreporter.section("reported figures")
        for line in lines:
            terminalreporter.write_line(line)


# .ci/run sets PYLIVEPATCH_FRAMEWORK_TESTS=1: there a framework test that skips (uWSGI,
# gevent, Celery, redis-server or Django missing, PyPI out of reach) has lost what it
# tests, so its skip is reported as a failure instead of passing unseen.
_FRAMEWORKS_REQUIRED = os.environ.get("PYLIVEPATCH_FRAMEWORK_TESTS") == "1"


def _a_framework_test(nodeid: str) -> bool:
    return nodeid.split("::")[0].rsplit("/", 1)[-1].startswith("test_frameworks_")


def _skip_is_failure(report: Any) -> None:
    if (
        _FRAMEWORKS_REQUIRED
        and report.skipped
        and not hasattr(report, "wasxfail")  # an expected failure is not a lost test
        and _a_framework_test(report.nodeid)
    ):
        report.outcome = "failed"
        report.longrepr = (
            f"PYLIVEPATCH_FRAMEWORK_TESTS=1 but this test was skipped: {report.longrepr}"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Iterator[None]:
    outcome = yield
    _skip_is_failure(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: Any) -> Iterator[None]:
    outcome = yield
    _skip_is_failure(outcome.get_result())
