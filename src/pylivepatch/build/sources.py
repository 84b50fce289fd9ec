"""Where the two versions come from: a source directory, a git revision, an sdist or
a wheel — made into a directory of importable modules.

Archives are unpacked with the same care as payloads: no absolute paths, no ``..``,
no links, bounded sizes.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import zipfile
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


class Tree:
    """The source files of one version: read from a directory on demand, or held in
    memory for an archive (writing thousands of files to a slow disk costs more than
    the whole comparison), and written to disk only where a step needs files."""

    def __init__(self, files: dict[str, bytes] | None = None, root: Path | None = None) -> None:
        self._files = files
        self._root = root
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
    if repo is not None:
        return Tree(files=_git(repo, spec))
    path = Path(spec)
    if path.is_dir():
        return Tree(root=path.resolve())
    if not path.is_file():
        raise LivepatchError(
            "not-found",
            f"{label} {spec!r} is neither a directory nor an sdist/wheel file (use --repo DIR "
            "for git revisions)",
        )
    name = path.name
    if name.endswith((".whl", ".zip")):
        return Tree(files=_unzip(path))
    if name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")):
        return Tree(files=_untar(path))
    raise LivepatchError(
        "invalid-payload", f"{label} {spec}: not a directory, sdist (.tar.gz) or wheel (.whl)"
    )


def _check_member(name: str, label: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or ".." in parts:
        raise LivepatchError("invalid-payload", f"{label}: archive member {name!r} escapes")


def _unzip(path: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            total = 0
            for info in zf.infolist():
                _check_member(info.filename, str(path))
                if info.is_dir() or not info.filename.endswith(WANTED):
                    continue
                total += info.file_size
                if total > MAX_UNPACKED:
                    raise LivepatchError("invalid-payload", f"{path}: unpacks to too much data")
                files[info.filename] = zf.read(info)
    except zipfile.BadZipFile as exc:
        raise LivepatchError("invalid-payload", f"{path}: not a readable zip: {exc}") from None
    return files


def _untar(path: Path | io.BytesIO) -> dict[str, bytes]:
    """Only the source files, kept in memory: nothing of the archive reaches the disk."""
    files: dict[str, bytes] = {}
    try:
        with (
            tarfile.open(fileobj=path) if isinstance(path, io.BytesIO) else tarfile.open(path)
        ) as tf:
            total = 0
            for m in tf:
                _check_member(m.name, str(path))
                if not m.isfile() or not m.name.endswith(WANTED):
                    continue
                total += m.size
                if total > MAX_UNPACKED:
                    raise LivepatchError("invalid-payload", f"{path}: unpacks to too much data")
                fh = tf.extractfile(m)
                if fh is not None:
                    files[m.name] = fh.read()
    except tarfile.TarError as exc:
        raise LivepatchError("invalid-payload", f"{path}: not a readable tar: {exc}") from None
    return files


def _git(repo: str, rev: str) -> dict[str, bytes]:
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
    return _untar(io.BytesIO(archive.stdout))
