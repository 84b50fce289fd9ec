"""The ``pylivepatch`` command line: thin over the libraries (``control``, ``builder``,
``attach``, the agent's ``run``), one module per verb or family of verbs.

Every verb is declared by a module of ``VERB_MODULES``: its ``register(sub)`` adds the
verb's parser, with the options shared by several verbs from :mod:`.options`, and sets
``command_function`` (called with the parsed arguments; it returns the exit code, one
of :mod:`.exits`). Every error a user can cause is one line ``pylivepatch: CODE:
message`` on stderr and an exit code from :func:`.exits.for_error` (1, or 2 for
``busy``/``timeout``: try again); never a traceback.

Start-up is most of what a short command costs, so this module and the ones that
declare verbs import only argparse and what is already loaded: each command imports
its own modules when it runs (:func:`.options.later`). ``tests/cli/test_cli_startup.py``
checks that.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from ..errors import LivepatchError
from .exits import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, EXIT_PIPE, EXIT_RETRY

TYPE_CHECKING = False  # not typing's: see pylivepatch/__init__.py
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_PARTIAL", "EXIT_PIPE", "EXIT_RETRY", "UsageError", "main"]

#: the modules that declare verbs, in the order ``pylivepatch -h`` lists them: each has
#: ``register(sub)``, which adds its subparsers and sets ``command_function`` as their
#: default. They must be light to import: every command line builds the whole parser.
VERB_MODULES: tuple[str, ...] = (
    "local_verbs", "process_verbs", "launch_verbs", "complete", "build", "attach", "fleet_parser",
)  # fmt: skip


class UsageError(Exception):
    """A command line that cannot run as typed: code ``usage``, exit 1, the verb's own
    usage above the one-line message (a JSON error with ``--json``)."""

    code = "usage"
    errno = errno.EINVAL
    retryable = False

    def __init__(self, message: str, parser: argparse.ArgumentParser | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """Usage errors are :class:`UsageError` (exit 1: 2 means "try again")."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self)


def _parser() -> argparse.ArgumentParser:
    import importlib

    from .. import __version__

    parser = _Parser(
        prog="pylivepatch",
        description="Live patching for running Python services.",
        epilog="`pylivepatch VERB -h` describes a verb. Exit codes: 0 ok, 1 error, 2 try "
        "again (busy, timeout), 3 failed and not undone everywhere (the report names each "
        "process left changed), 141 stdout closed early (`| head`).",
    )
    parser.add_argument(
        "--version", action="version", version=f"pylivepatch {__version__}",
        help="print the version and exit",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for module in VERB_MODULES:
        importlib.import_module(f"{__name__}.{module}").register(sub)
    parser.set_defaults(verbs=sub.choices)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse; an unknown option is reported with the usage of its verb."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        verb = args.verbs.get(args.verb, parser)
        verb.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if argv[:1] == ["test"] and "--" in argv:  # test FILE... -- CMD...: CMD is not ours to parse
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    parser = _parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (pylivepatch completion)
        from .complete import autocomplete

        autocomplete(parser)
    args: argparse.Namespace | None = None
    try:
        args = _parse(parser, argv)
        return _run(args, command)
    except UsageError as exc:
        verb = exc.parser or (args.verbs.get(args.verb) if args is not None else None)
        if verb is not None:
            verb.print_usage(sys.stderr)
        return _fail(args, argv, exc)
    except LivepatchError as exc:
        return _fail(args, argv, exc)
    except BrokenPipeError:  # stdout closed early (`pylivepatch log | head`): not an error
        _stdout_gone()
        return EXIT_PIPE
    except OSError as exc:  # the state directory, a file named on the command line
        code = {errno.EACCES: "permission-denied", errno.EPERM: "permission-denied",
                errno.ENOENT: "not-found"}.get(exc.errno or 0)  # fmt: skip
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"pylivepatch: {code or 'error'}: {exc.strerror}{where}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _stdout_gone() -> None:
    """Point stdout at /dev/null, so that the flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _fail(
    args: argparse.Namespace | None, argv: list[str], exc: UsageError | LivepatchError
) -> int:
    """One line on stderr; with ``--json`` also ``{"ok": false, "error": ...}``."""
    if getattr(args, "json", False) or (args is None and "--json" in argv):
        import json

        error = {"code": exc.code, "errno": exc.errno, "message": exc.message}
        print(json.dumps({"ok": False, "error": error}))
    print(f"pylivepatch: {exc.code}: {exc.message}", file=sys.stderr)
    return EXIT_RETRY if exc.retryable else EXIT_ERROR  # (exits.for_error; a UsageError too)


def _run(args: argparse.Namespace, after: list[str]) -> int:
    """The verb's command; ``after`` is what came after ``--`` for ``test``."""
    args.after = after
    return int(args.command_function(args))
