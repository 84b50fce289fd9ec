"""Signed payloads (spec §9): Ed25519 over a canonical digest of every member.

The digest covers the manifest (with its build id) and every file under ``payload/``,
by path, length and SHA-256, in sorted order — so a changed, added or removed file, a
changed manifest or another signature all fail verification. ``SIGNATURE`` is JSON:
``{"format": 1, "alg": "ed25519", "key": KEY_ID, "sig": BASE64}``, where ``KEY_ID`` is
the first 16 hex digits of the SHA-256 of the raw public key.

Policy (read at each upload, from the agent's environment): trusted public keys from
``$PYLIVEPATCH_TRUSTED_KEYS`` (a PEM file, or a directory of ``*.pub`` PEM files) and
``$PYLIVEPATCH_SIGNATURE_POLICY`` (``require``, else ``accept-unsigned``). With trusted
keys, a signed payload must verify against one of them (``signature-invalid``
otherwise); ``require`` refuses unsigned payloads (``signature-required``); with no
trusted key, unsigned payloads are accepted and shown ``unsigned``. Verification needs
the ``cryptography`` package; if keys are configured and it is missing, every payload is
refused (fail-closed).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LivepatchError

TRUSTED_KEYS = "PYLIVEPATCH_TRUSTED_KEYS"
POLICY = "PYLIVEPATCH_SIGNATURE_POLICY"
SIGNATURE = "SIGNATURE"
MAX_SIGNATURE = 4096


def digest(members: dict[str, bytes]) -> bytes:
    """The signed message: every member but ``SIGNATURE``, canonically."""
    h = hashlib.sha256(b"pylivepatch-signature-1\x00")
    for path in sorted(members):
        if path == SIGNATURE:
            continue
        data = members[path]
        h.update(path.encode() + b"\x00" + len(data).to_bytes(8, "big"))
        h.update(hashlib.sha256(data).digest())
    return h.digest()


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise LivepatchError(
            "signature-invalid",
            "cannot verify or make signatures: the cryptography package is not installed "
            "(pip install 'pylivepatch[sign]'); with trusted keys configured nothing is accepted",
        ) from None
    return serialization, ed25519


def _raw_public(key: Any) -> bytes:
    serialization, _ = _crypto()
    raw: bytes = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw


def key_id(public_key: Any) -> str:
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def keygen(path: str | os.PathLike[str]) -> tuple[Path, Path, str]:
    """Write a new private key (PEM, mode 0600) to ``path`` and its public key to
    ``path.pub``; return both paths and the key id."""
    serialization, ed25519 = _crypto()
    private = ed25519.Ed25519PrivateKey.generate()
    priv_path, pub_path = Path(path), Path(str(path) + ".pub")
    for p in (priv_path, pub_path):
        if p.exists():
            raise LivepatchError("exists", f"{p} exists; keygen never overwrites a key")
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public = private.public_key()
    pub_path.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv_path, pub_path, key_id(public)


def load_private(path: str | os.PathLike[str]) -> Any:
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise LivepatchError("not-found", f"cannot read key {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise LivepatchError("invalid-payload", f"{path} is not a PEM private key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise LivepatchError("invalid-payload", f"{path} is not an Ed25519 key")
    return key


def load_public(path: Path) -> Any:
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (ValueError, TypeError) as exc:
        raise LivepatchError(
            "signature-invalid", f"trusted key {path} is not a PEM public key: {exc}"
        ) from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise LivepatchError("signature-invalid", f"trusted key {path} is not an Ed25519 key")
    return key


def sign(members: dict[str, bytes], private_key: Any) -> bytes:
    """The ``SIGNATURE`` member for these members."""
    sig = private_key.sign(digest(members))
    doc = {
        "format": 1,
        "alg": "ed25519",
        "key": key_id(private_key.public_key()),
        "sig": base64.b64encode(sig).decode(),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Policy:
    keys: dict[str, Any]  # key id -> public key
    require: bool
    source: str

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Policy:
        env = dict(os.environ if env is None else env)
        require = env.get(POLICY, "").strip().lower() == "require"
        where = env.get(TRUSTED_KEYS, "").strip()
        keys: dict[str, Any] = {}
        if where:
            path = Path(where)
            files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
            if not path.exists():
                raise LivepatchError(
                    "signature-invalid",
                    f"{TRUSTED_KEYS}={where} does not exist; nothing is accepted",
                )
            for f in files:
                key = load_public(f)
                keys[key_id(key)] = key
            if not keys:
                raise LivepatchError(
                    "signature-invalid",
                    f"{TRUSTED_KEYS}={where} holds no *.pub key; nothing is accepted",
                )
        return cls(keys, require, where)

    def check(self, name: str, members: dict[str, bytes], signature: bytes | None) -> str:
        """The payload's signature status, or ``LivepatchError`` if the policy refuses it."""
        if signature is None:
            if self.require:
                raise LivepatchError(
                    "signature-required",
                    f"payload {name} is not signed and the policy requires signatures "
                    f"(sign it: pylivepatch sign FILE --key KEY)",
                )
            return "unsigned"
        doc = _parse(name, signature)
        if not self.keys:
            if self.require:
                raise LivepatchError(
                    "signature-required",
                    f"payload {name}: the policy requires signatures but no trusted key is configured "
                    f"({TRUSTED_KEYS})",
                )
            return f"signed by {doc['key']} (not verified: no trusted keys)"
        _, ed25519 = _crypto()
        key = self.keys.get(doc["key"])
        if key is None:
            raise LivepatchError(
                "signature-invalid",
                f"payload {name} is signed by key {doc['key']}, which is not trusted here",
            )
        try:
            key.verify(doc["sig"], digest(members))
        except Exception:  # cryptography's InvalidSignature
            raise LivepatchError(
                "signature-invalid",
                f"payload {name}: the signature by key {doc['key']} does not match the content "
                "(the payload was changed after signing)",
            ) from None
        return f"verified {doc['key']}"


def _parse(name: str, signature: bytes) -> dict[str, Any]:
    if len(signature) > MAX_SIGNATURE:
        raise LivepatchError("signature-invalid", f"payload {name}: SIGNATURE is too large")
    try:
        doc = json.loads(signature)
        if not isinstance(doc, dict) or doc.get("format") != 1 or doc.get("alg") != "ed25519":
            raise ValueError("not a format-1 ed25519 signature")
        key = str(doc["key"])
        sig = base64.b64decode(str(doc["sig"]), validate=True)
        if len(sig) != 64:
            raise ValueError("an Ed25519 signature is 64 bytes")
    except (
        ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError
    ) as exc:  # fmt: skip
        raise LivepatchError(
            "signature-invalid", f"payload {name}: SIGNATURE is malformed ({exc})"
        ) from None
    return {"key": key, "sig": sig}
