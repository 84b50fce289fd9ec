"""The contract in docs/spec.md and the code say the same thing: every error code the
code can raise is in spec §3 with its errno and exit code, and nothing else is."""

from __future__ import annotations

import errno
import re
from pathlib import Path

from pylivepatch.errors import CODES, RETRYABLE

SPEC = Path(__file__).resolve().parents[2] / "docs" / "spec.md"
ROW = re.compile(r"^\| `([a-z-]+)` \| ([A-Z]+) \| (\d)[^|]*\|", re.M)


def _section(text: str, number: int) -> str:
    start = re.search(rf"^## {number}\. ", text, re.M)
    assert start, f"spec.md has no section {number}"
    end = re.search(r"^## \d+\. ", text[start.end() :], re.M)
    return text[start.start() : start.end() + end.start() if end else len(text)]


def test_spec_lists_every_error_code_with_its_errno_and_exit_code():
    rows = {m[1]: (m[2], int(m[3])) for m in ROW.finditer(_section(SPEC.read_text(), 3))}
    assert set(rows) == set(CODES), (
        f"only in errors.py: {sorted(set(CODES) - set(rows))}; "
        f"only in spec §3: {sorted(set(rows) - set(CODES))}"
    )
    for code, (name, exit_code) in rows.items():
        assert getattr(errno, name) == CODES[code], f"{code}: spec says {name}"
        assert exit_code == (2 if code in RETRYABLE else 1), f"{code}: spec says exit {exit_code}"


def test_each_kind_list_is_declared_once_and_followed():
    """Hook kinds and consistency modes come from pylivepatch/kinds.py: what the engine
    keys by them has exactly those keys, and the spec names each."""
    from pylivepatch import kinds
    from pylivepatch.engine.base import DEFAULT_TIMEOUT
    from pylivepatch.engine.hooks import HOOKS

    assert tuple(DEFAULT_TIMEOUT) == kinds.CONSISTENCY
    assert tuple(HOOKS) == kinds.HOOK_KINDS
    assert {k for k, veto in HOOKS.items() if veto} == set(kinds.VETOING_HOOKS)
    text = SPEC.read_text()
    for name in (*kinds.HOOK_KINDS, *kinds.CONSISTENCY):
        assert f"`{name}`" in text, f"spec.md does not name {name}"
