"""``build --allow data-files`` (issue 23): a fix that lives in a packaged data file is
carried by the payload, listed in its manifest, written where the running process reads
it by apply and put back by revert, all or nothing; files the process would not see are
refused, naming them and why. Real packages made in the test, a real engine, no mocks."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from pylivepatch import LivepatchError
from pylivepatch.builder.build import BuildOptions, build
from pylivepatch.engine.core import Engine
from pylivepatch.engine.faults import inject
from pylivepatch.payload import archive
from test_build import Versions

CODE = """\
import json, os

HERE = os.path.dirname(os.path.abspath(__file__))
HOSTS = os.path.join(HERE, "hosts.json")


def trusted():
    with open(HOSTS) as fh:
        return json.load(fh)
"""
OLD_HOSTS = '["a", "evil"]\n'
NEW_HOSTS = '["a"]\n'


@pytest.fixture
def versions(lab):
    made: list[Versions] = []

    def make(old: dict[str, str], new: dict[str, str], version: bool = True) -> Versions:
        v = Versions(lab, old, new)
        if version:
            (v.old / v.pkg / "__init__.py").write_text("__version__ = '1.0'\n")
            (v.new / v.pkg / "__init__.py").write_text("__version__ = '1.1'\n")
        made.append(v)
        return v

    yield make
    for v in made:
        v.close()


def _hosts_fix(versions, version: bool = True) -> Versions:
    return versions(
        {"hosts.py": CODE, "hosts.json": OLD_HOSTS},
        {"hosts.py": CODE, "hosts.json": NEW_HOSTS},
        version,
    )


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_without_allow_the_data_file_is_refused_naming_it(versions):
    v = _hosts_fix(versions)
    result = v.build()
    assert not result.data
    assert [(r.kind, r.target.replace(v.pkg, "pkg")) for r in result.refusals] == [
        ("data-files", "pkg/hosts.json"),
        ("nothing-to-patch", "pkg:__version__"),
    ]
    assert "--allow data-files" in result.refusals[0].reason


def test_a_data_file_read_at_use_time_is_carried_applied_and_reverted(versions):
    v = _hosts_fix(versions)
    result = v.build("data-files")
    assert not result.refusals and result.data, [str(r) for r in result.refusals]
    assert [f.rel for f in result.files] == [f"{v.pkg}/hosts.json"]
    payload = archive.read(result.data)
    (entry,) = payload.manifest.data_files
    assert (entry.package, entry.path) == (v.pkg, "hosts.json")
    assert (entry.old, entry.new, entry.size) == (_sha(OLD_HOSTS), _sha(NEW_HOSTS), len(NEW_HOSTS))
    assert payload.files[entry.member] == NEW_HOSTS.encode()
    assert payload.files[entry.old_member or ""] == OLD_HOSTS.encode()
    # the version the process reports is the fixed one, with the fixed data
    assert [d.target.replace(v.pkg, "pkg") for d in payload.manifest.data] == ["pkg:__version__"]

    hosts = v.module("hosts")
    installed = v.old / v.pkg / "hosts.json"
    os.chmod(installed, 0o640)
    assert hosts.trusted() == ["a", "evil"]
    e = Engine()
    e.load(result.data)
    assert hosts.trusted() == ["a"]
    assert installed.read_text() == NEW_HOSTS
    assert oct(installed.stat().st_mode & 0o777) == oct(0o640)  # the mode is kept
    assert sys.modules[v.pkg].__version__ == "1.1"
    assert not [p for p in installed.parent.iterdir() if p.name.startswith(".pylivepatch-")]
    e.revert("fix")
    assert installed.read_text() == OLD_HOSTS
    assert hosts.trusted() == ["a", "evil"]
    assert sys.modules[v.pkg].__version__ == "1.0"
    e.unload("fix")


def test_a_second_process_of_the_app_finds_the_new_bytes_and_one_revert_puts_back(versions):
    """Two engines stand for two processes sharing the installation: the first apply
    writes, the second finds the new bytes; the first revert puts the old bytes back
    for both, the second finds them back (docs/design.md, "Data files"). The payload
    carries only the file: both engines patch the same module objects here."""
    v = _hosts_fix(versions, version=False)
    data = v.build("data-files").data
    v.module("hosts")
    installed = v.old / v.pkg / "hosts.json"
    one, two = Engine(), Engine()
    one.load(data)
    two.load(data)
    assert installed.read_text() == NEW_HOSTS
    assert any(
        ev.kind == "note" and ev.detail.get("found") == [f"{v.pkg}/hosts.json"]
        for ev in two.history()
    )
    one.revert("fix")
    assert installed.read_text() == OLD_HOSTS
    two.revert("fix")
    assert installed.read_text() == OLD_HOSTS


def test_a_failure_after_the_file_step_leaves_disk_and_process_as_they_were(versions):
    v = _hosts_fix(versions)
    data = v.build("data-files").data
    hosts = v.module("hosts")
    installed = v.old / v.pkg / "hosts.json"
    e = Engine()
    e.upload("fix", data)
    for point in ("apply.prepare", "pause:swap"):
        with inject(e, point) as plan, pytest.raises(LivepatchError) as err:
            e.apply("fix")
        assert plan.fired and err.value.code == "internal"
        assert installed.read_text() == OLD_HOSTS, point
        assert hosts.trusted() == ["a", "evil"]
        assert sys.modules[v.pkg].__version__ == "1.0"
        assert e.status("fix").state == "CHECKED"
    e.apply("fix")
    assert installed.read_text() == NEW_HOSTS
    with inject(e, "revert.prepare") as plan, pytest.raises(LivepatchError):
        e.revert("fix")
    assert plan.fired and installed.read_text() == NEW_HOSTS  # the revert was undone
    assert e.status("fix").state == "APPLIED"
    e.revert("fix")
    assert installed.read_text() == OLD_HOSTS


def test_an_installed_file_that_is_neither_old_nor_new_is_refused(versions):
    v = _hosts_fix(versions)
    data = v.build("data-files").data
    hosts = v.module("hosts")
    installed = v.old / v.pkg / "hosts.json"
    installed.write_text('["local"]\n')
    before = sorted(p.name for p in installed.parent.iterdir())
    e = Engine()
    with pytest.raises(LivepatchError) as err:
        e.load(data)
    assert err.value.code == "expectation-failed"
    assert "hosts.json" in err.value.message and "neither" in err.value.message
    assert installed.read_text() == '["local"]\n'
    assert sorted(p.name for p in installed.parent.iterdir()) == before
    assert sys.modules[v.pkg].__version__ == "1.0" and hosts.trusted() == ["local"]
    assert e.list() == []
    # changed between upload and apply: refused at apply, nothing changed either
    installed.write_text(OLD_HOSTS)
    e.upload("fix", data)
    installed.write_text('["local"]\n')
    with pytest.raises(LivepatchError) as err:
        e.apply("fix")
    assert err.value.code == "expectation-failed"
    assert installed.read_text() == '["local"]\n'
    assert sys.modules[v.pkg].__version__ == "1.0"


def test_a_read_only_installation_is_refused(versions):
    if os.geteuid() == 0:
        pytest.skip("root writes read-only directories")
    v = _hosts_fix(versions)
    data = v.build("data-files").data
    v.module("hosts")
    directory = v.old / v.pkg
    os.chmod(directory / "hosts.json", 0o444)
    os.chmod(directory, 0o555)
    try:
        with pytest.raises(LivepatchError) as err:
            Engine().load(data)
        assert err.value.code == "permission-denied"
        assert (directory / "hosts.json").read_text() == OLD_HOSTS
    finally:
        os.chmod(directory, 0o755)


def test_a_package_imported_from_a_zip_is_refused(versions, tmp_path):
    v = _hosts_fix(versions)
    data = v.build("data-files").data
    bundle = tmp_path / "app.zip"
    with zipfile.ZipFile(bundle, "w") as zf:
        for f in sorted((v.old / v.pkg).iterdir()):
            if f.is_file():
                zf.write(f, f"{v.pkg}/{f.name}")
    sys.path.insert(0, str(bundle))
    importlib.invalidate_caches()
    try:
        v.module("hosts")
        assert sys.modules[v.pkg].__file__.startswith(str(bundle))
        e = Engine()
        with pytest.raises(LivepatchError) as err:
            e.load(data)
        assert err.value.code == "unsupported-target"
        assert "not a plain directory" in err.value.message
        assert e.list() == [] and sys.modules[v.pkg].__version__ == "1.0"
    finally:
        sys.path.remove(str(bundle))


def test_an_added_file_is_written_and_removed_by_revert(versions):
    code = CODE.replace("hosts.json", "extra.json")
    v = versions({"hosts.py": code}, {"hosts.py": code, "extra.json": NEW_HOSTS}, version=False)
    result = v.build("data-files")
    assert result.data and not result.changes  # only a data file: no code in the payload
    (entry,) = archive.read(result.data).manifest.data_files
    assert entry.old is None
    hosts = v.module("hosts")
    e = Engine()
    e.load(result.data)
    assert hosts.trusted() == ["a"]
    e.revert("fix")
    assert not (v.old / v.pkg / "extra.json").exists()


@pytest.mark.parametrize(
    "code, why",
    [
        (
            "import json, os\n\nHOSTS = json.load(open(os.path.join(os.path.dirname(__file__), 'hosts.json')))\n",
            "read when",
        ),
        (
            "import json, os\nP = os.path.join(os.path.dirname(__file__), 'hosts.json')\n"
            "with open(P) as fh:\n    HOSTS = json.load(fh)\n",
            "read when",
        ),
        (
            "import functools, json, os\nP = os.path.join(os.path.dirname(__file__), 'hosts.json')\n\n"
            "@functools.lru_cache\ndef trusted():\n    return json.load(open(P))\n",
            "caches its result (@lru_cache)",
        ),
        (
            "import json\nfrom importlib import resources\n_D = None\n\ndef trusted():\n"
            "    global _D\n    if _D is None:\n"
            "        _D = json.loads(resources.files(__package__).joinpath('hosts.json').read_text())\n"
            "    return _D\n",
            "keeps it in the module global _D",
        ),
    ],
    ids=["module-level-load", "module-level-with", "lru-cache", "global-cache"],
)
def test_a_file_the_process_would_not_see_is_refused_with_allow(versions, code, why):
    v = versions(
        {"hosts.py": code, "hosts.json": OLD_HOSTS}, {"hosts.py": code, "hosts.json": NEW_HOSTS}
    )
    result = v.build("data-files")
    assert not result.data and not result.files
    (refusal,) = [r for r in result.refusals if r.kind == "data-files"]
    assert refusal.target == f"{v.pkg}/hosts.json"
    assert why in refusal.reason and "hosts.py" in refusal.reason


def test_import_time_code_that_reads_another_file_does_not_refuse_it(versions):
    """A module-level read of another file of the package (its name is a file name
    other than this one's) leaves hosts.json, read at use time, carried."""
    other = "import os\nHERE = os.path.dirname(__file__)\nLOGGING = open(os.path.join(HERE, 'logging.ini')).read()\n"
    v = versions(
        {"hosts.py": CODE, "conf.py": other, "hosts.json": OLD_HOSTS, "logging.ini": "x"},
        {"hosts.py": CODE, "conf.py": other, "hosts.json": NEW_HOSTS, "logging.ini": "x"},
    )
    result = v.build("data-files")
    assert result.data and [f.path for f in result.files] == ["hosts.json"]


def test_import_time_code_that_lists_the_directory_refuses_it(versions):
    """A module-level read of a name computed at run time may be any file of the
    directory: refused."""
    scan = "import os\nHERE = os.path.dirname(__file__)\nFILES = {n: open(os.path.join(HERE, n)).read() for n in os.listdir(HERE)}\n"
    v = versions(
        {"hosts.py": CODE, "scan.py": scan, "hosts.json": OLD_HOSTS},
        {"hosts.py": CODE, "scan.py": scan, "hosts.json": NEW_HOSTS},
    )
    result = v.build("data-files")
    assert not result.data
    assert [r.reason.split(" (")[0] for r in result.refusals if r.kind == "data-files"] == [
        f"read when {v.pkg}.scan is imported"
    ]


def test_wheels_carry_the_bytes_of_the_release(versions):
    v = _hosts_fix(versions)
    wheels = []
    for root, tag in ((v.old, "1.0"), (v.new, "1.1")):
        path = v.lab.root / f"{v.pkg}-{tag}-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as zf:
            for f in sorted((root / v.pkg).iterdir()):
                if f.is_file():
                    zf.write(f, f"{v.pkg}/{f.name}")
        wheels.append(str(path))
    result = build(*wheels, BuildOptions(name="fix", allow=frozenset({"data-files"})))
    assert result.data and not result.refusals
    payload = archive.read(result.data)
    (entry,) = payload.manifest.data_files
    assert payload.files[entry.member] == NEW_HOSTS.encode()
    assert payload.files[entry.old_member or ""] == OLD_HOSTS.encode()


def test_a_removed_data_file_is_refused_with_allow(versions):
    v = versions(
        {"hosts.py": CODE, "hosts.json": OLD_HOSTS, "old.txt": "x"},
        {"hosts.py": CODE, "hosts.json": NEW_HOSTS},
    )
    result = v.build("data-files")
    assert not result.data
    assert [(r.target.replace(v.pkg, "pkg"), "removed" in r.reason) for r in result.refusals] == [
        ("pkg/old.txt", True)
    ]


def test_a_version_only_change_stays_nothing_to_patch_with_allow(versions):
    v = versions(
        {"hosts.py": CODE, "hosts.json": OLD_HOSTS}, {"hosts.py": CODE, "hosts.json": OLD_HOSTS}
    )
    result = v.build("data-files")
    assert not result.data
    assert [r.kind for r in result.refusals] == ["nothing-to-patch"]


def test_the_manifest_refuses_a_data_file_that_is_code():
    from pylivepatch.payload import manifest

    doc = {
        "format": 1, "name": "x", "build_id": "0" * 64, "python": ["3.11"],
        "data_files": [{"package": "p", "path": "evil.py", "old": None, "new": "1" * 64, "size": 1}],
    }  # fmt: skip
    with pytest.raises(LivepatchError, match=r"data_files\[0\]\.path.*is code"):
        manifest.parse(doc)
    doc["data_files"][0]["path"] = "../x.json"  # type: ignore[index]
    with pytest.raises(LivepatchError, match=r"data_files\[0\]\.path"):
        manifest.parse(doc)


def test_cli_build_inspect_and_load_into_a_real_process(versions, tmp_path):
    """``pylivepatch build --allow data-files`` writes the payload and lists the file,
    ``inspect`` shows it, ``load -p`` writes it in a running service."""
    v = _hosts_fix(versions)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = dict(os.environ, PYTHONPATH=src)
    out = tmp_path / "fix.lpz"
    cli = [sys.executable, "-m", "pylivepatch"]
    built = subprocess.run(
        [*cli, "build", str(v.old), str(v.new), "-o", str(out), "--allow", "data-files"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert f"file     {v.pkg}/hosts.json" in built.stdout and "1 data files" in built.stdout
    shown = subprocess.run([*cli, "inspect", str(out)], capture_output=True, text=True, env=env)
    assert f"data file    {v.pkg}/hosts.json  old {_sha(OLD_HOSTS)[:12]}" in shown.stdout
    doc = json.loads(
        subprocess.run(
            [*cli, "inspect", str(out), "--json"], capture_output=True, text=True, env=env
        ).stdout
    )
    assert doc["data_files"][0]["path"] == "hosts.json"

    script = tmp_path / "service.py"
    script.write_text(
        textwrap.dedent(f"""\
        import json, sys, time
        sys.path.insert(0, {str(v.old)!r})
        import pylivepatch
        pylivepatch.start()
        import {v.pkg}.hosts as hosts
        print("ready", flush=True)
        while True:
            line = sys.stdin.readline()
            if not line:
                break
            print(json.dumps(hosts.trusted()), flush=True)
        """)
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"

        def ask() -> object:
            proc.stdin.write("?\n")
            proc.stdin.flush()
            return json.loads(proc.stdout.readline())

        assert ask() == ["a", "evil"]
        loaded = subprocess.run(
            [*cli, "load", "-p", str(proc.pid), str(out)], capture_output=True, text=True,
            env=env,
        )  # fmt: skip
        assert loaded.returncode == 0, loaded.stdout + loaded.stderr
        assert ask() == ["a"]
        reverted = subprocess.run(
            [*cli, "revert", "-p", str(proc.pid), "fix"], capture_output=True, text=True,
            env=env,
        )  # fmt: skip
        assert reverted.returncode == 0, reverted.stdout + reverted.stderr
        assert ask() == ["a", "evil"]
    finally:
        proc.kill()
        proc.wait()
