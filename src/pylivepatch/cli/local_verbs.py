"""Verbs that need no running process: ``pack``, ``keygen``, ``sign``, ``verify``,
``inspect`` (payload archives and keys) and ``demo``. Each command is imported when
its verb runs (:func:`.options.later`)."""

from __future__ import annotations

from .options import json_flag, later, payload_file

TYPE_CHECKING = False  # not typing's: see pylivepatch/__init__.py
if TYPE_CHECKING:
    from typing import Any


def register(sub: Any) -> None:
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
    json_flag(p, "print the manifest as JSON")
    p.set_defaults(command_function=later("archives", "pack"))

    p = sub.add_parser("keygen", help="make an Ed25519 key pair for signing payloads")
    p.add_argument("-o", "--output", required=True, metavar="KEY", help="writes KEY and KEY.pub")
    json_flag(p)
    p.set_defaults(command_function=later("sign", "keygen"))
    p = sub.add_parser("sign", help="sign a payload archive (in place, or -o OUT)")
    payload_file(p)
    p.add_argument("--key", required=True, help="private key from pylivepatch keygen")
    p.add_argument("-o", "--output", metavar="OUT", help="write the signed archive here instead")
    json_flag(p)
    p.set_defaults(command_function=later("sign", "sign"))
    p = sub.add_parser("verify", help="check a payload's signature against trusted keys")
    payload_file(p)
    p.add_argument(
        "--keys", metavar="PATH", help="a public key or a directory of *.pub (default: "
        "$PYLIVEPATCH_TRUSTED_KEYS)",
    )  # fmt: skip
    json_flag(p)
    p.set_defaults(command_function=later("sign", "verify"))

    p = sub.add_parser("inspect", help="show what a payload archive contains")
    payload_file(p)
    json_flag(p, "print the manifest as JSON")
    p.set_defaults(command_function=later("archives", "inspect"))

    p = sub.add_parser("demo", help="live-patch a running demo service and show it before/after")
    json_flag(p, "print the steps as JSON lines")
    p.set_defaults(command_function=later("demo", "command"))
