"""Where the two versions come from: a source directory, a git revision, an sdist or
a wheel — made into a directory of importable modules.

Archives are unpacked with the same care as payloads: no absolute paths, no ``..``,
no links, bounded sizes.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path

from ..errors import LivepatchError

MAX_UNPACKED = 512 * 1024 * 1024
SKIP_DIRS = {
    "tests", "test", "testing", "docs", "doc", "examples", "example", "benchmarks", "bench",
    "scripts", "tools", "build", "dist", ".git", ".tox", ".nox", "__pycache__", "venv", ".venv",
}  # fmt: skip
SKIP_FILES = {"setup.py", "conftest.py", "noxfile.py", "fabfile.py", "tasks.py"}


def materialize(spec: str, workdir: Path, label: str, repo: str | None = None) -> Path:
    """A directory holding the source of ``spec``."""
    if repo is not None:
        return _git(repo, spec, workdir / label)
    path = Path(spec)
    if path.is_dir():
        return path.resolve()
    if not path.is_file():
        raise LivepatchError(
            "not-found",
            f"{label} {spec!r} is neither a directory nor an sdist/wheel file (use --repo DIR "
            "for git revisions)",
        )
    dest = workdir / label
    dest.mkdir(parents=True)
    name = path.name
    if name.endswith((".whl", ".zip")):
        _unzip(path, dest)
    elif name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")):
        _untar(path, dest)
    else:
        raise LivepatchError(
            "invalid-payload", f"{label} {spec}: not a directory, sdist (.tar.gz) or wheel (.whl)"
        )
    entries = [p for p in dest.iterdir()]
    if len(entries) == 1 and entries[0].is_dir() and not (entries[0] / "__init__.py").exists():
        return entries[0]  # an sdist's single top directory
    return dest


def _check_member(name: str, label: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or ".." in parts:
        raise LivepatchError("invalid-payload", f"{label}: archive member {name!r} escapes")


def _unzip(path: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            total = 0
            for info in zf.infolist():
                _check_member(info.filename, str(path))
                total += info.file_size
                if total > MAX_UNPACKED:
                    raise LivepatchError("invalid-payload", f"{path}: unpacks to too much data")
            zf.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise LivepatchError("invalid-payload", f"{path}: not a readable zip: {exc}") from None


def _untar(path: Path, dest: Path) -> None:
    try:
        with tarfile.open(path) as tf:
            total = 0
            members = []
            for m in tf.getmembers():
                _check_member(m.name, str(path))
                if m.issym() or m.islnk() or m.isdev():
                    continue
                total += m.size
                if total > MAX_UNPACKED:
                    raise LivepatchError("invalid-payload", f"{path}: unpacks to too much data")
                members.append(m)
            tf.extractall(dest, members=members)  # noqa: S202 - members checked above
    except tarfile.TarError as exc:
        raise LivepatchError("invalid-payload", f"{path}: not a readable tar: {exc}") from None


def _git(repo: str, rev: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
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
    with tempfile.NamedTemporaryFile(suffix=".tar") as fh:
        fh.write(archive.stdout)
        fh.flush()
        _untar(Path(fh.name), dest)
    return dest


def source_root(tree: Path) -> Path:
    """Where the importable modules are: ``src/`` in a src layout, else the top."""
    src = tree / "src"
    if src.is_dir() and any(
        (p / "__init__.py").exists() or p.suffix == ".py" for p in src.iterdir()
    ):
        return src
    return tree


def modules(root: Path) -> dict[str, Path]:
    """module name -> file, for the packages and top-level modules under ``root``."""
    found: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and entry.name not in SKIP_DIRS and (entry / "__init__.py").exists():
            for path in sorted(entry.rglob("*.py")):
                rel = path.relative_to(root)
                if any(p in SKIP_DIRS or not p.isidentifier() for p in rel.parts[:-1]):
                    continue
                parts = list(rel.with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts.pop()
                if all(p.isidentifier() for p in parts):
                    found[".".join(parts)] = path
        elif (
            entry.suffix == ".py"
            and entry.name not in SKIP_FILES
            and entry.stem.isidentifier()
            and not entry.name.startswith("test_")
        ):
            found[entry.stem] = entry
    return found


def extensions(root: Path) -> dict[str, Path]:
    """C/Cython sources of the packages (relative path -> file)."""
    out: dict[str, Path] = {}
    for suffix in ("*.c", "*.pyx", "*.cpp", "*.pxd"):
        for path in root.rglob(suffix):
            rel = path.relative_to(root)
            if not any(p in SKIP_DIRS for p in rel.parts[:-1]):
                out[rel.as_posix()] = path
    return out


def read(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except UnicodeDecodeError:
        return path.read_bytes().decode("latin-1")
    except OSError as exc:
        raise LivepatchError(
            "not-found", f"cannot read {path}: {os.strerror(exc.errno or 0)}"
        ) from None
