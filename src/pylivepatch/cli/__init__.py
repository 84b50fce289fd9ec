"""The ``pylivepatch`` command line: thin over ``build`` and the engine.

Every error a user can cause is one line ``pylivepatch: CODE: message`` on stderr and
exit code 1 (2 for ``busy``/``timeout``: try again); never a traceback.

Start-up is most of what a short command costs, so this module and the ones that
declare verbs (``VERB_MODULES``, ``complete``) import only argparse and what is
already loaded: each verb imports its own modules when it runs (``remote`` for the
verbs on processes, ``build.pack`` for ``pack``...). ``tests/cli/test_cli_startup.py``
checks that.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from ..errors import LivepatchError

TYPE_CHECKING = False  # not typing's: see pylivepatch/__init__.py
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, NoReturn

EXIT_OK, EXIT_ERROR, EXIT_RETRY = 0, 1, 2
#: an action on several processes (or its clean-up) failed and could not be undone
#: everywhere: the report names each process left changed and how to put it back
EXIT_PARTIAL = 3
#: stdout was closed before all was written (``| head``), as a shell reports SIGPIPE
EXIT_PIPE = 141

#: modules of this package that declare verbs of their own: each has
#: ``register(sub)``, which adds its subparsers and sets ``command_function`` (called
#: with the parsed arguments, returns the exit code) as their default. They must be
#: light to import: every command line builds the whole parser.
VERB_MODULES: tuple[str, ...] = ("build", "attach", "fleet_parser")


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


class _Parser(argparse.ArgumentParser):
    """Usage errors are :class:`UsageError` (exit 1: 2 means "try again")."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self)


class _Once(argparse.Action):
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


#: shared help texts (spec §3, §5)
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


def add_target(p: argparse.ArgumentParser) -> None:
    """TARGET: every option repeatable; the processes any of them names."""
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
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")


def _parser() -> argparse.ArgumentParser:
    import importlib

    from .. import __version__
    from . import complete

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

    def payload_file(p: argparse.ArgumentParser, what: str = "payload archive (.lpz)") -> None:
        p.add_argument("file", metavar="FILE", help=what)

    def payload_name(p: argparse.ArgumentParser, installed: bool = False) -> None:
        a = p.add_argument(
            "name", metavar="NAME", help="payload name (as `list` shows it)"
        )  # fmt: skip
        a.completer = complete.installed_names if installed else complete.payload_names  # type: ignore[attr-defined]

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help=JSON_HELP)

    def app_option(p: argparse.ArgumentParser, required: bool, help: str) -> None:
        a = p.add_argument(
            "--app", action=_Once, required=required, metavar="NAME", help=help
        )  # fmt: skip
        a.completer = complete.apps  # type: ignore[attr-defined]

    p = sub.add_parser("pack", help="pack a payload module into a checked .lpz archive")
    p.add_argument(
        "file", metavar="FILE", help="payload module (a .py file or a package directory)"
    )
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="archive to write (NAME.lpz)"
    )
    p.add_argument(
        "--against",
        metavar="DIR",
        help="fingerprint targets from this source tree instead of importing them",
    )
    p.add_argument(
        "--python",
        metavar="VERSIONS",
        help="comma-separated interpreter versions to write expectations for, e.g. 3.11,3.12 (default: this one)",
    )
    p.add_argument("--sign", metavar="KEY", help="sign with this private key (pylivepatch keygen)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")

    p = sub.add_parser("keygen", help="make an Ed25519 key pair for signing payloads")
    p.add_argument("-o", "--output", required=True, metavar="KEY", help="writes KEY and KEY.pub")
    json_flag(p)
    p = sub.add_parser("sign", help="sign a payload archive (in place, or -o OUT)")
    payload_file(p)
    p.add_argument("--key", required=True, help="private key from pylivepatch keygen")
    p.add_argument("-o", "--output", metavar="OUT", help="write the signed archive here instead")
    json_flag(p)
    p = sub.add_parser("verify", help="check a payload's signature against trusted keys")
    payload_file(p)
    p.add_argument(
        "--keys", metavar="PATH", help="a public key or a directory of *.pub (default: "
        "$PYLIVEPATCH_TRUSTED_KEYS)",
    )  # fmt: skip
    json_flag(p)

    p = sub.add_parser("inspect", help="show what a payload archive contains")
    payload_file(p)
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")

    p = sub.add_parser("demo", help="live-patch a running demo service and show it before/after")
    p.add_argument("--json", action="store_true", help="print the steps as JSON lines")

    p = sub.add_parser("ps", help="processes with an agent (all, or those of the TARGET)")
    add_target(p)
    p = sub.add_parser("list", help="payloads of the target processes")
    p.add_argument(
        "--installed", action="store_true", help="payloads installed for an app (--app) instead"
    )
    add_target(p)
    p = sub.add_parser("log", help="the audit log: every action, who asked, its result")
    p.add_argument("--events", action="store_true", help="the live event history of processes")
    p.add_argument(
        "-n", "--last", type=int, metavar="N", help="only the last N records (of each process "
        "with --events)",
    )  # fmt: skip
    add_target(p)
    p = sub.add_parser("status", help="one payload in the target processes")
    payload_name(p)
    add_target(p)
    p = sub.add_parser(
        "upload", help="upload and check a payload (nothing changes)",
        usage="%(prog)s [NAME] FILE TARGET [options]",
    )  # fmt: skip
    p.add_argument(
        "name", nargs="?", metavar="NAME", help="payload name; optional: the archive names it "
        "(kept for `upload NAME FILE`, which must match it)",
    )  # fmt: skip
    payload_file(p)
    p.add_argument("--no-expect", action="store_true", help=NO_EXPECT_HELP)
    p.add_argument("--no-object-check", action="store_true", help=NO_OBJECT_CHECK_HELP)
    add_target(p)
    p = sub.add_parser("load", help="upload and apply a payload (all or nothing)")
    payload_file(p)
    p.add_argument("--nodeps", action="store_true", help=NODEPS_HELP)
    p.add_argument("--timeout", type=seconds, metavar="SECONDS", help=TIMEOUT_HELP)
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.add_argument("--no-expect", action="store_true", help=NO_EXPECT_HELP)
    p.add_argument("--no-object-check", action="store_true", help=NO_OBJECT_CHECK_HELP)
    p.add_argument(
        "--attach", action="store_true",
        help="first start an agent (pylivepatch attach) in every -p/--tree process that has "
        "none; a failed attach stops the load before anything changes",
    )  # fmt: skip
    add_target(p)
    verbs = {
        "apply": "make an uploaded payload's code run (all or nothing)",
        "revert": "put back the code an applied payload replaced",
        "replace": "apply a payload and revert every other one in one step",
        "unload": "forget an uploaded payload that is not applied",
    }
    for verb, text in verbs.items():
        p = sub.add_parser(verb, help=text)
        payload_name(p)
        if verb != "unload":
            p.add_argument("--timeout", type=seconds, metavar="SECONDS", help=TIMEOUT_HELP)
            p.add_argument("--force", action="store_true", help=FORCE_HELP)
        if verb == "apply":
            p.add_argument("--nodeps", action="store_true", help=NODEPS_HELP)
        add_target(p)
    p = sub.add_parser("install", help="install a payload that new processes of an app apply")
    payload_file(p)
    app_option(p, True, "the app (`pylivepatch run --app NAME`)")
    json_flag(p)
    p = sub.add_parser("uninstall", help="stop applying an installed payload in new processes")
    payload_name(p, installed=True)
    app_option(p, True, "the app it is installed for")
    json_flag(p)
    p = sub.add_parser(
        "test", help="run a command with payloads applied in all its Python processes",
        usage="%(prog)s FILE [FILE ...] -- CMD [ARG ...]",
    )  # fmt: skip
    p.add_argument(
        "file", nargs="+", metavar="FILE",
        help="payload archive(s), applied in order; then -- and the command to run",
    )  # fmt: skip
    p = sub.add_parser(
        "run", help="run a command whose Python processes all get an agent",
        usage="%(prog)s [--app NAME] -- CMD [ARG ...]",
    )  # fmt: skip
    app_option(p, False, "the app name `--app` targets select")
    p.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command to run"
    )  # fmt: skip
    p = sub.add_parser("completion", help="print the shell completion script (bash or zsh)")
    p.add_argument(
        "shell", choices=("bash", "zsh"), help='the shell: eval "$(pylivepatch completion bash)"'
    )  # fmt: skip
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
        return 130


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
    return EXIT_RETRY if exc.retryable else EXIT_ERROR


def _run(args: argparse.Namespace, command: list[str]) -> int:
    if args.verb == "pack":
        return _pack(args)
    if args.verb == "inspect":
        return _inspect(args)
    if getattr(args, "command_function", None) is not None:
        return int(args.command_function(args))
    if args.verb in ("keygen", "sign", "verify"):
        from . import sign

        return int(getattr(sign, args.verb)(args))
    if args.verb == "demo":
        from .demo import run_demo

        return run_demo(json_lines=args.json)
    if args.verb == "completion":
        from .complete import script

        print(script(args.shell), end="")
        return EXIT_OK
    if args.verb == "test":
        if not command:
            raise UsageError(
                "test needs a command after --: pylivepatch test FILE... -- CMD ...",
                args.verbs["test"],
            )
        from ..agent import protocol
        from ..agent.run import test

        protocol.prepare_dir(protocol.socket_dir())  # as for run, below
        return test(args.file, command)
    if args.verb == "run":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            raise UsageError("run needs a command: pylivepatch run -- CMD ...", args.verbs["run"])
        from ..agent import protocol
        from ..agent.run import run

        # The agents of CMD's processes put their sockets there: a directory they would
        # refuse (another user's) is an error now, not a service without agents.
        protocol.prepare_dir(protocol.socket_dir())
        return run(args.app, command)
    from . import remote

    if args.verb == "ps":
        return remote.ps(args)
    if args.verb in ("list", "status", "log"):
        return remote.show(args)
    if args.verb in ("upload", "load", "apply", "revert", "replace", "unload"):
        if getattr(args, "attach", False):
            from .attach import attach_for

            attach_for(args)
        return remote.act(args)
    if args.verb == "install":
        return remote.install(args)
    if args.verb == "uninstall":
        return remote.uninstall(args)
    raise AssertionError(args.verb)  # pragma: no cover - argparse rejects unknown verbs


def _pack(args: argparse.Namespace) -> int:
    import json

    from ..builder.pack import pack

    pythons = [v.strip() for v in args.python.split(",") if v.strip()] if args.python else None
    packed = pack(args.file, against=args.against, pythons=pythons)
    data = packed.data
    if args.sign:
        from .sign import sign_bytes

        data = sign_bytes(data, args.sign)
    try:
        with open(args.output, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise LivepatchError(
            "invalid-payload", f"cannot write {args.output}: {exc.strerror}"
        ) from None
    man = packed.manifest
    if args.json:
        print(json.dumps(man, indent=2, sort_keys=True))
    else:
        print(
            f"packed {man['name']} -> {args.output}: {len(man['funcs'])} functions, {len(man['data'])} data, "
            f"python {', '.join(man['python'])}, build id {man['build_id'][:16]}"
        )
    for warning in packed.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    import json

    from ..payload import archive

    payload = archive.read(archive.read_file(args.file))
    man = payload.manifest
    if args.json:
        doc: dict[str, Any] = man.to_json()
        doc["files"] = {p: len(b) for p, b in sorted(payload.files.items())}
        doc["signed"] = payload.signature is not None
        print(json.dumps(doc, indent=2, sort_keys=True))
        return EXIT_OK
    print(describe(man, payload.files, payload.signature is not None))
    return EXIT_OK


def describe(man: Any, files: dict[str, bytes], signed: bool) -> str:
    lines = [
        f"name         {man.name}",
        f"version      {man.version or '-'}",
        f"description  {man.description or '-'}",
        f"build id     {man.build_id}",
        f"depends      {man.depends if man.depends is not None else 'none (independent)'}",
        f"python       {', '.join(man.python)}",
        f"consistency  {man.consistency}",
        f"replace      {'yes' if man.replace else 'no'}",
        f"signature    {'signed' if signed else 'unsigned'}",
    ]
    for k, v in sorted(man.metadata.items()):
        lines.append(f"metadata     {k}={v}")
    for mod, ids in sorted(man.objects.items()):
        lines.append(
            f"object       {mod}  " + "  ".join(f"{v}:{i[:12]}" for v, i in sorted(ids.items()))
        )
    for f in man.funcs:
        exp = "  ".join(f"{v}:{d[:12]}" for v, d in sorted(f.expect.items()))
        lines.append(f"function     {f.target} <- {f.new}  expect {exp}")
    for d in man.data:
        lines.append(f"data         {d.target} = {d.value_source}  expect {d.expect[:20]}")
    for kind, symbol in sorted(man.hooks.items()):
        lines.append(f"hook         {kind}: {symbol}")
    for s in man.states:
        lines.append(f"state        id {s.id} version {s.version}")
    for df in man.data_files:
        was = "added" if df.old is None else f"old {df.old[:12]}"
        lines.append(f"data file    {df.shown}  {was}  new {df.new[:12]}  ({df.size} bytes)")
    for path, data in sorted(files.items()):
        lines.append(f"file         {path} ({len(data)} bytes)")
    return "\n".join(lines)
