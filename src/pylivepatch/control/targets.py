"""Which processes an action is for (spec §10 TARGET): ``-p PID``, ``--app NAME`` (every
process of that app) and ``--tree PID`` (a process and its descendants), each
repeatable and combinable: the processes any of them names, each once."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..agent import protocol
from ..client import Client
from ..errors import LivepatchError

TYPE_CHECKING = False  # not typing's: see pylivepatch/__init__.py
if TYPE_CHECKING:
    from typing import Any

#: how long a process of the target may take to start its agent (a worker just forked)
AGENT_GRACE = 3.0

#: a process of the target that exited during the action (nothing left to change there)
EXITED = "exited during the action"


@dataclass(frozen=True)
class Targets:
    """The processes an action is for: by pid, by app, by process tree."""

    pids: tuple[int, ...] = ()
    apps: tuple[str, ...] = ()
    trees: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.pids or self.apps or self.trees)

    @property
    def grouped(self) -> bool:
        """Named by app or tree: the processes are found, not listed."""
        return bool(self.apps or self.trees)

    def words(self) -> str:
        """The TARGET options as typed, for hints."""
        return " ".join(
            [f"-p {p}" for p in self.pids] + [f"--app {a}" for a in self.apps]
            + [f"--tree {t}" for t in self.trees]
        )  # fmt: skip


def discover(warn: bool = True) -> list[dict[str, Any]]:
    """Every process of this user with a live agent, by pid. The socket of a process
    that is gone (killed before it could remove it) is removed on the way. A socket
    whose listener is not the process it names (an impostor) is not listed (with
    ``warn``, a warning on stderr names it); a socket directory another user could
    write to is ``untrusted-socket`` (for root, each socket is checked on its own)."""
    found = []
    directory = protocol.socket_dir()
    if not directory.is_dir():
        return []
    if os.geteuid() != 0:
        protocol.check_dir(directory)
    paths = directory.glob("*.sock")
    for pid, path in sorted((int(p.stem), p) for p in paths if p.stem.isdigit()):
        try:
            info = Client(pid, timeout=5).ping()
            if info["pid"] != pid:  # checked to be pid, it says it is another process
                raise LivepatchError(
                    "untrusted-socket",
                    f"the agent of process {pid} ({path}) says it is process {info['pid']}",
                )
            found.append(info)
        except LivepatchError as exc:
            if exc.code == "untrusted-socket":
                if warn:
                    print(f"pylivepatch: warning: {exc} (not listed)", file=sys.stderr)
            elif not pid_exists(pid):
                try:
                    path.unlink()
                except OSError:
                    pass
    return found


def select(
    targets: Targets, live: list[dict[str, Any]] | None = None, complete: bool = False
) -> list[int]:
    """The processes ``targets`` names, in order, each once; an app or tree that names
    no live agent is ``not-found``. With ``complete`` (an action), so is a process of an
    app or tree that has no agent: a child of one of its processes running the same
    program (a worker forked by C code, which Python's at-fork hooks never see), whose
    code the action could not change."""
    pids = list(targets.pids)
    if targets.grouped:
        agents = {info["pid"]: info for info in (discover() if live is None else live)}
        groups: list[tuple[str, list[int]]] = []
        for app in targets.apps:
            found = sorted(p for p, info in agents.items() if info.get("app") == app)
            if not found:
                raise LivepatchError("not-found", f"no running process of app {app!r} has an agent")
            groups.append((f"app {app}", found))
        for root in targets.trees:
            found = sorted(p for p in tree(root) if p in agents)
            if not found:
                raise LivepatchError("not-found", f"no process in the tree of {root} has an agent")
            groups.append((f"the tree of {root}", found))
        for what, found in groups:
            pids += found
            if complete:  # and those whose agent started meanwhile
                pids += _all_have_agents(targets, what, found, set(agents))
    return list(dict.fromkeys(pids))


def _all_have_agents(
    targets: Targets, what: str, members: list[int], agents: set[int]
) -> list[int]:
    """``not-found`` if a descendant of ``members`` runs the same program and has no
    agent (after ``AGENT_GRACE`` seconds for one just started); else the descendants
    whose agent started during that wait, which the action must change too."""
    deadline = time.monotonic() + AGENT_GRACE
    late: set[int] = set()
    while True:
        kids = _children()
        missing = {
            kid: parent for parent in members for kid in _descendants(kids, parent)
            if kid not in agents and _same_program(kid, parent)
        }  # fmt: skip
        if not missing:
            return sorted(late)
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
        # a worker just started has its agent once its socket is there: it is one of
        # the processes the action changes
        late |= {p for p in missing if protocol.socket_path(p).exists()}
        agents = agents | late
    listed = ", ".join(f"{kid} (child of {parent})" for kid, parent in sorted(missing.items()))
    app = f" --app {targets.apps[0]}" if targets.apps else ""
    raise LivepatchError(
        "not-found",
        f"process(es) {listed} of {what} run the same program and have no pylivepatch "
        f"agent: the action could not change their code, so nothing was changed. Give "
        f"them one (pylivepatch attach PID{app}; a server forking workers from C code "
        "under `pylivepatch run` gets none), or name the processes to change with -p",
    )


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _descendants(kids: dict[int, list[int]], root: int) -> list[int]:
    todo, found = list(kids.get(root, [])), []
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(kids.get(pid, []))
    return found


def tree(root: int) -> list[int]:
    """``root`` and its descendants."""
    return [root, *_descendants(_children(), root)]


def _same_program(pid: int, other: int) -> bool:
    """Whether two live processes run the same executable (False if either cannot be
    read: gone, a zombie, another user's)."""
    try:
        a, b = os.stat(f"/proc/{pid}/exe"), os.stat(f"/proc/{other}/exe")
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def exited(pid: int, exc: LivepatchError) -> bool:
    """Whether ``exc`` only says that ``pid`` exited meanwhile (a pool process retired
    after its last task, a worker recycled): its agent did not answer or closed the
    connection, and within a second the process is gone or a zombie."""
    if exc.code not in ("not-found", "busy"):  # no answer, or the connection closed
        return False
    deadline = time.monotonic() + 1.0
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
