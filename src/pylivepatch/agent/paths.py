"""Where :mod:`.store` keeps an app's files, as strings, and the rule for app names.

An agent with an app checks at its start whether payloads are installed for it; with
none (the usual case) it needs only these few lines, not :mod:`.store` and what it
imports (pathlib, dataclasses): an idle agent's memory, docs/operating.md.
"""

from __future__ import annotations

import os
import re

from ..errors import LivepatchError

APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NO_APP = "_none"  # cannot collide: app names start with a letter or digit


def check_app(app: str) -> str:
    if not APP_NAME.fullmatch(app):
        raise LivepatchError(
            "invalid-payload",
            f"app name {app!r} is not valid: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 64 characters",
        )
    return app


def state_directory(explicit: str | None, xdg: str | None) -> str:
    """The state directory: ``explicit`` (``$PYLIVEPATCH_STATE_DIR``), else
    ``xdg/pylivepatch`` (``$XDG_STATE_HOME``), else ``~/.local/state/pylivepatch``."""
    if explicit:
        return explicit
    if xdg:
        return os.path.join(xdg, "pylivepatch")
    home = os.path.expanduser("~")
    if home.startswith("~"):  # no $HOME and no passwd entry: as ``Path.home()`` says
        raise RuntimeError("Could not determine home directory.")
    return os.path.join(home, ".local", "state", "pylivepatch")


def installed_directory(app: str) -> str:
    """Where the payloads installed for ``app`` are (:func:`.store.installed`)."""
    env = os.environ
    root = state_directory(env.get("PYLIVEPATCH_STATE_DIR"), env.get("XDG_STATE_HOME"))
    return os.path.join(root, "apps", check_app(app), "installed")
