"""Options several verbs share, declared once: TARGET (``-p``, ``--app``, ``--tree``),
the payload file or name, ``--json``, ``--app`` of one app, ``--timeout`` and the
flags of an action, with their help texts (spec §3, §5, §10).

Light to import: every command line builds the whole parser (argparse and what is
already loaded only; completers are imported from :mod:`.complete`, itself light).
"""

from __future__ import annotations

import argparse

TYPE_CHECKING = False  # not typing's: see pylivepatch/__init__.py
if TYPE_CHECKING:
    from typing import Any

TIMEOUT_HELP = (
    "seconds the change may wait for a safe moment (transition: until no thread runs the "
    "old code, else it is reversed; atomic: until no thread is inside the payload's "
    "functions); default: the payload's mode, 10 for transition, 1 for atomic; running "
    "out is the error timeout, exit 2"
)
FORCE_HELP = (
    "when the timeout runs out, complete the change instead of reversing it (threads "
    "still in the old code finish there); recorded in the audit log as forced"
)
NODEPS_HELP = (
    "do not check the payload's depends: apply it even if the build id it stacks on is "
    "not the payload applied last"
)
NO_EXPECT_HELP = (
    "accept a payload without expectations for this interpreter's version: the functions "
    "it replaces are then not checked (with no module build ids for it either, add "
    "--no-object-check); recorded in the audit log"
)
NO_OBJECT_CHECK_HELP = (
    "accept target modules whose code differs from what the payload was built against "
    "(dependency-mismatch); the replaced functions are still checked; recorded in the "
    "audit log"
)
JSON_HELP = "print one JSON document instead of text"


def seconds(text: str) -> float:
    """An argparse type for ``--timeout``: a finite number of seconds from 0 to a week
    (``MAX_TIMEOUT``), checked before anything is sent (``nan``, ``inf``, ``-1`` are
    usage errors here, as the agent would answer them with ``bad-request``)."""
    from ..errors import MAX_TIMEOUT

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= MAX_TIMEOUT:  # NaN fails this too
        raise argparse.ArgumentTypeError(
            f"a timeout is a finite number of seconds from 0 to {MAX_TIMEOUT:g}, not {text!r}"
        )
    return value


class Once(argparse.Action):
    """An option that names one thing: given twice, it is a usage error instead of the
    last one silently winning."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        first = getattr(namespace, self.dest, None)
        if first is not None:
            parser.error(f"{option_string} given twice ({first} and {values}): it takes one")
        setattr(namespace, self.dest, values)


def target(p: argparse.ArgumentParser) -> None:
    """TARGET: every option repeatable; the processes any of them names (and --json)."""
    from . import complete

    a = p.add_argument(
        "-p", "--pid", type=int, action="append", default=[], metavar="PID",
        help="a process (repeatable)",
    )  # fmt: skip
    a.completer = complete.pids  # type: ignore[attr-defined]
    a = p.add_argument(
        "--app", action="append", default=[], metavar="NAME",
        help="every process started with `pylivepatch run --app NAME` (repeatable)",
    )  # fmt: skip
    a.completer = complete.apps  # type: ignore[attr-defined]
    a = p.add_argument(
        "--tree", type=int, action="append", default=[], metavar="PID",
        help="a process and its descendants (repeatable)",
    )  # fmt: skip
    a.completer = complete.pids  # type: ignore[attr-defined]
    json_flag(p)


def payload_file(p: argparse.ArgumentParser, what: str = "payload archive (.lpz)") -> None:
    p.add_argument("file", metavar="FILE", help=what)


def payload_name(p: argparse.ArgumentParser, installed: bool = False) -> None:
    from . import complete

    a = p.add_argument("name", metavar="NAME", help="payload name (as `list` shows it)")
    a.completer = complete.installed_names if installed else complete.payload_names  # type: ignore[attr-defined]


def json_flag(p: argparse.ArgumentParser, help: str = JSON_HELP) -> None:
    p.add_argument("--json", action="store_true", help=help)


def one_app(p: argparse.ArgumentParser, required: bool, help: str) -> None:
    """``--app NAME`` naming one app (given twice: a usage error)."""
    from . import complete

    a = p.add_argument("--app", action=Once, required=required, metavar="NAME", help=help)
    a.completer = complete.apps  # type: ignore[attr-defined]


def change_flags(
    p: argparse.ArgumentParser, *, nodeps: bool = False, timeout: bool = True, checks: bool = False
) -> None:
    """The options of a change: ``--nodeps``, ``--timeout``/``--force``, and the checks
    an operator may waive (``--no-expect``, ``--no-object-check``)."""
    if nodeps:
        p.add_argument("--nodeps", action="store_true", help=NODEPS_HELP)
    if timeout:
        p.add_argument("--timeout", type=seconds, metavar="SECONDS", help=TIMEOUT_HELP)
        p.add_argument("--force", action="store_true", help=FORCE_HELP)
    if checks:
        p.add_argument("--no-expect", action="store_true", help=NO_EXPECT_HELP)
        p.add_argument("--no-object-check", action="store_true", help=NO_OBJECT_CHECK_HELP)


def later(module: str, function: str) -> Any:
    """A verb's command: ``function`` of the cli module ``module``, imported when the
    verb runs (never when the parser is built)."""

    def command(args: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(f"{__package__}.{module}"), function)(args))

    return command
