"""Shell completion for bash and zsh, through argcomplete (the ``cli`` extra).

``eval "$(pylivepatch completion bash)"`` (or ``zsh``) registers it; the shell then runs
``pylivepatch`` with ``_ARGCOMPLETE`` set for every TAB, and this module answers:
verbs and options from the parser, ``-p``/``--tree`` with the pids of live agents,
``--app`` with app names, ``NAME`` with the payloads of the target; options when
the word starts with ``-``. argcomplete is
imported only then: a command line that runs a verb never pays for it.
"""

from __future__ import annotations

import argparse

from ..errors import LivepatchError
from .exits import EXIT_OK

TYPE_CHECKING = False  # not typing's: see pylivepatch/__init__.py
if TYPE_CHECKING:
    from typing import Any


def register(sub: Any) -> None:
    """Declare ``completion``."""
    p = sub.add_parser("completion", help="print the shell completion script (bash or zsh)")
    p.add_argument(
        "shell", choices=("bash", "zsh"), help='the shell: eval "$(pylivepatch completion bash)"'
    )  # fmt: skip
    p.set_defaults(command_function=command)


def command(args: argparse.Namespace) -> int:
    print(script(args.shell), end="")
    return EXIT_OK


def script(shell: str) -> str:
    """The registration script for ``shell``."""
    try:
        import argcomplete
    except ImportError:
        raise LivepatchError(
            "not-found", "shell completion needs argcomplete: pip install 'pylivepatch[cli]'"
        ) from None
    return str(argcomplete.shellcode(["pylivepatch"], shell=shell))


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell and exit (argcomplete writes to the descriptor it opened)."""
    try:
        import argcomplete
    except ImportError:
        raise SystemExit(1) from None
    argcomplete.autocomplete(parser, always_complete_options=False)


def _live() -> list[dict[str, Any]]:
    from .remote import discover

    try:
        return discover(warn=False)
    except LivepatchError:  # an untrusted socket directory: nothing to offer
        return []


def pids(prefix: str = "", **_: Any) -> list[str]:
    return [str(i["pid"]) for i in _live() if str(i["pid"]).startswith(prefix)]


def apps(prefix: str = "", **_: Any) -> list[str]:
    from ..agent import store

    names = {str(i.get("app") or "") for i in _live()}
    try:
        names |= {a for a in store.apps() if a != store.NO_APP}
    except (OSError, LivepatchError):
        pass
    return sorted(n for n in names if n and n.startswith(prefix))


def payload_names(
    prefix: str = "", parsed_args: argparse.Namespace | None = None, **_: Any
) -> list[str]:
    """Payloads uploaded in the processes named so far (every live one if none is)."""
    from ..client import Client
    from .remote import select

    try:
        chosen = select(parsed_args) if parsed_args is not None else []
    except Exception:  # noqa: BLE001 - no target yet, or one that is gone
        chosen = []
    names: set[str] = set()
    for pid in chosen or [i["pid"] for i in _live()]:
        try:
            names |= {s.name for s in Client(pid, timeout=2).list()}
        except LivepatchError:
            continue
    return sorted(n for n in names if n.startswith(prefix))


def installed_names(
    prefix: str = "", parsed_args: argparse.Namespace | None = None, **_: Any
) -> list[str]:
    from ..agent import store

    app = getattr(parsed_args, "app", None)
    if not app:
        return []
    try:
        return [i.name for i in store.installed(app) if i.name.startswith(prefix)]
    except (OSError, LivepatchError):
        return []
