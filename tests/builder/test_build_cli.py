"""``pylivepatch build`` as a user meets it: whole transcripts (stdout, stderr, exit
code) and what is on disk afterwards (issue 15: a build that writes nothing exits
non-zero and says why; a built payload says it was built)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pylivepatch", *args], cwd=cwd, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=SRC), timeout=300,
    )  # fmt: skip
    out.stdout = re.sub(r"build id [0-9a-f]{16}", "build id BUILD_ID", out.stdout)
    out.stdout = re.sub(r"python 3\.\d+", "python 3.X", out.stdout)
    return out


def only_allowed(tmp_path: Path) -> tuple[Path, Path]:
    """NEW differs from OLD only by a changed list, which --allow mutable-data accepts."""
    old = tree(tmp_path / "old", {"tab/__init__.py": "", "tab/names.py": "NAMES = ['a']\n"})
    new = tree(tmp_path / "new", {"tab/__init__.py": "", "tab/names.py": "NAMES = ['a', 'b']\n"})
    return old, new


def test_only_allowed_changes_write_nothing_and_exit_non_zero(tmp_path):
    old, new = only_allowed(tmp_path)
    out = cli("build", "old", "new", "-o", "fix.lpz", "--allow", "mutable-data", cwd=tmp_path)
    assert (out.returncode, out.stdout, out.stderr) == (
        1,
        "build fix: old -> new\n"
        "  allowed  tab/names.py:1  mutable-data  tab.names:NAMES: the value changed and is "
        "not an immutable literal (`['a']` -> `['a', 'b']`); code and objects that hold the "
        "old object would keep it (mutate the existing object in a post_apply hook and undo "
        "it in post_revert, then --allow mutable-data)  -- handle it in a hook, a state or "
        "shadow variables\n",
        "pylivepatch: build: nothing to patch: the only changes are the ones --allow accepted "
        "(mutable-data at tab/names.py:1); nothing written. They need a hook, a state or "
        "shadow variables: give that code with --hooks FILE (see docs/patch-author-guide.md)\n",
    )
    assert not (tmp_path / "fix.lpz").exists()


def test_only_allowed_changes_json_is_not_ok_and_exits_non_zero(tmp_path):
    only_allowed(tmp_path)
    out = cli(
        "build", "old", "new", "-o", "fix.lpz", "--allow", "mutable-data", "--json", cwd=tmp_path
    )
    report = json.loads(out.stdout)
    assert (out.returncode, out.stderr, report["ok"], report["output"]) == (1, "", False, None)
    assert report["message"].startswith("nothing to patch: the only changes are the ones --allow")
    assert [a["kind"] for a in report["allowed"]] == ["mutable-data"]
    assert not (tmp_path / "fix.lpz").exists()


FIX = {
    "calc/__init__.py": "",
    "calc/ops.py": "def div(a, b):\n    if b == 0:\n        return None\n    return a / b\n",
}
BUG = {"calc/__init__.py": "", "calc/ops.py": "def div(a, b):\n    return a / b\n"}


def test_a_built_payload_says_it_was_built(tmp_path):
    tree(tmp_path / "old", BUG)
    tree(tmp_path / "new", FIX)
    out = cli("build", "old", "new", "-o", "fix.lpz", cwd=tmp_path)
    assert (out.returncode, out.stdout, out.stderr) == (
        0,
        "build fix: old -> new\n"
        "  patch    calc/ops.py:1  function      calc.ops:div\n"
        "built fix -> fix.lpz: 1 functions, 0 data, python 3.X, build id BUILD_ID\n",
        "",
    )
    shown = cli("inspect", "fix.lpz", "--json", cwd=tmp_path)
    assert json.loads(shown.stdout)["metadata"] == {"built-by": "pylivepatch build"}


def test_without_output_the_payload_goes_to_name_lpz(tmp_path):
    tree(tmp_path / "old", BUG)
    tree(tmp_path / "new", FIX)
    out = cli("build", "old", "new", "--name", "fix-div", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].startswith("built fix-div -> fix-div.lpz: 1 functions")
    assert (tmp_path / "fix-div.lpz").is_file()


def test_refused_and_unchanged_builds_exit_non_zero_with_a_message(tmp_path):
    only_allowed(tmp_path)
    out = cli("build", "old", "new", "-o", "fix.lpz", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr == (
        "pylivepatch: build: 1 change(s) cannot be live-patched (mutable-data); nothing "
        "written. --allow KIND accepts a kind that a hook, a state or shadow variables handle "
        "(see docs/patch-author-guide.md)\n"
    )
    tree(tmp_path / "same", {"tab/__init__.py": "", "tab/names.py": "NAMES = ['a']  # same\n"})
    out = cli("build", "old", "same", "-o", "fix.lpz", cwd=tmp_path)
    assert (out.returncode, out.stderr) == (
        1,
        "pylivepatch: build: no functional changes found; nothing written\n",
    )
    assert not (tmp_path / "fix.lpz").exists()


HOOK = """
import sys

@patch.post_apply
def extend(ctx):  # a hooks-only payload has no target modules: ctx.modules is ()
    names = sys.modules.get("tab.names")
    if ctx.rc == 0 and names is not None:
        names.NAMES.append("b")
"""


def test_hooks_make_a_payload_of_only_allowed_changes_and_may_not_rebind_its_names(tmp_path):
    only_allowed(tmp_path)
    (tmp_path / "hooks.py").write_text(HOOK)
    out = cli("build", "old", "new", "-o", "fix.lpz", "--allow", "mutable-data",
              "--hooks", "hooks.py", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-2:] == [
        "  hooks    post_apply extend  (from --hooks)",
        "built fix -> fix.lpz: 0 functions, 0 data, python 3.X, build id BUILD_ID",
    ]
    probe = (
        "import pylivepatch, tab.names as n\npylivepatch.engine().load('fix.lpz')\nprint(n.NAMES)\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, str(tmp_path / "old")])), timeout=60,
    )  # fmt: skip
    assert ran.stdout == "['a', 'b']\n", ran.stderr
    (tmp_path / "bad.py").write_text("patch = None\n")
    out = cli("build", "old", "new", "-o", "x.lpz", "--allow", "mutable-data",
              "--hooks", "bad.py", cwd=tmp_path)  # fmt: skip
    assert (out.returncode, out.stderr) == (
        1,
        "pylivepatch: invalid-payload: --hooks bad.py: binds 'patch', which the generated "
        "payload uses for the Patch; rename it in the hooks file\n",
    )
    assert not (tmp_path / "x.lpz").exists()
