"""The command line's exit codes, named, and the one rule that maps an error to one."""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: see pylivepatch/__init__.py
if TYPE_CHECKING:
    from ..errors import LivepatchError

EXIT_OK = 0
#: an error: the action did not happen (or is not possible as asked)
EXIT_ERROR = 1
#: try again: busy, timeout (the error is retryable)
EXIT_RETRY = 2
#: an action on several processes (or its clean-up) failed and could not be undone
#: everywhere: the report names each process left changed and how to put it back
EXIT_PARTIAL = 3
#: interrupted (Ctrl-C), as a shell reports SIGINT
EXIT_INTERRUPTED = 130
#: stdout was closed before all was written (``| head``), as a shell reports SIGPIPE
EXIT_PIPE = 141


def for_error(error: LivepatchError | None) -> int:
    """The exit code of a command that ended with ``error`` (None: it succeeded)."""
    if error is None:
        return EXIT_OK
    return EXIT_RETRY if error.retryable else EXIT_ERROR
