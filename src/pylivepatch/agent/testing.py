"""``pylivepatch test FILE -- CMD…``: run CMD with payloads applied at the start of
every Python process it starts, and report whether they applied.

The boot ``sitecustomize`` sees ``$PYLIVEPATCH_TEST_PAYLOADS`` (paths, ``os.pathsep``
separated) and loads them in order with ``wait_imports`` — as an installed payload
would be at start — instead of starting an agent. Each process appends JSON lines to
``$PYLIVEPATCH_TEST_REPORT``: one per payload at start, one for a payload refused at
an import, and one at exit saying which target modules were still never imported (the
payload then did nothing there).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
from typing import Any

PAYLOADS = "PYLIVEPATCH_TEST_PAYLOADS"
REPORT = "PYLIVEPATCH_TEST_REPORT"


def _write(record: dict[str, Any]) -> None:
    path = os.environ.get(REPORT)
    if not path:
        return
    line = (json.dumps({"pid": os.getpid(), **record}) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def apply_test_payloads() -> None:
    """Load the payloads named in the environment (in a process CMD started).

    A payload refused here, or later by a module it waits for (the module's code is not
    what it was built against: the installed version is not OLD), is recorded with its
    code and the process runs on without it: at such an import the payload is taken
    out (reverted and unloaded) and the module is imported as it is. In a service, that
    import would fail instead (spec §5); under test, the command runs as it would
    without the payload, and the report says so once.
    """
    from ..engine import engine
    from ..errors import LivepatchError
    from ..payload import archive

    e = engine()
    names: list[str] = []
    refusals: dict[str, tuple[str, str, str]] = {}  # module -> (payload, code, message)

    def listen(event: Any) -> None:
        if event.kind == "refused" and "module" in event.detail and event.payload in names:
            d = event.detail
            refusals[d["module"]] = (event.payload, str(d.get("error")), str(d.get("message")))

    e.add_listener(listen)
    for path in filter(None, os.environ.get(PAYLOADS, "").split(os.pathsep)):
        name = path
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            name = archive.read(data).manifest.name
            result = e.load(data, wait_imports=True)
            names.append(result.name)
            _write({"payload": result.name, "event": "applied", "argv": sys.argv[:3]})
        except LivepatchError as exc:
            _write({"payload": name, "event": "refused", "code": exc.code, "message": exc.message})
        except OSError as exc:
            _write({"payload": name, "event": "refused", "code": "not-found", "message": str(exc)})
    if not names:
        e.remove_listener(listen)
        return
    waited = {m for n in names for m in e.status(n).pending}
    if waited:
        sys.meta_path.insert(0, _RunWithout(waited, refusals, names))

    def at_exit() -> None:
        for name in names:
            try:
                waiting = e.status(name).pending
            except LivepatchError:
                continue
            _write({"payload": name, "event": "exit", "never_imported": list(waiting)})

    atexit.register(at_exit)


class _RunWithout:
    """First on ``sys.meta_path``, for the modules the payloads under test wait for: it
    finds the module through the other finders (the engine's import hook among them)
    and, if a payload refuses the module, takes that payload out and lets the import
    finish unpatched."""

    def __init__(
        self, waited: set[str], refusals: dict[str, tuple[str, str, str]], names: list[str]
    ) -> None:
        self.waited, self.refusals, self.names = waited, refusals, names
        self.inside = threading.local()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self.waited or getattr(self.inside, "active", False):
            return None
        self.inside.active = True
        try:
            for finder in list(sys.meta_path):
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self.inside.active = False
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader, self)  # type: ignore[assignment]
        return spec

    def refused(self, module: str, error: ImportError) -> None:
        """The import of ``module`` failed: if a payload under test refused it, take
        that payload out, with every later one that also waits for ``module`` or
        stacks on one taken out (none of them could patch it now); else re-raise."""
        from ..engine import engine
        from ..errors import LivepatchError

        refusal = self.refusals.pop(module, None)
        if refusal is None:
            raise error
        payload, code, message = refusal
        e = engine()
        out = [payload]
        try:
            builds = {e.status(payload).build_id}
            for name in self.names[self.names.index(payload) + 1 :]:
                status = e.status(name)
                if module in status.pending or status.depends in builds:
                    out.append(name)
                    builds.add(status.build_id)
            for name in reversed(out):
                e.revert(name, consistency="immediate")
            for name in out:
                e.unload(name)
        except LivepatchError:
            raise error from None
        for name in out:
            self.names.remove(name)
            record = {"payload": name, "event": "refused", "code": code, "message": message,
                      "module": module}  # fmt: skip
            if name != payload:
                record.update(event="withdrawn", refused_by=payload)
            _write(record)


class _Loader:
    def __init__(self, loader: Any, finder: _RunWithout) -> None:
        self._loader, self._finder = loader, finder

    def create_module(self, spec: Any) -> Any:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: Any) -> None:
        try:
            self._loader.exec_module(module)
        except ImportError as exc:
            self._finder.refused(module.__name__, exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def summarize(path: str) -> tuple[list[str], bool]:
    """Lines for the operator and whether every process applied every payload: a
    refusal is reported once, with the number of processes it happened in."""
    records = []
    try:
        with open(path) as fh:
            records = [json.loads(line) for line in fh if line.strip()]
    except (OSError, ValueError):
        pass
    refused = [r for r in records if r["event"] == "refused"]
    withdrawn = [r for r in records if r["event"] == "withdrawn"]
    out = {(r["pid"], r["payload"]) for r in refused + withdrawn}  # taken out at an import
    applied = [
        r for r in records if r["event"] == "applied" and (r["pid"], r["payload"]) not in out
    ]
    exits = {(r["pid"], r["payload"]): r["never_imported"] for r in records if r["event"] == "exit"}
    processes = {r["pid"] for r in records}
    lines = []
    for name in sorted({r["payload"] for r in applied}):
        pids = {r["pid"] for r in applied if r["payload"] == name}
        never: dict[str, int] = {}
        for p in pids:
            for module in exits.get((p, name), []):
                never[module] = never.get(module, 0) + 1
        lines.append(
            f"pylivepatch test: {name} applied at start in {len(pids)} of {len(processes)} "
            "Python processes"
        )
        for module, count in sorted(never.items()):
            lines.append(
                f"pylivepatch test: {name}: {module} was never imported in {count} of them "
                "(nothing to patch there)"
            )
    kinds: dict[tuple[str, str, str, str], set[int]] = {}
    for r in refused:
        key = (r["payload"], r["code"], r["message"], r.get("module", ""))
        kinds.setdefault(key, set()).add(r["pid"])
    for (name, code, message, module), pids in sorted(kinds.items()):
        when, then = (
            (f"at the import of {module}", "taken out there, they ran on without it")
            if module
            else ("at start", "they ran without it")
        )
        lines.append(
            f"pylivepatch test: {name} REFUSED {when} in {len(pids)} of {len(processes)} Python "
            f"processes: {code}: {message}; {then}"
        )
    taken: dict[tuple[str, str, str], set[int]] = {}
    for r in withdrawn:
        taken.setdefault((r["payload"], r["module"], r["refused_by"]), set()).add(r["pid"])
    for (name, module, by), pids in sorted(taken.items()):
        lines.append(
            f"pylivepatch test: {name} taken out at the import of {module} in {len(pids)} of "
            f"{len(processes)} Python processes, with {by} (refused there); they ran on "
            "without it"
        )
    if not records:
        lines.append("pylivepatch test: no Python process started; nothing was applied")
    return lines, bool(applied) and not refused and not withdrawn
