"""``pylivepatch attach PID…``: start agents in processes started without pylivepatch,
and ``load … --attach``, which attaches to its targets first."""

from __future__ import annotations

import argparse
import sys

from ..errors import LivepatchError
from .exits import EXIT_ERROR, EXIT_OK, EXIT_RETRY

TYPE_CHECKING = False  # not typing's: see pylivepatch/__init__.py
if TYPE_CHECKING:
    from typing import Any

#: seconds ``load --attach`` waits for each agent (its --timeout is the load's own)
ATTACH_PATIENCE = 30.0

TIMEOUT_HELP = (
    "seconds to wait for each agent to answer (default 10); past it, exit 2 (timeout) "
    "with what was done"
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "attach",
        help="start the agent in running Python processes started without pylivepatch",
        description="Start a pylivepatch agent inside running CPython 3.10-3.15 processes "
        "that were started without `pylivepatch run` (gdb for 3.10-3.13; on 3.14+ "
        "sys.remote_exec, then gdb if the main thread does not run bytecode soon). A "
        "process that already has an agent is left alone (exit 0). See "
        "docs/operating.md, 'Attach'.",
    )
    p.add_argument("pids", nargs="+", type=int, metavar="PID", help="a process to attach to")
    p.add_argument(
        "--tree", action="store_true",
        help="also every descendant CPython process (pre-fork workers); others are skipped",
    )  # fmt: skip
    p.add_argument(
        "--app", metavar="NAME",
        help="the app the attached processes belong to, so that `--app NAME` selects them "
        "later and payloads installed for it apply; implies --tree",
    )  # fmt: skip
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help=TIMEOUT_HELP)
    p.add_argument(
        "--method", choices=("auto", "gdb", "remote-exec"), default="auto",
        help="how to enter the process: auto (3.14+: sys.remote_exec, then gdb if the main "
        "thread has not run it within half a second; gdb before 3.14), gdb, or remote-exec",
    )  # fmt: skip
    p.add_argument(
        "--plan", choices=("auto", "pending", "direct"), default="auto",
        help="gdb only: queue the bootstrap for the main thread (pending), run it in the "
        "main thread blocked in a system call (direct), or choose (auto, the default)",
    )  # fmt: skip
    p.add_argument(
        "--signal", metavar="SIG",
        help="a signal the program handles in Python (e.g. USR1), sent after queuing so "
        "that a main thread blocked in a system call runs the bootstrap at once",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.set_defaults(command_function=attach_command)


def _signal(name: str | None) -> int | None:
    if not name:
        return None
    import signal

    key = name.upper()
    key = key if key.startswith("SIG") else "SIG" + key
    try:
        return int(signal.Signals[key])
    except KeyError:
        if name.isdigit():
            return int(name)
        from . import UsageError

        raise UsageError(f"--signal {name}: not a signal name (e.g. USR1)") from None


def targets(pids: list[int], tree: bool) -> list[tuple[int, bool]]:
    """(pid, named on the command line) for each process to attach, parents first."""
    from ..attach import procfs

    out: dict[int, bool] = {}
    for pid in pids:
        out.setdefault(pid, True)
        if tree:
            for child in procfs.descendants(pid):
                out.setdefault(child, False)
    return list(out.items())


#: codes that mean "this descendant is not a Python process we can serve": skipped in
#: a tree, an error for a process named on the command line
_SKIPPABLE = frozenset(
    {"not-cpython", "pyinstaller-bootloader", "no-such-process", "unsupported-version"}
)


def attach_all(
    pids: list[int],
    *,
    tree: bool,
    app: str | None,
    timeout: float,
    method: str = "auto",
    plan: str = "auto",
    wake: int | None = None,
) -> list[dict[str, Any]]:
    """Attach to each process; one result per process (never raises for one of them)."""
    from ..attach import attach

    results: list[dict[str, Any]] = []
    for pid, named in targets(pids, tree or bool(app)):
        try:
            done = attach(pid, app=app, timeout=timeout, method=method, plan=plan, wake=wake)
            results.append({"pid": pid, "ok": True, "result": done.via, **done.to_dict()})
        except LivepatchError as exc:
            skipped = not named and exc.code in _SKIPPABLE
            results.append(
                {"pid": pid, "ok": skipped, "result": "skipped" if skipped else "error",
                 "error": {"code": exc.code, "errno": exc.errno, "message": exc.message}}
            )  # fmt: skip
    return results


def describe(r: dict[str, Any]) -> str:
    if r["result"] == "already":
        return f"pid {r['pid']}: already has an agent (python {r['python']}); nothing to do"
    if r["result"] == "skipped":
        return f"pid {r['pid']}: skipped ({r['error']['code']}: {r['error']['message']})"
    if not r["ok"]:
        return f"pid {r['pid']}: {r['error']['code']}: {r['error']['message']}"
    held = f", gdb ran {r['gdb_ms']:.0f} ms" if r["gdb_ms"] else ""
    app = f", app {r['app']}" if r.get("app") else ""
    return (
        f"attached pid {r['pid']}: python {r['python']} via {r['result']} (main thread: "
        f"{r['main_thread']}), agent up in {r['total_ms']:.0f} ms{held}{app}"
    )


def attach_command(args: argparse.Namespace) -> int:
    results = attach_all(
        args.pids, tree=args.tree, app=args.app, timeout=args.timeout, method=args.method,
        plan=args.plan, wake=_signal(args.signal),
    )  # fmt: skip
    failed = [r for r in results if not r["ok"]]
    if len(results) == 1 and failed:
        raise LivepatchError(failed[0]["error"]["code"], failed[0]["error"]["message"])
    if args.json:
        import json

        print(json.dumps({"ok": not failed, "results": results}, indent=2))
    else:
        for r in results:
            print(describe(r), file=sys.stderr if not r["ok"] else sys.stdout)
    if not failed:
        return EXIT_OK
    retry = all(r["error"]["code"] == "timeout" for r in failed)
    return EXIT_RETRY if retry else EXIT_ERROR


def attach_for(args: argparse.Namespace) -> None:
    """``load … --attach``: attach to every ``-p``/``--tree`` process without an agent
    first; any failure stops the load before anything is uploaded."""
    if not (args.pid or args.tree):
        from . import UsageError

        raise UsageError(
            "--attach needs the processes by pid: -p PID or --tree PID (an --app names "
            "processes that have an agent already)"
        )
    results = attach_all(list(args.pid), tree=False, app=None, timeout=ATTACH_PATIENCE)
    results += attach_all(list(args.tree), tree=True, app=None, timeout=ATTACH_PATIENCE)
    for r in results:
        if not r["ok"]:
            raise LivepatchError(
                r["error"]["code"],
                f"--attach: {r['error']['message']} (nothing was loaded)",
            )
        if r["result"] not in ("already", "skipped") and not args.json:
            print(describe(r), file=sys.stderr)
