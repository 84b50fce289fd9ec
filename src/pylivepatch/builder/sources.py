"""Where the two versions come from: a source directory, a git revision, an sdist or
a wheel — made into a directory of importable modules.

Archives are unpacked with the same care as payloads: no absolute paths, no ``..``,
no links, bounded sizes.
"""

from __future__ import annotations

import base64
import configparser
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import LivepatchError

MAX_UNPACKED = 512 * 1024 * 1024
SKIP_DIRS = {
    "tests", "test", "testing", "docs", "doc", "examples", "example", "benchmarks", "bench",
    "scripts", "tools", "build", "dist", ".git", ".tox", ".nox", "__pycache__", "venv", ".venv",
}  # fmt: skip
SKIP_FILES = {"setup.py", "conftest.py", "noxfile.py", "fabfile.py", "tasks.py"}
#: what the builder reads: sources (Python and extension code)
WANTED = (".py", ".pyi", ".c", ".h", ".pyx", ".pxd", ".cpp", ".cc")
#: files in a package that are not data of the distribution
_NOT_DATA = (".pyc", ".pyo", ".so", ".pyd", ".dylib", "RECORD", "INSTALLER", ".orig", ".rej", "~")


#: extras that install a project's own tooling, never what a service runs with
_TOOLING_EXTRAS = frozenset(
    {"test", "tests", "testing", "dev", "develop", "doc", "docs", "lint", "linting",
     "typing", "mypy", "coverage", "benchmark", "benchmarks", "style"}
)  # fmt: skip


class Tree:
    """The source files of one version: read from a directory on demand, or held in
    memory for an archive (writing thousands of files to a slow disk costs more than
    the whole comparison), and written to disk only where a step needs files."""

    def __init__(
        self,
        files: dict[str, bytes] | None = None,
        root: Path | None = None,
        data: dict[str, bytes] | None = None,
    ) -> None:
        self._files = files
        self._root = root
        self._data = dict(data or {})  # other files (archives): path -> content
        self._other: list[str] = []  # other files (a directory), read on demand
        if root is not None:
            self.paths = []
            for here, dirs, names in os.walk(root):
                # virtualenvs, caches and hidden directories hold no module of the project
                dirs[:] = sorted(
                    d for d in dirs
                    if not d.startswith(".") and d not in ("__pycache__", "venv", "node_modules")
                )  # fmt: skip
                rel = Path(here).relative_to(root).as_posix()
                prefix = "" if rel == "." else rel + "/"
                self.paths += [prefix + n for n in names if n.endswith(WANTED)]
                self._other += [prefix + n for n in names if not n.endswith(WANTED)]
            self.paths.sort()
        else:
            self.paths = sorted(files or {})
        self.prefix = ""
        tops = {p.split("/", 1)[0] for p in self.paths}
        if len(tops) == 1 and not any(p.count("/") == 0 for p in self.paths):
            top = tops.pop()  # an sdist's single top directory
            if f"{top}/__init__.py" not in self.paths:
                self.prefix = top + "/"
        if any(p.startswith(self.prefix + "src/") for p in self.paths) and any(
            p.startswith(self.prefix + "src/") and p.endswith(".py") for p in self.paths
        ):
            self.prefix += "src/"
        self.rel = sorted(p[len(self.prefix) :] for p in self.paths if p.startswith(self.prefix))

    def read_bytes(self, rel: str) -> bytes:
        if self._files is not None:
            return self._files[self.prefix + rel]
        assert self._root is not None
        return (self._root / (self.prefix + rel)).read_bytes()

    def read(self, rel: str) -> str:
        data = self.read_bytes(rel)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")

    def modules(self) -> dict[str, str]:
        """module name -> relative path, for the packages and top-level modules (test
        suites inside packages, and top-level tests/docs directories, left out)."""
        rels = set(self.rel)
        found: dict[str, str] = {}
        suites: dict[str, bool] = {}

        def is_suite(directory: str) -> bool:
            if directory not in suites:
                name = directory.rsplit("/", 1)[-1]
                suites[directory] = name in SKIP_DIRS and any(
                    r.startswith(directory + "/") and r.count("/") == directory.count("/") + 1
                    and (r.rsplit("/", 1)[-1].startswith("test_") or r.endswith("_test.py"))
                    for r in rels
                )  # fmt: skip
            return suites[directory]

        for rel in self.rel:
            if not rel.endswith(".py"):
                continue
            parts = rel[:-3].split("/")
            if len(parts) == 1:
                if (
                    rel not in SKIP_FILES
                    and parts[0].isidentifier()
                    and not rel.startswith("test_")
                ):
                    found[parts[0]] = rel
                continue
            if parts[0] in SKIP_DIRS or f"{parts[0]}/__init__.py" not in rels:
                continue
            if not all(p.isidentifier() for p in parts):
                continue
            dirs = ["/".join(parts[: i + 1]) for i in range(1, len(parts) - 1)]
            if any(is_suite(d) for d in dirs):
                continue
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = rel
        return found

    def data_files(self) -> dict[str, str]:
        """The distribution's other files inside its packages (certificate bundles, JSON
        tables, templates...): relative path -> sha256 of the content. Bytecode,
        metadata and the directories a package's modules skip are left out."""
        tops = {rel.split("/", 1)[0] for rel in self.modules().values() if "/" in rel}
        out: dict[str, str] = {}
        others = self._other if self._root is not None else list(self._data)
        for path in others:
            if not path.startswith(self.prefix):
                continue
            rel = path[len(self.prefix) :]
            if "/" not in rel or rel.split("/", 1)[0] not in tops:
                continue
            parts = rel.split("/")
            if rel.endswith(_NOT_DATA) or any(
                p in SKIP_DIRS or p.endswith((".dist-info", ".egg-info")) for p in parts[:-1]
            ):
                continue
            out[rel] = hashlib.sha256(self.data_bytes(rel)).hexdigest()
        return out

    def requirements(self) -> dict[str, str] | None:
        """The distribution's runtime requirements (``Requires-Dist``; those of an
        extra for tests, docs or linting left out, other extras kept under
        ``NAME (extra E)``: a feature the service may use): normalized name -> the
        requirement with that name and no spaces (so that a re-spelling is no change); None where this version does not say (no metadata file, or an old
        sdist's PKG-INFO without them and no ``[project] dependencies``). Read from a
        wheel's METADATA, an sdist's PKG-INFO, else pyproject.toml; never from setup.py
        (running it would run the package's code)."""
        names = self.paths + self._other if self._root is not None else list(self._data)
        lines: list[str] | None = None
        for path in sorted(names, key=lambda p: p.count("/")):
            base = path.rsplit("/", 1)[-1]
            if (
                base == "METADATA"
                and path.rsplit("/", 2)[-2].endswith(".dist-info")
                or (base == "PKG-INFO" and path.count("/") <= 1)
            ):
                text = self._other_text(path)
                found = [
                    line.split(":", 1)[1].strip()
                    for line in text.splitlines()
                    if line.lower().startswith("requires-dist:")
                ]
                if found or base == "METADATA":
                    lines = found
                    break
        if lines is None:
            lines = self._pyproject_dependencies(names)
        if lines is None:
            return None
        out: dict[str, str] = {}
        for req in lines:
            spec, _, marker = req.partition(";")
            extra = re.search(r"""extra\s*==\s*["']([^"']+)""", marker)
            if extra and re.sub(r"[-_.]+", "-", extra[1]).lower() in _TOOLING_EXTRAS:
                continue
            spec = spec.strip()
            name = re.split(r"[\s<>=!~\[(;@]", spec, maxsplit=1)[0]
            key = re.sub(r"[-_.]+", "-", name).lower()  # the name as PyPI compares it
            if extra:
                key += f" (extra {extra[1]})"
            rest = "".join(spec[len(name) :].split())
            out[key] = (
                key.split()[0] + rest + (";" + " ".join(marker.split()) if marker.strip() else "")
            )
        return out

    def _pyproject_dependencies(self, names: list[str]) -> list[str] | None:
        path = next((p for p in names if p.rsplit("/", 1)[-1] == "pyproject.toml"
                     and p.count("/") <= 1), None)  # fmt: skip
        if path is None or sys.version_info < (3, 11):
            return None
        import tomllib  # type: ignore[import-not-found, unused-ignore]  # 3.11+

        try:
            project = tomllib.loads(self._other_text(path)).get("project", {})
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(project, dict) or "dependencies" in project.get("dynamic", []):
            return None
        deps = project.get("dependencies")
        if not isinstance(deps, list):
            return None
        return [d for d in deps if isinstance(d, str)]

    def _other_text(self, path: str) -> str:
        if self._root is not None:
            return (self._root / path).read_text(errors="replace")
        raw = self._data.get(path)
        if raw is None and self._files is not None:
            raw = self._files.get(path, b"")
        return (raw or b"").decode(errors="replace")

    def data_bytes(self, rel: str) -> bytes:
        """The content of a file :meth:`data_files` lists."""
        if self._root is not None:
            return (self._root / (self.prefix + rel)).read_bytes()
        return self._data[self.prefix + rel]

    def extensions(self) -> dict[str, str]:
        return {
            r: r for r in self.rel
            if r.endswith((".c", ".pyx", ".cpp", ".cc", ".pxd"))
            and not any(p in SKIP_DIRS for p in r.split("/")[:-1])
        }  # fmt: skip

    def write(self, dest: Path, rels: set[str]) -> Path:
        """Write these files (relative paths) under ``dest``; return ``dest``."""
        for rel in sorted(rels):
            target = dest.joinpath(*rel.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read_bytes(rel))
        return dest


def materialize(spec: str, workdir: Path, label: str, repo: str | None = None) -> Tree:
    """The source files of ``spec``."""
    data: dict[str, bytes] = {}  # other files of an archive: path -> content
    if repo is not None:
        return Tree(files=_git(repo, spec, data), data=data)
    pin = pinned(spec)
    if pin is not None:
        spec = str(fetch(*pin, workdir / f"{label}-download", label))
    path = Path(spec)
    if path.is_dir():
        return Tree(root=path.resolve())
    if not path.is_file():
        raise LivepatchError(
            "not-found",
            f"{label} {spec!r} is neither a directory, an sdist/wheel file nor NAME==VERSION "
            "(use --repo DIR for git revisions)",
        )
    name = path.name
    if name.endswith((".whl", ".zip")):
        return Tree(files=_unzip(path, data), data=data)
    if name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")):
        return Tree(files=_untar(path, data), data=data)
    raise LivepatchError(
        "invalid-payload", f"{label} {spec}: not a directory, sdist (.tar.gz) or wheel (.whl)"
    )


def _skipped(name: str) -> bool:
    """A member no package data can be: under docs/, tests/... or bytecode."""
    parts = name.split("/")
    return name.endswith(_NOT_DATA) or any(p in SKIP_DIRS for p in parts[:-1])


def _check_member(name: str, label: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or ".." in parts:
        raise LivepatchError("invalid-payload", f"{label}: archive member {name!r} escapes")


def _unzip(path: Path, data: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """The source files; every other file goes to ``data``."""
    files: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            total = 0
            for info in zf.infolist():
                _check_member(info.filename, str(path))
                if info.is_dir():
                    continue
                total += info.file_size
                if total > MAX_UNPACKED:
                    raise LivepatchError("invalid-payload", f"{path}: unpacks to too much data")
                if info.filename.endswith(WANTED):
                    files[info.filename] = zf.read(info)
                elif data is not None and not _skipped(info.filename):
                    data[info.filename] = zf.read(info)
    except zipfile.BadZipFile as exc:
        raise LivepatchError("invalid-payload", f"{path}: not a readable zip: {exc}") from None
    return files


def _untar(path: Path | io.BytesIO, data: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """Only the source files, kept in memory: nothing of the archive reaches the disk;
    every other file goes to ``data``."""
    files: dict[str, bytes] = {}
    try:
        with (
            tarfile.open(fileobj=path) if isinstance(path, io.BytesIO) else tarfile.open(path)
        ) as tf:
            total = 0
            for m in tf:
                _check_member(m.name, str(path))
                if not m.isfile():
                    continue
                total += m.size
                if total > MAX_UNPACKED:
                    raise LivepatchError("invalid-payload", f"{path}: unpacks to too much data")
                fh = tf.extractfile(m)
                if fh is None:
                    continue
                if m.name.endswith(WANTED):
                    files[m.name] = fh.read()
                elif data is not None and not _skipped(m.name):
                    data[m.name] = fh.read()
    except tarfile.TarError as exc:
        raise LivepatchError("invalid-payload", f"{path}: not a readable tar: {exc}") from None
    return files


def _git(repo: str, rev: str, data: dict[str, bytes] | None = None) -> dict[str, bytes]:
    try:
        archive = subprocess.run(
            ["git", "-C", repo, "archive", "--format=tar", rev],
            capture_output=True, check=True, timeout=300,
        )  # fmt: skip
    except FileNotFoundError:
        raise LivepatchError("not-found", "git is not installed") from None
    except subprocess.CalledProcessError as exc:
        msg = exc.stderr.decode(errors="replace").strip().splitlines()
        raise LivepatchError(
            "not-found", f"git revision {rev!r} of {repo}: {msg[-1] if msg else 'failed'}"
        ) from None
    return _untar(io.BytesIO(archive.stdout), data)


# --- `pkg==X.Y.Z`: a release fetched with pip -------------------------------------------

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)$")


def pinned(spec: str) -> tuple[str, str] | None:
    """``(name, version)`` for ``name==version`` that is not a path on disk."""
    m = _PIN.match(spec)
    if m is None or Path(spec).exists():
        return None
    return m.group(1), m.group(2)


def fetch(name: str, version: str, dest: Path, label: str) -> Path:
    """Download ``name==version`` (a wheel if there is one, else the sdist) with pip."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", "-d", str(dest), f"{name}=={version}"]  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise LivepatchError(
            "timeout", f"{label} {name}=={version}: pip download timed out"
        ) from None
    files = sorted(p for p in dest.iterdir() if p.name.endswith((".whl", ".tar.gz", ".zip")))
    if out.returncode or not files:
        lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
        raise LivepatchError(
            "not-found",
            f"{label} {name}=={version}: pip could not download it "
            f"({lines[-1].strip() if lines else 'no file'})",
        )
    return files[0]


def dist_name(spec: str) -> str:
    """The distribution a NEW release is of: from ``name==version``, a wheel's or an
    sdist's file name, or a source directory's PKG-INFO, pyproject.toml or setup.cfg."""
    pin = pinned(spec)
    if pin:
        return pin[0]
    path = Path(spec)
    if path.is_file():
        stem = path.name
        if stem.endswith(".whl"):
            return stem.split("-")[0]
        for suffix in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip", ".tar"):
            if stem.endswith(suffix):
                return stem[: -len(suffix)].rsplit("-", 1)[0]
    if path.is_dir():
        pkg_info = path / "PKG-INFO"
        if pkg_info.is_file():
            m = re.search(r"^Name:\s*(\S+)", pkg_info.read_text("utf-8", "replace"), re.M)
            if m:
                return m.group(1)
        pyproject = path / "pyproject.toml"
        if pyproject.is_file():
            section = re.search(
                r"^\[project\]\s*$(.*?)(?=^\[|\Z)",
                pyproject.read_text("utf-8", "replace"),
                re.M | re.S,
            )
            m = section and re.search(r"^name\s*=\s*[\"']([^\"']+)[\"']", section.group(1), re.M)
            if m:
                return m.group(1)
        setup_cfg = path / "setup.cfg"
        if setup_cfg.is_file():
            parser = configparser.ConfigParser(interpolation=None)
            parser.read(setup_cfg, encoding="utf-8")
            if parser.has_option("metadata", "name"):
                return parser.get("metadata", "name").strip()
    raise LivepatchError(
        "invalid-payload",
        f"cannot tell which distribution {spec} is a release of; name it with --dist NAME",
    )


# --- OLD from the environment the service runs ------------------------------------------

#: run by the service's interpreter: the distribution's version, location and RECORD
_RECORD_SCRIPT = r"""
import json, sys
from importlib import metadata
try:
    dist = metadata.distribution(sys.argv[1])
except metadata.PackageNotFoundError:
    print(json.dumps({"missing": True}))
    raise SystemExit(0)
files = [(str(f), f.hash.value if f.hash else None, f.hash.mode if f.hash else None)
         for f in (dist.files or [])]
print(json.dumps({
    "name": dist.metadata["Name"], "version": dist.version,
    "location": str(dist.locate_file("")), "files": files,
    "python": "%d.%d" % sys.version_info[:2], "executable": sys.executable,
}))
"""


@dataclass
class Installed:
    """A distribution as installed in an environment: the OLD side of a build."""

    name: str
    version: str
    location: str
    python: str  # X.Y of that environment's interpreter
    executable: str
    tree: Tree
    warnings: list[str]


def environment_python(env: str | None) -> str:
    """The interpreter of ``--python-env``: an interpreter, or a virtualenv's directory
    (its ``bin/python``); the current interpreter when not given."""
    if not env:
        return sys.executable
    path = Path(env)
    if path.is_dir():
        for candidate in (path / "bin" / "python", path / "bin" / "python3",
                          path / "Scripts" / "python.exe"):  # fmt: skip
            if candidate.exists():
                return str(candidate)
        raise LivepatchError("not-found", f"--python-env {env}: a directory without bin/python")
    if not path.exists():
        raise LivepatchError("not-found", f"--python-env {env}: no such interpreter or virtualenv")
    return str(path)


def python_version(python: str) -> str:
    """``3.X`` of an interpreter."""
    try:
        out = subprocess.run(
            [python, "-I", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LivepatchError("not-found", f"--python-env {python}: cannot run it ({exc})") from None
    version = out.stdout.strip()
    if out.returncode or not re.match(r"^3\.[0-9]+$", version):
        raise LivepatchError("not-found", f"--python-env {python}: not a Python 3 interpreter")
    return version


def installed(dist: str, env: str | None) -> Installed:
    """The source files of ``dist`` as the environment's interpreter imports them: the
    files its dist-info RECORD lists, read from site-packages (what the service runs)."""
    python = environment_python(env)
    try:
        out = subprocess.run(
            [python, "-I", "-c", _RECORD_SCRIPT, dist], capture_output=True, text=True, timeout=120
        )
    except OSError as exc:
        raise LivepatchError(
            "not-found", f"--python-env {python}: cannot run it ({exc.strerror})"
        ) from None
    except subprocess.TimeoutExpired:
        raise LivepatchError("timeout", f"{python} did not answer in 120 s") from None
    try:
        info = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise LivepatchError(
            "not-found", f"{python} did not say what is installed: {out.stderr.strip()[-300:]}"
        ) from None
    if info.get("missing"):
        raise LivepatchError(
            "not-found",
            f"{dist} is not installed in the environment of {python}; give OLD explicitly, or "
            "--python-env for the service's interpreter or virtualenv",
        )
    location = Path(info["location"])
    files: dict[str, bytes] = {}
    others: dict[str, bytes] = {}
    warnings: list[str] = []
    for rel, digest, mode in info["files"]:
        rel = rel.replace("\\", "/")
        if rel.startswith(("../", "/")):
            continue  # scripts and data outside site-packages
        if not rel.endswith(WANTED):
            if _skipped(rel):
                continue  # bytecode, or under tests/, docs/...: no data of a package
            try:  # package data: compared with NEW's (metadata left out later)
                others[rel] = (location / rel).read_bytes()
            except OSError:
                pass
            continue
        try:
            data = (location / rel).read_bytes()
        except OSError as exc:
            raise LivepatchError(
                "not-found", f"{info['name']} {info['version']}: {rel} is in its RECORD but "
                f"cannot be read ({exc.strerror})"
            ) from None  # fmt: skip
        if digest and mode and mode in hashlib.algorithms_available:
            seen = base64.urlsafe_b64encode(hashlib.new(mode, data).digest()).rstrip(b"=").decode()
            if seen != digest:
                warnings.append(
                    f"{rel}: differs from what {info['name']} {info['version']} installed (its "
                    "RECORD); the payload is built against the file as it is on disk"
                )
        files[rel] = data
    if not any(r.endswith(".py") for r in files):
        raise LivepatchError(
            "not-found",
            f"{info['name']} {info['version']} in {python} lists no Python source in its RECORD "
            "(an editable install?); give OLD as its source directory",
        )
    return Installed(
        info["name"], info["version"], str(location), info["python"], info["executable"],
        Tree(files=files, data=others), warnings,
    )  # fmt: skip
