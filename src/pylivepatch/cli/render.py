"""Tables and progress for the command line: rich on a terminal when it is installed
(the ``cli`` extra), plain aligned text otherwise — in pipes, scripts and transcripts,
which see stable text (``PYLIVEPATCH_RICH=1`` forces rich, as wide as ``$COLUMNS``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

Row = Sequence[Any]


def _width() -> int:
    if sys.stdout.isatty():
        return os.get_terminal_size(sys.stdout.fileno()).columns
    try:
        return max(40, int(os.environ.get("COLUMNS", "")))
    except ValueError:
        return 200


def fancy() -> bool:
    """Rich tables on a terminal (or with ``PYLIVEPATCH_RICH=1``); plain aligned text
    for pipes and scripts, which also spares the command the import of rich."""
    return sys.stdout.isatty() or os.environ.get("PYLIVEPATCH_RICH") == "1"


def table(header: Sequence[str], rows: Sequence[Row], title: str | None = None) -> None:
    """Print a table; every cell is shown whole (no wrapping)."""
    cells = [[("-" if c is None or c == "" else str(c)) for c in row] for row in rows]
    if not fancy():
        _plain(header, cells, title)
        return
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        _plain(header, cells, title)
        return
    t = Table(
        box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False, show_edge=False
    )
    for h in header:
        t.add_column(h, no_wrap=True, overflow="fold")
    for row in cells:
        t.add_row(*row)
    Console(width=_width(), highlight=False, soft_wrap=True).print(t)


def _plain(header: Sequence[str], rows: list[list[str]], title: str | None) -> None:
    if title:
        print(title)
    widths = [max(len(r[i]) for r in [list(header), *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def line(text: str) -> None:
    print(text)


@contextmanager
def progress(label: str, total: int) -> Iterator[Any]:
    """A progress bar on a terminal's stderr for actions over several processes;
    ``advance()`` after each one. Nothing when stderr is not a terminal."""
    if total < 2 or not sys.stderr.isatty():
        yield lambda: None
        return
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    except ImportError:
        yield lambda: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("processes"),
        console=Console(file=sys.stderr),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)
