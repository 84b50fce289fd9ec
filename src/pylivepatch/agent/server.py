"""The agent inside a target process: a control socket over the engine (SPEC §9).

One thread blocks in ``accept`` (no polling: an idle agent costs nothing but that
thread); each connection gets a short-lived thread with a read timeout, so a slow or
silent client never holds up another. Peers are checked with ``SO_PEERCRED``: only the
process's own user and root are served; anyone else is refused and logged. The
directory is 0700 and the socket 0600. The engine stays sans-IO: this module only
translates messages into engine calls and results into JSON.
"""

from __future__ import annotations

import atexit
import base64
import errno
import logging
import os
import socket
import stat
import struct
import threading
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from .. import process_engine
from ..errors import LivepatchError
from . import protocol, store
from .audit import Audit, requested_by

log = logging.getLogger("pylivepatch.agent")

_agent: Agent | None = None
_agent_lock = threading.Lock()
_audit: Audit | None = None
_started_installed = False  # inherited by forked children: they keep what is applied

#: connections served at once; more are answered ``busy`` (each waits at most
#: ``protocol.READ_TIMEOUT`` for its request)
MAX_CONNECTIONS = 128

#: verbs that change something (audited when refused before reaching the engine)
ACTIONS = frozenset({"upload", "load", "apply", "revert", "replace", "unload"})


def _peer(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the peer of a Unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _prepare_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise LivepatchError(
            "permission-denied",
            f"socket directory {path} must belong to uid {os.getuid()} with mode 0700 "
            f"(it has uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})",
        )


class Agent:
    """The control socket of this process."""

    def __init__(self, app: str | None = None) -> None:
        self.app = app or ""
        self.pid = os.getpid()
        self.path = protocol.socket_path(self.pid)
        _prepare_dir(self.path.parent)
        if self.path.exists():
            self.path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self.sock.listen(64)
        self.thread = threading.Thread(target=self._serve, name="pylivepatch-agent", daemon=True)
        self.thread.start()

    def describe(self) -> dict[str, Any]:
        import sys

        return {
            "pid": os.getpid(),
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
                    self.path.unlink()
                except FileNotFoundError:
                    pass

    def _serve(self) -> None:
        slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            if not slots.acquire(blocking=False):
                # Too many open connections: answer busy at once, without a thread.
                conn.settimeout(0.1)
                self._send(conn, {"ok": False, "error": _error(LivepatchError(
                    "busy", f"the agent has {MAX_CONNECTIONS} connections open; try again"))})  # fmt: skip
                conn.close()
                continue
            try:
                threading.Thread(
                    target=self._handle, args=(conn, slots), name="pylivepatch-conn", daemon=True
                ).start()
            except RuntimeError:  # no thread to be had
                slots.release()
                conn.close()

    def _handle(self, conn: socket.socket, slots: threading.BoundedSemaphore) -> None:
        try:
            self._handle_one(conn)
        finally:
            slots.release()

    def _handle_one(self, conn: socket.socket) -> None:
        with conn:
            pid, uid = _peer(conn)
            if uid not in (os.getuid(), 0):
                log.warning("refused a control connection from pid %s uid %s", pid, uid)
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
            conn.settimeout(protocol.READ_TIMEOUT)
            while True:
                try:
                    request = protocol.receive(conn)
                except (protocol.ProtocolError, OSError) as exc:
                    self._send(
                        conn,
                        {"ok": False, "error": _error(LivepatchError("invalid-payload", str(exc)))},
                    )
                    return
                if request is None:
                    return
                with requested_by("socket", uid, pid):
                    self._send(conn, self._answer(request))

    @staticmethod
    def _send(conn: socket.socket, message: dict[str, Any]) -> None:
        try:
            conn.sendall(protocol.encode(message))
        except OSError:
            pass

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        verb, args = request.get("verb"), request.get("args") or {}
        try:
            if not isinstance(args, dict):
                raise LivepatchError("invalid-payload", "request args must be an object")
            if verb == "ping":
                return {"ok": True, "result": self.describe()}
            e = process_engine.get()
            if verb in ("upload", "load"):
                data = base64.b64decode(str(args.pop("data", "")), validate=True)
                result: Any = (
                    e.upload(args.pop("name"), data, **args)
                    if verb == "upload"
                    else e.load(data, **args)
                )
            elif verb in ("apply", "revert", "replace", "unload", "status"):
                result = getattr(e, verb)(args.pop("name"), **args)
            elif verb == "list":
                result = e.list()
            elif verb == "log":
                result = [ev.to_dict() for ev in e.history(int(args.get("since", 0)))]
            else:
                raise LivepatchError("invalid-payload", f"unknown verb {verb!r}")
            return {"ok": True, "result": _jsonable(result)}
        except LivepatchError as exc:
            if exc.code == "busy" and verb in ACTIONS and _audit is not None:
                _audit.write(  # refused before the engine acted: no engine event
                    {"action": str(verb), "payload": str(args.get("name", "")),
                     "result": "busy", "rc": exc.errno, "message": exc.message}
                )  # fmt: skip
            return {"ok": False, "error": _error(exc)}
        except (TypeError, KeyError, ValueError) as exc:
            return {
                "ok": False,
                "error": _error(
                    LivepatchError("invalid-payload", f"bad request for {verb!r}: {exc}")
                ),
            }


def _error(exc: LivepatchError) -> dict[str, Any]:
    return {"code": exc.code, "errno": exc.errno, "message": exc.message}


def start(app: str | None = None) -> Agent:
    """Start this process's agent (once); forked children start their own.

    ``app`` (default ``$PYLIVEPATCH_APP``) names the service this process belongs to:
    ``--app`` targets select by it, its audit log is the app's, and the payloads
    installed for it (``pylivepatch install``) are applied now, in order, the first
    time a process starts its agent. Payloads whose modules are not imported yet are
    applied when those modules are imported.
    """
    global _agent, _audit, _started_installed
    with _agent_lock:
        if _agent is None or _agent.pid != os.getpid():
            if app is None:
                app = os.environ.get("PYLIVEPATCH_APP") or None
            if app:
                store.check_app(app)
            if _audit is None:
                _audit = Audit(app)
                process_engine.when_created(lambda e: e.add_listener(_audit))
            _agent = Agent(app)
            atexit.register(_agent.close)
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
    with requested_by("start", os.getuid(), os.getpid()):
        try:
            items = store.installed(app)
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


def _report_start(app: str, name: str, exc: LivepatchError, audit: bool = False) -> None:
    """One line on stderr; with ``audit`` also an audit record (the engine records
    what it refused itself)."""
    import sys

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
        app = _agent.app or None
        _agent.close()  # the parent's listening socket, inherited: not ours to serve
        _agent = None
        start(app)


os.register_at_fork(after_in_child=_after_fork)
