"""``pylivepatch build`` and its report."""

from __future__ import annotations

import argparse
import sys

from ..kinds import CONSISTENCY
from .exits import EXIT_ERROR, EXIT_OK

TYPE_CHECKING = False  # not typing's: see pylivepatch/__init__.py
if TYPE_CHECKING:
    from typing import Any

    from ..builder.build import BuildResult


def register(sub: Any) -> None:
    """Declare ``build`` (the builder itself is imported only when it runs)."""
    p = sub.add_parser(
        "build",
        help="build a payload from two versions of the source",
        usage="pylivepatch build [options] OLD NEW\n       pylivepatch build [options] --installed NEW",
    )
    p.add_argument(
        "old", metavar="OLD",
        help="the running version: a directory, sdist, wheel, NAME==VERSION (fetched with pip) "
        "or git revision (--repo); with --installed, give NEW only",
    )  # fmt: skip
    p.add_argument("new", metavar="NEW", nargs="?", help="the fixed version, same kinds")
    p.add_argument(
        "--installed", action="store_true",
        help="OLD is the release installed where the service runs (the files its dist-info "
        "RECORD lists in site-packages of --python-env)",
    )  # fmt: skip
    p.add_argument(
        "--python-env", metavar="PATH",
        help="the service's interpreter or virtualenv directory: --installed reads OLD there "
        "(default: the interpreter running pylivepatch); expectations are written for its "
        "Python version, and the payload's code is run there at build time with the target's "
        "dependencies (without it, the build imports none of them)",
    )  # fmt: skip
    p.add_argument(
        "--dist", metavar="NAME",
        help="the distribution NEW is a release of, for --installed (default: from NEW's name "
        "or metadata)",
    )  # fmt: skip
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="archive to write (default: NAME.lpz, NAME from --name)",
    )
    p.add_argument("--repo", metavar="DIR", help="OLD and NEW are git revisions of this repository")
    p.add_argument("--name", help="payload name (default: the output file's stem)")
    p.add_argument("--version", default="", help="payload version")
    p.add_argument("--description", default="")
    p.add_argument(
        "--metadata", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    p.add_argument("--replace", action="store_true", help="a cumulative payload (atomic replace)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--depends", metavar="BUILD_ID", help="stack on this payload")
    group.add_argument("--independent", action="store_true", help="stack on nothing (the default)")
    p.add_argument("--consistency", default="transition", choices=CONSISTENCY)
    p.add_argument("--python", metavar="VERSIONS", help="e.g. 3.11,3.12 (default: this one)")
    p.add_argument(
        "--allow", action="append", default=[], metavar="KIND",
        help="accept a refusal kind that a hook, a state or shadow variables handle",
    )  # fmt: skip
    p.add_argument(
        "--hooks", metavar="FILE",
        help="payload code added to the generated module: the hooks, states and shadow "
        "variables that handle what --allow accepts (it may use `patch`)",
    )  # fmt: skip
    p.add_argument("--emit", metavar="FILE", help="also write the generated payload module")
    p.add_argument("--sign", metavar="KEY", help="sign with this private key (pylivepatch keygen)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p.set_defaults(command_function=build_command)


def build_command(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..builder.build import BuildOptions, build
    from . import UsageError

    metadata: dict[str, str] = {}
    for item in args.metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--metadata {item!r}: use KEY=VALUE")
        metadata[key] = value
    old, new = args.old, args.new
    if args.installed:
        if new is not None:
            raise UsageError("build --installed takes NEW only (OLD is what is installed)")
        old, new = "", args.old
    elif new is None:
        raise UsageError("build needs OLD and NEW (or --installed NEW)")
    elif args.dist:
        raise UsageError("--dist goes with --installed")
    name = args.name or (Path(args.output).stem if args.output else None)
    if not name:
        raise UsageError("build needs --name or -o OUT.lpz")
    options = BuildOptions(
        name=name, version=args.version, description=args.description, metadata=metadata,
        replace=args.replace, depends=args.depends, consistency=args.consistency,
        pythons=[v.strip() for v in args.python.split(",") if v.strip()] if args.python else None,
        allow=frozenset(args.allow), repo=args.repo, installed=args.installed,
        python_env=args.python_env, dist=args.dist, hooks=args.hooks,
    )  # fmt: skip
    result = build(old, new, options)
    output = args.output or f"{name}.lpz"
    if result.source and args.emit:
        Path(args.emit).write_text(result.source)
    if result.data and args.sign:
        from .sign import sign_bytes

        result.data = sign_bytes(result.data, args.sign)
    if result.data:
        Path(output).write_bytes(result.data)
    why = "" if result.data else not_written(result)
    if args.json:
        print(json.dumps(report_json(result, output, why), indent=2))
    else:
        print_report(result, old, new, output, name)
        if why:
            print(f"pylivepatch: build: {why}", file=sys.stderr)
    return EXIT_OK if result.data else EXIT_ERROR


def not_written(result: BuildResult) -> str:
    """Why no payload was written: one line that says what to do."""
    if result.error:
        return result.error
    if result.refusals:
        kinds = sorted({r.kind for r in result.refusals})
        return (
            f"{len(result.refusals)} change(s) cannot be live-patched ({', '.join(kinds)}); "
            "nothing written. --allow KIND accepts a kind that a hook, a state or shadow "
            "variables handle (see docs/patch-author-guide.md)"
        )
    if result.allowed and not result.changes:
        where = ", ".join(f"{r.kind} at {r.file}:{r.line}" for r in result.allowed)
        return (
            f"nothing to patch: the only changes are the ones --allow accepted ({where}); "
            "nothing written. They need a hook, a state or shadow variables: give that code "
            "with --hooks FILE (see docs/patch-author-guide.md)"
        )
    return "no functional changes found; nothing written"


def report_json(result: BuildResult, output: str | None, why: str = "") -> dict[str, Any]:
    return {
        "ok": bool(result.data),
        "output": output if result.data else None,
        "message": why or None,
        "no_functional_change": result.no_change,
        "changes": [
            {"kind": c.kind, "target": c.target, "file": c.file, "line": c.line}
            for c in result.changes
        ],
        "refusals": [
            {"kind": r.kind, "target": r.target, "file": r.file, "line": r.line, "reason": r.reason}
            for r in result.refusals
        ],
        "allowed": [
            {"kind": r.kind, "target": r.target, "file": r.file, "line": r.line, "reason": r.reason}
            for r in result.allowed
        ],
        "data_files": [dict(f.entry(), file=f.rel) for f in result.files],
        "warnings": result.warnings,
        "installed": result.installed,
        "manifest": result.manifest,
    }


def print_report(result: BuildResult, old: str, new: str, output: str | None, name: str) -> None:
    if result.installed:
        i = result.installed
        old = f"{i['name']} {i['version']} installed in {i['location']} (python {i['python']})"
    print(f"build {name}: {old} -> {new}")
    cosmetic = [d.module for d in result.diffs if d.cosmetic]
    for c in result.changes:
        print(f"  patch    {c.file}:{c.line}  {c.kind:<13} {c.target}")
        for m in c.importers:
            print(
                f"  patch    {'':<{len(c.file) + len(str(c.line)) + 1}}  {'constant':<13} {m}:{c.qualname}  (imported it)"
            )
    for f in result.files:  # --allow data-files: written where the process reads them
        e = f.entry()
        was = "added" if e["old"] is None else f"{str(e['old'])[:12]} ->"
        print(f"  file     {f.rel}  {was} {str(e['new'])[:12]}  {e['size']} bytes  (data file)")
    for r in result.refusals:
        print(f"  REFUSED  {r.file}:{r.line}  {r.kind}  {r.target}: {r.reason}")
    for r in result.allowed:
        print(
            f"  allowed  {r.file}:{r.line}  {r.kind}  {r.target}: {r.reason}  -- handle it in a hook, a state or shadow variables"
        )
    for w in result.warnings:
        print(f"  warning  {w}")
    if cosmetic:
        print(
            f"  nothing  {', '.join(cosmetic)}: comments, docstrings, formatting or annotations only"
        )
    if result.data and result.manifest:
        man: dict[str, Any] = result.manifest
        hooks = man.get("hooks") or {}
        if hooks or man.get("states"):
            parts = [f"{kind} {fn}" for kind, fn in sorted(hooks.items())]
            parts += [f"state {s['id']} v{s['version']}" for s in man.get("states") or []]
            print(f"  hooks    {', '.join(parts)}  (from --hooks)")
        print(
            f"built {man['name']} -> {output}: {len(man['funcs'])} functions, {len(man['data'])} data, "
            + (f"{len(man['data_files'])} data files, " if man.get("data_files") else "")
            + f"python {', '.join(man['python'])}, build id {man['build_id'][:16]}"
        )
