"""``keygen``, ``sign``, ``verify`` and ``--sign`` (spec §9)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import LivepatchError
from ..payload import archive, signing
from .exits import EXIT_OK


def sign_bytes(data: bytes, key_path: str) -> bytes:
    """The archive ``data`` with a ``SIGNATURE`` by the key at ``key_path``."""
    payload = archive.read(data)
    members = archive.members(payload.manifest, payload.files)
    signature = signing.sign(members, signing.load_private(key_path))
    return archive.write(payload.manifest, payload.files, signature)


def keygen(args: argparse.Namespace) -> int:
    private, public, kid = signing.keygen(args.output)
    if args.json:
        print(json.dumps({"private": str(private), "public": str(public), "key": kid}))
    else:
        print(
            f"wrote {private} (private: keep it secret, mode 0600) and {public} (public: "
            f"give it to the agents, {signing.TRUSTED_KEYS}); key id {kid}"
        )
    return EXIT_OK


def sign(args: argparse.Namespace) -> int:
    data = archive.read_file(args.file)
    signed = sign_bytes(data, args.key)
    out = args.output or args.file
    Path(out).write_bytes(signed)
    kid = json.loads(archive.read(signed).signature or b"{}")["key"]
    if args.json:
        print(json.dumps({"file": out, "key": kid}))
    else:
        print(f"signed {out} with key {kid}")
    return EXIT_OK


def verify(args: argparse.Namespace) -> int:
    data = archive.read_file(args.file)
    env = {}
    if args.keys:
        env[signing.TRUSTED_KEYS] = args.keys
    else:
        import os

        env = dict(os.environ)
    policy = signing.Policy.from_env(env)
    if not policy.keys:
        raise LivepatchError(
            "signature-invalid",
            f"no trusted key to verify with: pass --keys PATH or set {signing.TRUSTED_KEYS}",
        )
    payload = archive.read(data, check_signature=signing.Policy(policy.keys, True, "").check)
    if args.json:
        print(json.dumps({"file": args.file, "payload": payload.manifest.name,
                          "signature": payload.signature_status}))  # fmt: skip
    else:
        print(f"{args.file}: payload {payload.manifest.name}: {payload.signature_status}")
    return EXIT_OK
