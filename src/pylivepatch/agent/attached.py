"""The agent's start in a process that ``pylivepatch attach`` entered.

The attach bootstrap (``pylivepatch.attach.bootstrap``) runs in the target's main thread
for a moment and only starts a new thread; that thread imports this module and calls
:func:`main`, which starts the agent where the attaching command line looks for it and
answers on the command line's side channel: ``ok`` and a JSON description, or
``error`` and what failed. It is idempotent: a second attach (a retry, or both of
attach's paths firing) finds the agent already running and reports it.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from pathlib import Path

from ..errors import LivepatchError


def main(
    report: Callable[[str], None],
    socket_dir: str,
    state_dir: str,
    app: str,
    public_pid: int,
    peer: tuple[int, int],
) -> None:
    """Start the agent and report it; never raises (it runs in the target)."""
    try:
        if state_dir:
            # The attaching user's state directory (audit log, installed payloads), so
            # that `pylivepatch log` and `install` there see this process; children it
            # starts later inherit it.
            os.environ.setdefault("PYLIVEPATCH_STATE_DIR", state_dir)
        if app:
            _join_children(app, socket_dir)
        from . import server
        from .audit import requested_by

        already = server._agent is not None and server._agent.pid == os.getpid()
        agent = server.start(
            app or None, directory=Path(socket_dir) if socket_dir else None, public_pid=public_pid
        )
        if not already and server._audit is not None:
            with requested_by("attach", peer[1], peer[0]):
                server._audit.write(
                    {"action": "attach", "payload": "", "result": "ok", "rc": 0,
                     "message": f"agent started at {agent.path}"}
                )  # fmt: skip
        info = agent.describe()
        info.update(socket=str(agent.path), already=already, package=str(Path(__file__).parents[1]))
        report("ok " + json.dumps(info))
    except LivepatchError as exc:  # a refusal with its code, before any agent started
        try:
            report(f"error refused {exc.code} {exc.message}")
        except BaseException:  # noqa: BLE001
            pass
    except BaseException:  # noqa: BLE001 - reported to the attacher; the target runs on
        try:
            report("error " + traceback.format_exc())
        except BaseException:  # noqa: BLE001
            pass


def _join_children(app: str, socket_dir: str) -> None:
    """With ``--app``: the Python processes this one starts from now on (workers
    spawned, not forked) get an agent of the app at their start, as under
    ``pylivepatch run --app``: the same variables, set in this process's environment."""
    from .run import BOOT, environment

    current = os.environ.get("PYTHONPATH", "")
    if str(BOOT) not in current.split(os.pathsep):
        os.environ["PYTHONPATH"] = environment(app, base={"PYTHONPATH": current})["PYTHONPATH"]
    os.environ["PYLIVEPATCH_APP"] = app
    if socket_dir:
        os.environ["PYLIVEPATCH_SOCKET_DIR"] = socket_dir
