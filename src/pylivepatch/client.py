"""Python bindings to a process's agent (SPEC §10): ``Client(pid=…)`` has the methods
of ``engine()`` and raises the same ``LivepatchError``."""

from __future__ import annotations

import base64
import builtins
import os
import socket
import time
from typing import Any

from .agent import protocol
from .errors import LivepatchError
from .results import ActionResult, FuncStatus, PayloadStatus


def _status(doc: dict[str, Any]) -> PayloadStatus:
    doc = dict(doc)
    doc["funcs"] = tuple(FuncStatus(**f) for f in doc.get("funcs", ()))
    for key in ("python", "data", "pending"):
        doc[key] = tuple(doc.get(key, ()))
    return PayloadStatus(**doc)


class Client:
    """A connection to the agent of process ``pid`` (one request at a time).

    Each call opens its own connection; inside ``with Client(pid) as c:`` the calls
    share one, so that a controller sending many requests costs the agent one
    connection (and one thread), not one per request."""

    #: A kept connection idle this long is renewed before the next request, well
    #: before the agent closes it (``protocol.READ_TIMEOUT``).
    KEEP_IDLE = protocol.READ_TIMEOUT / 2

    def __init__(self, pid: int, timeout: float = 120.0) -> None:
        self.pid = pid
        self.path = protocol.socket_path(pid)
        self.timeout = timeout
        self._kept: socket.socket | None = None
        self._keeping = 0  # nested ``with`` blocks
        self._idle_since = 0.0

    def __enter__(self) -> Client:
        self._keeping += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._keeping -= 1
        if not self._keeping:
            self._drop()

    def _drop(self) -> None:
        if self._kept is not None:
            self._kept.close()
            self._kept = None

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            self._connect(sock)
        except FileNotFoundError:
            sock.close()
            raise LivepatchError(
                "not-found", f"process {self.pid} has no pylivepatch agent ({self.path})"
            ) from None
        except PermissionError:
            sock.close()
            raise LivepatchError("permission-denied", f"cannot connect to {self.path}") from None
        except OSError as exc:
            sock.close()
            raise LivepatchError(
                "not-found", f"agent of process {self.pid} is not answering: {exc}"
            ) from None
        return sock

    def _socket(self) -> tuple[socket.socket, bool]:
        """The connection for the next request, and whether it was used before."""
        if not self._keeping:
            return self._open(), False
        if self._kept is not None and time.monotonic() - self._idle_since > self.KEEP_IDLE:
            self._drop()
        if self._kept is None:
            self._kept = self._open()
            return self._kept, False
        return self._kept, True

    def _call(self, verb: str, **args: Any) -> Any:
        message = protocol.encode({"verb": verb, "args": args})
        sock, used = self._socket()
        try:
            try:
                sock.sendall(message)
            except OSError:
                if not used:
                    raise
                # the agent closed the kept connection: nothing was delivered (a
                # local socket refuses the bytes); send once more on a new one
                self._drop()
                sock, used = self._socket()
                sock.sendall(message)
            try:
                reply = protocol.receive(sock)
            except (protocol.ProtocolError, OSError) as exc:
                raise LivepatchError("busy", f"agent of process {self.pid}: {exc}") from None
        except BaseException:
            if sock is self._kept:
                self._drop()
            raise
        finally:
            if sock is not self._kept:
                sock.close()
        self._idle_since = time.monotonic()
        if reply is None:
            if sock is self._kept:
                self._drop()
            raise LivepatchError("busy", f"agent of process {self.pid} closed the connection")
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise LivepatchError(
                str(err.get("code", "invalid-payload")), str(err.get("message", ""))
            )
        return reply.get("result")

    def _connect(self, sock: socket.socket) -> None:
        """Connect; a full listen queue (EAGAIN) is waited out for up to the timeout."""
        import errno

        deadline = time.monotonic() + min(self.timeout, 10.0)
        while True:
            try:
                sock.connect(str(self.path))
                return
            except BlockingIOError as exc:
                if exc.errno != errno.EAGAIN or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @staticmethod
    def _read(path: str | os.PathLike[str] | bytes) -> str:
        data = path if isinstance(path, bytes) else open(path, "rb").read()  # noqa: SIM115
        return base64.b64encode(data).decode()

    def ping(self) -> dict[str, Any]:
        return dict(self._call("ping"))

    def upload(
        self, name: str, path: str | os.PathLike[str] | bytes, **options: Any
    ) -> ActionResult:
        return ActionResult(**self._call("upload", name=name, data=self._read(path), **options))

    def load(self, path: str | os.PathLike[str] | bytes, **options: Any) -> ActionResult:
        return ActionResult(**self._call("load", data=self._read(path), **options))

    def apply(
        self,
        name: str,
        nodeps: bool = False,
        timeout: float | None = None,
        force: bool = False,
        **options: Any,
    ) -> ActionResult:
        return ActionResult(
            **self._call("apply", name=name, nodeps=nodeps, timeout=timeout, force=force, **options)
        )

    def revert(
        self, name: str, timeout: float | None = None, force: bool = False, **options: Any
    ) -> ActionResult:
        return ActionResult(
            **self._call("revert", name=name, timeout=timeout, force=force, **options)
        )

    def replace(
        self, name: str, timeout: float | None = None, force: bool = False, **options: Any
    ) -> ActionResult:
        return ActionResult(
            **self._call("replace", name=name, timeout=timeout, force=force, **options)
        )

    def unload(self, name: str) -> ActionResult:
        return ActionResult(**self._call("unload", name=name))

    def list(self) -> list[PayloadStatus]:
        return [_status(d) for d in self._call("list")]

    def status(self, name: str) -> PayloadStatus:
        return _status(self._call("status", name=name))

    def log(self, since: int = 0) -> builtins.list[dict[str, Any]]:
        return list(self._call("log", since=since))

    def action(self, name: str, verb: str, **options: Any) -> ActionResult:
        verbs = {
            "apply": self.apply,
            "revert": self.revert,
            "replace": self.replace,
            "unload": self.unload,
        }
        if verb not in verbs:
            raise LivepatchError(
                "invalid-payload", f"unknown action {verb!r}; actions are {', '.join(verbs)}"
            )
        return verbs[verb](name, **options)  # type: ignore[operator]
