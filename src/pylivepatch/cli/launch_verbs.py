"""Verbs that start a program: ``test`` (a command with payloads applied in all its
Python processes) and ``run`` (a command whose Python processes all get an agent)."""

from __future__ import annotations

import argparse

from .options import one_app

TYPE_CHECKING = False  # not typing's: see pylivepatch/__init__.py
if TYPE_CHECKING:
    from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "test", help="run a command with payloads applied in all its Python processes",
        usage="%(prog)s FILE [FILE ...] -- CMD [ARG ...]",
    )  # fmt: skip
    p.add_argument(
        "file", nargs="+", metavar="FILE",
        help="payload archive(s), applied in order; then -- and the command to run",
    )  # fmt: skip
    p.set_defaults(command_function=test)
    p = sub.add_parser(
        "run", help="run a command whose Python processes all get an agent",
        usage="%(prog)s [--app NAME] -- CMD [ARG ...]",
    )  # fmt: skip
    one_app(p, False, "the app name `--app` targets select")
    p.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command to run"
    )  # fmt: skip
    p.set_defaults(command_function=run)


def test(args: argparse.Namespace) -> int:
    """``test FILE... -- CMD``: CMD is what ``main`` cut off after ``--`` (not ours to
    parse), in ``args.after``."""
    from . import UsageError

    if not args.after:
        raise UsageError(
            "test needs a command after --: pylivepatch test FILE... -- CMD ...",
            args.verbs["test"],
        )
    from ..agent import protocol
    from ..agent.run import test as run_test

    protocol.prepare_dir(protocol.socket_dir())  # as for run, below
    return run_test(args.file, args.after)


def run(args: argparse.Namespace) -> int:
    from . import UsageError

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UsageError("run needs a command: pylivepatch run -- CMD ...", args.verbs["run"])
    from ..agent import protocol
    from ..agent.run import run as run_command

    # The agents of CMD's processes put their sockets there: a directory they would
    # refuse (another user's) is an error now, not a service without agents.
    protocol.prepare_dir(protocol.socket_dir())
    return run_command(args.app, command)
