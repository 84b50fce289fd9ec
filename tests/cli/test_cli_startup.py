"""What a command line and an idle agent import: only what they need (issue 24).

A short command's time is mostly its imports, and an idle agent's memory mostly the
modules it holds: these tests check the mechanism (which modules stay unimported), not
a time or a size; benchmarks/bench_cli.py measures both.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pylivepatch import Client

SRC = str(Path(__file__).resolve().parents[2] / "src")

#: never imported by building the parser and parsing a command line
NOT_FOR_PARSING = (
    "typing", "json", "pathlib", "dataclasses", "concurrent.futures", "logging", "tempfile",
    "socket", "pylivepatch.cli.remote", "pylivepatch.cli.fleet", "pylivepatch.client",
    "pylivepatch.control",
    "pylivepatch.payload.archive", "pylivepatch.agent.protocol", "pylivepatch.engine",
)  # fmt: skip
#: never imported by an agent that only waits (nor by a ping to it)
NOT_FOR_AN_IDLE_AGENT = (
    "typing", "pathlib", "dataclasses", "logging", "base64", "inspect", "zipfile",
    "hashlib", "pylivepatch.agent.store", "pylivepatch.payload.archive", "pylivepatch.engine",
    "pylivepatch.client", "pylivepatch.results",
)  # fmt: skip


def _run(code: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=SRC, **env), cwd=cwd,
    )  # fmt: skip


def _imported(names: tuple[str, ...], stdout: str) -> list[str]:
    """Which of ``names`` the last line of ``stdout`` lists (modules printed without
    json, which is one of them), less those of a line ``argparse: ...``, if any: what
    argparse imports by itself (3.14's, dataclasses for its colours)."""
    lines = stdout.splitlines()
    own = [line.split()[1:] for line in lines if line.startswith("argparse: ")]
    modules = set(lines[-1].split()) - set(own[0] if own else ())
    return [n for n in names if n in modules]


@pytest.mark.parametrize(
    "argv",
    [["load", "fix.lpz", "-p", "1"], ["revert", "fix", "--app", "shop"], ["ps"],
     ["fleet", "status", "--app", "shop", "-i", "hosts"], ["--help"]],
)  # fmt: skip
def test_the_command_line_imports_a_verb_s_modules_only_when_it_runs(argv: list[str]) -> None:
    out = _run(f"""
        import argparse, sys
        argparse.ArgumentParser(prog="x").parse_args([])
        argparse.ArgumentParser(prog="x").format_help()
        print("argparse:", *sorted(sys.modules))
        from pylivepatch import cli
        try:
            cli._parse(cli._parser(), {argv!r})
        except SystemExit:  # --help
            pass
        print(*sorted(sys.modules))
    """)
    assert out.returncode == 0, out.stderr
    assert _imported(NOT_FOR_PARSING, out.stdout) == []


def test_the_package_itself_imports_nothing_heavy() -> None:
    out = _run("""
        import sys
        import pylivepatch
        print(*sorted(sys.modules))
    """)
    assert out.returncode == 0, out.stderr
    assert _imported(NOT_FOR_PARSING, out.stdout) == []


def test_every_public_name_still_imports() -> None:
    out = _run("""
        import pylivepatch
        from pylivepatch import *  # noqa: F403
        for name in pylivepatch.__all__:
            getattr(pylivepatch, name)
        print("ok", pylivepatch.__version__, callable(pylivepatch.engine))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", "0.1.0", "True"]


def test_one_process_needs_no_thread_pool() -> None:
    out = _run("""
        import sys
        import pylivepatch.cli.remote
        print(*sorted(sys.modules))
    """)
    assert out.returncode == 0, out.stderr
    assert _imported(("concurrent.futures", "logging", "pylivepatch.agent.store"), out.stdout) == []


@pytest.mark.parametrize("app", ["", "startup-app"])
def test_an_idle_agent_imports_only_what_it_needs_to_wait(app: str) -> None:
    """Started (with an app that has nothing installed, or none) and pinged: the store,
    the engine, the payload reader and what only they need stay unimported; a load
    then imports them and works."""
    target = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            import pylivepatch
            pylivepatch.start({app!r} or None)
            print("ready", flush=True)
            for line in sys.stdin:
                print(*sorted(sys.modules), flush=True)
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=SRC),
    )  # fmt: skip
    assert target.stdin is not None and target.stdout is not None
    try:
        assert target.stdout.readline().strip() == "ready"
        assert Client(target.pid, timeout=60).ping()["app"] == app
        target.stdin.write("modules\n")
        target.stdin.flush()
        assert _imported(NOT_FOR_AN_IDLE_AGENT, target.stdout.readline()) == []
        assert Client(target.pid, timeout=60).list() == []  # a request that needs the engine
        target.stdin.write("modules\n")
        target.stdin.flush()
        modules = target.stdout.readline().split()
        assert "pylivepatch.engine" in modules, modules
    finally:
        target.stdin.close()
        target.wait()


@pytest.mark.parametrize("tmpdir", ["", "{tmp}", "{tmp}/absent", "relative", "{tmp}/a-file"])
def test_without_xdg_runtime_dir_the_socket_directory_is_tempfile_s(
    tmpdir: str, tmp_path: Path
) -> None:
    """The agent finds ``tempfile.gettempdir()`` without importing tempfile, and finds
    what tempfile finds: ``$TMPDIR`` when a file can be made there, else the next."""
    (tmp_path / "relative").mkdir()
    (tmp_path / "a-file").write_text("")
    out = _run(
        """
        import os, sys
        from pylivepatch.agent import protocol
        ours = protocol.socket_directory()
        before = "tempfile" in sys.modules
        import tempfile
        theirs = os.path.join(tempfile.gettempdir(), f"pylivepatch-{os.getuid()}")
        tempfile.tempdir = os.getcwd()  # a program's own choice is kept
        print(before, ours == theirs, protocol.temporary_directory() == os.getcwd(), ours)
        """,
        cwd=tmp_path, XDG_RUNTIME_DIR="", PYLIVEPATCH_SOCKET_DIR="", TEMP="", TMP="",
        TMPDIR=tmpdir.format(tmp=tmp_path),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:3] == ["False", "True", "True"], out.stdout
