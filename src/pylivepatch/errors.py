"""Error codes of the contract (spec §3: docs/spec.md, which lists every code below)
and the one exception that carries them.

Every failure a user can cause ends as a ``LivepatchError`` whose ``code`` is one of
the strings below and whose message names the payload, the function and the cause.
"""

from __future__ import annotations

import errno as _errno

#: code -> errno, for exit codes and bindings. Several codes share no errno on
#: purpose: the string is the contract, the number a convenience for C-minded tools.
CODES: dict[str, int] = {
    "invalid-payload": _errno.EINVAL,
    "signature-required": _errno.ENOKEY,
    "signature-invalid": _errno.EKEYREJECTED,
    "exists": _errno.EEXIST,
    "not-found": _errno.ENOENT,
    "wrong-state": _errno.EBADFD,
    "busy": _errno.EBUSY,
    "dependency-mismatch": _errno.ENOEXEC,
    "expectation-failed": _errno.EILSEQ,
    "incompatible-state": _errno.EPROTO,
    "vetoed": _errno.ECANCELED,
    "replace-refused": _errno.EOPNOTSUPP,
    "timeout": _errno.ETIMEDOUT,
    "unsupported-target": _errno.ENOSYS,
    "inconsistent": _errno.ENOTRECOVERABLE,
    "permission-denied": _errno.EACCES,
    # A transition whose way back could not finish in time; it
    # is kept (never forced) until ``revert``/``apply`` finds it free or is given
    # ``--force`` (docs/design.md, "Stuck transitions").
    "transition-stuck": _errno.EINPROGRESS,
    # A request whose arguments are not what the verb takes (type, range, shape):
    # refused before anything is armed (docs/security.md, "Agent and engine").
    "bad-request": _errno.EBADMSG,
    # ``PYLIVEPATCH_AUDIT=require``: the agent could not record an action's request in
    # the audit log (a full or read-only disk), so it did not run it.
    "audit-failed": _errno.EIO,
    # An unexpected failure inside pylivepatch (a bug, an
    # injected fault, MemoryError). The action was undone like any other failure; the
    # audit record and the message carry the cause.
    "internal": _errno.EIO,
    # ``pylivepatch attach``: starting an agent in a process started without one.
    "no-such-process": _errno.ESRCH,
    "target-stopped": _errno.ESTRPIPE,
    "already-traced": _errno.EBUSY,
    "unreadable-binary": _errno.EACCES,
    "not-cpython": _errno.ENOEXEC,
    "pyinstaller-bootloader": _errno.ENOEXEC,
    "unsupported-version": _errno.EOPNOTSUPP,
    "unsupported-build": _errno.EOPNOTSUPP,
    "not-initialized": _errno.EAGAIN,
    "gdb-missing": _errno.ENOENT,
    "gdb-no-python": _errno.ENOPKG,
    "remote-debug-disabled": _errno.EPERM,
    "version-mismatch": _errno.ENOEXEC,
    "agent-import-failed": _errno.ELIBACC,
    "attach-hung": _errno.EDEADLK,
    # An agent's thread would make the process's forks hang (a uWSGI master forking
    # its workers in C without taking Python's lock): no agent is started there.
    "fork-unsafe": _errno.EDEADLK,
    "remote-exec-failed": _errno.EIO,  # sys.remote_exec failed for a cause without a code
    # The CLI and ``Client``: a socket directory another user could write to, or a
    # socket whose listener is not the target process (SO_PEERCRED): nothing is sent.
    "untrusted-socket": _errno.EPERM,
    # ``revert`` of a payload another applied payload depends on (stacking): not
    # retryable, the other one must be reverted first.
    "has-dependents": _errno.ENOTEMPTY,
}

#: the longest timeout (seconds) an action accepts, a week: beyond it a number is a
#: mistake (``bad-request``, like a timeout that is not a finite number from 0)
MAX_TIMEOUT = 7 * 86400.0

#: Codes after which the same request may succeed later (exit code 2).
RETRYABLE = frozenset({"busy", "timeout"})


class LivepatchError(Exception):
    """A refused or failed action. ``code`` is a spec error code, ``errno`` its number."""

    def __init__(self, code: str, message: str) -> None:
        if code not in CODES:
            raise ValueError(f"unknown livepatch error code {code!r}")
        super().__init__(message)
        self.code = code
        self.errno = CODES[code]
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __reduce__(self) -> tuple[type[LivepatchError], tuple[str, str]]:
        return (type(self), (self.code, self.message))
