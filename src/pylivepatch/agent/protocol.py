"""The control protocol (SPEC §9): length-prefixed JSON over a Unix stream socket.

A message is a 4-byte big-endian length and that many bytes of UTF-8 JSON holding an
object with ``"v"`` (the protocol version). Requests are ``{"v", "verb", "args"}``;
replies ``{"v", "ok": true, "result"}`` or ``{"v", "ok": false, "error": {code,
errno, message}}``. No pickle anywhere: nothing but JSON crosses the socket.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import tempfile
from pathlib import Path
from typing import Any

VERSION = 1
MAX_MESSAGE = 24 * 1024 * 1024  # a 16 MiB payload, base64-encoded, plus the envelope
READ_TIMEOUT = 10.0


class ProtocolError(Exception):
    """A malformed, oversized or truncated message."""


def socket_dir() -> Path:
    """``$PYLIVEPATCH_SOCKET_DIR``, else ``$XDG_RUNTIME_DIR/pylivepatch`` or
    ``/tmp/pylivepatch-UID``; mode 0700. (``pylivepatch attach --app`` sets the first in
    a process it enters, so that the Python processes it starts later put their agents
    where the attaching command line looks.)"""
    explicit = os.environ.get("PYLIVEPATCH_SOCKET_DIR")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = (
        Path(runtime) / "pylivepatch"
        if runtime
        else Path(tempfile.gettempdir()) / f"pylivepatch-{os.getuid()}"
    )
    return base


def socket_path(pid: int) -> Path:
    return socket_dir() / f"{pid}.sock"


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps({"v": VERSION, **message}, separators=(",", ":")).encode()
    if len(body) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the {MAX_MESSAGE}-byte cap")
    return struct.pack(">I", len(body)) + body


def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise ProtocolError("the peer closed the connection in the middle of a message")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket) -> dict[str, Any] | None:
    """One message, or None at a clean end of stream."""
    head = sock.recv(4)
    if not head:
        return None
    if len(head) < 4:
        head += _read_exact(sock, 4 - len(head))
    (length,) = struct.unpack(">I", head)
    if length > MAX_MESSAGE:
        raise ProtocolError(f"message of {length} bytes exceeds the {MAX_MESSAGE}-byte cap")
    try:
        message = json.loads(_read_exact(sock, length))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"message is not JSON: {exc}") from None
    if not isinstance(message, dict) or message.get("v") != VERSION:
        raise ProtocolError(f"message is not a protocol-{VERSION} object")
    return message
