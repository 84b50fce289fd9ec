"""The payload manifest (spec §2): fields, strict validation, canonical form.

Validation is strict on purpose: an unknown field, a wrong type or an out-of-range
value is ``invalid-payload`` with the field named, because a manifest that a newer
tool wrote for a feature this engine lacks must be refused, not half understood.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import LivepatchError
from ..kinds import CONSISTENCY, HOOK_KINDS

FORMAT = 1
NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,127}\Z")  # \Z: "$" lets a final newline through
BUILD_ID_RE = re.compile(r"^[0-9a-f]{64}\Z")
PYTHON_RE = re.compile(r"^3\.[0-9]{1,2}\Z")
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
QUALNAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")

# Limits of what one manifest may hold (documented in docs/payload-format.md).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_TEXT = 4096
MAX_METADATA = 64
MAX_METADATA_VALUE = 1024
MAX_ENTRIES = 20_000
MAX_STATES = 256
MAX_DATA_FILES = 1000

_FIELDS = (
    "format", "name", "version", "description", "build_id", "depends", "objects", "funcs",
    "data", "hooks", "states", "replace", "consistency", "metadata", "python", "data_files",
)  # fmt: skip
#: the archive directory of the data files: ``files/new/<package>/<path>`` and ``files/old/...``
DATA_FILES_ROOT = "files/"
#: what a data file may not be: code the interpreter runs, and its caches
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyw", ".pyi", ".pth", ".so", ".pyd", ".dll", ".dylib")


def invalid(field_name: str, why: str) -> LivepatchError:
    return LivepatchError("invalid-payload", f"manifest field {field_name!r}: {why}")


@dataclass(frozen=True)
class FuncEntry:
    target: str
    new: str
    expect: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "new": self.new, "expect": dict(sorted(self.expect.items()))}


@dataclass(frozen=True)
class DataEntry:
    target: str
    value_source: str
    expect: str  # "absent", "literal:<sha256>" or "any"

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "value_source": self.value_source, "expect": self.expect}


@dataclass(frozen=True)
class DataFileEntry:
    """A non-Python file of the distribution the payload carries (``build --allow
    data-files``): its place in the import package ``package``, the sha256 of the bytes
    it replaces (None: the file is added), and of the new bytes, which the archive holds
    at :attr:`member`."""

    package: str
    path: str  # "/"-separated, relative to the package's directory
    old: str | None
    new: str
    size: int

    @property
    def member(self) -> str:
        """The archive member of the new bytes."""
        return f"{DATA_FILES_ROOT}new/{self.package}/{self.path}"

    @property
    def old_member(self) -> str | None:
        """The archive member of the old bytes (put back by a revert); None if added."""
        return None if self.old is None else f"{DATA_FILES_ROOT}old/{self.package}/{self.path}"

    @property
    def shown(self) -> str:
        return f"{self.package.replace('.', '/')}/{self.path}"

    def to_json(self) -> dict[str, Any]:
        return {
            "package": self.package, "path": self.path, "old": self.old, "new": self.new,
            "size": self.size,
        }  # fmt: skip


@dataclass(frozen=True)
class StateEntry:
    id: int
    version: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version}


@dataclass(frozen=True)
class Manifest:
    name: str
    build_id: str
    python: tuple[str, ...]
    version: str = ""
    description: str = ""
    depends: str | None = None
    objects: dict[str, dict[str, str]] = field(default_factory=dict)
    funcs: tuple[FuncEntry, ...] = ()
    data: tuple[DataEntry, ...] = ()
    hooks: dict[str, str] = field(default_factory=dict)
    states: tuple[StateEntry, ...] = ()
    replace: bool = False
    consistency: str = "transition"
    metadata: dict[str, str] = field(default_factory=dict)
    data_files: tuple[DataFileEntry, ...] = ()
    format: int = FORMAT

    def to_json(self, with_build_id: bool = True) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "build_id": self.build_id,
            "depends": self.depends,
            "objects": {m: dict(sorted(v.items())) for m, v in sorted(self.objects.items())},
            "funcs": [f.to_json() for f in self.funcs],
            "data": [d.to_json() for d in self.data],
            "hooks": dict(sorted(self.hooks.items())),
            "states": [s.to_json() for s in self.states],
            "replace": self.replace,
            "consistency": self.consistency,
            "metadata": dict(sorted(self.metadata.items())),
            "python": list(self.python),
        }
        if self.data_files:  # absent when empty: the build ids of older payloads stay valid
            doc["data_files"] = [f.to_json() for f in self.data_files]
        if not with_build_id:
            del doc["build_id"]
        return doc

    def canonical(self, with_build_id: bool = True) -> bytes:
        return canonical_json(self.to_json(with_build_id))


def canonical_json(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def split_target(target: str, field_name: str) -> tuple[str, str]:
    """``"pkg.mod:Class.attr"`` -> (``"pkg.mod"``, ``"Class.attr"``), validated."""
    if not isinstance(target, str) or target.count(":") != 1:
        raise invalid(field_name, f"target {target!r} must look like 'package.module:qualname'")
    module, qualname = target.split(":")
    if not MODULE_RE.match(module):
        raise invalid(field_name, f"target {target!r} has a malformed module name {module!r}")
    if not QUALNAME_RE.match(qualname):
        raise invalid(
            field_name,
            f"target {target!r} has a malformed qualified name {qualname!r} "
            "(dotted identifiers; functions inside functions are patched through their enclosing function)",
        )
    return module, qualname


def _str(doc: dict[str, Any], key: str, default: str = "", limit: int = MAX_TEXT) -> str:
    value = doc.get(key, default)
    if not isinstance(value, str):
        raise invalid(key, f"must be a string, not {type(value).__name__}")
    if len(value) > limit:
        raise invalid(key, f"is {len(value)} characters long; the limit is {limit}")
    return value


def _list(doc: dict[str, Any], key: str, limit: int = MAX_ENTRIES) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise invalid(key, f"must be a list, not {type(value).__name__}")
    if len(value) > limit:
        raise invalid(key, f"has {len(value)} entries; the limit is {limit}")
    return value


def _entry(item: Any, key: str, index: int, allowed: tuple[str, ...]) -> dict[str, Any]:
    where = f"{key}[{index}]"
    if not isinstance(item, dict):
        raise invalid(where, f"must be an object, not {type(item).__name__}")
    unknown = sorted(set(item) - set(allowed))
    if unknown:
        raise invalid(f"{where}.{unknown[0]}", "unknown field")
    missing = [k for k in allowed if k not in item]
    if missing:
        raise invalid(f"{where}.{missing[0]}", "is missing")
    return item


def parse(raw: bytes | str | dict[str, Any]) -> Manifest:
    """Parse and validate a manifest; raise ``invalid-payload`` naming the field."""
    doc = _document(raw)  # the fields in the order they have always been checked
    name = _name(doc)
    build_id = doc.get("build_id")
    if not isinstance(build_id, str) or not BUILD_ID_RE.match(build_id):
        raise invalid("build_id", "must be 64 lowercase hex digits (sha256)")
    depends, python, objects = _depends(doc), _pythons(doc), _objects(doc)
    claim = _Claims()
    funcs, data, hooks, states = _funcs(doc, claim), _data(doc, claim), _hooks(doc), _states(doc)
    replace = doc.get("replace", False)
    if not isinstance(replace, bool):
        raise invalid("replace", f"must be true or false, not {replace!r}")
    consistency = doc.get("consistency", "transition")
    if consistency not in CONSISTENCY:
        raise invalid("consistency", f"{consistency!r} must be one of {', '.join(CONSISTENCY)}")
    metadata = _metadata(doc)
    data_files = _data_files(_list(doc, "data_files", limit=MAX_DATA_FILES))
    if not funcs and not data and not hooks and not data_files:
        raise LivepatchError(
            "invalid-payload",
            f"payload {name} has nothing to patch (no funcs, data, hooks or data files)",
        )
    return Manifest(
        name=name,
        build_id=build_id,
        python=python,
        version=_str(doc, "version"),
        description=_str(doc, "description"),
        depends=depends,
        objects=objects,
        funcs=tuple(funcs),
        data=tuple(data),
        hooks=hooks,
        states=states,
        replace=replace,
        consistency=consistency,
        metadata=metadata,
        data_files=tuple(data_files),
    )


def _document(raw: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """The manifest as a JSON object of known fields, of a known format."""
    if isinstance(raw, (bytes, str)):
        if len(raw) > MAX_MANIFEST_BYTES:
            raise invalid(
                "manifest.json", f"is {len(raw)} bytes; the limit is {MAX_MANIFEST_BYTES}"
            )
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise LivepatchError(
                "invalid-payload", f"manifest.json is not valid JSON: {exc}"
            ) from None
    else:
        doc = raw
    if not isinstance(doc, dict):
        raise LivepatchError("invalid-payload", "manifest.json must hold a JSON object")
    unknown = sorted(set(doc) - set(_FIELDS))
    if unknown:
        raise invalid(unknown[0], "unknown field (written by a newer pylivepatch?)")
    fmt = doc.get("format")
    if fmt != FORMAT or isinstance(fmt, bool):
        raise invalid("format", f"must be {FORMAT}, not {fmt!r}")
    return doc


def _name(doc: dict[str, Any]) -> str:
    name = doc.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise invalid("name", f"{name!r} must be 1-127 characters of A-Z a-z 0-9 . _ -")
    return name


def _depends(doc: dict[str, Any]) -> str | None:
    depends = doc.get("depends")
    if (
        depends is not None
        and depends != "base"
        and (not isinstance(depends, str) or not BUILD_ID_RE.match(depends))
    ):
        raise invalid("depends", f"{depends!r} must be null, 'base' or a payload build id")
    return depends


def _pythons(doc: dict[str, Any]) -> tuple[str, ...]:
    python = _list(doc, "python", limit=32)
    if not python:
        raise invalid("python", "must name at least one interpreter version, e.g. ['3.11']")
    for i, v in enumerate(python):
        if not isinstance(v, str) or not PYTHON_RE.match(v):
            raise invalid(f"python[{i}]", f"{v!r} must look like '3.11'")
    return tuple(python)


def _objects(doc: dict[str, Any]) -> dict[str, dict[str, str]]:
    objects_raw = doc.get("objects", {})
    if not isinstance(objects_raw, dict):
        raise invalid("objects", f"must be an object, not {type(objects_raw).__name__}")
    objects: dict[str, dict[str, str]] = {}
    for mod, ids in objects_raw.items():
        if not MODULE_RE.match(mod):
            raise invalid(f"objects.{mod}", "is not a module name")
        if not isinstance(ids, dict):
            raise invalid(f"objects.{mod}", "must map interpreter versions to build ids")
        for ver, bid in ids.items():
            if not PYTHON_RE.match(ver) or not isinstance(bid, str) or not BUILD_ID_RE.match(bid):
                raise invalid(f"objects.{mod}.{ver}", "must map '3.X' to a 64-hex build id")
        objects[mod] = dict(ids)
    return objects


class _Claims:
    """Targets named so far: a target appears at most once across funcs and data."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, key: str, i: int, target: Any) -> None:
        split_target(target, f"{key}[{i}].target")
        if target in self.seen:
            raise invalid(f"{key}[{i}].target", f"{target} is listed twice")
        self.seen.add(target)


def _funcs(doc: dict[str, Any], claim: _Claims) -> list[FuncEntry]:
    funcs = []
    for i, item in enumerate(_list(doc, "funcs")):
        e = _entry(item, "funcs", i, ("target", "new", "expect"))
        claim("funcs", i, e["target"])
        if not isinstance(e["new"], str) or not QUALNAME_RE.match(e["new"]):
            raise invalid(f"funcs[{i}].new", f"{e['new']!r} must be a payload symbol name")
        expect = e["expect"]
        if not isinstance(expect, dict) or not all(
            isinstance(k, str)
            and PYTHON_RE.match(k)
            and isinstance(v, str)
            and BUILD_ID_RE.match(v)
            for k, v in expect.items()
        ):
            raise invalid(f"funcs[{i}].expect", "must map '3.X' to a 64-hex fingerprint")
        funcs.append(FuncEntry(e["target"], e["new"], dict(expect)))
    return funcs


def _data(doc: dict[str, Any], claim: _Claims) -> list[DataEntry]:
    data = []
    for i, item in enumerate(_list(doc, "data")):
        e = _entry(item, "data", i, ("target", "value_source", "expect"))
        claim("data", i, e["target"])
        if (
            not isinstance(e["value_source"], str)
            or not e["value_source"]
            or len(e["value_source"]) > 65536
        ):
            raise invalid(f"data[{i}].value_source", "must be a non-empty Python expression")
        expect = e["expect"]
        if not isinstance(expect, str) or not (
            expect in ("absent", "any")
            or (expect.startswith("literal:") and BUILD_ID_RE.match(expect[8:]))
        ):
            raise invalid(
                f"data[{i}].expect", f"{expect!r} must be 'absent', 'any' or 'literal:<sha256>'"
            )
        data.append(DataEntry(e["target"], e["value_source"], expect))
    return data


def _hooks(doc: dict[str, Any]) -> dict[str, str]:
    hooks_raw = doc.get("hooks", {})
    if not isinstance(hooks_raw, dict):
        raise invalid("hooks", f"must be an object, not {type(hooks_raw).__name__}")
    for kind, symbol in hooks_raw.items():
        if kind not in HOOK_KINDS:
            raise invalid(f"hooks.{kind}", f"unknown hook; hooks are {', '.join(HOOK_KINDS)}")
        if not isinstance(symbol, str) or not QUALNAME_RE.match(symbol):
            raise invalid(f"hooks.{kind}", f"{symbol!r} must be a payload symbol name")
    return dict(hooks_raw)


def _states(doc: dict[str, Any]) -> tuple[StateEntry, ...]:
    states = []
    seen_ids: set[int] = set()
    for i, item in enumerate(_list(doc, "states", limit=MAX_STATES)):
        e = _entry(item, "states", i, ("id", "version"))
        for k in ("id", "version"):
            if not isinstance(e[k], int) or isinstance(e[k], bool) or not 0 <= e[k] < 2**63:
                raise invalid(f"states[{i}].{k}", f"must be a non-negative integer, not {e[k]!r}")
        if e["id"] == 0:
            raise invalid(f"states[{i}].id", "must not be 0")
        if e["id"] in seen_ids:
            raise invalid(f"states[{i}].id", f"state {e['id']} is listed twice")
        seen_ids.add(e["id"])
        states.append(StateEntry(e["id"], e["version"]))
    return tuple(states)


def _metadata(doc: dict[str, Any]) -> dict[str, str]:
    metadata_raw = doc.get("metadata", {})
    if not isinstance(metadata_raw, dict) or len(metadata_raw) > MAX_METADATA:
        raise invalid("metadata", f"must be an object of at most {MAX_METADATA} strings")
    for k, v in metadata_raw.items():
        if not isinstance(v, str) or len(k) > 64 or len(v) > MAX_METADATA_VALUE:
            raise invalid(
                f"metadata.{k}", f"must be a string of at most {MAX_METADATA_VALUE} characters"
            )
    return dict(metadata_raw)


def _data_files(items: list[Any]) -> list[DataFileEntry]:
    """``data_files``: each a relative path inside an import package that names no code
    (a payload patches code through ``funcs`` only) and no directory outside it."""
    out: list[DataFileEntry] = []
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(items):
        where = f"data_files[{i}]"
        e = _entry(item, "data_files", i, ("package", "path", "old", "new", "size"))
        if not isinstance(e["package"], str) or not MODULE_RE.match(e["package"]):
            raise invalid(f"{where}.package", f"{e['package']!r} is not a package name")
        path = e["path"]
        if not isinstance(path, str) or not 0 < len(path) <= 255:
            raise invalid(f"{where}.path", "must be a relative path of 1 to 255 characters")
        parts = path.split("/")
        if (
            path.startswith("/")
            or "\\" in path
            or any(p in ("", ".", "..", "__pycache__") for p in parts)
            or any(ord(c) < 32 or c == ":" for c in path)
        ):
            raise invalid(
                f"{where}.path",
                f"{path!r} must be a '/'-separated relative path without '..', '.', empty "
                "components, __pycache__, backslashes, colons or control characters",
            )
        if path.lower().endswith(CODE_SUFFIXES):
            raise invalid(
                f"{where}.path", f"{path!r} is code, not data; a payload patches code by funcs"
            )
        old, new = e["old"], e["new"]
        if old is not None and (not isinstance(old, str) or not BUILD_ID_RE.match(old)):
            raise invalid(f"{where}.old", "must be null (an added file) or a 64-hex sha256")
        if not isinstance(new, str) or not BUILD_ID_RE.match(new):
            raise invalid(f"{where}.new", "must be a 64-hex sha256")
        if old == new:
            raise invalid(f"{where}.new", "is the old sha256: the file does not change")
        size = e["size"]
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 2**40:
            raise invalid(f"{where}.size", f"must be a non-negative integer, not {size!r}")
        key = (e["package"], path)
        if key in seen:
            raise invalid(f"{where}.path", f"{e['package']}/{path} is listed twice")
        seen.add(key)
        out.append(DataFileEntry(e["package"], path, old, new, size))
    return out
