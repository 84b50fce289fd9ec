"""System states for payload code at run time (spec §6)::

from pylivepatch.state import get_state
st = get_state("fix-login", 7)   # the state 7 of payload fix-login, or None
"""

from __future__ import annotations

from .engine.state import SystemState, get_state

__all__ = ["SystemState", "get_state"]
