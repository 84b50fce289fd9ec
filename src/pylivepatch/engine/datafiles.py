"""Data files a payload carries (``build --allow data-files``): the non-Python files of
the distribution, written where the running process reads them, as part of the action.

A data file is not an object of the process: it is a file of the installation, which
every process of the application reads. So:

- *upload* checks, without writing: the import package is found by static lookups (the
  namespace of the imported package, or the path finder for one not imported yet: no
  code of the program runs), its directory is a plain writable directory (not a zip,
  not read-only), the installed file stays inside it (no link), and holds either the
  bytes the payload replaces or already the new ones (another process of the
  application put them there); anything else is refused before anything changes;
- *apply* writes each file that still holds the old bytes, first of the action's steps
  after the pre hook (the new code never reads the old data): a temporary file in the
  same directory, flushed, given the old file's mode and owner, then ``os.replace`` (a
  reader sees the old file or the new one, never half of one). A file that already
  holds the new bytes is left as it is. The undo log puts the old bytes back if a later
  step fails, so a failed action leaves the disk as it was;
- *revert* puts the old bytes (carried in the payload) back in every file that still
  holds the new ones, and removes an added file; a file that holds something else by
  then is not the payload's any more and is left alone (said in the result).

Several processes of one application share the installation: each applies (the first
writes, the others find the new bytes) and each reverts (the first puts the old bytes
back, for all of them). Act on the whole application (``load``/``revert`` app-wide);
see docs/design.md, "Data files".
"""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import LivepatchError
from ..payload import static
from ..payload.manifest import DataFileEntry, Manifest
from .resolve import _search_path

if TYPE_CHECKING:
    from .base import Act
    from .records import Record


@dataclass(frozen=True)
class FilePlan:
    """One data file of an uploaded payload: where it is installed, and both contents."""

    entry: DataFileEntry
    path: str  # the installed file (absolute)
    mode_from: str  # the file whose mode and owner an added file takes (the package's __init__)
    old: bytes | None  # None: an added file
    new: bytes


def check(man: Manifest, members: dict[str, bytes]) -> list[FilePlan]:
    """The payload's data files, located and checked at upload (module docstring)."""
    plans: list[FilePlan] = []
    for e in man.data_files:
        # present and matching their sha256: checked by archive.read
        new = members[e.member]
        old = members[e.old_member] if e.old_member is not None else None
        directory, init = package_directory(e.package, f"payload {man.name}: data file {e.shown}")
        path = os.path.join(directory, *e.path.split("/"))
        plan = FilePlan(e, path, init, old, new)
        _inside(plan, directory, man.name)
        state = _state(plan)
        if state not in ("old", "new"):
            raise _mismatch(plan, man.name, "upload", state)
        if not os.access(os.path.dirname(path), os.W_OK) or (
            os.path.exists(path) and not os.access(path, os.W_OK)
        ):
            raise LivepatchError(
                "permission-denied",
                f"payload {man.name}: data file {e.shown}: {path} cannot be written by this "
                f"process (uid {os.geteuid()}): the installation is read-only to it; run the "
                "service as a user that owns its installation, or ship the release",
            )
        plans.append(plan)
    return plans


def apply(act: Act, rec: Record) -> None:
    """Write ``rec``'s data files (the first step of its apply, after the pre hook)."""
    _step(act, rec, "apply", lambda p: (p.old, p.new))


def revert(act: Act, rec: Record) -> None:
    """Put back the old bytes of ``rec``'s data files (the first step of its revert)."""
    _step(act, rec, "revert", lambda p: (p.new, p.old))


def refuse_replace(rec: Record, applied: list[Record]) -> None:
    """A replace moves functions and data in one pause; files are not part of it yet."""
    with_files = [r.name for r in [rec, *applied] if getattr(r, "files", None)]
    if with_files:
        raise LivepatchError(
            "replace-refused",
            f"replace {rec.name}: {', '.join(with_files)} carries data files, which a replace "
            "does not move; revert the applied payloads and apply this one instead",
        )


def _step(
    act: Act, rec: Record, action: str, way: Callable[[FilePlan], tuple[bytes | None, bytes | None]]
) -> None:
    plans: list[FilePlan] = getattr(rec, "files", [])
    if not plans:
        return
    written: list[str] = []
    found: list[str] = []
    left: list[str] = []
    for plan in plans:
        frm, to = way(plan)
        state = _state(plan)
        want = "new" if action == "apply" else "old"
        if state == want:
            found.append(plan.entry.shown)
            continue
        if state not in ("old", "new"):
            if action == "apply":
                raise _mismatch(plan, rec.name, action, state)
            left.append(plan.entry.shown)  # not the payload's bytes any more: left alone
            continue
        _put(plan, to)
        written.append(plan.entry.shown)
        if act.undo is not None:  # a later step fails: the file as it was
            act.undo.files.append(functools.partial(_undo, plan, to, frm))
    act.emit("note", message=f"data files {action}", written=written, found=found, left=left)
    if left:
        act.result_message = (
            f"reverted; left alone (changed since the apply, not the payload's bytes): "
            f"{', '.join(left)}"
        )


def _undo(plan: FilePlan, now: bytes | None, back: bytes | None) -> None:
    """Put ``back`` if the file still holds what the action wrote (``now``)."""
    current = _read(plan.path)
    if current is None and now is None:
        pass
    elif current is None or now is None or _sha(current) != _sha(now):
        return  # someone else's bytes by now: not ours to change
    _put(plan, back)


def _state(plan: FilePlan) -> str:
    """``old``, ``new``, or what else the installed file is."""
    try:
        mode = os.lstat(plan.path).st_mode
    except FileNotFoundError:
        mode = stat.S_IFREG  # absent: read as such below
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if not stat.S_ISREG(mode):
        return "not a regular file"  # a FIFO would block the read
    try:
        current = _read(plan.path)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if current is None:
        return "old" if plan.entry.old is None else "missing"
    digest = _sha(current)
    if digest == plan.entry.new:
        return "new"
    if digest == plan.entry.old:
        return "old"
    return f"another content (sha256 {digest[:16]})"


def _mismatch(plan: FilePlan, name: str, action: str, state: str) -> LivepatchError:
    was = "absent" if plan.entry.old is None else f"sha256 {plan.entry.old[:16]}"
    return LivepatchError(
        "expectation-failed",
        f"{action} {name}: data file {plan.entry.shown} ({plan.path}) is {state}, neither the "
        f"file the payload was built against ({was}) nor its new one (sha256 "
        f"{plan.entry.new[:16]}): the installation is not the release the payload was built "
        "from; build it against what is installed (build --installed)",
    )


def _inside(plan: FilePlan, directory: str, name: str) -> None:
    real = os.path.realpath(os.path.dirname(plan.path))
    root = os.path.realpath(directory)
    if real != root and not real.startswith(root + os.sep):
        raise LivepatchError(
            "unsupported-target",
            f"payload {name}: data file {plan.entry.shown}: {plan.path} leads out of the "
            f"package's directory {directory} (a symbolic link on its way)",
        )
    if not os.path.isdir(os.path.dirname(plan.path)):
        raise LivepatchError(
            "unsupported-target",
            f"payload {name}: data file {plan.entry.shown}: its directory "
            f"{os.path.dirname(plan.path)} does not exist; a payload adds files only to "
            "directories the installation has: ship the release",
        )


def package_directory(package: str, what: str) -> tuple[str, str]:
    """The directory of the installed regular package ``package`` and its ``__init__``
    file, by static lookups: the imported package's ``__file__`` read from its
    namespace, or, not imported yet, the path finder over the parent's search path (no
    ``__init__`` runs, no finder of the program is asked)."""
    module = sys.modules.get(package)
    origin: Any = None
    if static.is_module(module):
        origin = static.module_dict(module).get("__file__")
        if type(origin) is not str:
            raise LivepatchError(
                "unsupported-target",
                f"{what}: package {package} has no file on disk (a namespace package, or "
                "made by the program): its data files cannot be located",
            )
    else:
        path: Any = None
        parts = package.split(".")
        for i in range(len(parts)):
            name = ".".join(parts[: i + 1])
            parent = sys.modules.get(name)
            if static.is_module(parent) and i < len(parts) - 1:
                path = static.module_dict(parent).get("__path__")
                continue
            search = sys.path if i == 0 else _search_path(path)
            try:
                spec = importlib.machinery.PathFinder.find_spec(name, search) if search else None
            except (ImportError, ValueError, TypeError):
                spec = None
            if spec is None:
                raise LivepatchError(
                    "not-found",
                    f"{what}: package {package} is neither imported nor found on sys.path",
                )
            path, origin = spec.submodule_search_locations, spec.origin
    if type(origin) is not str or os.path.basename(origin) not in ("__init__.py", "__init__.pyc"):
        raise LivepatchError(
            "unsupported-target", f"{what}: {package} is not a regular package ({origin!r})"
        )
    directory = os.path.dirname(origin)
    if not os.path.isdir(directory):
        raise LivepatchError(
            "unsupported-target",
            f"{what}: package {package} is imported from {directory}, not a plain directory "
            "(a zip archive or an importer of its own): its files cannot be replaced",
        )
    return directory, origin


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _put(plan: FilePlan, content: bytes | None) -> None:
    """Make the installed file hold ``content`` (None: no file), replaced as a whole."""
    path = plan.path
    try:
        if content is None:
            os.unlink(path)
            return
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = os.stat(plan.mode_from)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".pylivepatch-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
            if os.geteuid() == 0:  # keep the installation's owner
                os.chown(tmp, st.st_uid, st.st_gid)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as exc:
        code = "permission-denied" if isinstance(exc, PermissionError) else "unsupported-target"
        raise LivepatchError(
            code, f"data file {plan.entry.shown}: cannot write {path}: {exc.strerror}"
        ) from None
