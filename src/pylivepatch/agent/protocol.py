"""The control protocol (spec §9): length-prefixed JSON over a Unix stream socket.

A message is a 4-byte big-endian length and that many bytes of UTF-8 JSON holding an
object with ``"v"`` (the protocol version). Requests are ``{"v", "verb", "args"}``;
replies ``{"v", "ok": true, "result"}`` or ``{"v", "ok": false, "error": {code,
errno, message}}``. No pickle anywhere: nothing but JSON crosses the socket.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import socket
import stat
import struct
import sys
import time

from ..errors import LivepatchError

# An idle agent imports this module: what only a client needs (pathlib, the bounded
# JSON reader of payload.archive) is imported where it is used (docs/operating.md,
# "What an agent costs").
TYPE_CHECKING = False  # not typing's: see pylivepatch/__init__.py
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

VERSION = 1
MAX_MESSAGE = 24 * 1024 * 1024  # a 16 MiB payload, base64-encoded, plus the envelope
READ_TIMEOUT = 10.0


class ProtocolError(Exception):
    """A malformed, oversized or truncated message."""


def socket_dir() -> Path:
    """``$PYLIVEPATCH_SOCKET_DIR``, else ``$XDG_RUNTIME_DIR/pylivepatch`` or
    ``/tmp/pylivepatch-UID``; mode 0700 (:func:`prepare_dir` makes it so, and a client
    checks it with :func:`check_dir` and each listener with :func:`check_peer`). (``pylivepatch attach --app`` sets the first in
    a process it enters, so that the Python processes it starts later put their agents
    where the attaching command line looks.)"""
    from pathlib import Path

    return Path(socket_directory())


def socket_directory() -> str:
    """:func:`socket_dir` as a string, for the agent (which does not import pathlib)."""
    explicit = os.environ.get("PYLIVEPATCH_SOCKET_DIR")
    if explicit:
        return explicit
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "pylivepatch")
    return os.path.join(temporary_directory(), f"pylivepatch-{os.getuid()}")


def temporary_directory() -> str:
    """``tempfile.gettempdir()``: the program's own answer when it has imported
    ``tempfile`` (its ``tempfile.tempdir`` included), else the same search without
    importing it (``tempfile`` and what it imports would be 0.5 to 0.9 MB of an idle
    agent's memory), so that an agent and the command line find the same directory."""
    module = sys.modules.get("tempfile")
    if module is not None:
        return str(module.gettempdir())
    return _first_usable_directory()


@functools.lru_cache(maxsize=1)  # once a process, as tempfile does
def _first_usable_directory() -> str:
    """The first of ``$TMPDIR``, ``$TEMP``, ``$TMP``, ``/tmp``, ``/var/tmp``,
    ``/usr/tmp`` and the working directory where a file can be created (and is, then
    removed), as ``tempfile`` searches on POSIX."""
    candidates = [d for d in (os.environ.get(n) for n in ("TMPDIR", "TEMP", "TMP")) if d]
    candidates += ["/tmp", "/var/tmp", "/usr/tmp"]
    try:
        candidates.append(os.getcwd())
    except OSError:
        candidates.append(os.curdir)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for candidate in candidates:
        directory = candidate if candidate == os.curdir else os.path.abspath(candidate)
        for _ in range(100):
            probe = os.path.join(directory, f"tmp{os.urandom(6).hex()}")
            try:
                fd = os.open(probe, flags, 0o600)
                try:
                    try:
                        os.write(fd, b"blat")
                    finally:
                        os.close(fd)
                finally:
                    os.unlink(probe)
                return directory
            except FileExistsError:
                continue  # another name
            except OSError:
                break  # not this directory
    raise FileNotFoundError(errno.ENOENT, f"No usable temporary directory found in {candidates}")


def socket_path(pid: int) -> Path:
    return socket_dir() / f"{pid}.sock"


def _untrusted(message: str) -> LivepatchError:
    return LivepatchError("untrusted-socket", message)


def check_dir(path: Path, owners: frozenset[int] | None = None) -> None:
    """Refuse (``untrusted-socket``) a socket directory another user could have put
    sockets in: it must be a directory owned by the caller or root (``owners``, when
    given, adds to them), with no permission for group or others. A symbolic link is
    followed only when its own owner is trusted too. Nothing is created here."""
    me = os.geteuid()
    trusted = {me, 0} | set(owners or ())
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) and st.st_uid in trusted:
            st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(2, "no such directory", str(path)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise _untrusted(
            f"socket directory {path} is not a directory (it belongs to uid {st.st_uid}): "
            "remove it, or set PYLIVEPATCH_SOCKET_DIR to a directory of yours"
        )
    if st.st_uid not in trusted:
        raise _untrusted(
            f"socket directory {path} belongs to uid {st.st_uid}, not to you (uid {me}) or "
            "root: a socket in it may be an impostor's, so none is used. Remove the "
            f"directory (as root: rm -r {path}) and restart the service, or give it and the "
            "command line PYLIVEPATCH_SOCKET_DIR set to a directory of yours (mode 0700)"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise _untrusted(
            f"socket directory {path} has mode {mode:o}: other users may put sockets in it, "
            f"so none is used. Run: chmod 700 {path}"
        )


def prepare_dir(path: Path) -> None:
    """Create an agent's socket directory (mode 0700), or make a directory of ours that
    exists with a looser mode 0700; one of another user is ``untrusted-socket`` at once,
    with what to do."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)  # our own directory (a plain mkdir): nobody else's sockets
    check_dir(path)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that listens at the other end of a connected
    Unix socket (SO_PEERCRED: as it was when that process called ``listen``)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def process_uids(pid: int) -> set[int] | None:
    """The real, effective, saved and file-system uids of process ``pid``; None if it
    does not exist (or is hidden from us)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Uid:"):
                    return {int(u) for u in line.split()[1:]}
    except (OSError, ValueError):
        return None
    return None


def check_peer(sock: socket.socket, pid: int, path: Path | str) -> None:
    """Refuse (``untrusted-socket``) a connection whose listener is not process ``pid``
    running as that process's uid (or root): an impostor gets no byte of ours."""
    peer_pid, peer_uid, _gid = peer_credentials(sock)
    uids = process_uids(pid)
    if uids is None:  # someone answers for a process that does not exist (for us)
        raise _untrusted(
            f"{path} is not the agent of process {pid}: there is no process {pid}, and the "
            f"process listening there is pid {peer_pid} uid {peer_uid}; nothing was sent. "
            f"Find out who made it and remove it (rm {path})"
        )
    if peer_pid != pid or (peer_uid not in uids and peer_uid != 0):
        raise _untrusted(
            f"{path} is not the agent of process {pid}: the process listening there is pid "
            f"{peer_pid} uid {peer_uid}, expected pid {pid} uid {'/'.join(map(str, sorted(uids)))}; "
            f"nothing was sent. Find out who made it, remove it (rm {path}) and restart the "
            "agent of the process (or pylivepatch attach it)"
        )


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps({"v": VERSION, **message}, separators=(",", ":")).encode()
    if len(body) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the {MAX_MESSAGE}-byte cap")
    return struct.pack(">I", len(body)) + body


def _recv(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete message before the deadline")
        sock.settimeout(left)
    return sock.recv(n)


def _read_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    chunks = []
    while n:
        chunk = _recv(sock, min(n, 1 << 20), deadline)
        if not chunk:
            raise ProtocolError("the peer closed the connection in the middle of a message")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket, deadline: float | None = None) -> dict[str, Any] | None:
    """One message, or None at a clean end of stream. With ``deadline`` (a
    ``time.monotonic()`` instant) the whole message must have come by then, however
    slowly its bytes trickle in (``TimeoutError``); JSON nested deeper than
    ``MAX_DEPTH`` is refused before it is parsed."""
    head = _recv(sock, 4, deadline)
    if not head:
        return None
    if len(head) < 4:
        head += _read_exact(sock, 4 - len(head), deadline)
    (length,) = struct.unpack(">I", head)
    if length > MAX_MESSAGE:
        raise ProtocolError(f"message of {length} bytes exceeds the {MAX_MESSAGE}-byte cap")
    body = _read_exact(sock, length, deadline)
    from ..payload.archive import loads_bounded

    try:
        message = loads_bounded(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"message is not JSON: {exc}") from None
    if not isinstance(message, dict) or message.get("v") != VERSION:
        raise ProtocolError(f"message is not a protocol-{VERSION} object")
    return message
