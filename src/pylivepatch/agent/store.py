"""What pylivepatch keeps on disk for an app (spec §9): installed payloads and the
audit log.

Everything lives under one state directory (``$PYLIVEPATCH_STATE_DIR``, else
``$XDG_STATE_HOME/pylivepatch``, else ``~/.local/state/pylivepatch``), mode 0700::

    apps/NAME/installed/0001-fix-price.lpz   payloads installed for app NAME, in order
    apps/NAME/audit.jsonl                    every action in every process of NAME
    apps/_none/audit.jsonl                   processes started without an app name

Installed payloads are code that every new process of the app runs, so they are only
read from directories and files owned by this user (or root) that nobody else can
write. Installing writes a temporary file and renames it, so a process starting at the
same moment sees the payload whole or not at all.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LivepatchError
from .paths import APP_NAME as APP_NAME
from .paths import NO_APP as NO_APP
from .paths import check_app as check_app
from .paths import state_directory

AUDIT_FILE = "audit.jsonl"
AUDIT_ROTATE_BYTES = 16 * 1024 * 1024  # then audit.jsonl becomes audit.jsonl.1


def state_dir() -> Path:
    env = os.environ
    return _state_dir(env.get("PYLIVEPATCH_STATE_DIR"), env.get("XDG_STATE_HOME"), env.get("HOME"))


@functools.lru_cache(maxsize=16)
def _state_dir(explicit: str | None, xdg: str | None, home: str | None) -> Path:
    # Cached (by what decides it), like the paths below: every audit line would
    # otherwise parse the path again, and pathlib interns each part; the parts die with
    # the path, so CPython's table of interned strings fills with deleted entries and,
    # after some thousands of actions, doubles (a step of about 0.5 MB of resident
    # memory in every process, found by the soak, benchmarks/soak.py).
    return Path(state_directory(explicit, xdg))  # (``home`` is part of the cache key)


def app_dir(app: str | None) -> Path:
    return _app_dir(state_dir(), app)


@functools.lru_cache(maxsize=64)
def _app_dir(root: Path, app: str | None) -> Path:
    return root / "apps" / (check_app(app) if app else NO_APP)


def _make_private(path: Path) -> Path:
    """Create ``path`` and the directories between it and the state directory, each
    mode 0700, and refuse one that others could write."""
    root = state_dir()
    chain = [path, *path.parents]
    for directory in reversed(chain[: chain.index(root) + 1] if root in chain else [path]):
        if not directory.is_dir():
            directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.mkdir(mode=0o700, exist_ok=True)
    _check_private(path)
    return path


def _check_private(path: Path) -> None:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or st.st_uid not in (os.getuid(), 0) or st.st_mode & 0o022:
        raise LivepatchError(
            "permission-denied",
            f"{path} must belong to uid {os.getuid()} (or root), not be a link and not be "
            f"writable by others (it has uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}); "
            "fix its owner and mode",
        )


# --- installed payloads ------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    app: str
    seq: int
    name: str
    build_id: str
    version: str
    path: Path
    installed_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "seq": self.seq,
            "name": self.name,
            "build_id": self.build_id,
            "version": self.version,
            "file": str(self.path),
            "installed_at": self.installed_at,
        }


def _installed_dir(app: str) -> Path:
    return app_dir(app) / "installed"


@contextmanager
def _locked(app: str) -> Iterator[Path]:
    import fcntl

    directory = _make_private(_installed_dir(app))
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield directory
    finally:
        os.close(fd)


def installed(app: str) -> list[Installed]:
    """The payloads installed for ``app``, in the order they are applied."""
    directory = _installed_dir(app)
    if not directory.is_dir():
        return []
    _check_private(directory)
    found = []
    for path in sorted(directory.glob("[0-9][0-9][0-9][0-9]-*.lpz")):
        seq, _, name = path.stem.partition("-")
        _check_private(path)
        st = path.stat()
        from ..payload import archive

        try:
            man = archive.read(path.read_bytes()).manifest
        except LivepatchError as exc:
            raise LivepatchError(
                "invalid-payload", f"installed payload {path} is damaged: {exc.message}"
            ) from None
        found.append(Installed(app, int(seq), name, man.build_id, man.version, path, st.st_mtime))
    return found


def apps() -> list[str]:
    root = state_dir() / "apps"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def install(app: str, data: bytes) -> Installed:
    """Store a payload for ``app``; new processes of the app apply it at start."""
    from ..payload import archive

    man = archive.read(data).manifest
    with _locked(check_app(app)) as directory:
        present = installed(app)
        for other in present:
            if other.name == man.name:
                raise LivepatchError(
                    "exists",
                    f"payload {man.name} is already installed for app {app}; "
                    f"uninstall it first (pylivepatch uninstall {man.name} --app {app})",
                )
        seq = max((i.seq for i in present), default=0) + 1
        path = directory / f"{seq:04d}-{man.name}.lpz"
        tmp = directory / f".{path.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return Installed(app, seq, man.name, man.build_id, man.version, path, time.time())


def uninstall(app: str, name: str) -> Installed:
    with _locked(check_app(app)):
        for item in installed(app):
            if item.name == name:
                item.path.unlink()
                return item
    raise LivepatchError(
        "not-found",
        f"no payload named {name} is installed for app {app} "
        f"(see pylivepatch list --installed --app {app})",
    )


# --- the audit log -----------------------------------------------------------------


def audit_path(app: str | None) -> Path:
    return _audit_path(app_dir(app))


@functools.lru_cache(maxsize=64)
def _audit_path(directory: Path) -> Path:
    return directory / AUDIT_FILE


def append_audit(app: str | None, record: dict[str, Any]) -> None:
    """Append one JSON line (one ``write`` with ``O_APPEND``: lines from several
    processes never interleave)."""
    path = audit_path(app)
    _make_private(path.parent)
    line = (json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n").encode()
    try:
        if path.stat().st_size > AUDIT_ROTATE_BYTES:
            os.replace(path, path.with_name(AUDIT_FILE + ".1"))
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_audit(app: str | None) -> list[dict[str, Any]]:
    """The app's audit records, oldest first (the rotated file first)."""
    path = audit_path(app)
    records = []
    for p in (path.with_name(AUDIT_FILE + ".1"), path):
        try:
            text = p.read_text(errors="replace")
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):
                continue  # a line cut by a full disk: skip it, keep the rest
            if isinstance(rec, dict):
                records.append(rec)
    return records
