"""``pylivepatch build --installed NEW``: OLD is what a service's environment has
installed (the dist-info RECORD in its site-packages), so the user needs only the
fixed release. A real virtualenv, a real wheel installed into it by pip, real builds
and the payload applied by ``pylivepatch test`` under that environment's interpreter."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")
BUG = "def div(a, b):\n    return a / b\n"
FIX = "def div(a, b):\n    if b == 0:\n        return None\n    return a / b\n"
PROBE = "from calc.ops import div\ntry:\n    print(div(1, 0))\nexcept ZeroDivisionError:\n    print('ZeroDivisionError')\n"


def wheel(dest: Path, version: str, ops: str) -> Path:
    """A pure-Python wheel of ``calc`` (what pip installs: files and a RECORD)."""
    files = {
        "calc/__init__.py": b"",
        "calc/ops.py": ops.encode(),
        f"calc-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: calc\nVersion: {version}\n"
        ).encode(),
        f"calc-{version}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"calc-{version}.dist-info/RECORD,,")
    files[f"calc-{version}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    path = dest / f"calc-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A virtualenv (the service's) with calc 1.0 installed by pip, and calc 1.1 as a
    wheel and an sdist in a directory pip can find it in."""
    root = tmp_path_factory.mktemp("service")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    releases = root / "releases"
    releases.mkdir()
    old = wheel(root, "1.0", BUG)
    wheel(releases, "1.1", FIX)
    with tarfile.open(releases / "calc-1.1.tar.gz", "w:gz") as tf:
        src = root / "calc-1.1"
        (src / "calc").mkdir(parents=True)
        (src / "calc" / "__init__.py").write_text("")
        (src / "calc" / "ops.py").write_text(FIX)
        (src / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: calc\nVersion: 1.1\n")
        tf.add(src, arcname="calc-1.1")
    python = root / "venv" / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-index", "--disable-pip-version-check", str(old)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    site = subprocess.run(
        [str(python), "-c", "import calc, os; print(os.path.dirname(os.path.dirname(calc.__file__)))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    return root, python, releases, Path(site)


def cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pylivepatch", *args], cwd=cwd, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=SRC, **env), timeout=600,
    )  # fmt: skip


def probe(python: Path, cwd: Path, payload: str | None = None) -> str:
    cmd = [str(python), "-c", PROBE]
    if payload:
        cmd = [str(python), "-m", "pylivepatch", "test", payload, "--", *cmd]
    out = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=SRC),
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def tag(python: Path) -> str:
    return subprocess.run(
        [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def test_installed_old_and_a_wheel_as_new(service, tmp_path):
    root, python, releases, site = service
    out = cli(
        "build", "--installed", str(releases / "calc-1.1-py3-none-any.whl"),
        "--python-env", str(root / "venv"), "-o", "fix.lpz", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:2] == [
        f"build fix: calc 1.0 installed in {site} (python {tag(python)}) -> "
        f"{releases / 'calc-1.1-py3-none-any.whl'}",
        "  patch    calc/ops.py:1  function      calc.ops:div",
    ]
    assert probe(python, tmp_path) == "ZeroDivisionError", "the service runs the bug"
    assert probe(python, tmp_path, "fix.lpz") == "None", "the payload fixes what is installed"


def test_new_as_name_equals_version_is_fetched_with_pip(service, tmp_path):
    root, python, releases, _ = service
    out = cli(
        "build", "--installed", "calc==1.1", "--python-env", str(python), "-o", "fix.lpz",
        "--json", cwd=tmp_path, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(releases),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    import json

    report = json.loads(out.stdout)
    assert (report["installed"]["name"], report["installed"]["version"]) == ("calc", "1.0")
    assert [c["target"] for c in report["changes"]] == ["calc.ops:div"]
    assert probe(python, tmp_path, "fix.lpz") == "None"
    missing = cli(
        "build", "--installed", "calc==9.9", "--python-env", str(python), "-o", "x.lpz",
        cwd=tmp_path, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(releases),
    )  # fmt: skip
    assert missing.returncode == 1
    assert missing.stderr.startswith(
        "pylivepatch: not-found: new calc==9.9: pip could not download it ("
    )


def test_an_sdist_and_a_directory_name_their_distribution(service, tmp_path):
    root, python, releases, _ = service
    with tarfile.open(releases / "calc-1.1.tar.gz") as tf:
        tf.extractall(tmp_path, filter="data") if sys.version_info >= (3, 12) else tf.extractall(
            tmp_path
        )
    for new in (str(releases / "calc-1.1.tar.gz"), str(tmp_path / "calc-1.1")):
        out = cli("build", "--installed", new, "--python-env", str(python), "-o", "f.lpz",
                  cwd=tmp_path)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("build f: calc 1.0 installed in ")
    (tmp_path / "nameless").mkdir()
    out = cli("build", "--installed", str(tmp_path / "nameless"), "-o", "f.lpz", cwd=tmp_path)
    assert (out.returncode, out.stderr) == (
        1,
        f"pylivepatch: invalid-payload: cannot tell which distribution {tmp_path / 'nameless'} "
        "is a release of; name it with --dist NAME\n",
    )


def test_a_file_edited_after_install_is_used_as_it_is_on_disk_with_a_warning(service, tmp_path):
    root, python, releases, site = service
    ops = site / "calc" / "ops.py"
    original = ops.read_text()
    ops.write_text(BUG.replace("a / b", "a / b  # edited") + "\n\nLOCAL = 1\n")
    try:
        out = cli(
            "build", "--installed", str(releases / "calc-1.1-py3-none-any.whl"),
            "--python-env", str(python), "-o", "fix.lpz", cwd=tmp_path,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert (
            "  warning  calc/ops.py: differs from what calc 1.0 installed (its RECORD); the "
            "payload is built against the file as it is on disk"
        ) in out.stdout.splitlines()
        assert probe(python, tmp_path, "fix.lpz") == "None"
    finally:
        ops.write_text(original)


def test_not_installed_and_usage_errors(service, tmp_path):
    root, python, releases, _ = service
    wheel_path = str(releases / "calc-1.1-py3-none-any.whl")
    out = cli("build", "--installed", wheel_path, "--python-env", str(python), "--dist", "nothere",
              "-o", "x.lpz", cwd=tmp_path)  # fmt: skip
    assert (out.returncode, out.stderr) == (
        1,
        f"pylivepatch: not-found: nothere is not installed in the environment of {python}; "
        "give OLD explicitly, or --python-env for the service's interpreter or virtualenv\n",
    )
    usage = (
        "usage: pylivepatch build [options] OLD NEW\n"
        "       pylivepatch build [options] --installed NEW\n"
    )
    out = cli("build", "--installed", "a", "b", "-o", "x.lpz", cwd=tmp_path)
    assert (out.returncode, out.stderr) == (
        1,
        usage + "pylivepatch: usage: build --installed takes NEW only (OLD is what is installed)\n",
    )
    out = cli("build", "a", "b", "--dist", "calc", "-o", "x.lpz", cwd=tmp_path)
    assert out.stderr == usage + "pylivepatch: usage: --dist goes with --installed\n"
    out = cli("build", "--installed", wheel_path, "--python-env", str(tmp_path / "no"),
              "-o", "x.lpz", cwd=tmp_path)  # fmt: skip
    assert out.stderr == (
        f"pylivepatch: not-found: --python-env {tmp_path / 'no'}: no such interpreter or "
        "virtualenv\n"
    )
    assert not (tmp_path / "x.lpz").exists()


def test_python_env_with_old_and_new_directories_runs_the_code_with_the_services_packages(
    service, tmp_path
):
    """An app that depends on calc (installed in the service's virtualenv, not where the
    build runs): without --python-env the build imports neither; with it, the payload's
    code runs there, and a dependency missing there is named with what to do."""
    root, python, _, _ = service
    for side, extra in (("old", ""), ("new", "\nLIMIT = int(div(4, 2))\n")):
        pkg = tmp_path / side / "app"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "main.py").write_text(
            "from calc.ops import div\n\ndef half(x):\n    return div(x, 2)\n"
            + (extra and extra + "\ndef limit():\n    return LIMIT\n")
        )
    plain = cli("build", "old", "new", "-o", "fix.lpz", cwd=tmp_path)
    assert plain.returncode == 1 and "(here calc)" in plain.stderr, plain.stderr
    assert "  patch    app/main.py:6  new name      app.main:LIMIT" in plain.stdout
    env = cli(
        "build", "old", "new", "-o", "fix.lpz", "--python-env", str(root / "venv"), cwd=tmp_path
    )
    assert env.returncode == 0, env.stderr
    assert f"python {tag(python)}" in env.stdout.splitlines()[-1]
    (tmp_path / "new" / "app" / "main.py").write_text(
        (tmp_path / "new" / "app" / "main.py")
        .read_text()
        .replace("from calc.ops import div\n", "from calc.ops import div\nimport lpt_not_there\n")
    )
    missing = cli("build", "old", "new", "-o", "fix.lpz", "--python-env", str(python), cwd=tmp_path)
    assert missing.returncode == 1
    assert "No module named 'lpt_not_there'" in missing.stderr
    assert "provides lpt_not_there is not installed in the environment of --python-env" in (
        missing.stderr
    )
