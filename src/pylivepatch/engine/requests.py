"""What an action is asked, checked before anything is looked up or armed: the payload
given as bytes or a path, its name, the options (``bad-request`` for anything else),
and what of the request its events and audit record keep."""

from __future__ import annotations

import os
from typing import Any

from ..errors import MAX_TIMEOUT, LivepatchError
from ..payload import archive, signing
from .base import DEFAULT_TIMEOUT


def read_payload(source: str | os.PathLike[str] | bytes) -> bytes:
    """A payload given as bytes, or as the path of a regular file (read bounded and
    without waiting: a FIFO or a device is refused, ``archive.read_file``)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if not isinstance(source, (str, os.PathLike)):  # an int would be a file descriptor
        raise LivepatchError(
            "bad-request", f"a payload is bytes or a file's path, not {shown(source)}"
        )
    return archive.read_file(source)


def peek_name(data: bytes) -> str:
    """The payload's name, the signature policy applied (a tampered payload is a
    signature error here as at upload)."""
    return archive.read(data, check_signature=signing.Policy.from_env().check).manifest.name


_FLAGS = ("nodeps", "force", "no_expect", "no_object_check", "wait_imports")


def shown(value: object) -> str:
    """A value of a bad request, for a message (never its own ``repr`` code)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        text = repr(value)
    else:
        text = f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def check_request(name: object, options: dict[str, Any]) -> None:
    """The arguments of an action, checked before anything is looked up or armed
    (``bad-request``): a name is a non-empty string, a timeout a finite number of
    seconds from 0 to :data:`MAX_TIMEOUT` (not a bool, not a string), a flag
    ``True`` or ``False``, a consistency mode one of the modes or None."""
    if type(name) is not str or not name or len(name) > 128:
        raise LivepatchError(
            "bad-request",
            f"a payload name must be a string of 1 to 128 characters, not {shown(name)}",
        )
    timeout = options.get("timeout")
    if timeout is not None:
        if type(timeout) not in (int, float):
            raise LivepatchError(
                "bad-request", f"timeout must be a number of seconds, not {shown(timeout)}"
            )
        try:
            seconds = float(timeout)
        except OverflowError:
            seconds = float("inf")
        if not (0 <= seconds <= MAX_TIMEOUT):  # NaN fails this too
            raise LivepatchError(
                "bad-request",
                f"timeout must be a finite number of seconds from 0 to {MAX_TIMEOUT:g}, "
                f"not {shown(timeout)}",
            )
    for flag in _FLAGS:
        if flag in options and type(options[flag]) is not bool:
            raise LivepatchError(
                "bad-request", f"{flag} must be true or false, not {shown(options[flag])}"
            )
    mode = options.get("consistency")
    if mode is not None and (type(mode) is not str or mode not in DEFAULT_TIMEOUT):
        raise LivepatchError(
            "bad-request",
            f"consistency must be one of {', '.join(DEFAULT_TIMEOUT)}, not {shown(mode)}",
        )


def request_detail(options: dict[str, Any]) -> dict[str, Any]:
    """What an action was asked with, for its events and audit record: the mode asked
    for, the flags set, the timeout (only what differs from the defaults)."""
    detail: dict[str, Any] = {}
    mode = options.get("consistency")
    if isinstance(mode, str):
        detail["mode"] = mode
    flags = [f.replace("_", "-") for f in _FLAGS if options.get(f) is True]
    if flags:
        detail["flags"] = flags
    timeout: Any = options.get("timeout")
    if type(timeout) in (int, float):
        detail["timeout"] = timeout if timeout == timeout and abs(timeout) < 1e300 else str(timeout)
    return detail
