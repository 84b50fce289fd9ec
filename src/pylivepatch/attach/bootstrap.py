"""What attach puts into the target: the bootstrap, the agent's code, the side channel.

The bootstrap is the only code the target's main thread runs on attach's behalf. It
binds no name in ``__main__``, imports only the built-ins ``posix`` and ``_thread``, runs
at most once per attach (it first removes the attach's token file: a copy that finds it
gone does nothing), starts one thread and cannot raise: a string run by ``PyRun_SimpleString`` from a pending call that
raised would leave the main thread with ``SystemError`` and kill the program. The new
thread then finds pylivepatch (the target's own install, else a private read-only copy
of ours that attach adds at the end of ``sys.path``), starts the agent
(``pylivepatch.agent.attached``) and answers on a side channel: a Unix socket the
command line listens on, whose peer it checks with ``SO_PEERCRED`` (or, if the target
cannot even import ``socket`` — a frozen app — a file next to it).
"""

from __future__ import annotations

import compileall
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import CODES, LivepatchError

#: the code the new thread runs in the target (its parameters are filled in by repr)
_THREAD_SOURCE = """\
import sys
def _report(text):
    try:
        import socket
    except BaseException:
        try:
            with open({fallback!r}, 'w') as fh:
                fh.write(text)
        except BaseException:
            pass
        return
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect({channel!r})
        s.sendall(text.encode('utf-8', 'replace'))
        s.close()
    except BaseException:
        pass
try:
    if {library!r} and 'pylivepatch' not in sys.modules:
        import importlib.util
        if importlib.util.find_spec('pylivepatch') is None:
            sys.path.append({library!r})
    from pylivepatch.agent import attached
except BaseException as exc:
    try:
        import traceback
        _text = traceback.format_exc()
    except BaseException:
        _text = repr(exc)
    _report('error ' + _text)
else:
    attached.main(_report, {socket_dir!r}, {state_dir!r}, {app!r}, {public_pid!r}, {peer!r})
"""

#: what the target's main thread runs: claim the attach's token (the first of its
#: bootstraps to remove the file goes on: attach may queue the same bootstrap by two
#: paths, sys.remote_exec and gdb), start the thread above, and nothing else; if no
#: thread can be started, say why in the fallback file
_BOOTSTRAP = """\
try:
    __import__('posix').unlink({once!r})
except BaseException:
    pass
else:
    try:
        __import__('_thread').start_new_thread(exec, ({source!r}, {{'__name__': '__pylivepatch_attach__'}}))
    except BaseException:
        try:
            (lambda f, e: (f.write('error thread ' + repr(e)), f.close()))(open({fallback!r} + '.tmp', 'w'), __import__('sys').exc_info()[1])
            __import__('posix').rename({fallback!r} + '.tmp', {fallback!r})
        except BaseException:
            pass
"""


def render(
    *,
    channel: str,
    fallback: str,
    library: str,
    socket_dir: str,
    state_dir: str,
    app: str,
    public_pid: int,
    once: str,
) -> bytes:
    """The bootstrap text (paths as the target sees them); ``once``: the token file
    whose removal lets exactly one copy of this bootstrap start the agent's thread."""
    source = _THREAD_SOURCE.format(
        channel=channel, fallback=fallback, library=library, socket_dir=socket_dir,
        state_dir=state_dir, app=app, public_pid=public_pid, peer=(os.getpid(), os.getuid()),
    )  # fmt: skip
    text = _BOOTSTRAP.format(source=source, once=once, fallback=fallback)
    compile(text, "<pylivepatch attach>", "exec")  # ours: a bug here is caught before the target
    return text.encode()


def _package_files() -> list[Path]:
    package = Path(__file__).resolve().parents[1]
    return sorted(
        p
        for p in package.rglob("*.py")
        if "__pycache__" not in p.parts and p.relative_to(package).parts[0] != "attach"
    )


def library(directory: Path) -> Path:
    """A read-only copy of pylivepatch's own code under ``directory`` (made once per
    version of the code, with byte code for this interpreter), for targets that cannot
    import pylivepatch: files 0444,
    folders 0555, owned by this user inside its 0700 socket directory, so that no one
    else can put code in the way of the target. Returns the folder to add to
    ``sys.path``."""
    package = Path(__file__).resolve().parents[1]
    files = _package_files()
    digest = hashlib.sha256(sys.implementation.cache_tag.encode())  # byte code's version
    for f in files:
        digest.update(str(f.relative_to(package)).encode() + b"\0" + f.read_bytes() + b"\0")
    lib = directory / "lib"
    lib.mkdir(mode=0o700, exist_ok=True)
    final = lib / digest.hexdigest()[:16]
    if final.is_dir() and _read_only_and_ours(final):
        return final
    if final.exists():  # damaged or not ours: make it anew
        _remove(final)
    tmp = lib / f".tmp-{secrets.token_hex(6)}"
    try:
        for f in files:
            dest = tmp / "pylivepatch" / f.relative_to(package)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
        # Byte code for this interpreter's version: a target of the same version imports
        # without compiling (compiling holds its GIL; the folder is read-only to it).
        compileall.compile_dir(tmp, quiet=2, workers=1)
        for f in tmp.rglob("*"):
            if f.is_file():
                f.chmod(0o444)
        for d in sorted(tmp.rglob("*"), reverse=True):
            if d.is_dir():
                d.chmod(0o555)
        tmp.chmod(0o555)
        os.rename(tmp, final)
    except OSError as exc:
        _remove(tmp)
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        # another attach made the same copy meanwhile
    return final


def _read_only_and_ours(path: Path) -> bool:
    for p in [path, *path.rglob("*")]:
        st = p.lstat()
        if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o222 or stat.S_ISLNK(st.st_mode):
            return False
    return True


def _remove(path: Path) -> None:
    if not path.exists():
        return
    for p in [path, *path.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o700)
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Report:
    """What the target's agent thread said."""

    ok: bool
    text: str  # JSON of the agent's description, or the failure's traceback


class Channel:
    """The socket the target's new thread answers on (spec §9: peers by SO_PEERCRED)."""

    def __init__(self, directory: Path, target_path: str, pid: int) -> None:
        """``directory``: where to bind, as reached from here; ``target_path``: the same
        folder as the target sees it; ``pid``: the target (in the files' names, so that
        :func:`sweep` can tell whose they are)."""
        name = f"attach-{pid}-{secrets.token_hex(8)}"
        self.name = name
        self.path = directory / f"{name}.sock"
        self.fallback = directory / f"{name}.err"
        self.target_channel = f"{target_path.rstrip('/')}/{name}.sock"
        self.target_fallback = f"{target_path.rstrip('/')}/{name}.err"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(str(self.path))
        finally:
            os.umask(old)
        self.sock.listen(4)
        self.strangers: list[int] = []  # pids that connected but are not the target
        # The bootstrap's token: an empty file the first bootstrap to run removes.
        self.once = directory / f"{name}.once"
        self.target_once = f"{target_path.rstrip('/')}/{name}.once"
        os.close(os.open(self.once, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self.queued = False  # set once a bootstrap was queued: its token must stay

    def claimed(self) -> bool:
        """Whether a bootstrap of this attach has run (and removed the token)."""
        return not self.once.exists()

    def wait(self, pid: int, deadline: float) -> Report | None:
        """The target's report, or None if none came before ``deadline``."""
        while True:
            if self.fallback.exists():  # the target could not import socket
                status, _, rest = self.fallback.read_text(errors="replace").partition(" ")
                return Report(status == "ok", rest)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(min(left, 0.05))
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                creds = conn.getsockopt(
                    socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
                )
                peer_pid, _uid, _gid = struct.unpack("3i", creds)
                if peer_pid != pid:
                    self.strangers.append(peer_pid)
                    continue
                conn.settimeout(max(0.1, deadline - time.monotonic()))
                chunks, size = [], 0
                try:
                    while size < 1 << 20:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        chunks.append(chunk)
                        size += len(chunk)
                except OSError:
                    pass
            text = b"".join(chunks).decode("utf-8", "replace")
            status, _, rest = text.partition(" ")
            return Report(status == "ok", rest)

    def close(self) -> None:
        self.sock.close()
        # A bootstrap still queued in the target may run later and start the agent (a
        # later attach finds it): its token stays. Nothing queued: nothing may run.
        for p in (
            (self.path, self.fallback) if self.queued else (self.path, self.fallback, self.once)
        ):
            try:
                p.unlink()
            except OSError:
                pass


_LEFT = re.compile(r"attach-(\d+)-[0-9a-f]+\.(?:once|py|err|err\.tmp|sock)")


def sweep(directory: Path) -> None:
    """Remove what attaches left for processes that are gone: the tokens and scripts of
    bootstraps that were queued but never ran (they stay while their process lives: it
    may still run them)."""
    try:
        entries = list(directory.iterdir())
    except OSError:
        return
    for entry in entries:
        m = _LEFT.fullmatch(entry.name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            try:
                entry.unlink()
            except OSError:
                pass


def raise_for(report: Report, pid: int) -> None:
    """``agent-import-failed`` for a report of failure, with the cause first."""
    if report.ok:
        return
    if report.text.startswith("thread "):  # the bootstrap could not start its thread
        why = report.text[len("thread ") :].strip()
        hint = ""
        if "interpreter shutdown" in why:
            hint = (
                ": CPython 3.12 starts no thread once the main module has returned and the "
                "interpreter waits for the program's other threads to end, so no agent can "
                "start in this process (3.10, 3.11 and 3.13+ can)"
            )
        raise LivepatchError(
            "wrong-state",
            f"process {pid}: the bootstrap ran but could not start the agent's thread "
            f"({why}){hint}; nothing else was changed, the process runs on",
        )
    if report.text.startswith("refused "):  # the agent refused to start, with a code
        code, _, why = report.text[len("refused ") :].partition(" ")
        raise LivepatchError(
            code if code in CODES else "agent-import-failed",
            f"{why.strip()}; no agent was started, the process runs on",
        )
    lines = [line for line in report.text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "no detail"
    hint = ""
    if "ModuleNotFoundError" in last and "pylivepatch" not in last:
        hint = (
            " (a frozen app, such as one built by PyInstaller, ships only the modules it "
            "uses: build it with the agent inside, `--collect-submodules pylivepatch`)"
        )
    raise LivepatchError(
        "agent-import-failed",
        f"process {pid}: the agent could not start in the target: {last}{hint}; the target "
        "runs on (the thread attach started has ended). Its traceback:\n" + report.text.strip(),
    )
