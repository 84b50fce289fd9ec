"""The ``pylivepatch`` command line: thin over ``build`` and the engine.

Every error a user can cause is one line ``pylivepatch: CODE: message`` on stderr and
exit code 1 (2 for ``busy``/``timeout``: try again); never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from ..errors import LivepatchError

EXIT_OK, EXIT_ERROR, EXIT_RETRY = 0, 1, 2

#: modules of this package that declare verbs of their own: each has
#: ``register(sub)``, which adds its subparsers and sets ``command_function`` (called
#: with the parsed arguments, returns the exit code) as their default. They must be
#: light to import: every command line builds the whole parser.
VERB_MODULES: tuple[str, ...] = ("build",)


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1 (2 means "try again" for pylivepatch)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"pylivepatch: usage: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pylivepatch",
        description="Live patching for running Python services.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True

    p = sub.add_parser("pack", help="pack a payload module into a checked .lpz archive")
    p.add_argument("file", help="payload module (a .py file or a package directory)")
    p.add_argument("-o", "--output", required=True, help="archive to write (NAME.lpz)")
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
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("sign", help="sign a payload archive (in place, or -o OUT)")
    p.add_argument("file")
    p.add_argument("--key", required=True, help="private key from pylivepatch keygen")
    p.add_argument("-o", "--output", help="write the signed archive here instead")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("verify", help="check a payload's signature against trusted keys")
    p.add_argument("file")
    p.add_argument(
        "--keys", metavar="PATH", help="a public key or a directory of *.pub (default: "
        "$PYLIVEPATCH_TRUSTED_KEYS)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("inspect", help="show what a payload archive contains")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")

    p = sub.add_parser("demo", help="live-patch a running demo service and show it before/after")
    p.add_argument("--json", action="store_true", help="print the steps as JSON lines")

    from .remote import add_target

    p = sub.add_parser("ps", help="processes with an agent")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("list", help="payloads of the target processes")
    p.add_argument(
        "--installed", action="store_true", help="payloads installed for an app (--app) instead"
    )
    add_target(p)
    p = sub.add_parser("log", help="the audit log: every action, who asked, its result")
    p.add_argument("--events", action="store_true", help="the live event history of processes")
    p.add_argument("-n", "--last", type=int, metavar="N", help="only the last N records")
    add_target(p)
    p = sub.add_parser("status", help="one payload in the target processes")
    p.add_argument("name")
    add_target(p)
    p = sub.add_parser("upload", help="upload and check a payload")
    p.add_argument("name")
    p.add_argument("file")
    add_target(p)
    p = sub.add_parser("load", help="upload and apply a payload (all or nothing)")
    p.add_argument("file")
    p.add_argument("--nodeps", action="store_true")
    p.add_argument("--timeout", type=float)
    add_target(p)
    for verb in ("apply", "revert", "replace", "unload"):
        p = sub.add_parser(verb, help=f"{verb} an uploaded payload")
        p.add_argument("name")
        if verb != "unload":
            p.add_argument("--timeout", type=float)
            p.add_argument("--force", action="store_true")
        if verb == "apply":
            p.add_argument("--nodeps", action="store_true")
        add_target(p)
    p = sub.add_parser("install", help="install a payload that new processes of an app apply")
    p.add_argument("file")
    p.add_argument("--app", required=True, help="the app (`pylivepatch run --app NAME`)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("uninstall", help="stop applying an installed payload in new processes")
    p.add_argument("name")
    p.add_argument("--app", required=True)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser(
        "test", help="run a command with payloads applied in all its Python processes"
    )
    p.add_argument("file", nargs="+", help="payload archive(s), applied in order; then -- CMD ...")
    p = sub.add_parser("run", help="run a command whose Python processes all get an agent")
    p.add_argument("--app", help="the app name `--app` targets select")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ...")
    for module in VERB_MODULES:
        importlib.import_module(f"{__name__}.{module}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if argv[:1] == ["test"] and "--" in argv:  # test FILE... -- CMD...: CMD is not ours to parse
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    args = _parser().parse_args(argv)
    try:
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
        from . import remote

        if args.verb == "ps":
            return remote.ps(args)
        if args.verb in ("list", "status", "log"):
            return remote.show(args)
        if args.verb in ("upload", "load", "apply", "revert", "replace", "unload"):
            return remote.act(args)
        if args.verb == "install":
            return remote.install(args)
        if args.verb == "uninstall":
            return remote.uninstall(args)
        if args.verb == "test":
            from ..agent.run import test

            return test(args.file, command)
        if args.verb == "run":
            from ..agent.run import run

            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            return run(args.app, command)
    except LivepatchError as exc:
        if getattr(args, "json", False):
            error = {"code": exc.code, "errno": exc.errno, "message": exc.message}
            print(json.dumps({"ok": False, "error": error}))
        print(f"pylivepatch: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_RETRY if exc.retryable else EXIT_ERROR
    except OSError as exc:  # the state directory, a file named on the command line
        code = {errno.EACCES: "permission-denied", errno.EPERM: "permission-denied",
                errno.ENOENT: "not-found"}.get(exc.errno or 0)  # fmt: skip
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"pylivepatch: {code or 'error'}: {exc.strerror}{where}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    raise AssertionError(args.verb)  # pragma: no cover - argparse rejects unknown verbs


def _pack(args: argparse.Namespace) -> int:
    from ..build.pack import pack

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
    from ..engine.core import _read
    from ..payload import archive

    payload = archive.read(_read(args.file))
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
    for path, data in sorted(files.items()):
        lines.append(f"file         {path} ({len(data)} bytes)")
    return "\n".join(lines)
