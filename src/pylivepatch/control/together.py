"""An action on every selected process, all or nothing (spec §10).

``act`` uploads and checks on all of them first, side by side; then it applies (or
reverts, replaces, unloads) on each in turn. If one process refuses, those already
changed are put back, and what this action uploaded is unloaded again. The
:class:`Outcome` is the truth: each process's result, and every process where the
clean-up itself failed (``left``), with what it still has and the command that
removes it. Processes of an app or a tree that appear during the action (a worker
respawned by its master) are brought to the same state.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from ..client import Client
from ..errors import LivepatchError
from .targets import EXITED, Targets, exited, pid_exists, select

TYPE_CHECKING = False  # not typing's: see pylivepatch/__init__.py
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager
    from typing import Any

#: how long the clean-up of a failed action (revert, unload) is retried while the
#: process answers busy (another action of its own is finishing)
UNDO_WAIT = 10.0

#: what each action makes of a process, as its result says
DONE = {"apply": "applied", "revert": "reverted", "replace": "replaced", "unload": "unloaded"}

VERBS = ("upload", "load", "apply", "revert", "replace", "unload")


class Steps:
    """What ``act`` reports while it runs: ``advance()`` after each process, ``note(text)``
    for what it waits for now (read from the process every 0.2 s, only if ``live``).
    ``progress(label, total)`` gives one for each step of an action; any object with
    these three does (the command line's draws a progress bar)."""

    live = False

    def advance(self) -> None:
        pass

    def note(self, text: str) -> None:
        pass


@contextmanager
def quiet(label: str, total: int) -> Iterator[Steps]:
    """No progress shown (the default of ``act``)."""
    yield Steps()


@dataclass
class Outcome:
    """What an action did in every process: ``results`` (pid -> text), the first
    ``failure`` (None: done everywhere), and ``left``: each process the clean-up of a
    failure could not put back, with what it still has and the command that removes
    it."""

    verb: str
    name: str
    pids: list[int]
    results: dict[int, str] = field(default_factory=dict)
    failure: LivepatchError | None = None
    left: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failure is None and not self.left


def act(
    verb: str,
    targets: Targets,
    *,
    name: str | None = None,
    file: str | None = None,
    nodeps: bool = False,
    timeout: float | None = None,
    force: bool = False,
    no_expect: bool = False,
    no_object_check: bool = False,
    progress: Callable[[str, int], AbstractContextManager[Any]] = quiet,
) -> Outcome:
    """``verb`` (upload, load, apply, revert, replace, unload) on every process
    ``targets`` names, all or nothing (module docstring). ``file`` is the payload of an
    upload or a load; ``name`` its name (by default the manifest's) or the payload an
    apply, revert, replace or unload is for."""
    if verb not in VERBS:
        raise LivepatchError("bad-request", f"unknown action {verb!r}: one of {', '.join(VERBS)}")
    if not targets:
        raise LivepatchError("bad-request", "name the target: a pid, an app or a process tree")
    # Only what brings new code in needs every same-program process to have an agent:
    # a revert or an unload (a rollback in an incident) goes where it can.
    run = _Run(verb, targets, select(targets, complete=verb in ("load", "apply", "replace")))
    run.options = {
        k: v for k, v in (("nodeps", nodeps), ("timeout", timeout), ("force", force)) if v
    }
    run.checks = {
        k: True for k, v in (("no_expect", no_expect), ("no_object_check", no_object_check)) if v
    }
    if len(run.pids) > 1 or targets.grouped:
        # A process of the app that cannot import a target module (a multiprocessing
        # helper started elsewhere) waits for it, as at start (``install``); the results
        # say where each payload waits.
        run.checks["wait_imports"] = True
    run.name = name or ""
    if verb in ("upload", "load"):
        if file is None:
            raise LivepatchError("bad-request", f"{verb}: the payload file is missing")
        run.upload(file, progress)
        if run.failure is not None or verb == "upload":
            return run.outcome()
    elif not name:
        raise LivepatchError("bad-request", f"{verb}: the payload's name is missing")
    run.change(progress)
    if run.failure is None and targets.grouped and run.step in ("apply", "revert"):
        run.newcomers()
    return run.outcome()


class _Run:
    """One ``act``: the processes, what happened in each so far, and the steps."""

    def __init__(self, verb: str, targets: Targets, pids: list[int]) -> None:
        self.verb, self.targets, self.pids = verb, targets, pids
        self.step = "apply" if verb == "load" else verb  # what each process is asked
        self.name = ""
        self.file = ""
        self.options: dict[str, Any] = {}
        self.checks: dict[str, bool] = {}
        self.results: dict[int, str] = {}
        self.left: dict[int, str] = {}  # process -> what the failed action left there
        self.failure: LivepatchError | None = None
        self.data = b""
        self.uploaded: list[int] = []
        self.done: list[int] = []

    def outcome(self) -> Outcome:
        return Outcome(self.verb, self.name, self.pids, self.results, self.failure, self.left)

    # --- upload: checks only, on every process side by side -----------------------

    def upload(
        self, file: str, progress: Callable[[str, int], AbstractContextManager[Any]]
    ) -> None:
        import base64

        from ..payload import archive

        self.file = file
        self.data = archive.read_file(file)
        manifest = archive.read(self.data).manifest
        self.name = self.name or manifest.name
        encoded = base64.b64encode(self.data).decode()
        name = self.name

        def upload_to(pid: int) -> tuple[str, LivepatchError | None]:
            try:
                Client(pid)._call("upload", name=name, data=encoded, **self.checks)
                return "uploaded", None
            except LivepatchError as exc:
                if exited(pid, exc):
                    return EXITED, None
                if exc.code == "exists":
                    other = _status_or_none(pid, name)
                    if other is not None and other["build_id"] == manifest.build_id:
                        # the same payload is there already (installed, applied at
                        # start): not ours to unload if another process refuses
                        return "already uploaded", None
                    if other is not None:
                        exc = LivepatchError("exists", self._new_version_hint(pid, other, manifest))
                return f"{exc.code}: {exc.message}", exc

        # Uploads only check and change nothing: they run side by side in every process.
        with progress(f"upload {name}", len(self.pids)) as steps, _pool(len(self.pids)) as pool:
            for pid, (text, exc) in zip(self.pids, pool.map(upload_to, self.pids), strict=True):
                self.results[pid] = text
                if text == "uploaded":
                    self.uploaded.append(pid)
                if exc is not None and self.failure is None:
                    self.failure = exc
                steps.advance()
        if self.failure is None and self.checks.get("wait_imports"):
            self.failure = _imported_nowhere(
                self.pids, name, encoded, self.checks, self.results, self.uploaded
            )
        if self.failure is not None:
            for pid in self.uploaded:
                self.results[pid] = "uploaded, then " + _unload_again(pid, name, self.left)

    def _new_version_hint(self, pid: int, other: dict[str, Any], manifest: Any) -> str:
        """What to do when another build of a payload of this name is in the process."""
        name, target, file = manifest.name, self.targets.words(), self.file
        have = f"{name} {other.get('version') or ''} (build {other['build_id'][:16]})".replace(
            "  ", " "
        )
        new = f"build {manifest.build_id[:16]}"
        if other["state"] == "CHECKED":
            return (
                f"{have} is uploaded in process {pid}, this file is another build ({new}); "
                f"unload it first: pylivepatch unload {name} {target}, then {self.verb} {file} again"
            )
        return (
            f"{have} is {other['state']} in process {pid}, this file is another build ({new}); "
            f"to move to it: pylivepatch revert {name} {target} && pylivepatch unload {name} "
            f"{target} && pylivepatch load {file} {target} (the original code runs in between), "
            f"or, with no gap, build the new version with --replace under another name and load "
            f"that: it replaces {name} in one step"
        )

    # --- the change: one process after another, put back if one refuses -------------

    def change(self, progress: Callable[[str, int], AbstractContextManager[Any]]) -> None:
        name, step = self.name, self.step
        failed: int | None = None
        replaced: dict[int, list[str]] = {}  # replace: what each process had applied before
        if step == "replace" and len(self.pids) > 1:
            for pid in self.pids:
                replaced[pid] = [
                    s.name for s in Client(pid).list() if s.state == "APPLIED" and s.name != name
                ]
        with progress(f"{step} {name}", len(self.pids)) as steps:
            for pid in self.pids:
                if self.results.get(pid) == EXITED:
                    steps.advance()
                    continue
                try:
                    with _watching(pid, name, steps):
                        result = getattr(Client(pid), step)(name, **self.options)
                    if not result.noop:  # a process that already was so is not put back
                        self.done.append(pid)
                    self.results[pid] = result.message if result.noop else DONE[step]
                    if step == "apply":
                        waiting = Client(pid).status(name).pending
                        if waiting:
                            self.results[pid] += f"; waits for the import of {', '.join(waiting)}"
                except LivepatchError as exc:
                    if exited(pid, exc):  # a pool process retired meanwhile (Celery's)
                        self.results[pid] = EXITED
                        steps.advance()
                        continue
                    self.results[pid], self.failure, failed = f"{exc.code}: {exc.message}", exc, pid
                    break
                steps.advance()
        if self.failure is not None and step in ("apply", "replace"):
            self._put_back(replaced, failed)

    def _put_back(self, replaced: dict[int, list[str]], failed: int | None) -> None:
        """All or nothing: revert where this action applied, unload what it uploaded."""
        name, step, results, left = self.name, self.step, self.results, self.left
        for pid in self.done:
            err = _retrying(lambda p=pid: Client(p).revert(name))
            if err is None:
                results[pid] = f"{DONE[step]}, then reverted (another process refused)"
                if replaced.get(pid):  # a revert does not apply again what replace reverted
                    gone = ", ".join(replaced[pid])
                    again = " && ".join(f"pylivepatch apply {n} -p {pid}" for n in replaced[pid])
                    results[pid] = left[pid] = (
                        f"{results[pid]}; the payloads it replaced ({gone}) stay reverted "
                        f"here; apply them again: {again}"
                    )
            else:
                results[pid] = left[pid] = (
                    f"{DONE[step]}, and NOT reverted ({err.code}: {err.message}): {name} is "
                    f"still APPLIED here; revert it: pylivepatch revert {name} -p {pid}"
                )
        if self.verb == "load":
            for pid in self.uploaded:  # only what this action uploaded
                if pid in left:
                    continue  # still applied: it cannot be unloaded
                if pid in self.done or pid == failed:
                    results[pid] += "; " + _unload_again(pid, name, left, results[pid])
                else:
                    results[pid] = "uploaded, then " + _unload_again(pid, name, left)

    # --- processes that appeared meanwhile ------------------------------------------

    def newcomers(self) -> None:
        """Processes of the target that appeared during the action (a worker respawned
        by its master): bring each to the same state as the others, with the same
        options; one that cannot be is recorded in ``left``, and the first such error
        is the failure. A newcomer holding another build under the payload's name is
        not given it."""
        try:
            now = select(self.targets)
        except LivepatchError:
            return
        fresh = [p for p in now if p not in self.pids]
        name, step, results, left = self.name, self.step, self.results, self.left
        build = self._build() if fresh and step == "apply" else ""  # from the others
        self.pids += fresh
        for pid in fresh:
            # A process just started may be busy applying what is installed for its app
            # (its agent answers first), or not answer for a moment (a launcher that
            # answered, then exec'd the program, whose agent binds the socket again):
            # that is "try again", as for a clean-up.
            exc = _retrying(lambda p=pid: self._bring_along(p, build), pid)
            if exc is None:
                continue
            if exited(pid, exc):
                results[pid] = f"appeared and {EXITED}"
                continue
            again = f"load {self.file}" if self.data else f"{step} {name}"
            results[pid] = left[pid] = (
                f"appeared during the action and is NOT {DONE[step]} ({exc.code}: "
                f"{exc.message}); bring it along: pylivepatch {again} -p {pid}"
            )
            self.failure = self.failure or LivepatchError(exc.code, f"process {pid}: {exc.message}")

    def _bring_along(self, pid: int, build: str) -> None:
        """One newcomer to the state the others are in (its result recorded); a
        ``LivepatchError`` if it cannot be."""
        name, step, results, left = self.name, self.step, self.results, self.left
        client = Client(pid)
        present = {s.name: s for s in client.list()}
        applied = name in present and present[name].state == "APPLIED"
        if step == "apply" and name in present and build != present[name].build_id:
            other = present[name]
            results[pid] = left[pid] = (
                f"appeared during the action with another build of {name} (build "
                f"{other.build_id[:16]}, {other.state}), not build {build[:16]}: NOT "
                f"changed; see it: pylivepatch status {name} -p {pid}"
            )
            self.failure = self.failure or LivepatchError(
                "exists", f"process {pid} has another build of {name}: {results[pid]}"
            )
            return
        if step == "apply" and not applied:
            if self.data and name not in present:  # (forked after the upload: it has it)
                client.load(self.data, **self.checks, **self.options)
            else:
                client.apply(name, **self.options)
            results[pid] = "appeared during the action: applied"
        elif step == "revert" and applied:
            client.revert(name, **{k: v for k, v in self.options.items() if k != "nodeps"})
            results[pid] = "appeared during the action: reverted"
        else:
            results[pid] = f"appeared during the action: already {DONE[step]}"

    def _build(self) -> str:
        """The build the others were given (apply, load)."""
        if self.data:
            from ..payload import archive

            return archive.read(self.data).manifest.build_id
        for pid in self.pids:
            status = _status_or_none(pid, self.name)
            if status is not None:
                return str(status["build_id"])
        return ""


def _imported_nowhere(
    pids: list[int],
    name: str,
    encoded: str,
    checks: dict[str, bool],
    results: dict[int, str],
    uploaded: list[int],
) -> LivepatchError | None:
    """``not-found`` if a target module the payload waits for in every process (imported
    in none) cannot be imported either: a misspelt or absent module, refused as in a
    single process. One that exists in some process may wait in the others (a
    multiprocessing helper); one not imported anywhere yet but importable waits, as in
    a single process: the first process this action uploaded to is asked to check the
    payload again without waiting for what it cannot import."""
    waiting: set[str] | None = None
    for pid in pids:
        status = _status_or_none(pid, name) if results.get(pid) != EXITED else None
        if status is not None:
            modules = set(status["pending"])
            waiting = modules if waiting is None else waiting & modules
    if not waiting or not uploaded:
        return None
    pid = uploaded[0]
    strict = {k: v for k, v in checks.items() if k != "wait_imports"}
    refusal: LivepatchError | None = None
    if _retrying(lambda: Client(pid).unload(name)) is not None:
        return None  # not checked again: it keeps what it has
    try:
        Client(pid)._call("upload", name=name, data=encoded, **strict)
        return None
    except LivepatchError as exc:
        if exc.code == "not-found" and any(m in exc.message for m in waiting):
            refusal = exc
    try:  # as it was
        Client(pid)._call("upload", name=name, data=encoded, **checks)
    except LivepatchError as exc:
        uploaded.remove(pid)
        results[pid] = f"uploaded, then unloaded to check it again ({exc.code}: {exc.message})"
        if refusal is None:
            return LivepatchError(exc.code, f"process {pid}: {exc.message}")
    if refusal is None:
        return None
    listed = ", ".join(sorted(waiting))
    return LivepatchError(
        "not-found",
        f"module(s) {listed} of payload {name} are imported in none of the processes of "
        f"the target and cannot be imported ({refusal.message}): a misspelt or absent "
        "module? nothing was changed; fix the target module names and build the payload "
        "again",
    )


def _retrying(call: Any, starting: int | None = None) -> LivepatchError | None:
    """Run a clean-up step, again while the process answers ``busy`` (at most
    ``UNDO_WAIT`` seconds); its error if it still fails, None if it is done. With
    ``starting`` (the pid of a process just started), also while it does not answer
    and is still there."""
    deadline, delay = time.monotonic() + UNDO_WAIT, 0.05
    while True:
        try:
            call()
            return None
        except LivepatchError as exc:
            again = exc.code == "busy" or (
                starting is not None
                and pid_exists(starting)
                # not answering yet, or changed since it was read (it applies its app's
                # installed payloads as it starts): read it again
                and (
                    (exc.code == "not-found" and "not answering" in exc.message)
                    or exc.code == "exists"
                )
            )
            if not again or time.monotonic() + delay > deadline:
                return exc
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _unload_again(pid: int, name: str, left: dict[int, str], before: str = "") -> str:
    """Unload what this action uploaded in ``pid``: "unloaded ...", or what is left
    (recorded in ``left``) and how to remove it."""
    err = _retrying(lambda: Client(pid).unload(name))
    if err is None or err.code == "not-found":
        return "unloaded (another process refused)" if not before else "unloaded again"
    text = (
        f"NOT unloaded ({err.code}: {err.message}): {name} is still uploaded (CHECKED) "
        f"here; remove it: pylivepatch unload {name} -p {pid}"
    )
    left[pid] = f"{before}; {text}" if before else f"uploaded, then {text}"
    return text


def transition_text(s: dict[str, Any]) -> str:
    """A status's transition in progress, in a few words ("" when none runs)."""
    run = s.get("in_progress")
    if not run:
        return ""
    text = f"{run.get('action', '')} {run.get('transition', '')}".strip()
    if run.get("target"):
        text += f" -> {run['target']}"
    if "elapsed" in run:
        text += f" {float(run['elapsed']):.1f}s"
    blockers = run.get("blockers") or []
    return text + (f", {len(blockers)} blocked" if blockers else "")


@contextmanager
def _watching(pid: int, name: str, steps: Steps) -> Iterator[None]:
    """While an action runs in ``pid``, show its transition (what it waits for) in the
    progress line: ``status`` is read every 0.2 s from a second connection."""
    if not steps.live:
        yield
        return
    stop = threading.Event()

    def watch() -> None:
        client = Client(pid, timeout=5)
        while not stop.wait(0.2):
            try:
                s = asdict(client.status(name))
            except LivepatchError:
                continue
            text = transition_text(s)
            blockers = (s.get("in_progress") or {}).get("blockers") or []
            if text:
                steps.note(f"process {pid}: {text}" + (f": {blockers[0]}" if blockers else ""))

    watcher = threading.Thread(target=watch, name="pylivepatch-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(10)


def _status_or_none(pid: int, name: str) -> dict[str, Any] | None:
    try:
        return asdict(Client(pid).status(name))
    except LivepatchError:
        return None


class _Inline:
    """The "pool" for one process: its upload runs in this thread (a command line on
    one process, the common case, does not import ``concurrent.futures``)."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    map = staticmethod(map)


def _pool(n: int) -> Any:
    """Up to 16 threads for ``n`` processes' uploads, side by side."""
    if n <= 1:
        return _Inline()
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=min(16, n))
