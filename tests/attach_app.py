"""The module a payload patches in attach tests (imported by attach_target.py)."""


def answer() -> str:
    return "old"
