"""Verbs on running processes, through their agents (spec §10): ``ps``, ``list``,
``log``, ``status``; the actions ``upload``, ``load``, ``apply``, ``revert``,
``replace``, ``unload`` (all or nothing over the TARGET); ``install`` and
``uninstall`` for an app's new processes. The commands are :mod:`.remote`'s,
imported when the verb runs."""

from __future__ import annotations

from .options import (
    FORCE_HELP,
    NODEPS_HELP,
    TIMEOUT_HELP,
    change_flags,
    json_flag,
    later,
    one_app,
    payload_file,
    payload_name,
    seconds,
    target,
)

TYPE_CHECKING = False  # not typing's: see pylivepatch/__init__.py
if TYPE_CHECKING:
    from typing import Any

#: the actions: each is all or nothing over the processes of its TARGET
ACTIONS = {
    "apply": "make an uploaded payload's code run (all or nothing)",
    "revert": "put back the code an applied payload replaced",
    "replace": "apply a payload and revert every other one in one step",
    "unload": "forget an uploaded payload that is not applied",
}


def register(sub: Any) -> None:
    p = sub.add_parser("ps", help="processes with an agent (all, or those of the TARGET)")
    target(p)
    p.set_defaults(command_function=later("remote", "ps"))
    p = sub.add_parser("list", help="payloads of the target processes")
    p.add_argument(
        "--installed", action="store_true", help="payloads installed for an app (--app) instead"
    )
    target(p)
    p.set_defaults(command_function=later("remote", "show"))
    p = sub.add_parser("log", help="the audit log: every action, who asked, its result")
    p.add_argument("--events", action="store_true", help="the live event history of processes")
    p.add_argument(
        "-n", "--last", type=int, metavar="N", help="only the last N records (of each process "
        "with --events)",
    )  # fmt: skip
    target(p)
    p.set_defaults(command_function=later("remote", "show"))
    p = sub.add_parser("status", help="one payload in the target processes")
    payload_name(p)
    target(p)
    p.set_defaults(command_function=later("remote", "show"))

    p = sub.add_parser(
        "upload", help="upload and check a payload (nothing changes)",
        usage="%(prog)s [NAME] FILE TARGET [options]",
    )  # fmt: skip
    p.add_argument(
        "name", nargs="?", metavar="NAME", help="payload name; optional: the archive names it "
        "(kept for `upload NAME FILE`, which must match it)",
    )  # fmt: skip
    payload_file(p)
    change_flags(p, timeout=False, checks=True)
    target(p)
    p.set_defaults(command_function=later("remote", "act"))
    p = sub.add_parser("load", help="upload and apply a payload (all or nothing)")
    payload_file(p)
    change_flags(p, nodeps=True, checks=True)
    p.add_argument(
        "--attach", action="store_true",
        help="first start an agent (pylivepatch attach) in every -p/--tree process that has "
        "none; a failed attach stops the load before anything changes",
    )  # fmt: skip
    target(p)
    p.set_defaults(command_function=later("remote", "act"))
    for verb, text in ACTIONS.items():
        p = sub.add_parser(verb, help=text)
        payload_name(p)
        if verb != "unload":
            p.add_argument("--timeout", type=seconds, metavar="SECONDS", help=TIMEOUT_HELP)
            p.add_argument("--force", action="store_true", help=FORCE_HELP)
        if verb == "apply":
            p.add_argument("--nodeps", action="store_true", help=NODEPS_HELP)
        target(p)
        p.set_defaults(command_function=later("remote", "act"))

    p = sub.add_parser("install", help="install a payload that new processes of an app apply")
    payload_file(p)
    one_app(p, True, "the app (`pylivepatch run --app NAME`)")
    json_flag(p)
    p.set_defaults(command_function=later("remote", "install"))
    p = sub.add_parser("uninstall", help="stop applying an installed payload in new processes")
    payload_name(p, installed=True)
    one_app(p, True, "the app it is installed for")
    json_flag(p)
    p.set_defaults(command_function=later("remote", "uninstall"))
