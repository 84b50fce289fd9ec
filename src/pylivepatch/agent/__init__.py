"""The agent: the control socket of a target process (SPEC §9)."""

from .server import Agent, start

__all__ = ["Agent", "start"]
