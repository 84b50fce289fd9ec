"""The command line of ``pylivepatch fleet``: its verbs and their argument types.

Declared apart from :mod:`.fleet`, which runs them: every command line builds the whole
parser, and this module imports nothing but argparse and re (``fleet.py`` imports
dataclasses, tempfile, shutil... when a fleet verb runs).
"""

from __future__ import annotations

import argparse
import re

TYPE_CHECKING = False  # not typing's: see pylivepatch/__init__.py
if TYPE_CHECKING:
    from typing import Any


def _later(name: str) -> Any:
    """The function ``name`` of :mod:`.fleet`, imported when the verb runs."""

    def command(args: argparse.Namespace) -> int:
        from . import fleet

        return int(getattr(fleet, name)(args))

    return command


def register(sub: Any) -> None:
    """Declare ``fleet`` and its actions (Ansible is imported only when one runs)."""
    p = sub.add_parser("fleet", help="roll a payload out to many hosts, or back (Ansible)")
    actions = p.add_subparsers(dest="fleet_verb", metavar="ACTION")
    actions.required = True

    r = actions.add_parser(
        "rollout",
        help="canary batches with a health gate; on a failed gate, revert every host touched",
    )
    r.add_argument("file", help="the payload archive (.lpz) on this machine")
    _common(r)
    r.add_argument(
        "--plan", type=plan, default=[1, "10%", "100%"], metavar="1,10%,100%",
        help="batch sizes, hosts or percentages; the last repeats (default 1,10%%,100%%)",
    )  # fmt: skip
    r.add_argument(
        "--health", required=True, metavar="URL|CMD",
        help="checked on each host after its change: an http(s) URL fetched there (2xx is "
        "healthy) or a shell command run there (exit 0 is healthy)",
    )  # fmt: skip
    r.add_argument(
        "--soak", type=_seconds, default=0, metavar="SECONDS",
        help="after a healthy batch, wait this long and check its health again",
    )  # fmt: skip
    r.add_argument(
        "--max-fail", type=_percent, default=0.0, metavar="PERCENT",
        help="the gate: a batch with more than PERCENT%% of its hosts failed stops the rollout "
        "and reverts every host touched (default 0: any failure)",
    )  # fmt: skip
    r.add_argument("--health-retries", type=_count, default=5, metavar="N",
                   help="tries of each health check (default 5)")  # fmt: skip
    r.add_argument("--health-delay", type=_seconds, default=2, metavar="SECONDS",
                   help="between tries (default 2)")  # fmt: skip
    r.add_argument(
        "--keys", metavar="PATH",
        help="trusted public key(s) on the hosts: each host verifies the payload's signature "
        "before anything changes, and refuses an unsigned or untrusted one",
    )  # fmt: skip
    r.set_defaults(command_function=_later("rollout"))

    v = actions.add_parser("revert", help="revert and uninstall a payload on every host")
    v.add_argument("name", help="the payload name")
    _common(v)
    v.add_argument("--absent", action="store_true", help="also unload it from every process")
    v.set_defaults(command_function=_later("revert"))

    s = actions.add_parser("status", help="hosts x state x build id of an app's payloads")
    _common(s)
    s.add_argument("--name", help="only this payload")
    s.set_defaults(command_function=_later("status"))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--app", required=True, help="the app name on the hosts")
    p.add_argument("-i", "--inventory", required=True, help="an Ansible inventory")
    p.add_argument("--limit", metavar="PATTERN", help="only these hosts (Ansible's --limit)")
    p.add_argument("-v", "--verbose", action="store_true", help="also show Ansible's output")
    p.add_argument("--json", action="store_true", help="print one JSON document")


# --- argument types (usage errors: pylivepatch: usage: ..., exit 1) ---------------------


def plan(text: str) -> list[int | str]:
    """``1,10%,100%`` -> ``[1, "10%", "100%"]`` (Ansible's ``serial``)."""
    entries: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        percent = re.fullmatch(r"(\d+(?:\.\d+)?)%", part)
        if percent and 0 < float(percent.group(1)) <= 100:
            entries.append(part)
        elif part.isdigit() and int(part) > 0:
            entries.append(int(part))
        else:
            raise argparse.ArgumentTypeError(
                f"{part!r} in {text!r}: each batch is a number of hosts (1 or more) or a "
                "percentage (0-100%), e.g. 1,10%,100%"
            )
    return entries


def _seconds(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: whole seconds, 0 or more")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number, 1 or more")
    return int(text)


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: a percentage from 0 to 100")
    return value
