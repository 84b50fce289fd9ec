"""Turning an uploaded payload into ready-to-swap code, without changing the process.

The payload's modules run as a private package (``_pylivepatch_payload_…``). Each
replacement function is then compiled *again* from its source, inside a synthetic
scope that mirrors the target: the target's classes (so zero-argument ``super()``
gets its ``__class__`` cell and ``__private`` names are mangled as in the target) and
the target's free variables (so a closure variable is matched by *name*). The code
object that comes out is what ``__code__`` will be set to; it runs with the target
module's globals because it is installed into the target's own function object.

When the free variables of the new code differ from the target's (a captured
variable was added or dropped, ``super()`` appeared), ``__code__`` cannot take it: the
target gets a *trampoline* instead, a tiny function of the same signature and the same
free variables whose only job is to call the real replacement. It costs one extra
Python call per call.

Flags that code gets at run time, not from the compiler (``RUNTIME_FLAGS`` of
:mod:`..payload.fingerprint`), are carried over: a generator function decorated with
``types.coroutine`` runs code flagged CO_ITERABLE_COROUTINE, which ``await`` and
``yield from`` in coroutines need; recompiled from the payload's source, its
replacement would lack the flag. So new code (and a trampoline or dispatcher) gets the
flag when the code it replaces has it, or when the payload's own function has it (the
payload applied the decorator, which is dropped here). A revert puts back the original
code object, with exactly the flags it had.

The modules the payload's code imports while it runs (``import django.utils.log`` at
the top of a payload module) are noted by an :class:`ImportRecord`: when the payload
is discarded (its upload fails, a ``load`` fails to apply it, it is unloaded) they are
taken out again — the ``sys.modules`` entries, the attribute each one set on its parent
package, and the import hooks their code put on ``sys.meta_path``/``sys.path_hooks`` —
so a refused action leaves the process's modules as they were (docs/design.md, "What a
failed action leaves behind").
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import copy
import encodings.cp437  # noqa: F401 - zipfile decodes payload file names with it: imported
import functools
import importlib.machinery  # with the engine, never during an action (see ImportRecord)
import importlib.util
import linecache
import sys
import textwrap
import threading
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import LivepatchError
from ..payload import authoring, static  # noqa: F401 - every payload's code uses authoring:
from ..payload.archive import Payload  # imported with the engine, not by a payload
from ..payload.fingerprint import (
    CO_ASYNC_GENERATOR,
    CO_COROUTINE,
    CO_GENERATOR,
    CO_VARARGS,
    CO_VARKEYWORDS,
    RUNTIME_FLAGS,
    global_names,
    nested_code,
    unwrap_function,
)
from ..payload.manifest import DataEntry, FuncEntry
from .resolve import ABSENT, DataTarget, FunctionTarget

_PLACEHOLDER = "__pylivepatch_trampoline_target__"
_FIRST_ANEXT = "__pylivepatch_first_anext__"  # becomes :func:`_first_anext`
_SCOPE = "__pylivepatch_scope__"
_TYPE_PARAMS: dict[str, Any] = {"type_params": []} if sys.version_info >= (3, 12) else {}


@dataclass
class Variant:
    """What one payload installs into one function: code, defaults and, for a
    trampoline, the function it calls."""

    code: types.CodeType
    defaults: tuple[Any, ...] | None
    kwdefaults: dict[str, Any] | None
    impl: types.FunctionType | None = None

    def codes(self) -> Iterator[types.CodeType]:
        yield from nested_code(self.code)
        if self.impl is not None:
            yield from nested_code(self.impl.__code__)


@dataclass
class LoadedPackage:
    """The payload's modules, executed in this process."""

    package: str
    namespace: dict[str, Any]
    modules: list[str]
    filenames: dict[str, str]  # archive path -> code filename
    trees: dict[str, ast.Module] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)  # code filename -> source
    _defs: dict[str, dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]]] = field(
        default_factory=dict
    )

    def tree(self, filename: str) -> ast.Module | None:
        """The parsed source (parsed again after ``forget_sources``)."""
        if filename not in self.trees and filename in self.texts:
            self.trees[filename] = ast.parse(self.texts[filename], filename)
        return self.trees.get(filename)

    def defs(self, filename: str) -> dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]]:
        """Function definitions of one payload file by name (indexed once)."""
        if filename not in self._defs:
            index: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {}
            tree = self.tree(filename)
            for node in ast.walk(tree) if tree is not None else ():
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    index.setdefault(node.name, []).append(node)
            self._defs[filename] = index
        return self._defs[filename]

    def forget_sources(self) -> None:
        """Drop the parsed sources once the replacements are compiled."""
        self.trees.clear()
        self._defs.clear()

    imports: ImportRecord | None = None  # what running the payload's code imported

    def noting_imports(self) -> contextlib.AbstractContextManager[object]:
        """While the payload's code runs again (its hooks): its imports are noted too."""
        return self.imports if self.imports is not None else contextlib.nullcontext()

    def discard(self) -> None:
        """Forget the payload's modules, and take out the modules its code imported
        (:meth:`ImportRecord.undo`): a payload is discarded when its upload fails, when
        a ``load`` fails to apply it, and at ``unload`` (it is not applied then)."""
        for name in self.modules:
            sys.modules.pop(name, None)
        for filename in self.filenames.values():
            linecache.cache.pop(filename, None)
        if self.imports is not None:
            self.imports.undo()
            self.imports = None


def _defined_in(obj: object) -> str | None:
    """The module a function, a class or an object's class was defined in (statically)."""
    if static.is_function(obj):
        return obj.__module__
    return static.class_module(obj if static.is_class(obj) else type(obj))


def _python_module(module: types.ModuleType) -> bool:
    """Made from a ``.py``/``.pyc`` file, or a namespace package (read statically)."""
    spec = static.module_dict(module).get("__spec__")
    if spec is None:
        return False
    origin = static.static_attr(spec, "origin", None)
    if origin is None or (type(origin) is str and origin == "namespace"):
        return static.static_attr(spec, "submodule_search_locations", None) is not None
    return type(origin) is str and origin.endswith((".py", ".pyc"))


class ImportRecord:
    """A meta-path finder that finds nothing: it notes the modules one thread imports
    while it runs a payload's code, and what their parent packages held under their
    names, so that :meth:`undo` can take them out again."""

    def __init__(self, own: str) -> None:
        self.thread = threading.get_ident()
        self.depth = 0
        self.own = own  # the payload's private package: discarded on its own
        self.before = frozenset(sys.modules)
        self.cached = frozenset(sys.path_importer_cache)
        self.names: list[str] = []
        self.parents: dict[str, object] = {}  # name -> what its parent held under it

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if (
            threading.get_ident() == self.thread
            and fullname not in sys.modules
            and fullname not in self.parents
            and not (fullname == self.own or fullname.startswith(self.own + "."))
        ):
            self.names.append(fullname)
            parent, _, child = fullname.rpartition(".")
            holder = sys.modules.get(parent) if parent else None
            self.parents[fullname] = (
                static.module_dict(holder).get(child, static.MISSING)
                if static.is_module(holder)
                else static.MISSING
            )
        return None

    def __enter__(self) -> ImportRecord:
        """Note what this thread imports until the matching exit (nested: the outer one)."""
        self.depth += 1
        if self.depth == 1:
            self.thread = threading.get_ident()
            sys.meta_path.insert(0, self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.depth:
            return
        for i in range(len(sys.meta_path) - 1, -1, -1):
            if sys.meta_path[i] is self:
                del sys.meta_path[i]

    def undo(self) -> list[str]:
        """Take out the modules noted (still the ones imported then), deepest first:
        their ``sys.modules`` entries, what they set on their parent packages (the old
        value is put back), and the import hooks defined in them (on ``sys.meta_path``,
        ``sys.path_hooks``, ``sys.path_importer_cache``). A module that a module
        kept holds in its namespace — itself, or a function or class of it — is kept,
        with its parent packages; so is a module not made from Python source or bytecode
        (an extension module may refuse to be loaded twice in a process, and a builtin
        or frozen one is the interpreter's). Returns the names taken out."""
        noted = [
            n for n in self.names if n not in self.before and static.is_module(sys.modules.get(n))
        ]
        doomed = set(noted)
        kept = {n for n in doomed if not _python_module(sys.modules[n])}
        while True:  # what a kept module holds is kept too, until nothing more is
            for name in kept:
                while name:
                    doomed.discard(name)
                    name = name.rpartition(".")[0]
            kept = self._referenced(doomed)
            if not kept:
                break
        removed: list[str] = []
        for name in sorted(doomed, key=lambda n: -n.count(".")):
            module = sys.modules.pop(name)
            removed.append(name)
            parent, _, child = name.rpartition(".")
            holder = sys.modules.get(parent) if parent else None
            if not static.is_module(holder) or parent in doomed:
                continue
            ns = static.module_dict(holder)
            if ns.get(child) is module:
                prior = self.parents.get(name, static.MISSING)
                if prior is static.MISSING:
                    del ns[child]
                else:
                    ns[child] = prior
        for hooks in (sys.meta_path, sys.path_hooks):
            for i in range(len(hooks) - 1, -1, -1):
                if _defined_in(hooks[i]) in doomed:
                    del hooks[i]
        # The finders the imports made for directories searched for the first time: a
        # cache (an entry taken out is made again at the next import that needs it).
        cache = sys.path_importer_cache
        for entry, finder in list(cache.items()):
            new = removed and entry not in self.cached
            if (new or _defined_in(finder) in doomed) and cache.get(entry) is finder:
                del cache[entry]
        return removed

    @staticmethod
    def _referenced(doomed: set[str]) -> set[str]:
        """The names in ``doomed`` that the process took up: a module outside it holds
        it in its namespace (the module itself — other than as the attribute the import
        set on its parent — or a function or class defined in it), or a payload of the
        engine waited for it and patched it at its import (its loader is the engine's)."""
        by_id = {id(sys.modules[n]): n for n in doomed}
        found: set[str] = set()
        for name in doomed:
            spec = static.module_dict(sys.modules[name]).get("__spec__")
            loader = static.static_attr(spec, "loader", None) if spec is not None else None
            if static.class_module(type(loader)) == "pylivepatch.engine.late":
                found.add(name)
        for name, module in list(sys.modules.items()):
            if name in doomed or not static.is_module(module):
                continue
            for key, value in list(static.module_dict(module).items()):
                held = by_id.get(id(value))
                if held is not None:
                    if held != f"{name}.{key}":  # not just the attribute the import set
                        found.add(held)
                elif static.is_function(value):
                    if value.__module__ in doomed:
                        found.add(value.__module__)
                elif static.is_class(value):
                    where = static.class_module(value)
                    if where is not None and where in doomed:
                        found.add(where)
        return found


class _PayloadImporter:
    """A meta-path finder for the payload's own package, present only while it runs."""

    def __init__(self, modules: dict[str, tuple[str, str, bool]]) -> None:
        self.modules = modules

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules:
            return None
        filename, _, is_pkg = self.modules[fullname]
        return importlib.util.spec_from_loader(fullname, self, origin=filename, is_package=is_pkg)  # type: ignore[arg-type]

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        filename, source, _ = self.modules[module.__name__]
        module.__file__ = filename
        code = compile(source, filename, "exec", dont_inherit=True)
        exec(code, module.__dict__)


def _package_name(payload: Payload) -> str:
    safe = "".join(c if c.isalnum() else "_" for c in payload.manifest.name)
    return f"_pylivepatch_payload_{safe}_{payload.manifest.build_id[:12]}"


def load_package(payload: Payload) -> LoadedPackage:
    """Run the payload's modules; errors become ``invalid-payload``."""
    man = payload.manifest
    return load_sources(man.name, _package_name(payload), payload.sources, man.build_id[:12])


def load_sources(name: str, package: str, sources: dict[str, str], tag: str) -> LoadedPackage:
    """Run ``sources`` (archive paths under ``payload/``) as the private package ``package``."""
    modules: dict[str, tuple[str, str, bool]] = {}
    filenames: dict[str, str] = {}
    trees: dict[str, ast.Module] = {}
    for path, source in sources.items():
        rel = path[len("payload/") : -len(".py")].split("/")
        is_pkg = rel[-1] == "__init__"
        if is_pkg:
            rel = rel[:-1]
        modname = ".".join([package, *rel])
        filename = f"<pylivepatch {name} {tag}>/{path}"
        try:
            trees[filename] = ast.parse(source, filename)
        except SyntaxError as exc:
            raise LivepatchError(
                "invalid-payload",
                f"payload {name}: syntax error in {path} line {exc.lineno}: {exc.msg}",
            ) from None
        modules[modname] = (filename, source, is_pkg)
        filenames[path] = filename
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    texts = {filename: source for filename, source, _ in modules.values()}
    loaded = LoadedPackage(package, {}, sorted(modules), filenames, trees, texts)
    importer = _PayloadImporter(modules)
    sys.meta_path.insert(0, importer)
    record = ImportRecord(package)
    loaded.imports = record
    try:
        with record:
            module = importlib.import_module(package)
    except BaseException as exc:
        loaded.modules = sorted(
            n for n in sys.modules if n == package or n.startswith(package + ".")
        )
        loaded.discard()
        if not isinstance(exc, Exception):
            raise
        raise LivepatchError(
            "invalid-payload",
            f"payload {name}: importing its code raised {type(exc).__name__}: {exc}",
        ) from None
    finally:
        sys.meta_path.remove(importer)
    loaded.modules = sorted(n for n in sys.modules if n == package or n.startswith(package + "."))
    loaded.namespace = module.__dict__
    return loaded


def lookup(loaded: LoadedPackage, symbol: str, what: str) -> Any:
    value: Any = loaded.namespace
    for part in symbol.split("."):
        space = value if type(value) is dict else (static.instance_dict(value) or {})
        if part not in space:
            raise LivepatchError("invalid-payload", f"{what}: the payload defines no {symbol!r}")
        value = space[part]
    return value


# --- replacement functions ---------------------------------------------------------


def _def_node(
    loaded: LoadedPackage, func: types.FunctionType, what: str
) -> ast.FunctionDef | ast.AsyncFunctionDef:
    code = func.__code__
    for node in loaded.defs(code.co_filename).get(code.co_name, ()):
        first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
        if code.co_firstlineno in (first, node.lineno):
            return node
    raise LivepatchError(
        "invalid-payload",
        f"{what}: cannot find the source of {func.__qualname__} in the payload",
    )


def _future_imports(tree: ast.Module | None) -> list[ast.stmt]:
    """``from __future__`` imports come first in a module: stop at the first other statement."""
    found: list[ast.stmt] = []
    for node in tree.body if tree is not None else ():
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            found.append(node)
        elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            break  # past the docstring and the future imports
    return found


def _extract(code: types.CodeType, name: str) -> types.CodeType | None:
    for c in nested_code(code):
        if c.co_name == name and c.co_flags & 0x1 and c is not code:
            return c
    return None


def _in_scope(
    body: list[ast.stmt], classes: Sequence[type], freevars: Sequence[str]
) -> list[ast.stmt]:
    """Wrap ``body`` in the target's classes and a function that owns its free variables."""
    for cls in reversed(classes):
        body = [
            ast.ClassDef(
                name=static.class_name(cls),
                bases=[],
                keywords=[],
                body=body,
                decorator_list=[],
                **_TYPE_PARAMS,
            )
        ]
    if freevars:
        assign = ast.Assign(
            targets=[ast.Name(n, ast.Store()) for n in freevars], value=ast.Constant(None)
        )
        body = [
            ast.FunctionDef(
                name=_SCOPE,
                args=ast.arguments(
                    posonlyargs=[],
                    args=[],
                    vararg=None,
                    kwonlyargs=[],
                    kw_defaults=[],
                    kwarg=None,
                    defaults=[],
                ),
                body=[assign, *body],
                decorator_list=[],
                returns=None,
                **_TYPE_PARAMS,
            )
        ]
    return body


def _rename(code: types.CodeType, like: types.CodeType) -> types.CodeType:
    if sys.version_info >= (3, 11):
        return code.replace(co_name=like.co_name, co_qualname=like.co_qualname)
    return code.replace(co_name=like.co_name)


def carry_runtime_flags(code: types.CodeType, *sources: types.CodeType) -> types.CodeType:
    """``code`` with the run-time flags any of ``sources`` has, if it can take them: only
    a plain generator's code can be an iterable coroutine."""
    if code.co_flags & (CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR) != CO_GENERATOR:
        return code
    flags = code.co_flags
    for source in sources:
        flags |= source.co_flags & RUNTIME_FLAGS
    return code if flags == code.co_flags else code.replace(co_flags=flags)


def compile_replacement(loaded: LoadedPackage, entry: FuncEntry, ft: FunctionTarget) -> Variant:
    """Compile ``entry.new`` for the context of ``ft`` (see module docstring)."""
    what = f"{entry.target}"
    new = lookup(loaded, entry.new, what)
    if static.is_a(new, (staticmethod, classmethod)):
        new = static.func_of(new)
    if not static.is_function(new):
        raise LivepatchError(
            "invalid-payload",
            f"{what}: replacement {entry.new!r} is a {static.class_name(type(new))}, not a function",
        )
    node = copy.copy(_def_node(loaded, new, what))  # shallow: only decorator_list changes
    node.decorator_list = []
    tree = loaded.tree(new.__code__.co_filename)
    original = ft.func.__code__
    target_free = tuple(n for n in _freevars(ft) if n != "__class__")
    module = ast.Module(
        body=_future_imports(tree) + _in_scope([node], ft.classes, target_free), type_ignores=[]
    )
    ast.fix_missing_locations(module)
    try:
        top = compile(module, new.__code__.co_filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise LivepatchError(
            "invalid-payload",
            f"{what}: replacement does not compile: {exc.msg} (line {exc.lineno})",
        ) from None
    code = _extract(top, node.name)
    if code is None:  # pragma: no cover - the compiler always emits it
        raise LivepatchError(
            "invalid-payload", f"{what}: replacement code not found after compiling"
        )
    code = carry_runtime_flags(_rename(code, original), original, new.__code__)
    defaults, kwdefaults = new.__defaults__, new.__kwdefaults__
    if code.co_freevars == _freevars(ft):
        return Variant(code, defaults, kwdefaults)
    return _trampoline(ft, code, defaults, kwdefaults)


def _freevars(ft: FunctionTarget) -> tuple[str, ...]:
    # The closure never changes, so the original code's names are authoritative even
    # while the function runs a trampoline (which keeps the same names).
    return ft.func.__code__.co_freevars


def _trampoline(
    ft: FunctionTarget,
    code: types.CodeType,
    defaults: tuple[Any, ...] | None,
    kwdefaults: dict[str, Any] | None,
) -> Variant:
    target_free = _freevars(ft)
    cells = dict(zip(target_free, ft.func.__closure__ or (), strict=True))
    closure = []
    for name in code.co_freevars:
        if name in cells:
            closure.append(cells[name])  # the target's own cell: writes stay shared
        elif name == "__class__" and ft.klass is not None:
            closure.append(types.CellType(ft.klass))
        else:
            raise LivepatchError(
                "invalid-payload",
                f"{ft.target}: the replacement uses free variable {name!r}, which the target function has no binding for",
            )
    impl = types.FunctionType(code, ft.func.__globals__, code.co_name, defaults, tuple(closure))
    impl.__kwdefaults__ = kwdefaults
    impl.__qualname__ = ft.func.__qualname__
    impl.__module__ = ft.func.__module__
    return Variant(trampoline_code(ft, code, impl), defaults, kwdefaults, impl)


# An async generator has no ``yield from``: its trampoline (and a transition's
# dispatcher) drives the real one by hand, passing on what is sent, thrown and closed.
_ASYNC_DELEGATION = """\
__lp_agen = CALL
try:
    __lp_item = await FIRST(__lp_agen)
except StopAsyncIteration:
    return
while True:
    try:
        __lp_sent = yield __lp_item
    except GeneratorExit:
        await __lp_agen.aclose()
        raise
    except BaseException as __lp_exc:
        try:
            __lp_item = await __lp_agen.athrow(__lp_exc)
        except StopAsyncIteration:
            return
    else:
        try:
            __lp_item = await __lp_agen.asend(__lp_sent)
        except StopAsyncIteration:
            return"""


def _first_anext(agen: Any) -> Any:
    """The first ``__anext__`` of the async generator a trampoline drives, with the
    event loop's async-generator hooks off: the loop then finalizes and closes only the
    trampoline, which closes the one it drives itself (both closed at once by asyncio's
    shutdown, the inner one's ``aclose`` would find it already running)."""
    hooks = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(None, None)
    try:
        return agen.__anext__()
    finally:
        sys.set_asyncgen_hooks(*hooks)


@functools.lru_cache(maxsize=1024)
def _compiled(src: str, filename: str) -> types.CodeType:
    """A trampoline's source compiled, once per source and name: code objects are
    immutable, and a compile is most of what preparing a transition costs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "'str' object is not callable": the placeholder
        return compile(src, filename, "exec", dont_inherit=True)


def trampoline_code(
    ft: FunctionTarget, code: types.CodeType, impl: types.FunctionType
) -> types.CodeType:
    """A code object with ``code``'s signature and the target's free variables that
    calls ``impl``."""
    flags = code.co_flags
    names = code.co_varnames
    n_pos, n_posonly, n_kw = code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount
    pos, kwonly = list(names[:n_pos]), list(names[n_pos : n_pos + n_kw])
    i = n_pos + n_kw
    star = names[i] if flags & CO_VARARGS else None
    i += 1 if star else 0
    dstar = names[i] if flags & CO_VARKEYWORDS else None
    freevars = _freevars(ft)
    clash = set(freevars) & set(pos + kwonly + [star, dstar])
    if clash:
        raise LivepatchError(
            "unsupported-target",
            f"{ft.target}: parameter {sorted(clash)[0]!r} has the name of a free variable; cannot build a trampoline",
        )
    params = pos[:n_posonly] + (["/"] if n_posonly else []) + pos[n_posonly:]
    if star:
        params.append("*" + star)
    elif kwonly:
        params.append("*")
    params += kwonly
    if dstar:
        params.append("**" + dstar)
    args = (
        pos
        + (["*" + star] if star else [])
        + [f"{k}={k}" for k in kwonly]
        + (["**" + dstar] if dstar else [])
    )
    call = f"{_PLACEHOLDER!r}({', '.join(args)})"
    if flags & CO_ASYNC_GENERATOR:
        head, ret = (
            "async def",
            _ASYNC_DELEGATION.replace("CALL", call).replace("FIRST", repr(_FIRST_ANEXT)),
        )
    elif flags & CO_COROUTINE:
        head, ret = "async def", f"return await {call}"
    elif flags & CO_GENERATOR:
        head, ret = "def", f"return (yield from {call})"
    else:
        head, ret = "def", f"return {call}"
    touch = f"    if False:\n        {'; '.join(freevars)}\n" if freevars else ""
    inner = f"{head} {code.co_name}({', '.join(params)}):\n{touch}{textwrap.indent(ret, '    ')}\n"
    src = (
        f"def {_SCOPE}():\n    {' = '.join([*freevars, 'None'])}\n"
        + "".join("    " + line + "\n" for line in inner.splitlines())
        if freevars
        else inner
    )
    tramp = _extract(_compiled(src, f"<pylivepatch trampoline {ft.target}>"), code.co_name)
    assert tramp is not None and tramp.co_freevars == freevars, (
        tramp and tramp.co_freevars,
        freevars,
    )
    stand_ins = {_PLACEHOLDER: impl, _FIRST_ANEXT: _first_anext}
    consts = tuple(
        stand_ins[c] if isinstance(c, str) and c in stand_ins else c for c in tramp.co_consts
    )
    # The flags of what it stands for: the replacement's, or for a transition's
    # dispatcher (whose ``code`` is a bare shape) the flags of the code it leaves.
    tramp = carry_runtime_flags(tramp, code, ft.func.__code__)
    return _rename(tramp.replace(co_consts=consts), ft.func.__code__)


# --- names the new code needs --------------------------------------------------------


def needed_globals(code: types.CodeType) -> set[str]:
    return {n for n in global_names(code) if n not in static.module_dict(builtins)}


def check_globals(
    what: str,
    codes: Sequence[types.CodeType],
    module: types.ModuleType,
    provided: set[str],
    payload_ns: dict[str, Any],
    stands_in: dict[int, types.FunctionType],
    stand_in: Callable[[object], types.FunctionType | None] = lambda obj: None,
) -> None:
    """Every global the new code reads must exist in the target or be added by the
    payload; a payload name that differs from the target's is a clash, unless the
    payload's object is the replacement of the target's (``stands_in``: id of a
    replacement -> the function it patches, for the functions planned so far;
    ``stand_in``: the same for any other function of the payload, asked on a clash
    only): the new code then calls the patched function, as the payload's author
    meant."""
    target_ns = static.module_dict(module)
    for code in codes:
        for name in sorted(needed_globals(code)):
            if name in provided:
                continue
            if name in target_ns:
                mine, theirs = payload_ns.get(name, target_ns[name]), target_ns[name]
                if mine is theirs or (
                    id(mine) in stands_in and unwrap_function(theirs) is stands_in[id(mine)]
                ):
                    continue
                replaced = stand_in(mine) if name in payload_ns else None
                if replaced is not None and unwrap_function(theirs) is replaced:
                    continue
                if name in payload_ns:
                    raise LivepatchError(
                        "exists",
                        f"{what}: the payload defines {name!r} but module {static.module_name(module)} already has a different "
                        f"{name!r}; the new code would see the module's. Rename it in the payload",
                    )
                continue
            raise LivepatchError(
                "invalid-payload",
                f"{what}: the new code reads global {name!r}, which module {static.module_name(module)} lacks and the payload "
                "does not add (pack adds names the payload defines; define or import it in the payload)",
            )


# --- data ------------------------------------------------------------------------------


def literal_digest(value: object) -> str | None:
    """sha256 of a literal value (numbers, strings, bytes, tuples/frozensets of them)."""
    import hashlib

    from ..payload.fingerprint import _const

    # The value may be the program's (a data entry's current value): only its type is
    # looked at, and only exact literal types count (an enum member or another subclass
    # of int or str would need its own __repr__, the program's code).
    def is_literal(v: object) -> bool:
        if v is None or v is Ellipsis or type(v) in (bool, int, float, complex, str, bytes):
            return True
        items: Iterator[object]
        if static.is_a(v, tuple):
            items = tuple.__iter__(v)  # type: ignore[arg-type]
        elif static.is_a(v, frozenset):
            items = frozenset.__iter__(v)  # type: ignore[arg-type]
        else:
            return False
        return all(is_literal(x) for x in items)

    if not is_literal(value):
        return None
    out: list[bytes] = []
    _const(value, out)
    return hashlib.sha256(b"".join(out)).hexdigest()


def data_value(loaded: LoadedPackage, entry: DataEntry, dt: DataTarget) -> Any:
    """Evaluate ``value_source`` in the payload; payload functions move to the target's globals."""
    try:
        value = eval(
            compile(entry.value_source, f"<{entry.target} value>", "eval", dont_inherit=True),
            loaded.namespace,
        )
    except Exception as exc:
        raise LivepatchError(
            "invalid-payload",
            f"{entry.target}: value_source {entry.value_source!r} raised {type(exc).__name__}: {exc}",
        ) from None
    return move_to_target(value, loaded.package, dt)


def move_to_target(value: Any, package: str, dt: DataTarget) -> Any:
    """A function, descriptor or class the payload defines, made to run as if the
    target module defined it: functions get the module's globals (and, added to a
    class, that class as the ``__class__`` of zero-argument ``super()``); a class the
    payload defines has its methods moved the same way (the class object is the
    payload's own, so changing it changes nothing of the process)."""
    holder: type | None = dt.holder if static.is_class(dt.holder) else None

    def ours(obj: Any) -> bool:
        # The value may be the program's (a payload may name an object of the target):
        # its module is read statically, never through a __getattr__ or a property.
        module: str | None
        if static.is_function(obj):
            module = obj.__module__
        elif static.is_class(obj):
            module = static.class_module(obj)
        else:
            return False
        return str(module or "").startswith(package)

    def move(func: types.FunctionType, cls: type | None) -> types.FunctionType:
        closure = func.__closure__
        if closure and cls is not None and "__class__" in func.__code__.co_freevars:
            cells = list(closure)
            cells[func.__code__.co_freevars.index("__class__")] = types.CellType(cls)
            closure = tuple(cells)
        moved = types.FunctionType(
            func.__code__, dt.module.__dict__, func.__name__, func.__defaults__, closure
        )
        moved.__kwdefaults__ = func.__kwdefaults__
        moved.__qualname__ = func.__qualname__
        moved.__doc__ = func.__doc__
        moved.__dict__.update(func.__dict__)
        moved.__module__ = dt.module.__name__
        if cls is not None:  # named as the method of the class it joins
            moved.__qualname__ = (
                f"{static.class_qualname(cls)}.{dt.name if cls is holder else func.__name__}"
            )
        return moved

    def convert(obj: Any, cls: type | None) -> Any:
        if static.is_function(obj) and ours(obj):
            return move(obj, cls)
        if static.is_a(obj, (staticmethod, classmethod)):
            func = static.func_of(obj)
            if not static.is_function(func) or not ours(func):
                return obj
            kind = staticmethod if static.is_a(obj, staticmethod) else classmethod
            return kind(convert(func, cls))
        if static.is_a(obj, property):
            parts = [static.property_part(obj, p) for p in ("fget", "fset", "fdel")]
            if any(ours(f) for f in parts):
                return property(  # type: ignore[call-arg]
                    *(convert(f, cls) if f is not None else None for f in parts),
                    obj.__doc__,
                )
        return obj

    if static.is_class(value) and ours(value):
        for key, member in list(static.class_dict(value).items()):
            converted = convert(member, value)
            if converted is not member:
                setattr(value, key, converted)
        value.__module__ = dt.module.__name__
        return value
    return convert(value, holder)


def check_data_expectation(entry: DataEntry, dt: DataTarget, value: Any, current: Any) -> None:
    """Check a data entry against ``current``: the attribute's original value (what it was
    before any payload), like function expectations."""
    if entry.expect == "any":
        return
    if entry.expect == "absent":
        if current is not ABSENT and current is not value:
            raise LivepatchError(
                "exists",
                f"{entry.target}: the payload adds {dt.name!r} but it already exists there as a different "
                f"{static.class_name(type(current))}",
            )
        return
    digest = literal_digest(current) if current is not ABSENT else None
    if digest != entry.expect[len("literal:") :]:
        shown = (
            "absent"
            if current is ABSENT
            else f"{static.class_name(type(current))} {digest[:12] if digest else '(not a literal)'}"
        )
        raise LivepatchError(
            "expectation-failed",
            f"{entry.target}: expected the value {entry.expect[8:20]}, found {shown}",
        )
