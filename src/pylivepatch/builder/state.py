"""Instance state across a class hierarchy: what objects made before the patch hold.

A changed method that reads ``self.X`` runs on objects the OLD code made. Whatever
sets ``X`` when an object is made — every ``__init__`` on the class's MRO, with the
arguments a subclass passes up to a base ``__init__`` — is compared, OLD and NEW:

- ``X`` is new (no ``__init__`` of the OLD hierarchy sets it, no class body binds it):
  objects made before the patch lack it. If NEW sets it unconditionally to an immutable
  literal, the payload gives the class that value as a class-level default (objects
  made before the patch read it; objects made after set their own), else refused.
- ``X`` is set up differently (the assignment changed, a parameter default that feeds
  it changed, a subclass now passes ``X=...`` up to a base ``__init__``, or other
  arguments reach a base ``__init__`` that stores it): refused, naming the attribute and
  the class, since objects made before the patch hold what the OLD construction gave.

Bases are followed through the two trees (same module, ``from ... import``); a base
outside the trees (another distribution, the standard library) is the same object in
both versions and sets nothing the builder can compare.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass

from .changes import Change, ModuleDiff, Refusal
from .compare import TreeIndex
from .literals import NOT_LITERAL, literal_value
from .syntax import absolute, dump, is_self_attr, scope_entries, self_assigned, self_reads
from .typing_only import runtime_statements

_MAX_DEPTH = 30


@dataclass(frozen=True)
class Cls:
    module: str
    node: ast.ClassDef

    @property
    def key(self) -> tuple[str, str]:
        return self.module, self.node.name

    @property
    def init(self) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        found = None
        for n in runtime_statements(self.node.body):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "__init__":
                found = n
        return found


def top_classes(body: list[ast.stmt]) -> dict[str, ast.ClassDef]:
    """Classes a module defines at its top level, also under ``if``/``try`` (the last
    definition of a name wins, as at run time)."""
    out: dict[str, ast.ClassDef] = {}
    for n in _flat(body):
        if isinstance(n, ast.ClassDef):
            out[n.name] = n
    return out


def _flat(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    for n in runtime_statements(body):
        if isinstance(n, ast.If):
            yield from _flat(n.body)
            yield from _flat(n.orelse)
        elif isinstance(n, ast.Try):
            yield from _flat(n.body)
            for h in n.handlers:
                yield from _flat(h.body)
            yield from _flat(n.orelse)
            yield from _flat(n.finalbody)
        else:
            yield n


class Hierarchy:
    """Classes of one side (``old``/``new``) of the trees, with their in-tree bases."""

    def __init__(self, index: TreeIndex, side: str) -> None:
        self.index, self.side = index, side

    def tree(self, module: str) -> ast.Module | None:
        get = getattr(self.index, "tree", None)
        return get(self.side, module) if get is not None else None

    def is_package(self, module: str) -> bool:
        mods = getattr(self.index, "mods", {}).get(self.side, {})
        return str(mods.get(module, "")).endswith("__init__.py")

    def resolve(self, module: str, expr: ast.expr, depth: int = 0) -> Cls | None | bool:
        """The class ``expr`` names in ``module``; None for ``object``; False if it is
        not a class of the trees (external, or not known statically)."""
        if depth > _MAX_DEPTH:
            return False
        tree = self.tree(module)
        if tree is None:
            return False
        if isinstance(expr, ast.Name):
            if expr.id == "object":
                return None
            classes = top_classes(tree.body)
            if expr.id in classes:
                return Cls(module, classes[expr.id])
            for n in _flat(tree.body):
                if isinstance(n, ast.ImportFrom):
                    for a in n.names:
                        if (a.asname or a.name) == expr.id:
                            source = absolute(n, module, self.is_package(module))
                            if self.index.knows(f"{source}.{a.name}"):
                                return False  # a module, not a class
                            if not self.index.knows(source):
                                return False
                            return self.resolve(source, ast.Name(a.name), depth + 1)
            return False
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
            # `mod.Base` where `from . import mod` or `import pkg.mod as mod`
            for n in _flat(tree.body):
                names = n.names if isinstance(n, (ast.Import, ast.ImportFrom)) else []
                for a in names:
                    if (a.asname or a.name) != expr.value.id:
                        continue
                    if isinstance(n, ast.ImportFrom):
                        target = f"{absolute(n, module, self.is_package(module))}.{a.name}"
                    else:
                        target = a.name
                    if self.index.knows(target):
                        return self.resolve(target, ast.Name(expr.attr), depth + 1)
            return False
        return False

    def chain(self, cls: Cls) -> tuple[list[Cls], bool]:
        """The class and its in-tree bases, depth first (the MRO for the usual single
        and mixin hierarchies); and whether some base is not a class of the trees."""
        out: list[Cls] = []
        seen: set[tuple[str, str]] = set()
        external = False

        def visit(c: Cls, depth: int) -> None:
            nonlocal external
            if c.key in seen or depth > _MAX_DEPTH:
                return
            seen.add(c.key)
            out.append(c)
            for b in c.node.bases:
                found = self.resolve(c.module, b)
                if found is False:
                    external = True
                elif isinstance(found, Cls):
                    visit(found, depth + 1)

        visit(cls, 0)
        return out, external


def _init_stores(init: ast.AST | None, attr: str) -> list[ast.stmt]:
    if init is None:
        return []
    out: list[ast.stmt] = []
    for n in ast.walk(init):
        if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = n.targets if isinstance(n, ast.Assign) else [n.target]
            if any(is_self_attr(t) and t.attr == attr for t in targets):  # type: ignore[attr-defined]
                out.append(n)
    return out


def _store(stmt: ast.stmt) -> str:
    """An assignment to ``self.X`` as it runs: an annotation in a function body is never
    evaluated (``self.x: str = v`` and ``self.x: Any = v`` store the same)."""
    if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        return dump(ast.Assign([stmt.target], stmt.value))
    return dump(stmt)


def _params(init: ast.FunctionDef | ast.AsyncFunctionDef | None) -> dict[str, str]:
    """Parameter name -> source of its default ("" without one)."""
    if init is None:
        return {}
    a = init.args
    positional = [*a.posonlyargs, *a.args]
    out = {p.arg: "" for p in [*positional, *a.kwonlyargs]}
    for p, d in zip(positional[len(positional) - len(a.defaults) :], a.defaults, strict=True):
        out[p.arg] = dump(d)
    for p, kd in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        if kd is not None:
            out[p.arg] = dump(kd)
    return out


def _keyword(init: ast.AST | None, attr: str) -> ast.keyword | None:
    if init is None:
        return None
    for n in ast.walk(init):
        if isinstance(n, ast.Call):
            for k in n.keywords:
                if k.arg == attr:
                    return k
    return None


def _up_calls(init: ast.FunctionDef | ast.AsyncFunctionDef | None) -> list[str]:
    """``super().__init__(...)`` and ``Base.__init__(self, ...)`` calls, but for one
    that passes on exactly what it was given (``super().__init__(*args, **kwargs)``:
    as if the class had no ``__init__``)."""
    if init is None:
        return []
    a = init.args
    vararg, kwarg = (a.vararg.arg if a.vararg else None), (a.kwarg.arg if a.kwarg else None)

    def passes_on(call: ast.Call) -> bool:
        args = [x for x in call.args if not (isinstance(x, ast.Name) and x.id == "self")]
        return (
            all(isinstance(x, ast.Starred) and isinstance(x.value, ast.Name)
                and x.value.id == vararg for x in args)
            and all(k.arg is None and isinstance(k.value, ast.Name) and k.value.id == kwarg
                    for k in call.keywords)
        )  # fmt: skip

    return [
        dump(n)
        for n in ast.walk(init)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "__init__"
        and not passes_on(n)
    ]


def _init_attrs(chain: list[Cls]) -> dict[str, Cls]:
    out: dict[str, Cls] = {}
    for c in chain:
        for n in ast.walk(c.init) if c.init is not None else []:
            if isinstance(n, (ast.Assign, ast.AnnAssign)):
                targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                for t in targets:
                    if is_self_attr(t):
                        out.setdefault(t.attr, c)  # type: ignore[attr-defined]
    return out


def _class_level(chain: list[Cls]) -> set[str]:
    return {
        name
        for c in chain
        for name, e in scope_entries(c.node.body)[0].items()
        if e.kind != "annotation"
    }


def migratable_default(
    chain: list[Cls], external: bool, attr: str, old_chain: list[Cls] | None = None
) -> ast.expr | None:
    """The value an object made before the patch provably would have had for
    ``self.attr`` under NEW's construction, if it is an immutable literal and a
    class-level default of it is safe; None otherwise.

    Every ``__init__`` of ``chain`` that sets it does so in a top-level statement of
    its body (unconditionally) to the same value: an immutable literal, or a parameter
    NEW adds to that ``__init__`` (OLD's has neither it nor ``**kwargs``, so no object
    made before the patch was given it: each would have had the parameter's default,
    which must be an immutable literal, and no other ``__init__`` of the hierarchy
    passes it). Safe: no ``__slots__`` (a class attribute would replace the slot), no
    base outside the trees (it could define a descriptor of that name), no class body
    binding the name."""
    if external or attr in _class_level(chain):
        return None
    olds = {c.key: c for c in old_chain or []}
    value: ast.expr | None = None
    for c in chain:
        if "__slots__" in scope_entries(c.node.body)[0]:
            return None
        stores = _init_stores(c.init, attr)
        if not stores:
            continue
        assert c.init is not None
        for s in stores:
            if s not in c.init.body or not isinstance(s, (ast.Assign, ast.AnnAssign)):
                return None  # conditional, in a loop, augmented: depends on the run
            given = s.value
            if isinstance(given, ast.Name):
                given = _new_parameter_default(c, olds.get(c.key), given.id, chain)
            if given is None or literal_value(given) is NOT_LITERAL:
                return None  # computed, from an argument, or mutable
            if value is not None and dump(value) != dump(given):
                return None
            value = given
    return value


def _new_parameter_default(
    cls: Cls, old: Cls | None, param: str, chain: list[Cls]
) -> ast.expr | None:
    """The default of ``param``, a parameter NEW added to ``cls.__init__`` that no
    object made before the patch can have been given (see :func:`migratable_default`)."""
    init = cls.init
    if init is None or old is None or old.init is None:
        return None
    a = init.args
    if _params(init).get(param, "") == "":  # not a parameter, or one without a default
        return None
    o = old.init.args
    if o.kwarg is not None or param in _params(old.init):
        return None
    if any(_keyword(c.init, param) is not None for c in chain if c.key != cls.key):
        return None
    positional = [*a.posonlyargs, *a.args]
    for p_, d in zip(positional[len(positional) - len(a.defaults) :], a.defaults, strict=True):
        if p_.arg == param:
            return d
    for p_, kd in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        if p_.arg == param:
            return kd
    return None


def check(diffs: list[ModuleDiff], index: TreeIndex) -> list[Refusal]:
    """Refusals (and migrations, added to the diffs as changes) for instance state
    that changed methods read, across each changed class's hierarchy."""
    old_h, new_h = Hierarchy(index, "old"), Hierarchy(index, "new")
    by_module = {d.module: d for d in diffs}
    changed: dict[tuple[str, str], list[tuple[str, ast.AST]]] = {}
    for d in diffs:
        for c in d.changes:
            parts = c.qualname.split(".")
            if (
                c.kind in ("method", "new method")
                and len(parts) >= 2
                and c.node is not None
                and parts[-1] not in ("__init__", "__new__", "__init_subclass__")
            ):  # what construction reads runs on objects made after the patch only
                changed.setdefault((c.module, parts[0]), []).append((c.qualname, c.node))
    refusals: list[Refusal] = []
    done: set[tuple[str, str, str]] = set()  # (module, class, attr) refused or migrated
    for d in diffs:
        if d.new is None or d.old is None:
            continue
        old_classes = top_classes(d.old.body)
        for name, node in top_classes(d.new.body).items():
            if name not in old_classes:
                continue  # a new class: no object of it was made before the patch
            new_chain, new_ext = new_h.chain(Cls(d.module, node))
            old_chain, _ = old_h.chain(Cls(d.module, old_classes[name]))
            readers: dict[str, str] = {}
            for k in new_chain:
                for qual, func in changed.get(k.key, []):
                    for attr in sorted(self_reads(func)):
                        readers.setdefault(attr, f"{k.module}:{qual}")
            if not readers:
                continue
            set_old, set_new = _init_attrs(old_chain), _init_attrs(new_chain)
            anywhere_old = {a for c in old_chain for a in self_assigned(c.node)}
            level = _class_level(new_chain) | _class_level(old_chain)
            olds = {c.key: c for c in old_chain}
            news = {c.key: c for c in new_chain}
            for attr, reader in sorted(readers.items()):
                key = (d.module, name, attr)
                if key in done:
                    continue
                if attr in set_new and attr not in set_old and attr not in anywhere_old:
                    if attr in level:
                        continue  # objects without it read the class attribute
                    done.add(key)
                    refusals += _new_attribute(
                        d, name, attr, reader, set_new[attr], new_chain, new_ext, by_module,
                        old_chain,
                    )  # fmt: skip
                    continue
                if attr not in set_new and attr not in set_old:
                    continue
                detail = _set_up_differently(attr, olds, news)
                if detail:
                    done.add(key)
                    d.refusals[:] = [  # the comparer took it for a new attribute: it is not
                        r for r in d.refusals
                        if not (r.kind == "instance-state" and f"now sets self.{attr}," in r.reason
                                and r.target == f"{d.module}:{name}.__init__")
                    ]  # fmt: skip
                    init = news.get((d.module, name))
                    line = init.init.lineno if init and init.init else node.lineno
                    refusals.append(
                        Refusal(
                            "instance-state", d.file, line, f"{d.module}:{name}",
                            f"self.{attr}, which {reader} reads, is set up differently when a "
                            f"{name} is made: {detail}; objects made before the patch hold what "
                            "the old construction gave them, and the new code would read that. "
                            "Keep the construction as it was, or answer for existing objects in "
                            "payload code: --hooks FILE with --allow instance-state (a FILE that "
                            "does not exist gets a skeleton to complete)",
                        )
                    )  # fmt: skip
    return refusals


def _new_attribute(
    d: ModuleDiff,
    name: str,
    attr: str,
    reader: str,
    setter: Cls,
    chain: list[Cls],
    external: bool,
    by_module: dict[str, ModuleDiff],
    old_chain: list[Cls],
) -> list[Refusal]:
    """A new attribute set up by an ``__init__`` of the hierarchy (another class than
    the one whose own ``__init__`` the comparer checks): migrated or refused."""
    value = migratable_default(chain, external, attr, old_chain)
    target = by_module.get(setter.module)
    own = setter.key == (d.module, name)
    if own and reader.split(":", 1)[1].split(".")[0] == name:
        # the comparer's own check covers a class's own __init__ and methods; it may
        # have refused already: migrate instead when that is provably safe
        for r in list(d.refusals):
            if (
                r.kind == "instance-state"
                and r.target == f"{d.module}:{name}.__init__"
                and f"now sets self.{attr}," in r.reason
            ):
                if value is None:
                    return []
                d.refusals.remove(r)
                _migrate(d, setter, attr, value)
                return []
        return []
    if value is not None and target is not None:
        _migrate(target, setter, attr, value)
        return []
    line = setter.init.lineno if setter.init else setter.node.lineno
    where = f"{setter.module}:{setter.node.name}.__init__"
    return [
        Refusal(
            "instance-state", d.file, line, f"{d.module}:{name}",
            f"self.{attr}, which {reader} reads, is new: {where} now sets it when a {name} is "
            "made, and objects made before the patch do not have it (the value is not an "
            "immutable literal set whatever the arguments, so no class-level default can "
            "stand for it). Answer for existing objects in payload code: --hooks FILE with "
            "--allow instance-state (a FILE that does not exist gets a skeleton to complete); "
            f"or read it as getattr(self, {attr!r}, DEFAULT) in NEW",
        )
    ]  # fmt: skip


def _migrate(d: ModuleDiff, setter: Cls, attr: str, value: ast.expr) -> None:
    line = setter.init.lineno if setter.init else setter.node.lineno
    stmt = ast.Assign([ast.Name(attr, ast.Store())], value, lineno=line)
    ast.fix_missing_locations(stmt)
    qual = f"{setter.node.name}.{attr}"
    if any(c.qualname == qual and c.kind == "new name" for c in d.changes):
        return
    d.changes.append(Change("new name", setter.module, qual, d.file, line, stmt))
    d.warnings.append(
        f"{d.file}:{line}: {setter.module}:{qual}: __init__ now sets self.{attr}, and an "
        f"object made before the patch would have had {ast.unparse(value)}; migrated: the "
        f"payload gives class {setter.node.name} that value as a class-level default, which "
        "objects made before the patch read"
    )


def _set_up_differently(
    attr: str, olds: dict[tuple[str, str], Cls], news: dict[tuple[str, str], Cls]
) -> str:
    """How the construction of ``attr`` changed between the two hierarchies, or ""."""
    stored_by = [c for c in [*olds.values(), *news.values()] if _init_stores(c.init, attr)]
    for key in [*news, *(k for k in olds if k not in news)]:
        o, n = olds.get(key), news.get(key)
        oi, ni = (o.init if o else None), (n.init if n else None)
        if dump(oi) == dump(ni):
            continue
        cls = key[1]
        if [_store(s) for s in _init_stores(oi, attr)] != [
            _store(s) for s in _init_stores(ni, attr)
        ]:
            return (
                f"{cls}.__init__ now sets it another way"
                if _init_stores(ni, attr)
                else f"{cls}.__init__ no longer sets it"
            )
        po, pn = _params(oi), _params(ni)
        if (attr in po or attr in pn) and po.get(attr) != pn.get(attr):
            return f"the parameter {attr} of {cls}.__init__ changed (default or presence)"
        ko, kn = _keyword(oi, attr), _keyword(ni, attr)
        if dump(ko) != dump(kn):
            if kn is not None:
                return (
                    f"{cls}.__init__ now passes `{attr}={ast.unparse(kn.value)}` "
                    "up to a base __init__"
                )
            return f"{cls}.__init__ no longer passes {attr}= to a base __init__"
        if _up_calls(oi) != _up_calls(ni) and any(c.key != key for c in stored_by):
            return f"{cls}.__init__ passes other arguments to a base __init__ that sets it"
    return ""
