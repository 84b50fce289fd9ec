"""``pylivepatch pack``: a hand-written payload module -> a checked ``.lpz`` archive.

Pack runs the payload module, reads its :class:`~pylivepatch.Patch`, and fills in
what the engine will check: the fingerprint of every target function (its
*expectation*), the build id of every target module, the names the new code needs that
the target lacks, and the payload build id. By default the targets are fingerprinted
as they import in the packing environment; ``against`` names a source tree to compile
them from instead, without running it. Expectations for other interpreter versions
come from running the same analysis under those interpreters.
"""

from __future__ import annotations

import ast
import builtins
import glob
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine import collector
from ..engine import engine as process_engine
from ..engine.compile import literal_digest, load_sources, lookup
from ..engine.resolve import ABSENT, resolve_data, resolve_function
from ..errors import LivepatchError
from ..payload import archive
from ..payload.authoring import Patch
from ..payload.fingerprint import (
    fingerprint,
    global_names,
    live_object_build_id,
    python_tag,
    unwrap_function,
)
from ..payload.manifest import split_target

_MARK = "@@pylivepatch-pack@@"


@dataclass
class Packed:
    data: bytes
    manifest: dict[str, Any]
    warnings: list[str]


def read_sources(path: str | os.PathLike[str]) -> dict[str, str]:
    """A payload file, or a package directory, as archive paths under ``payload/``."""
    p = Path(path)
    if p.is_dir():
        if not (p / "__init__.py").is_file():
            raise LivepatchError("invalid-payload", f"{p} is a directory without __init__.py")
        files = sorted(f for f in p.rglob("*.py") if "__pycache__" not in f.parts)
        return {"payload/" + f.relative_to(p).as_posix(): f.read_text("utf-8") for f in files}
    if not p.is_file():
        raise LivepatchError("not-found", f"payload source {p} does not exist")
    return {"payload/__init__.py": p.read_text("utf-8")}


def _literal_source(value: Any) -> str | None:
    if literal_digest(value) is None:
        return None
    text = repr(value)
    try:
        back = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return text if back == value and type(back) is type(value) else None


# --- imports the builder does not make ------------------------------------------------


class _Stub:
    """Stands, while a built payload's code runs at build time, for an object of a
    module the build does not import (the target's code and its dependencies): any
    attribute, call, subscript or operation gives another stub; as a base class it
    stands for ``object``. What the payload binds from it is found by name, as any
    non-literal value; the target checks the real objects (upload, ``pylivepatch test``)."""

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_lp_name", name)

    def __repr__(self) -> str:
        return f"<not imported at build time: {object.__getattribute__(self, '_lp_name')}>"

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return _Stub(f"{object.__getattribute__(self, '_lp_name')}.{attr}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _Stub(f"{object.__getattribute__(self, '_lp_name')}()")

    def __getitem__(self, key: Any) -> Any:
        return _Stub(f"{object.__getattribute__(self, '_lp_name')}[]")

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        return ()

    def __iter__(self) -> Any:
        return iter(())

    def _op(self, *other: Any) -> Any:
        return _Stub(f"{object.__getattribute__(self, '_lp_name')} (an operation)")

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __mod__ = __rmod__ = _op
    __or__ = __ror__ = __and__ = __rand__ = __xor__ = __rxor__ = __truediv__ = _op
    __floordiv__ = __lshift__ = __rshift__ = __neg__ = __invert__ = __pos__ = _op


class _StubModule(types.ModuleType):
    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return _Stub(f"{self.__name__}.{attr}")


class _StubFinder:
    """On ``sys.meta_path`` while a built payload runs at build time. First on it:
    every module outside the standard library and pylivepatch is a stub module
    (importing the target's code would run it and need its dependencies where the build
    runs). Last on it (``missing_only``): only the modules nothing else finds."""

    def __init__(self, missing_only: bool = False) -> None:
        self.made: list[str] = []
        self.missing_only = missing_only  # last on sys.meta_path: what nothing else finds

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        top = fullname.split(".")[0]
        if top in sys.stdlib_module_names or top in ("pylivepatch", "_pylivepatch_pack"):
            return None
        if self.missing_only and fullname in sys.modules:
            return None
        import importlib.machinery

        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)  # type: ignore[arg-type]

    def create_module(self, spec: Any) -> types.ModuleType:
        module = _StubModule(spec.name)
        module.__path__ = []
        self.made.append(spec.name)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass

    def tops(self) -> list[str]:
        return sorted({n.split(".")[0] for n in self.made})


# --- one interpreter's analysis -------------------------------------------------------


def analyze(
    sources: dict[str, str],
    against: str | None,
    search: list[str] | None = None,
    stub_imports: bool = False,
) -> dict[str, Any]:
    """Everything interpreter-specific pack needs, computed in this interpreter.

    Targets and the payload's own imports are found on ``sys.path`` plus ``search``
    (the payload's directory and the working directory, as ``python FILE`` would) and
    ``against``. With ``stub_imports`` (a built payload), no module outside the standard
    library is imported at first: each is a stub (:class:`_StubFinder`); only if the
    payload's import-time code fails on stubs does it run again with the modules that
    import here (the target's, its dependencies), which the build report then says.
    """
    added = [p for p in ([against] if against else []) + (search or []) if p not in sys.path]
    sys.path[:0] = added
    try:
        loaded, stubs = _load(sources, stub_imports)
    except BaseException:
        for p in added:
            sys.path.remove(p)
        raise
    try:
        found = _Analysis(loaded, _the_patch(loaded), _SourceTree(against) if against else None)
        if stubs is not None and stubs.missing_only:
            found.warnings.append(_stood_in(stubs))
        found.functions()
        found.data_entries()
        found.added_names()
        return found.result()
    finally:
        loaded.discard()
        for p in added:
            sys.path.remove(p)


def _load(sources: dict[str, str], stub_imports: bool) -> tuple[Any, _StubFinder | None]:
    """The payload module loaded (its import-time code run). With ``stub_imports``:
    first every module outside the standard library is a stub; if the payload's code
    needs real values when it is imported (a pattern built from a constant of the
    target), it runs again with what imports here, and stubs only for the modules that
    cannot be found."""
    for missing_only in (False, True) if stub_imports else (None,):
        stubs = _StubFinder(missing_only) if missing_only is not None else None
        if stubs is not None:
            sys.meta_path.insert(len(sys.meta_path) if missing_only else 0, stubs)
        try:
            loaded = load_sources("pack", "_pylivepatch_pack", sources, "pack")
        except BaseException as exc:
            if stubs is not None:
                _drop_stubs(stubs)
            if isinstance(exc, LivepatchError) and missing_only is False:
                continue
            if isinstance(exc, LivepatchError):
                raise _explain(exc, stubs) from None
            raise
        if stubs is not None:
            _drop_stubs(stubs)
        return loaded, stubs
    raise AssertionError("unreachable: the last try returns or raises")  # pragma: no cover


def _the_patch(loaded: Any) -> Patch:
    patches = [v for v in loaded.namespace.values() if type(v) is Patch]  # never __class__
    if len(patches) != 1:
        raise LivepatchError(
            "invalid-payload",
            f"the payload module must define exactly one pylivepatch.Patch, found {len(patches)}",
        )
    return patches[0]


def _stood_in(stubs: _StubFinder) -> str:
    """The warning of a payload whose import-time code ran a second time, with real
    modules."""
    stood_in = (
        f", and stand-ins for what does not ({', '.join(stubs.tops())}); values "
        "computed from a stand-in are not the target's: check the payload where "
        "they are installed (`pylivepatch test`), or build with --python-env"
        if stubs.made
        else " (nothing stood in)"
    )
    return (
        "the payload's import-time code needed real values, so it ran a second time "
        "importing the target's modules and dependencies that are here" + stood_in
    )


class _Analysis:
    """What :func:`analyze` finds, step by step: the functions, the data, the names the
    new code needs that the payload adds, and the target modules' object ids."""

    def __init__(self, loaded: Any, patch: Patch, tree: _SourceTree | None) -> None:
        self.loaded, self.patch, self.tree = loaded, patch, tree
        self.funcs: list[dict[str, Any]] = []
        self.data: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.modules: set[str] = set()
        self.needs: dict[str, set[str]] = {}  # module -> global names the new code reads
        self.stands_in: dict[int, types.FunctionType] = {}  # replacement -> what it patches

    def functions(self) -> None:
        loaded, tree = self.loaded, self.tree
        for rec in self.patch.functions:
            qual = rec.func.__qualname__
            try:
                same = lookup(loaded, qual, rec.target) is rec.func
            except LivepatchError:
                same = False
            if not same:
                raise LivepatchError(
                    "invalid-payload",
                    f"replacement {qual} for {rec.target} is not reachable by that name in the payload",
                )
            modname, qualname = split_target(rec.target, "target")
            self.modules.add(modname)
            expect = tree.function(modname, qualname) if tree else _live_function(rec.target)
            self.funcs.append({"target": rec.target, "new": qual, "expect": expect})
            func = getattr(rec.func, "__func__", rec.func)  # a staticmethod/classmethod replacement
            self.needs.setdefault(modname, set()).update(global_names(func.__code__))
            if not tree:
                live = resolve_function(rec.target).func
                self.stands_in[id(rec.func)] = self.stands_in[id(func)] = live
                if set(live.__code__.co_freevars) - {"__class__"}:
                    self.warnings.append(
                        f"{rec.target} is a closure: this function object is patched; other functions "
                        "made by the same enclosing function keep their old code"
                    )

    def data_entries(self) -> None:
        for drec in self.patch.data_entries:
            modname, qualname = split_target(drec.target, "target")
            self.modules.add(modname)
            source = _literal_source(drec.value)
            if source is None:
                names = [
                    k
                    for k, v in self.loaded.namespace.items()
                    if v is drec.value and not k.startswith("__")
                ]
                if not names:
                    raise LivepatchError(
                        "invalid-payload",
                        f"data for {drec.target}: the value must be a literal or an object bound to a name in the payload",
                    )
                source = names[0]
            expect = self.tree.data(modname, qualname) if self.tree else _live_data(drec.target)
            self.data.append({"target": drec.target, "value_source": source, "expect": expect})

    def added_names(self) -> None:
        """Names the new code reads that the payload defines and the target module lacks
        (and, for a function among them, the names it reads in turn)."""
        loaded, tree = self.loaded, self.tree
        taken = {d["target"] for d in self.data}
        pending = [(m, n) for m, names in self.needs.items() for n in sorted(names)]
        while pending:
            modname, name = pending.pop(0)
            target = f"{modname}:{name}"
            if target in taken or hasattr(builtins, name) or name not in loaded.namespace:
                continue
            # What the module defines itself: names other payloads added do not count.
            theirs = None if tree else process_engine().original_value(_import(modname), name)
            present = tree.has_name(modname, name) if tree else theirs is not ABSENT
            value = loaded.namespace[name]
            if present:
                if (
                    not tree
                    and theirs is not value
                    and unwrap_function(theirs) is not self.stands_in.get(id(value))
                ):
                    raise LivepatchError(
                        "exists",
                        f"the payload defines {name!r} but {modname} already has a different {name!r}; "
                        "the new code would see the module's. Rename it in the payload",
                    )
                continue
            taken.add(target)
            self.data.append({"target": target, "value_source": name, "expect": "absent"})
            if isinstance(value, types.FunctionType):
                pending += [(modname, n) for n in sorted(global_names(value.__code__))]

    def result(self) -> dict[str, Any]:
        patch, tree = self.patch, self.tree
        objects = {m: tree.object_id(m) if tree else _live_object(m) for m in sorted(self.modules)}
        return {
            "python": python_tag(),
            "patch": {
                "name": patch.name,
                "version": patch.version,
                "description": patch.description,
                "metadata": patch.metadata,
                "replace": patch.replace,
                "depends": patch.depends,
                "consistency": patch.consistency,
                "hooks": {k: v.__qualname__ for k, v in patch.hooks.items()},
                "states": [{"id": i, "version": v} for i, v in patch.states],
            },
            "funcs": self.funcs,
            "data": self.data,
            "objects": objects,
            "warnings": self.warnings,
        }


def _drop_stubs(stubs: _StubFinder) -> None:
    while stubs in sys.meta_path:
        sys.meta_path.remove(stubs)
    for name in stubs.made:
        if isinstance(sys.modules.get(name), _StubModule):
            del sys.modules[name]


def _explain(exc: LivepatchError, stubs: _StubFinder | None) -> LivepatchError:
    """The payload's code failed to run at build time: name what it needed."""
    if stubs is not None and stubs.made:
        return LivepatchError(
            exc.code,
            f"{exc.message}; the build does not import the target's code and its dependencies "
            f"(here {', '.join(stubs.tops())}): if the payload's code needs them when it is "
            "imported, check it where they are installed (`pylivepatch test`, or upload it to "
            "the service), or build with --python-env ENV, the service's interpreter or "
            "virtualenv",
        )
    m = re.search(r"ModuleNotFoundError: No module named '([^']+)'", exc.message)
    if m:
        return LivepatchError(
            exc.code,
            f"{exc.message}: the distribution that provides {m.group(1).split('.')[0]} is not "
            "installed in the environment of --python-env; install it there, or build without "
            "--python-env (the build then imports none of the target's dependencies)",
        )
    return exc


def _import(modname: str) -> types.ModuleType:
    try:
        return importlib.import_module(modname)
    except Exception as exc:
        raise LivepatchError(
            "not-found",
            f"cannot import target module {modname} to fingerprint it ({type(exc).__name__}: {exc}); "
            "run pack where the target imports, or use --against DIR",
        ) from None


def _live_function(target: str) -> str:
    _import(split_target(target, "target")[0])
    ft = resolve_function(target)
    return fingerprint(process_engine().original_code(ft.func))


def _live_data(target: str) -> str:
    _import(split_target(target, "target")[0])
    current = resolve_data(target).current()
    if current is ABSENT:
        return "absent"
    digest = literal_digest(current)
    return f"literal:{digest}" if digest else "any"


def _live_object(modname: str) -> str:
    module = _import(modname)
    engine = process_engine()
    bid, why = live_object_build_id(module, engine.original_code, is_added=engine.is_added)
    if bid is None:
        raise LivepatchError(
            "dependency-mismatch", f"cannot compute the build id of {modname}: {why}"
        )
    return bid


class _SourceTree:
    """Targets looked up in a source tree, compiled but never run."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self._cache: dict[str, tuple[types.CodeType, ast.Module]] = {}

    def _module(self, modname: str) -> tuple[types.CodeType, ast.Module]:
        if modname not in self._cache:
            base = self.root.joinpath(*modname.split("."))
            path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
            if not path.is_file():
                raise LivepatchError("not-found", f"module {modname} has no source in {self.root}")
            text = path.read_text("utf-8")
            self._cache[modname] = (
                compile(text, str(path), "exec", dont_inherit=True),
                ast.parse(text),
            )
        return self._cache[modname]

    def object_id(self, modname: str) -> str:
        return fingerprint(self._module(modname)[0])

    def function(self, modname: str, qualname: str) -> str:
        code, tree = self._module(modname)
        return fingerprint(source_function(code, tree, qualname, f"{modname}:{qualname}"))

    def _scope(self, modname: str, qualname: str) -> tuple[list[ast.stmt], str]:
        _, tree = self._module(modname)
        body: list[ast.stmt] = tree.body
        *path, last = qualname.split(".")
        for part in path:
            classes = [n for n in body if isinstance(n, ast.ClassDef) and n.name == part]
            if not classes:
                raise LivepatchError(
                    "not-found", f"{modname}:{qualname}: no class {part} in the source"
                )
            body = classes[-1].body
        return body, last

    def has_name(self, modname: str, name: str) -> bool:
        body, _ = self._scope(modname, name)
        return name in _bound_names(body)

    def data(self, modname: str, qualname: str) -> str:
        body, last = self._scope(modname, qualname)
        if last not in _bound_names(body):
            return "absent"
        for node in body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == last for t in node.targets
            ):
                from .literals import NOT_LITERAL, literal_value

                value = literal_value(node.value)
                digest = literal_digest(value) if value is not NOT_LITERAL else None
                return f"literal:{digest}" if digest else "any"
        return "any"


def _bound_names(body: list[ast.stmt]) -> set[str]:
    names: set[str] = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            inner: list[ast.stmt] = []
            for attr in ("body", "orelse", "finalbody"):
                inner += getattr(node, attr, [])
            for handler in getattr(node, "handlers", []):
                inner += handler.body
            names |= _bound_names(inner)
    return names


def _definitions(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements of a module or class body that define names, with those inside
    ``if``/``try`` blocks: the branch that runs where it is decided (``TYPE_CHECKING``,
    a version check for this interpreter), every branch in order otherwise."""
    from .typing_only import runtime_statements

    out: list[ast.stmt] = []
    for node in runtime_statements(body):
        if isinstance(node, ast.If):
            out += _definitions(node.body) + _definitions(node.orelse)
        elif isinstance(node, ast.Try):
            out += _definitions(node.body)
            for handler in node.handlers:
                out += _definitions(handler.body)
            out += _definitions(node.orelse) + _definitions(node.finalbody)
        else:
            out.append(node)
    return out


def source_function(
    code: types.CodeType, tree: ast.Module, qualname: str, what: str
) -> types.CodeType:
    """The code object of ``qualname`` in a compiled module, using the AST to tell a
    property's getter from its setter and an ``@overload`` stub from the real one."""
    parts = qualname.split(".")
    role = None
    if len(parts) > 2 and parts[-1] in ("getter", "setter", "deleter"):
        role, parts = parts[-1], parts[:-1]
    body, scope = _definitions(tree.body), code
    for part in parts[:-1]:
        nodes = [n for n in body if isinstance(n, ast.ClassDef) and n.name == part]
        inner = [
            c
            for c in scope.co_consts
            if isinstance(c, types.CodeType) and c.co_name == part and not c.co_flags & 1
        ]
        if not nodes or not inner:
            raise LivepatchError("not-found", f"{what}: no class {part} in the source")
        body, scope = _definitions(nodes[-1].body), inner[-1]
    name = parts[-1]
    candidates = [
        n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name
    ]

    def deco_role(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
        for d in node.decorator_list:
            if isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter", "getter"):
                return d.attr
            if (isinstance(d, ast.Name) and d.id == "overload") or (
                isinstance(d, ast.Attribute) and d.attr == "overload"
            ):
                return "overload"
        return None

    want = None if role in (None, "getter") else role
    chosen = [n for n in candidates if deco_role(n) in ((want,) if want else (None, "getter"))]
    if not chosen:
        raise LivepatchError("not-found", f"{what}: not defined in the source")
    node = chosen[-1]
    first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
    for c in scope.co_consts:
        if (
            isinstance(c, types.CodeType)
            and c.co_name == name
            and c.co_firstlineno in (first, node.lineno)
        ):
            return c
    raise LivepatchError("not-found", f"{what}: no code for it in the compiled source")


# --- several interpreters -------------------------------------------------------------


def find_interpreter(version: str) -> str | None:
    """An interpreter for ``3.X``: this one, ``python3.X`` on PATH, or pyenv's."""
    if version == python_tag():
        return sys.executable
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    pattern = os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}")
    for candidate in sorted(glob.glob(pattern), reverse=True):
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(f"python{version}")
    if found and os.sep + "shims" + os.sep not in found:  # a pyenv shim may point nowhere
        return found
    return None


def _analyze_in(
    version: str,
    sources: dict[str, str],
    against: str | None,
    search: list[str],
    exe: str | None = None,
    stub_imports: bool = False,
) -> dict[str, Any]:
    exe = exe or find_interpreter(version)
    if exe is None:
        raise LivepatchError(
            "not-found", f"no Python {version} interpreter found (looked on PATH and under pyenv)"
        )
    src_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    extra = [src_root, *search] + ([against] if against else [])
    env["PYTHONPATH"] = os.pathsep.join(
        extra + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    proc = subprocess.run(
        [exe, "-c", "from pylivepatch.builder.pack import _child; _child()"],
        input=json.dumps(
            {"sources": sources, "against": against, "search": search, "stub": stub_imports}
        ),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK):
            reply = json.loads(line[len(_MARK) :])
            if "error" in reply:
                raise LivepatchError(
                    reply["error"]["code"], f"under Python {version}: {reply['error']['message']}"
                )
            return dict(reply["result"])
    raise LivepatchError(
        "invalid-payload",
        f"analysis under Python {version} ({exe}) failed: {proc.stderr.strip()[-2000:]}",
    )


def _child() -> None:
    request = json.loads(sys.stdin.read())
    try:
        with collector.held():  # as in pack()
            reply: dict[str, Any] = {
                "result": analyze(
                    request["sources"],
                    request["against"],
                    request["search"],
                    request.get("stub", False),
                )
            }
    except LivepatchError as exc:
        reply = {"error": {"code": exc.code, "message": exc.message}}
    print(_MARK + json.dumps(reply), flush=True)


def pack(
    path: str | os.PathLike[str],
    *,
    against: str | None = None,
    pythons: list[str] | None = None,
    made_by: tuple[str, str] = ("packed-by", "pylivepatch pack"),
    interpreters: dict[str, str] | None = None,
    stub_imports: bool = False,
) -> Packed:
    """Pack a payload module (file or package directory) into archive bytes.
    ``made_by`` is the metadata entry that says what made it (``pylivepatch build``
    passes ``("built-by", "pylivepatch build")``); ``interpreters`` names the interpreter
    to use for a version (``build --installed``: the service's own).

    Automatic garbage collections are held off meanwhile (engine/collector.py): the
    analysis allocates in proportion to the payload, and collections over the growing
    heap made packing quadratic in it."""
    with collector.held():
        return _pack(path, against, pythons, made_by, interpreters, stub_imports)


def _pack(
    path: str | os.PathLike[str],
    against: str | None,
    pythons: list[str] | None,
    made_by: tuple[str, str],
    interpreters: dict[str, str] | None,
    stub_imports: bool,
) -> Packed:
    sources = read_sources(path)
    versions = pythons or [python_tag()]
    for v in versions:
        if not re.match(r"^3\.[0-9]{1,2}$", v) or int(v.split(".")[1]) < 10:
            raise LivepatchError(
                "invalid-payload", f"--python {v!r}: versions look like 3.11 (3.10 or newer)"
            )
    home = Path(path).resolve()
    search = [str(home.parent), os.getcwd()]
    root = os.path.abspath(against) if against else None
    results = []
    for version in dict.fromkeys(versions):
        exe = (interpreters or {}).get(version)
        if version == python_tag() and exe is None:
            results.append(analyze(sources, root, search, stub_imports))
        else:  # another version, or the service's own interpreter (its packages)
            results.append(_analyze_in(version, sources, root, search, exe, stub_imports))
    first = results[0]
    for other in results[1:]:
        if [f["target"] for f in other["funcs"]] != [f["target"] for f in first["funcs"]]:
            raise LivepatchError(
                "invalid-payload",
                f"the payload defines other targets under Python {other['python']}",
            )
    funcs = [
        {
            "target": f["target"],
            "new": f["new"],
            "expect": {r["python"]: r["funcs"][i]["expect"] for r in results},
        }
        for i, f in enumerate(first["funcs"])
    ]
    objects = {m: {r["python"]: r["objects"][m] for r in results} for m in first["objects"]}
    p = first["patch"]
    doc = {
        "format": 1,
        "name": p["name"],
        "version": p["version"],
        "description": p["description"],
        "depends": p["depends"],
        "objects": objects,
        "funcs": funcs,
        "data": first["data"],
        "hooks": p["hooks"],
        "states": p["states"],
        "replace": p["replace"],
        "consistency": p["consistency"],
        "metadata": {made_by[0]: made_by[1], **p["metadata"]},
        "python": sorted(
            {r["python"] for r in results}, key=lambda v: tuple(map(int, v.split(".")))
        ),
    }
    files = {k: v.encode() for k, v in sources.items()}
    manifest = archive.seal(doc, files)
    return Packed(
        archive.write(manifest, files),
        manifest.to_json(),
        [w for r in results for w in r["warnings"]],
    )
