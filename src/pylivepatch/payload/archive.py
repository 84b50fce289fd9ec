"""The payload archive (``*.lpz``): a zip of ``manifest.json``, ``payload/`` and an
optional ``SIGNATURE``, read with hard limits so hostile input cannot exhaust memory
or escape its directory, and the payload build id over its content.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import LivepatchError
from . import manifest as _manifest

MAX_ARCHIVE_BYTES = 16 * 1024 * 1024
MAX_FILES = 1000
MAX_TOTAL_BYTES = 64 * 1024 * 1024
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_RATIO = 200  # uncompressed / compressed, for members above 1 MiB
MAX_PATH = 255
MAX_DEPTH = 32  # JSON nesting of a manifest or a control message (a real one has < 8)

MANIFEST = "manifest.json"
SIGNATURE = "SIGNATURE"
SOURCE_ROOT = "payload/"


@dataclass(frozen=True)
class Payload:
    """A validated archive: its manifest and files (path -> bytes, without SIGNATURE)."""

    manifest: _manifest.Manifest
    files: dict[str, bytes]
    signature: bytes | None = None
    signature_status: str = "unsigned"  # what the signature policy said (signing.Policy)

    @property
    def sources(self) -> dict[str, str]:
        """Python sources under ``payload/``, decoded."""
        return {
            p: b.decode("utf-8")
            for p, b in self.files.items()
            if p.startswith(SOURCE_ROOT) and p.endswith(".py")
        }


#: (payload name, every member but SIGNATURE, SIGNATURE or None) -> status, or raises
SignatureCheck = Callable[[str, dict[str, bytes], "bytes | None"], str]


def content_build_id(manifest_without_id: bytes, files: dict[str, bytes]) -> str:
    """sha256 over the canonical manifest (without ``build_id``) and every file."""
    h = hashlib.sha256()
    h.update(b"pylivepatch-payload-1\x00")
    h.update(len(manifest_without_id).to_bytes(8, "big") + manifest_without_id)
    for path in sorted(files):
        data = files[path]
        h.update(path.encode() + b"\x00" + len(data).to_bytes(8, "big"))
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_EMPTY_PAIRS = (b"[]", b"{}")


def json_depth_over(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON text nests arrays and objects deeper than ``limit``, found without
    parsing it (the parser recurses: 200,000 levels are a RecursionError): strings
    are dropped, then the innermost empty pairs peeled off, at most ``limit`` times,
    each a pass at C speed. Unbalanced text counts as too deep (it is not JSON)."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return False
        peeled = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if peeled == brackets:
            return True  # unbalanced: not JSON
        brackets = peeled
    return bool(brackets)


_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def loads_bounded(data: bytes | str, limit: int = MAX_DEPTH) -> object:
    """``json.loads``, but text nested deeper than ``limit`` is a ``ValueError`` before
    it is parsed, and so are ``NaN`` and ``Infinity`` (not JSON)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if json_depth_over(raw, limit):
        raise ValueError(f"JSON nested deeper than {limit} levels")
    return json.loads(raw, parse_constant=_no_constant)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def read_file(path: str | os.PathLike[str], what: str = "payload file") -> bytes:
    """The bytes of an archive named on a command line: a regular file of at most
    ``MAX_ARCHIVE_BYTES``, read without waiting (a FIFO, a device or a directory is
    refused at once, never read without bound)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LivepatchError("not-found", f"{what} {path} does not exist") from None
    except OSError as exc:
        code = "permission-denied" if isinstance(exc, PermissionError) else "invalid-payload"
        raise LivepatchError(code, f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _bad(f"{what} {path} is not a regular file; give the .lpz archive itself")
        if st.st_size > MAX_ARCHIVE_BYTES:
            raise _bad(f"{what} {path} is {st.st_size} bytes; the limit is {MAX_ARCHIVE_BYTES}")
        chunks, left = [], MAX_ARCHIVE_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise _bad(f"{what} {path} grew past {MAX_ARCHIVE_BYTES} bytes while read")
        return b"".join(chunks)
    except OSError as exc:
        raise _bad(f"cannot read {what} {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _bad(why: str) -> LivepatchError:
    return LivepatchError("invalid-payload", why)


def _check_path(name: str) -> None:
    if not name or len(name) > MAX_PATH:
        raise _bad(f"archive member name {name[:80]!r} is empty or too long")
    if name.startswith("/") or "\\" in name or ":" in name.split("/")[0]:
        raise _bad(f"archive member {name!r} has an absolute or foreign path")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
        raise _bad(f"archive member {name!r} has '..', '.' or an empty path component")
    if any(ord(c) < 32 for c in name):
        raise _bad(f"archive member {name!r} has control characters in its name")


def read(data: bytes, check_signature: SignatureCheck | None = None) -> Payload:
    """Validate an archive's bytes and return its manifest and files.

    ``check_signature`` runs on the raw members before the manifest is trusted, so a
    payload changed after signing is ``signature-invalid`` whatever else is wrong."""
    if len(data) > MAX_ARCHIVE_BYTES:
        raise _bad(f"payload is {len(data)} bytes; the limit is {MAX_ARCHIVE_BYTES}")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (
        zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError,
        zlib.error, struct.error, UnicodeDecodeError,
    ) as exc:  # fmt: skip
        raise _bad(
            f"payload is not a readable zip archive (truncated or corrupt?): {exc}"
        ) from None
    if len(infos) > MAX_FILES:
        raise _bad(f"payload has {len(infos)} files; the limit is {MAX_FILES}")
    files: dict[str, bytes] = {}
    signature = None
    total = 0
    for info in infos:
        name = info.filename
        _check_path(name)
        if info.is_dir():
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            raise _bad(f"archive member {name!r} is a symbolic link")
        if name in files or (name == SIGNATURE and signature is not None):
            raise _bad(f"archive member {name!r} appears twice")
        total += info.file_size
        content = _member(zf, info, total)
        if name == SIGNATURE:
            signature = content
        else:
            files[name] = content
    status = "unsigned"
    if check_signature is not None:
        status = check_signature(_peek_name(files), files, signature)
    if MANIFEST not in files:
        raise _bad("payload has no manifest.json")
    if SOURCE_ROOT + "__init__.py" not in files:
        raise _bad("payload has no payload/__init__.py")
    if json_depth_over(files[MANIFEST]):
        raise _bad(f"manifest.json nests deeper than {MAX_DEPTH} levels (no manifest does)")
    man = _manifest.parse(files[MANIFEST])
    sources = {p: b for p, b in files.items() if p != MANIFEST}
    _check_data_files(man, sources)
    expected = content_build_id(man.canonical(with_build_id=False), sources)
    if expected != man.build_id:
        raise _bad(
            f"payload {man.name}: build_id {man.build_id[:12]} does not match its content ({expected[:12]}); "
            "the archive was changed after packing: pack it again"
        )
    return Payload(man, sources, signature, status)


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, total: int) -> bytes:
    """One member's bytes, after every check of its header (``total``: the uncompressed
    size of the members so far, this one included)."""
    name = info.filename
    if name not in (MANIFEST, SIGNATURE) and not name.startswith(
        (SOURCE_ROOT, _manifest.DATA_FILES_ROOT)
    ):
        raise _bad(
            f"archive member {name!r} is outside payload/ (only manifest.json, SIGNATURE, "
            "payload/ and the data files under files/ are allowed)"
        )
    if info.file_size > MAX_FILE_BYTES:
        raise _bad(
            f"archive member {name!r} is {info.file_size} bytes uncompressed; the limit is {MAX_FILE_BYTES}"
        )
    if total > MAX_TOTAL_BYTES:
        raise _bad(f"payload unpacks to more than {MAX_TOTAL_BYTES} bytes")
    if info.file_size > 1 << 20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise _bad(f"archive member {name!r} compresses suspiciously well (a zip bomb?)")
    try:
        with zf.open(info) as fh:
            content = fh.read(MAX_FILE_BYTES + 1)
    except (
        zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, NotImplementedError,
        RuntimeError,
    ) as exc:  # fmt: skip
        raise _bad(f"archive member {name!r} cannot be read: {exc}") from None
    if len(content) != info.file_size:
        raise _bad(f"archive member {name!r} does not hold the size its header says")
    if name.endswith(".py") and name.startswith(SOURCE_ROOT):
        try:
            content.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(f"source {name!r} is not UTF-8") from None
    return content


def _check_data_files(man: _manifest.Manifest, files: dict[str, bytes]) -> None:
    """Every member under ``files/`` is the new or old bytes of a data file the manifest
    lists, with the size and sha256 it says; every one the manifest lists is there."""
    listed: dict[str, tuple[str, int | None]] = {}
    for f in man.data_files:
        listed[f.member] = (f.new, f.size)
        if f.old_member is not None and f.old is not None:
            listed[f.old_member] = (f.old, None)
    for path, content in files.items():
        if not path.startswith(_manifest.DATA_FILES_ROOT):
            continue
        if path not in listed:
            raise _bad(f"archive member {path!r} is no data file the manifest lists")
        digest, size = listed.pop(path)
        if (size is not None and len(content) != size) or (
            hashlib.sha256(content).hexdigest() != digest
        ):
            raise _bad(
                f"archive member {path!r} does not hold the size and sha256 the manifest says"
            )
    if listed:
        raise _bad(f"data file {next(iter(listed))!r} of the manifest is not in the archive")


def _peek_name(files: dict[str, bytes]) -> str:
    """The payload's name for messages, before the manifest is validated."""
    try:
        name = loads_bounded(files.get(MANIFEST, b"{}")).get("name")  # type: ignore[attr-defined]
    except (ValueError, AttributeError):
        name = None
    return name if isinstance(name, str) and len(name) < 128 else "(unnamed)"


def members(manifest: _manifest.Manifest, sources: dict[str, bytes]) -> dict[str, bytes]:
    """Every member an archive of this payload holds, but ``SIGNATURE``."""
    return {MANIFEST: manifest.canonical() + b"\n", **sources}


def write(
    manifest: _manifest.Manifest, sources: dict[str, bytes], signature: bytes | None = None
) -> bytes:
    """Write an archive. ``manifest.build_id`` must already be the content build id."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        entries = members(manifest, sources)
        order = [MANIFEST, *sorted(sources)]
        if signature is not None:
            entries[SIGNATURE] = signature
            order.append(SIGNATURE)
        for path in order:
            info = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, entries[path])
    return buf.getvalue()


def seal(doc: dict[str, object], sources: dict[str, bytes]) -> _manifest.Manifest:
    """Fill in the build id of a manifest document and validate it."""
    draft = dict(doc, build_id="0" * 64)
    man = _manifest.parse(draft)
    bid = content_build_id(man.canonical(with_build_id=False), sources)
    return _manifest.parse(dict(man.to_json(), build_id=bid))
