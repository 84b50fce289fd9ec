"""``pack`` and ``inspect``: a payload module into a checked archive, and what an
archive contains."""

from __future__ import annotations

import argparse
import sys

from ..errors import LivepatchError
from .exits import EXIT_OK

TYPE_CHECKING = False  # not typing's: see pylivepatch/__init__.py
if TYPE_CHECKING:
    from typing import Any


def pack(args: argparse.Namespace) -> int:
    import json

    from ..builder.pack import pack as pack_module

    pythons = [v.strip() for v in args.python.split(",") if v.strip()] if args.python else None
    packed = pack_module(args.file, against=args.against, pythons=pythons)
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


def inspect(args: argparse.Namespace) -> int:
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
