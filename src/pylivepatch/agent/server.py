"""The agent inside a target process: a control socket over the engine (spec §9).

One thread blocks in ``accept`` (no polling: an idle agent costs nothing but that
thread); each connection gets a short-lived thread, and each request a total deadline
(``protocol.READ_TIMEOUT`` for all its bytes, however slowly they come), so a slow or
silent client never holds a slot longer. A request's frame is checked for its shape
(at most :data:`MAX_CONTAINERS` arrays and objects, :data:`MAX_ELEMENTS` elements)
before it is parsed, and its arguments against the verb (type, range, finite numbers)
before the engine is called: anything else is answered ``bad-request`` and nothing is
armed. Peers are checked with ``SO_PEERCRED``: only the
process's own user and root are served; anyone else is refused and logged. The
directory is 0700 and the socket 0600. The engine stays sans-IO: this module only
translates messages into engine calls and results into JSON.

An action runs to its end even if its client disconnects meanwhile: each action is all
or nothing by itself, so the agent never cancels one half-way (that would only add a
second way for it to fail). If the reply then cannot be delivered, the agent adds a
``reply-lost`` record after the action's own in the audit log, where the operator who
lost the answer finds the outcome (and ``status`` shows the state it left).

Anything other than a ``LivepatchError`` escaping an engine call (a bug, MemoryError,
an injected fault) is answered with the ``internal`` error and logged with its
traceback (and audited, for an action); the connection ends normally and the agent
serves on.
"""

from __future__ import annotations

import _thread
import atexit
import errno
import functools
import json
import os
import socket
import stat
import struct
import sys
import threading
import time

from .. import process_engine
from ..errors import MAX_TIMEOUT, LivepatchError
from ..kinds import CONSISTENCY
from . import cforks, paths, protocol
from .audit import Audit, requested_by, required, take_failure

# An idle agent is this module and what it imports (a thread blocked in ``accept``):
# what only a request needs (base64, dataclasses, logging, the store, the engine) is
# imported when one comes, through ``process_engine.imported`` (under the lock that a
# fork waits for). docs/operating.md, "What an agent costs"; tests/cli/test_cli_startup.py.
TYPE_CHECKING = False  # not typing's: see pylivepatch/__init__.py
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

    from ..engine.core import Engine
    from ..engine.events import Event


def _log() -> logging.Logger:
    """The agent's logger (``pylivepatch.agent``), imported when it first has to say
    something."""
    logging = process_engine.imported("logging")
    return logging.getLogger("pylivepatch.agent")  # type: ignore[no-any-return,unused-ignore]


_agent: Agent | None = None
_agent_lock = threading.Lock()
_audit: Audit | None = None
_started_installed = False  # inherited by forked children: they keep what is applied

#: connections served at once; more are answered ``busy`` (each waits at most
#: ``protocol.READ_TIMEOUT`` for its request)
MAX_CONNECTIONS = 128

#: verbs that change something (audited when refused before reaching the engine)
ACTIONS = frozenset({"upload", "load", "apply", "revert", "replace", "unload"})

#: a request frame may hold at most this many arrays and objects (a real one has 2) and
#: this many separators (a real one has about 10): a 24 MiB ``[{},{},...]`` would cost
#: hundreds of MB once parsed, so it is refused before (``bad-request``)
MAX_CONTAINERS = 64
MAX_ELEMENTS = 1024

_FLAG = "flag"
_TIMEOUT = "timeout"
_MODE = "mode"
_NAME = "name"
_DATA = "data"
_SINCE = "since"
#: the arguments each verb takes, and their kinds (checked before anything is called)
VERBS: dict[str, dict[str, str]] = {
    "ping": {},
    "list": {},
    "status": {"name": _NAME},
    "log": {"since": _SINCE},
    "upload": {"name": _NAME, "data": _DATA, "no_expect": _FLAG, "no_object_check": _FLAG,
               "wait_imports": _FLAG},
    "load": {"data": _DATA, "nodeps": _FLAG, "timeout": _TIMEOUT, "force": _FLAG,
             "consistency": _MODE, "no_expect": _FLAG, "no_object_check": _FLAG,
             "wait_imports": _FLAG},
    "apply": {"name": _NAME, "nodeps": _FLAG, "timeout": _TIMEOUT, "force": _FLAG,
              "consistency": _MODE, "no_expect": _FLAG},
    "revert": {"name": _NAME, "timeout": _TIMEOUT, "force": _FLAG, "consistency": _MODE},
    "replace": {"name": _NAME, "timeout": _TIMEOUT, "force": _FLAG, "consistency": _MODE,
                "no_expect": _FLAG},
    "unload": {"name": _NAME},
}  # fmt: skip
REQUIRED = {"name", "data"}


class _Seen(threading.local):
    """What the engine recorded in this thread while the agent served one request
    (engine listeners run in the thread that acts)."""

    payload = ""  # the payload of the last action started (a ``load`` names it so)
    internal = False  # the engine audited an action ending with the ``internal`` error


_seen = _Seen()


def _notice(event: Event) -> None:
    if event.kind == "started":
        _seen.payload = event.payload
    elif event.kind == "finished" and event.detail.get("error") == "internal":
        _seen.internal = True


def _os_thread(target: Callable[..., object], args: tuple[Any, ...], name: str) -> None:
    """Run ``target(*args)`` on a new OS thread (a daemon). Under gevent's
    monkey-patching, ``threading.Thread`` makes a greenlet, which runs only when the
    program's own code yields to gevent's hub, and whose blocking calls (``accept``, an
    action's pause) would hold up the hub's other greenlets, or wait on them: the agent
    then takes gevent's saved original ``_thread.start_new_thread``. gevent is never
    imported here: only looked up in ``sys.modules``."""
    start = _unpatched("_thread", None, "start_new_thread")
    if start is not None:
        start(target, args)
        return
    threading.Thread(target=target, args=args, name=name, daemon=True).start()


def _unpatched(module: str, default: Any, name: str | None = None) -> Any:
    """The saved original of ``module.name`` (default: the module's name) if gevent or
    eventlet has monkey-patched ``module``, else ``default``. The agent's socket is a
    plain one: a green socket belongs to the hub of the thread that made it, and fails
    in the agent's other threads ("Cannot switch to a different thread"); a green
    thread started from the agent's listener would wait for a hub that never runs
    there. Neither library is imported here: each is only looked up in ``sys.modules``."""
    # Either library may be half imported here, by another thread (its functions not
    # defined yet): then it has patched nothing yet.
    monkey = sys.modules.get("gevent.monkey")
    patched = getattr(monkey, "is_module_patched", None)
    if patched is not None and patched("threading" if module == "_thread" else module):
        return monkey.get_original(module, name or module)  # type: ignore[union-attr]
    patcher = sys.modules.get("eventlet.patcher")
    patched = getattr(patcher, "is_monkey_patched", None)
    if patched is not None and patched("thread" if module == "_thread" else module):
        return getattr(patcher.original(module), name or module)  # type: ignore[union-attr]
    return default


#: a lock of the OS, never a green one: taken at import, before gevent or eventlet may
#: patch ``_thread`` (or their saved original, when they already have)
_allocate_lock = _unpatched("_thread", _thread.allocate_lock, "allocate_lock")
_start_new_thread = _unpatched("_thread", _thread.start_new_thread, "start_new_thread")


class _Slots:
    """How many connections may be served at once: a counter under a lock of the OS.
    Not ``threading.BoundedSemaphore``: made after gevent patched ``threading`` (the
    agent's thread starts beside the program's), it would be gevent's, and releasing
    it from another thread starts a hub there."""

    def __init__(self, n: int) -> None:
        self._lock = _allocate_lock()
        self._free = n

    def acquire(self) -> bool:
        with self._lock:
            if self._free <= 0:
                return False
            self._free -= 1
            return True

    def release(self) -> None:
        with self._lock:
            self._free += 1


def _peer(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the peer of a Unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


def _jsonable(value: Any) -> Any:
    # no value is a dataclass while dataclasses is not imported (a ping to an idle agent)
    dataclasses = sys.modules.get("dataclasses") and process_engine.imported("dataclasses")
    if dataclasses and dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _prepare_dir(path: str) -> None:
    """The socket directory, made or checked: a real directory (never a link another
    user may have planted to make us chmod or bind somewhere else) of our uid, 0700."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise LivepatchError(
            "permission-denied",
            f"socket directory {path} is not a directory (a link or another file: "
            "someone else may have made it); remove it, or set PYLIVEPATCH_SOCKET_DIR",
        )
    if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)  # our own directory made by a plain mkdir: make it private
        st = os.lstat(path)
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise LivepatchError(
            "permission-denied",
            f"socket directory {path} must belong to uid {os.getuid()} with mode 0700 "
            f"(it has uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})",
        )


class Agent:
    """The control socket of this process."""

    def __init__(
        self, app: str | None = None, directory: Path | None = None, public_pid: int | None = None
    ) -> None:
        self.app = app or ""
        self.pid = os.getpid()
        # An agent started by ``pylivepatch attach`` lives where the command line that
        # started it looks (its socket directory), under the pid that command line
        # knows it by (different from ours inside a container's pid namespace).
        self.directory = directory
        self.public_pid = public_pid or self.pid
        # a string, not a Path: an idle agent does not import pathlib
        where = os.fspath(directory) if directory else protocol.socket_directory()
        self.path = os.path.join(where, f"{self.public_pid}.sock")
        _prepare_dir(where)
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.sock = _unpatched("socket", socket.socket)(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self.sock.listen(64)
        _os_thread(self._serve, (), "pylivepatch-agent")

    def describe(self) -> dict[str, Any]:
        return {
            "pid": self.public_pid,
            "app": self.app,
            "python": sys.version.split()[0],
            "applied": [s.name for s in e.list() if s.state == "APPLIED"]
            if (e := process_engine.created()) is not None
            else [],
        }

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            if os.getpid() == self.pid:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass

    def _serve(self) -> None:
        slots = _Slots(MAX_CONNECTIONS)
        plain, sock = type(self.sock), self.sock
        while True:
            # Not ``sock.accept()``: it makes the connection's socket with the name
            # ``socket`` of the socket module, which gevent or eventlet may patch at any
            # moment (a gunicorn gevent worker does it right after the fork that started
            # this agent). A green socket made in this thread starts a hub here, whose
            # imports take the program's patched import locks: the agent's thread died
            # of a RecursionError and took the worker's start with it. The connection is
            # made with the class of the listening socket, a plain one.
            try:
                fd, _ = sock._accept()
            except OSError:
                return  # closed
            conn = plain(sock.family, sock.type, sock.proto, fileno=fd)
            try:
                self._dispatch(conn, slots)
            except Exception:  # noqa: BLE001 - one connection's failure never ends the agent
                _log().exception("pylivepatch agent: a control connection could not be served")
                conn.close()

    def _dispatch(self, conn: socket.socket, slots: _Slots) -> None:
        """Serve one accepted connection on a thread of its own, or answer busy."""
        if not slots.acquire():
            # Too many open connections: answer busy at once, without a thread.
            conn.settimeout(0.1)
            self._send(conn, {"ok": False, "error": _error(LivepatchError(
                "busy", f"the agent has {MAX_CONNECTIONS} connections open; try again"))})  # fmt: skip
            conn.close()
            return
        # Never a ``threading`` thread: one started just before gevent patched
        # ``threading`` ends with a patched ``get_ident`` its record does not know
        # ("Exception ignored ... KeyError" on the program's stderr). Looked up before the
        # try: a green-thread library's own failure here is logged, not taken for "no
        # thread to be had".
        start = _unpatched("_thread", _start_new_thread, "start_new_thread")
        try:
            start(self._handle, (conn, slots))
        except Exception as exc:
            slots.release()
            conn.close()
            if not isinstance(exc, RuntimeError):  # RuntimeError: no thread to be had
                raise

    def _handle(self, conn: socket.socket, slots: _Slots) -> None:
        try:
            self._handle_one(conn)
        except Exception:  # noqa: BLE001 - a connection's failure never reaches the thread
            _log().exception("pylivepatch agent: a control connection failed")
        finally:
            slots.release()

    def _handle_one(self, conn: socket.socket) -> None:
        with conn:
            pid, uid = _peer(conn)
            if uid not in (os.getuid(), 0):
                _log().warning("refused a control connection from pid %s uid %s", pid, uid)
                if _audit is not None:
                    with requested_by("socket", uid, pid):
                        _audit.write(
                            {"action": "connect", "payload": "", "result": "permission-denied",
                             "rc": errno.EACCES, "message": f"uid {uid} refused"}
                        )  # fmt: skip
                self._send(
                    conn,
                    {
                        "ok": False,
                        "error": _error(
                            LivepatchError(
                                "permission-denied",
                                f"uid {uid} may not control this process (uid {os.getuid()})",
                            )
                        ),
                    },
                )
                return
            while True:
                deadline = time.monotonic() + protocol.READ_TIMEOUT  # for the whole request
                try:
                    request = _receive(conn, deadline)
                except TimeoutError:
                    self._send(conn, {"ok": False, "error": _error(LivepatchError(
                        "bad-request", f"no complete request within {protocol.READ_TIMEOUT:g}s; "
                        "the connection is closed"))})  # fmt: skip
                    return
                except (protocol.ProtocolError, OSError) as exc:
                    self._send(conn, {"ok": False, "error": _error(LivepatchError(
                        "bad-request", f"malformed request: {exc}"))})  # fmt: skip
                    return
                if request is None:
                    return
                verb, args = request.get("verb"), request.get("args")
                name = args.get("name", "") if isinstance(args, dict) else ""
                name = name if isinstance(name, str) else ""
                with requested_by("socket", uid, pid):
                    take_failure()
                    reply = self._answer(request)
                    failure = take_failure()
                    if failure is not None:  # the client learns that its record is missing
                        reply["audit_error"] = failure
                    # the reply has a deadline too: a client that does not read it (a
                    # long log) does not hold the slot longer (a lost reply, recorded)
                    conn.settimeout(protocol.READ_TIMEOUT)
                    if not self._send(conn, reply):
                        if isinstance(verb, str) and verb in ACTIONS:
                            _reply_lost(verb, name or _seen.payload, reply)
                        return

    @staticmethod
    def _send(conn: socket.socket, message: dict[str, Any]) -> bool:
        """Send one message; False if the peer is gone (the reply is lost)."""
        try:
            data = protocol.encode(message)
        except (TypeError, ValueError, protocol.ProtocolError) as exc:
            # A result JSON cannot carry (a bug): the request itself ran, so do not
            # answer as if it had failed.
            _log().exception("pylivepatch agent: cannot encode a reply")
            data = protocol.encode({"ok": False, "error": _error(LivepatchError(
                "internal", f"the agent could not encode its reply ({type(exc).__name__}: "
                f"{exc}); the request itself ran: see status and the audit log"))})  # fmt: skip
        try:
            conn.sendall(data)
        except OSError:
            return False
        return True

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        verb, args = request.get("verb"), request.get("args")
        args = {} if args is None else args
        name = args.get("name", "") if isinstance(args, dict) else ""
        name = name if isinstance(name, str) else ""
        _seen.payload, _seen.internal = "", False
        try:
            call = self._bind(verb, args)
        except LivepatchError as exc:
            if (
                isinstance(verb, str) and verb in ACTIONS and _audit is not None
            ):  # refused before the engine: audited
                _audit.write(
                    {"action": verb, "payload": name, "result": exc.code, "rc": exc.errno,
                     "message": exc.message}
                )  # fmt: skip
            return {"ok": False, "error": _error(exc)}
        if isinstance(verb, str) and verb in ACTIONS and required():
            # PYLIVEPATCH_AUDIT=require: the request is in the log before anything runs
            asked = {k: v for k, v in args.items() if k != "data"}
            if _audit is None or not _audit.write(
                {"action": verb, "payload": name, "event": "requested", "result": "requested",
                 "rc": 0, "asked": asked}
            ):  # fmt: skip
                return {"ok": False, "error": _error(LivepatchError(
                    "audit-failed",
                    f"{verb} {name}: not done: the audit log cannot be written "
                    f"({take_failure() or 'no audit log'}) and PYLIVEPATCH_AUDIT=require; "
                    "free or fix its disk (see docs/operating.md, the audit log)"))}  # fmt: skip
        try:
            result = call()
        except LivepatchError as exc:
            if exc.code == "internal":  # the engine caught it: keep the cause's traceback
                _log().error("pylivepatch agent: %s", exc.message, exc_info=exc)
            return {"ok": False, "error": _error(exc)}
        except BaseException as exc:  # noqa: BLE001 - answered: the agent serves on
            return {"ok": False, "error": _error(_internal(str(verb), name, exc))}
        try:
            return {"ok": True, "result": _jsonable(result)}
        except Exception as exc:  # noqa: BLE001 - a result JSON cannot carry (a bug)
            return {"ok": False, "error": _error(_internal(str(verb), name, exc))}

    def _bind(self, verb: object, args: object) -> Callable[[], Any]:
        """The call that answers ``verb``, its arguments checked now (``bad-request``:
        the verb, each argument's name, type and range), before the engine acts; what
        fails inside the call is the engine's own failure."""
        args = _checked(verb, args)
        if verb == "ping":
            return self.describe
        e = process_engine.get()
        if verb in ("upload", "load"):
            base64 = process_engine.imported("base64")
            try:
                data = base64.b64decode(args.pop("data"), validate=True)
            except ValueError as exc:
                raise LivepatchError("bad-request", f"{verb}: data is not base64: {exc}") from None
            if verb == "upload":
                return functools.partial(e.upload, args.pop("name"), data, **args)
            return functools.partial(e.load, data, **args)
        if verb in ("apply", "revert", "replace", "unload", "status"):
            return functools.partial(getattr(e, str(verb)), args.pop("name"), **args)
        if verb == "list":
            return e.list
        return functools.partial(_history, e, args.get("since", 0))


def _checked(verb: object, args: object) -> dict[str, Any]:
    """The arguments of a request, checked against what ``verb`` takes (``VERBS``)."""
    if type(verb) is not str or verb not in VERBS:
        raise LivepatchError(
            "bad-request",
            f"unknown verb {_shown(verb)}; verbs are {', '.join(sorted(VERBS))}",
        )
    if not isinstance(args, dict):
        raise LivepatchError("bad-request", f"{verb}: args must be an object, not {_shown(args)}")
    kinds = VERBS[verb]
    unknown = sorted(str(k) for k in args if k not in kinds)
    if unknown:
        raise LivepatchError(
            "bad-request",
            f"{verb}: unknown argument(s) {', '.join(unknown)[:200]}; {verb} takes "
            f"{', '.join(kinds) or 'none'}",
        )
    for key in REQUIRED & set(kinds):
        if key not in args:
            raise LivepatchError("bad-request", f"{verb}: the argument {key} is missing")
    for key, value in args.items():
        kind = kinds[key]
        bad = ""
        if kind == _NAME and (type(value) is not str or not 0 < len(value) <= 128):
            bad = "a string of 1 to 128 characters"
        elif kind == _DATA and type(value) is not str:
            bad = "a base64 string"
        elif kind == _FLAG and type(value) is not bool:
            bad = "true or false"
        elif kind == _MODE and value is not None and value not in CONSISTENCY:
            bad = "transition, atomic, immediate or null"
        elif kind == _SINCE and (type(value) is not int or not 0 <= value < 1 << 62):
            bad = "an event number (an integer from 0)"
        elif (
            kind == _TIMEOUT
            and value is not None
            and (type(value) not in (int, float) or not 0 <= _finite(value) <= MAX_TIMEOUT)
        ):
            bad = f"a finite number of seconds from 0 to {MAX_TIMEOUT:g}"
        if bad:
            raise LivepatchError("bad-request", f"{verb}: {key} must be {bad}, not {_shown(value)}")
    return dict(args)


def _finite(value: float) -> float:
    try:
        number = float(value)
    except OverflowError:
        return float("inf")
    return number if number == number else float("inf")  # NaN is out of range too


def _receive(conn: socket.socket, deadline: float) -> dict[str, Any] | None:
    """One request frame, all of it by ``deadline`` (``TimeoutError``), its shape
    checked before it is parsed (``ProtocolError``); None at a clean end of stream."""
    head = _recv_exact(conn, 4, deadline, first=True)
    if not head:
        return None
    (length,) = struct.unpack(">I", head)
    if length > protocol.MAX_MESSAGE:
        raise protocol.ProtocolError(
            f"message of {length} bytes exceeds the {protocol.MAX_MESSAGE}-byte cap"
        )
    body = _recv_exact(conn, length, deadline)
    containers = body.count(b"[") + body.count(b"{")
    if containers > MAX_CONTAINERS or body.count(b",") + body.count(b":") > 2 * MAX_ELEMENTS:
        raise protocol.ProtocolError(
            f"a request holds at most {MAX_CONTAINERS} arrays and objects and "
            f"{MAX_ELEMENTS} elements (this one {containers} arrays and objects)"
        )
    try:
        message = json.loads(body, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise protocol.ProtocolError(f"message is not JSON: {exc}") from None
    if not isinstance(message, dict) or message.get("v") != protocol.VERSION:
        raise protocol.ProtocolError(f"message is not a protocol-{protocol.VERSION} object")
    return message


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _recv_exact(conn: socket.socket, n: int, deadline: float, first: bool = False) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline")
        conn.settimeout(left)
        chunk = conn.recv(min(n - got, 1 << 20))
        if not chunk:
            if first and not got:
                return b""
            raise protocol.ProtocolError(
                "the peer closed the connection in the middle of a message"
            )
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _shown(value: object) -> str:
    """A value of a bad request, for a message (never its own ``repr`` code)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        text = (
            repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge integer"
        )
    else:
        text = f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def _history(e: Engine, since: int) -> list[dict[str, Any]]:
    return [ev.to_dict() for ev in e.history(since)]


def _internal(verb: str, name: str, exc: BaseException) -> LivepatchError:
    """The answer to an unexpected exception out of an engine call, logged and, for an
    action, audited (by the agent if the engine had not recorded it)."""
    what = f"{verb} {name or _seen.payload}".strip()
    done = (
        "the action was undone and nothing changed; the audit log has the record"
        if verb in ACTIONS
        else "nothing changed"
    )
    err = LivepatchError(
        "internal",
        f"{what}: failed inside pylivepatch ({type(exc).__name__}: {exc}); {done}; "
        "please report it",
    )
    _log().error("pylivepatch agent: %s", err.message, exc_info=exc)
    if verb in ACTIONS and not _seen.internal and _audit is not None:
        _audit.write(  # it never reached the engine's own record of the action
            {"action": verb, "payload": name or _seen.payload, "result": err.code,
             "rc": err.errno, "message": err.message}
        )  # fmt: skip
    return err


def _reply_lost(verb: str, name: str, reply: dict[str, Any]) -> None:
    """Record that the client of an action left before its reply (the action stands)."""
    error = reply.get("error") if not reply.get("ok") else None
    result = str(error.get("code", "")) if isinstance(error, dict) else "ok"
    rc = int(error.get("errno", 0)) if isinstance(error, dict) else 0
    message = "the client disconnected before the reply; the action stands as recorded above"
    _log().warning("pylivepatch agent: %s %s (%s): %s", verb, name, result, message)
    if _audit is not None:
        _audit.write(
            {"action": verb, "payload": name, "event": "reply-lost", "result": result,
             "rc": rc, "message": message}
        )  # fmt: skip


def _error(exc: LivepatchError) -> dict[str, Any]:
    return {"code": exc.code, "errno": exc.errno, "message": exc.message}


def start(
    app: str | None = None, *, directory: Path | None = None, public_pid: int | None = None
) -> Agent:
    """Start this process's agent (once); forked children start their own.

    ``app`` (default ``$PYLIVEPATCH_APP``) names the service this process belongs to:
    ``--app`` targets select by it, its audit log is the app's, and the payloads
    installed for it (``pylivepatch install``) are applied now, in order, the first
    time a process starts its agent. Payloads whose modules are not imported yet are
    applied when those modules are imported.

    ``directory`` and ``public_pid`` place the socket where ``pylivepatch attach``
    looks (see :mod:`.attached`); forked children keep the directory.
    """
    global _agent, _audit, _started_installed
    with _agent_lock:
        if _agent is None or _agent.pid != os.getpid():
            hazard = cforks.fork_hazard()
            if hazard is not None:
                raise LivepatchError("fork-unsafe", hazard)
            if app is None:
                app = os.environ.get("PYLIVEPATCH_APP") or None
            if app:
                paths.check_app(app)
                if not _started_installed and _may_have_installed(app):
                    _store()  # before the socket listens, as the check of the name was
            if _audit is None:
                _audit = Audit(app)
                process_engine.when_created(lambda e: e.add_listener(_audit))
                process_engine.when_created(lambda e: e.add_listener(_notice))
            _agent = Agent(app, directory, public_pid)
            atexit.register(_agent.close)
            cforks.watch(_after_fork)  # workers a server forks in C (uWSGI)
            if not _started_installed:
                _started_installed = True
                if app:
                    apply_installed(app)
    return _agent


def apply_installed(app: str) -> list[tuple[str, LivepatchError | None]]:
    """Load every payload installed for ``app``, in order (kpatch's ``load --all``).

    A payload that cannot be applied is reported on stderr and in the audit log; the
    others are still applied and the program runs on.
    """
    outcome: list[tuple[str, LivepatchError | None]] = []
    if not _may_have_installed(app):
        return outcome  # store.installed would say so too, without its imports
    with requested_by("start", os.getuid(), os.getpid()):
        try:
            items = _store().installed(app)
        except LivepatchError as exc:
            _report_start(app, "", exc, audit=True)
            return [("", exc)]
        e = process_engine.get() if items else None
        for item in items:
            assert e is not None
            try:
                e.load(item.path.read_bytes(), wait_imports=True)
                outcome.append((item.name, None))
            except LivepatchError as exc:
                _report_start(app, item.name, exc)
                outcome.append((item.name, exc))
            except OSError as exc:
                err = LivepatchError("not-found", f"cannot read {item.path}: {exc.strerror}")
                _report_start(app, item.name, err, audit=True)
                outcome.append((item.name, err))
    return outcome


def _may_have_installed(app: str) -> bool:
    """False if nothing is installed for ``app`` (its directory of installed payloads
    does not exist); True if something may be, or the check fails (the store says why)."""
    try:
        os.stat(paths.installed_directory(app))
    except (FileNotFoundError, NotADirectoryError):
        return False
    except (OSError, RuntimeError):  # (no home directory to find the state directory in)
        pass
    return True


def _store() -> Any:
    """:mod:`.store`, imported by an agent with payloads installed for its app."""
    return process_engine.imported(f"{__package__}.store")


def _report_start(app: str, name: str, exc: LivepatchError, audit: bool = False) -> None:
    """One line on stderr; with ``audit`` also an audit record (the engine records
    what it refused itself)."""
    if audit and _audit is not None:
        _audit.write(
            {"action": "load", "payload": name, "result": exc.code, "rc": exc.errno,
             "message": exc.message}
        )  # fmt: skip
    what = f"installed payload {name}" if name else "installed payloads"
    print(
        f"pylivepatch: {what} of app {app} not applied at start: {exc.code}: {exc.message}",
        file=sys.stderr,
    )


def _after_fork() -> None:
    global _agent
    if _agent is not None and _agent.pid != os.getpid():
        app, directory = _agent.app or None, _agent.directory
        _agent.close()  # the parent's listening socket, inherited: not ours to serve
        _agent = None
        # A child is named by its own pid: in a container attached from the host that
        # is the container's pid, not the host's (docs/operating.md, attach limits).
        start(app, directory=directory)


os.register_at_fork(after_in_child=_after_fork)
