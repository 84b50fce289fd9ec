"""Python bindings to a process's agent (spec §10): ``Client(pid=…)`` has the methods
of ``engine()`` and raises the same ``LivepatchError``."""

from __future__ import annotations

import base64
import builtins
import dataclasses
import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .agent import protocol
from .errors import CODES, LivepatchError
from .results import ActionResult, FuncStatus, PayloadStatus

_T = TypeVar("_T")


class _Malformed(Exception):
    """A reply that does not have the shape of the verb's result."""


#: annotation -> the JSON types a field of a result may hold
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "str | None": (str, type(None)),
    "int | None": (int, type(None)),
    "dict[str, str]": (dict,),
    "dict[str, Any] | None": (dict, type(None)),
    "tuple[str, ...]": (list, tuple),
    "tuple[FuncStatus, ...]": (list, tuple),
}


def _typed(cls: type[Any], doc: Any) -> Any:
    """``cls(**doc)``, after checking that ``doc`` is an object with the fields of
    ``cls`` (the required ones present) of the types their annotations say."""
    if not isinstance(doc, dict):
        raise _Malformed(f"{cls.__name__} is {type(doc).__name__}, not an object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in doc.items():
        if key not in fields:
            continue  # a newer agent's field: ignored
        kinds = _TYPES.get(str(fields[key].type))
        if kinds is not None and (
            not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool))
        ):
            raise _Malformed(f"{cls.__name__}.{key} is {type(value).__name__}")
        if str(fields[key].type) in ("tuple[str, ...]", "dict[str, str]") and not all(
            isinstance(v, str) for v in (value.values() if isinstance(value, dict) else value)
        ):
            raise _Malformed(f"{cls.__name__}.{key} holds something else than strings")
    missing = [
        n for n, f in fields.items()
        if n not in doc and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]  # fmt: skip
    if missing:
        raise _Malformed(f"{cls.__name__} lacks {', '.join(missing)}")
    return cls(**{k: v for k, v in doc.items() if k in fields})


def _statuses(doc: Any) -> list[PayloadStatus]:
    if not isinstance(doc, list):
        raise _Malformed(f"the list of payloads is {type(doc).__name__}")
    return [_status(d) for d in doc]


def _events(doc: Any) -> list[dict[str, Any]]:
    if not isinstance(doc, list) or not all(isinstance(e, dict) for e in doc):
        raise _Malformed("the event history is not a list of objects")
    return list(doc)


def _ping(doc: Any) -> dict[str, Any]:
    """An agent's self-description: pid, app, python, applied payloads."""
    if not isinstance(doc, dict):
        raise _Malformed(f"ping is {type(doc).__name__}, not an object")
    kinds = {"pid": int, "app": str, "python": str, "applied": list}
    for key, kind in kinds.items():
        if not isinstance(doc.get(key), kind) or isinstance(doc.get(key), bool):
            raise _Malformed(f"ping.{key} is {type(doc.get(key)).__name__}")
    if not all(isinstance(n, str) for n in doc["applied"]):
        raise _Malformed("ping.applied holds something else than names")
    return dict(doc)


def _func(doc: Any) -> FuncStatus:
    f = _typed(FuncStatus, doc)
    return dataclasses.replace(f, stack=tuple(f.stack))


def _status(doc: Any) -> PayloadStatus:
    if not isinstance(doc, dict):
        raise _Malformed(f"a payload's status is {type(doc).__name__}, not an object")
    doc = dict(doc)
    funcs = doc.get("funcs", ())
    if not isinstance(funcs, (list, tuple)):
        raise _Malformed(f"funcs is {type(funcs).__name__}")
    doc["funcs"] = tuple(_func(f) for f in funcs)
    for key in ("python", "data", "pending"):
        value = doc.get(key, ())
        if not isinstance(value, (list, tuple)):
            raise _Malformed(f"PayloadStatus.{key} is {type(value).__name__}")
        doc[key] = tuple(value)
    return _typed(PayloadStatus, doc)


def _action(doc: Any) -> ActionResult:
    return _typed(ActionResult, doc)


_SHAPES: dict[str, Callable[[Any], Any]] = {
    "ping": _ping, "list": _statuses, "status": _status, "log": _events,
}  # fmt: skip


class Client:
    """A connection to the agent of process ``pid`` (one request at a time).

    Each call opens its own connection; inside ``with Client(pid) as c:`` the calls
    share one, so that a controller sending many requests costs the agent one
    connection (and one thread), not one per request."""

    #: A kept connection idle this long is renewed before the next request, well
    #: before the agent closes it (``protocol.READ_TIMEOUT``).
    KEEP_IDLE = protocol.READ_TIMEOUT / 2

    #: Called as ``on_audit_error(pid, text)`` when an agent answers that it could not
    #: write the request's audit record (a full or read-only disk): the action ran, but
    #: the log does not show it. None: a ``UserWarning`` (the command line prints a line).
    on_audit_error: Callable[[int, str], None] | None = None

    def __init__(self, pid: int, timeout: float = 120.0) -> None:
        self.pid = pid
        self.path = protocol.socket_path(pid)
        self.timeout = timeout
        #: the agent's ``audit_error`` of the last reply (None: the request was recorded)
        self.audit_error: str | None = None
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

    def _open(self, deadline: float) -> socket.socket:
        """A connection to the agent of ``pid``, and only to it: the socket directory
        must be the caller's or root's (for root also the target's user's) and no one
        else's to write in, and the process listening must be ``pid`` running as its
        uid or root (SO_PEERCRED), all checked before a byte is sent."""
        owners = frozenset(protocol.process_uids(self.pid) or ()) if os.geteuid() == 0 else None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            protocol.check_dir(self.path.parent, owners)
            self._connect(sock, deadline)
            protocol.check_peer(sock, self.pid, self.path)
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
        except BaseException:
            sock.close()
            raise
        return sock

    def _socket(self, deadline: float) -> tuple[socket.socket, bool]:
        """The connection for the next request, and whether it was used before."""
        if not self._keeping:
            return self._open(deadline), False
        if self._kept is not None and time.monotonic() - self._idle_since > self.KEEP_IDLE:
            self._drop()
        if self._kept is None:
            self._kept = self._open(deadline)
            return self._kept, False
        return self._kept, True

    def _call(self, verb: str, **args: Any) -> Any:
        """Send one request and return its result; the whole exchange (connect, send,
        reply) has ``timeout`` seconds."""
        message = protocol.encode({"verb": verb, "args": args})
        deadline = time.monotonic() + self.timeout
        sock, used = self._socket(deadline)
        try:
            try:
                self._send(sock, message, deadline)
            except OSError:
                if not used:
                    raise
                # the agent closed the kept connection: nothing was delivered (a
                # local socket refuses the bytes); send once more on a new one
                self._drop()
                sock, used = self._socket(deadline)
                self._send(sock, message, deadline)
            reply = self._receive(sock, deadline)
        except (BrokenPipeError, ConnectionResetError):
            # The agent answered before reading the request (busy) and closed: its
            # reply, if it came, is the answer.
            reply = self._leftover(sock)
            if sock is self._kept:
                self._drop()
            if reply is None:
                raise LivepatchError(
                    "busy", f"agent of process {self.pid} closed the connection; try again"
                ) from None
        except OSError as exc:
            if sock is self._kept:
                self._drop()
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
        return self._result(reply)

    def _send(self, sock: socket.socket, message: bytes, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise self._late()
        sock.settimeout(left)
        try:
            sock.sendall(message)
        except TimeoutError:
            raise self._late() from None

    def _receive(self, sock: socket.socket, deadline: float) -> dict[str, Any] | None:
        try:
            return protocol.receive(sock, deadline)
        except TimeoutError:
            raise self._late() from None
        except protocol.ProtocolError as exc:
            raise LivepatchError(
                "internal", f"agent of process {self.pid} sent a malformed reply: {exc}"
            ) from None
        except (BrokenPipeError, ConnectionResetError):
            raise
        except OSError as exc:
            raise LivepatchError("busy", f"agent of process {self.pid}: {exc}") from None

    def _leftover(self, sock: socket.socket) -> dict[str, Any] | None:
        """A reply the agent sent before it closed the connection, if any."""
        try:
            return protocol.receive(sock, time.monotonic() + 1.0)
        except (OSError, protocol.ProtocolError):
            return None

    def _late(self) -> LivepatchError:
        return LivepatchError(
            "timeout",
            f"agent of process {self.pid}: no reply within {self.timeout:g} s; an action may "
            f"still finish there: see pylivepatch status NAME -p {self.pid}",
        )

    def _result(self, reply: dict[str, Any]) -> Any:
        """The result of a reply, or its error raised; a reply of another shape is
        ``internal`` (never a ``TypeError`` later)."""
        failure = reply.get("audit_error")
        self.audit_error = failure if isinstance(failure, str) else None
        if self.audit_error is not None:
            hook = type(self).on_audit_error
            if hook is not None:
                hook(self.pid, self.audit_error)
            else:
                import warnings

                warnings.warn(
                    f"process {self.pid} could not write its audit log: {self.audit_error}",
                    stacklevel=4,
                )
        ok = reply.get("ok")
        if ok is True:
            return reply.get("result")
        err = reply.get("error")
        if ok is not False or not isinstance(err, dict):
            raise self._malformed("neither a result nor an error")
        code, text = err.get("code"), err.get("message", "")
        if not isinstance(code, str) or not isinstance(text, str):
            raise self._malformed("an error without a code and a message")
        if code not in CODES:
            raise LivepatchError("internal", f"agent of process {self.pid}: {code}: {text}")
        raise LivepatchError(code, text)

    def _answer(self, verb: str, reply: dict[str, Any]) -> Any:
        """What a method returns for ``reply`` to ``verb`` (a dict for ``ping``, a
        ``PayloadStatus``, ...), or the ``LivepatchError`` it carries or its shape is."""
        return self._shaped(_SHAPES.get(verb, _action), self._result(reply))

    def _malformed(self, why: str) -> LivepatchError:
        return LivepatchError(
            "internal", f"agent of process {self.pid} sent a malformed reply ({why})"
        )

    def _shaped(self, build: Callable[[Any], _T], result: Any) -> _T:
        try:
            return build(result)
        except _Malformed as exc:
            raise self._malformed(str(exc)) from None

    def _connect(self, sock: socket.socket, deadline: float) -> None:
        """Connect; a full listen queue (EAGAIN) is waited out for up to 10 s."""
        import errno

        wait_until = min(deadline, time.monotonic() + 10.0)
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        while True:
            try:
                sock.connect(str(self.path))
                return
            except BlockingIOError as exc:
                if exc.errno != errno.EAGAIN or time.monotonic() > wait_until:
                    raise
                time.sleep(0.01)

    @staticmethod
    def _read(path: str | os.PathLike[str] | bytes) -> str:
        if isinstance(path, bytes):
            data = path
        else:
            from .payload import archive  # only for a file: a command line on a name needs none

            data = archive.read_file(path)
        return base64.b64encode(data).decode()

    def _action(self, result: Any) -> ActionResult:
        return self._shaped(_action, result)

    def ping(self) -> dict[str, Any]:
        return self._shaped(_ping, self._call("ping"))

    def upload(
        self, name: str, path: str | os.PathLike[str] | bytes, **options: Any
    ) -> ActionResult:
        return self._action(self._call("upload", name=name, data=self._read(path), **options))

    def load(self, path: str | os.PathLike[str] | bytes, **options: Any) -> ActionResult:
        return self._action(self._call("load", data=self._read(path), **options))

    def apply(
        self,
        name: str,
        nodeps: bool = False,
        timeout: float | None = None,
        force: bool = False,
        **options: Any,
    ) -> ActionResult:
        return self._action(
            self._call("apply", name=name, nodeps=nodeps, timeout=timeout, force=force, **options)
        )

    def revert(
        self, name: str, timeout: float | None = None, force: bool = False, **options: Any
    ) -> ActionResult:
        return self._action(
            self._call("revert", name=name, timeout=timeout, force=force, **options)
        )

    def replace(
        self, name: str, timeout: float | None = None, force: bool = False, **options: Any
    ) -> ActionResult:
        return self._action(
            self._call("replace", name=name, timeout=timeout, force=force, **options)
        )

    def unload(self, name: str) -> ActionResult:
        return self._action(self._call("unload", name=name))

    def list(self) -> list[PayloadStatus]:
        return self._shaped(_statuses, self._call("list"))

    def status(self, name: str) -> PayloadStatus:
        return self._shaped(_status, self._call("status", name=name))

    def log(self, since: int = 0) -> builtins.list[dict[str, Any]]:
        return self._shaped(_events, self._call("log", since=since))

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
