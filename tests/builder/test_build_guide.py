"""The guide's worked examples of refusals an author resolves (docs/patch-author-guide.md,
"Resolving a refusal"): each ``<!-- build-hooks: ARGS -->`` block is what the builder
prints, and the payload it builds behaves in a process whose objects predate it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = str(ROOT / "src")


def build_blocks() -> list[tuple[str, str]]:
    guide = (ROOT / "docs" / "patch-author-guide.md").read_text()
    return re.findall(r"<!-- build-hooks: (.*?) -->\n```text\n(.*?)```", guide, re.S)


def build(tmp_path: Path, args: str) -> subprocess.CompletedProcess[str]:
    argv = args.split()
    name = argv[argv.index("--name") + 1]
    out = subprocess.run(
        [sys.executable, "-m", "pylivepatch", "build", *argv, "-o", f"{name}.lpz"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=SRC), timeout=300,
        cwd=tmp_path / "builder",
    )  # fmt: skip
    out.stdout = re.sub(r"build id [0-9a-f]{16}", "build id BUILD_ID", out.stdout)
    out.stdout = re.sub(r"python 3\.\d+", "python 3.11", out.stdout)
    return out


def run_old(tmp_path: Path, script: str) -> list[str]:
    """Run ``script`` in a process importing shop-1.0 (the running version)."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([SRC, str(tmp_path / "builder" / "shop-1.0")])
    )
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
        env=env, timeout=120, cwd=tmp_path / "builder",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.splitlines()


def test_the_guide_shows_what_the_builder_prints_for_each_worked_example(tmp_path):
    shutil.copytree(ROOT / "examples" / "builder", tmp_path / "builder")
    blocks = build_blocks()
    assert len(blocks) == 4
    for args, shown in blocks:
        out = build(tmp_path, args)
        assert out.stdout == shown, args
        assert out.returncode == (1 if "REFUSED" in shown else 0), out.stderr


def test_instance_state_resolved_by_a_hook_old_sessions_log_in(tmp_path):
    shutil.copytree(ROOT / "examples" / "builder", tmp_path / "builder")
    args = (
        "shop-1.0 shop-1.1-session --name fix-login-2 --allow instance-state "
        "--hooks hooks/session_default.py"
    )
    assert build(tmp_path, args).returncode == 0
    lines = run_old(
        tmp_path,
        """
        import types, pylivepatch, shop.auth as auth
        user = types.SimpleNamespace(hash=auth.hash_password("pw", b"s"), salt=b"s")
        old = auth.Session(user)                  # alive before the patch
        e = pylivepatch.engine()
        e.load("fix-login-2.lpz")
        print("old session", old.login("pw"), old.login("bad"), "locked_until" in vars(old))
        new = auth.Session(user)
        print("new session", new.login("pw"), vars(new)["locked_until"])
        for _ in range(5):
            old.login("bad")
        print("old session locked", old.login("pw"), old.locked_until > 0)
        e.revert("fix-login-2")
        print("reverted", "locked_until" in vars(auth.Session), auth.MAX_TRIES)
        """,
    )
    assert lines == [
        "old session True False False",  # the class default answers for it, no AttributeError
        "new session True 0.0",
        "old session locked False True",  # the fix reaches sessions that predate it
        "reverted False 5",
    ]


def test_captured_constant_resolved_by_a_hook_and_a_state(tmp_path):
    shutil.copytree(ROOT / "examples" / "builder", tmp_path / "builder")
    args = (
        "shop-1.0 shop-1.0.1 --name fix-redirect --allow captured-constant "
        "--hooks hooks/redirect_default.py"
    )
    assert build(tmp_path, args).returncode == 0
    lines = run_old(
        tmp_path,
        """
        import pylivepatch, shop.headers as h
        sent = {"Authorization": "a", "Cookie": "c", "Accept": "x"}
        before = h.DEFAULT.strip
        print("before", sorted(h.DEFAULT.redirect_headers(sent)))
        e = pylivepatch.engine()
        e.load("fix-redirect.lpz")
        print("patched", sorted(h.DEFAULT.redirect_headers(sent)), sorted(h.Policy().strip))
        e.revert("fix-redirect")
        print("reverted", sorted(h.DEFAULT.redirect_headers(sent)), h.DEFAULT.strip is before)
        """,
    )
    assert lines == [
        "before ['Accept', 'Cookie']",  # the vulnerable release sends the cookie on
        "patched ['Accept'] ['Authorization', 'Cookie']",
        "reverted ['Accept', 'Cookie'] True",
    ]


def test_without_the_hook_the_copy_stays_old(tmp_path):
    """What the refusal protects against: --allow without the hook builds a payload
    that leaves DEFAULT, the object every redirect uses, vulnerable."""
    shutil.copytree(ROOT / "examples" / "builder", tmp_path / "builder")
    out = build(tmp_path, "shop-1.0 shop-1.0.1 --name fix-redirect --allow captured-constant")
    assert out.returncode == 0
    lines = run_old(
        tmp_path,
        """
        import pylivepatch, shop.headers as h
        pylivepatch.engine().load("fix-redirect.lpz")
        sent = {"Authorization": "a", "Cookie": "c"}
        print(sorted(h.Policy().redirect_headers(sent)), sorted(h.DEFAULT.redirect_headers(sent)))
        """,
    )
    assert lines == ["[] ['Cookie']"]
