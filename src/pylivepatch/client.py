"""Python bindings to a process's agent (SPEC §10): ``Client(pid=…)`` has the methods
of ``engine()`` and raises the same ``LivepatchError``."""

from __future__ import annotations

import base64
import builtins
import os
import socket
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
    """A connection to the agent of process ``pid`` (one request at a time)."""

    def __init__(self, pid: int, timeout: float = 120.0) -> None:
        self.pid = pid
        self.path = protocol.socket_path(pid)
        self.timeout = timeout

    def _call(self, verb: str, **args: Any) -> Any:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            try:
                self._connect(sock)
            except FileNotFoundError:
                raise LivepatchError(
                    "not-found", f"process {self.pid} has no pylivepatch agent ({self.path})"
                ) from None
            except PermissionError:
                raise LivepatchError(
                    "permission-denied", f"cannot connect to {self.path}"
                ) from None
            except OSError as exc:
                raise LivepatchError(
                    "not-found", f"agent of process {self.pid} is not answering: {exc}"
                ) from None
            sock.sendall(protocol.encode({"verb": verb, "args": args}))
            try:
                reply = protocol.receive(sock)
            except (protocol.ProtocolError, OSError) as exc:
                raise LivepatchError("busy", f"agent of process {self.pid}: {exc}") from None
        finally:
            sock.close()
        if reply is None:
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
        import time

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
