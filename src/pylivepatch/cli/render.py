"""Tables and progress for the command line: rich on a terminal when it is installed
(the ``cli`` extra), plain aligned text otherwise — in pipes, scripts and transcripts,
which see stable text (``PYLIVEPATCH_RICH=1`` forces rich, as wide as ``$COLUMNS``).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

TYPE_CHECKING = False  # not typing's: see pylivepatch/__init__.py
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import Any

    Row = Sequence[Any]


def _width(stream: Any = None) -> int:
    """The width to draw for: the terminal's, else ``$COLUMNS``, else 80 on a terminal
    (some report a size of 0x0: CI ptys, container consoles) and 200 in a pipe."""
    stream = sys.stdout if stream is None else stream
    tty = stream.isatty()
    if tty:
        try:
            columns = os.get_terminal_size(stream.fileno()).columns
        except (OSError, ValueError):
            columns = 0
        if columns > 0:
            return columns
    try:
        return max(40, int(os.environ.get("COLUMNS", "")))
    except ValueError:
        return 80 if tty else 200


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
        from rich.measure import Measurement
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
    console = Console(width=_width(), highlight=False, soft_wrap=True)
    needed = Measurement.get(console, console.options.update_width(1 << 16), t).maximum
    if needed > console.width:  # wider than the terminal: lines wrap, cells stay whole
        console = Console(width=needed, highlight=False, soft_wrap=True)
    console.print(t)


def _plain(header: Sequence[str], rows: list[list[str]], title: str | None) -> None:
    if title:
        print(title)
    widths = [max(len(r[i]) for r in [list(header), *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def line(text: str) -> None:
    print(text)


class Steps:
    """What an action reports while it runs: ``advance()`` after each process,
    ``note(text)`` for what it waits for now. Does nothing unless ``live``."""

    live = False

    def advance(self) -> None:
        pass

    def note(self, text: str) -> None:
        pass


class _Bar(Steps):
    live = True

    def __init__(self, bar: Any, task: Any) -> None:
        self.bar, self.task = bar, task

    def advance(self) -> None:
        self.bar.advance(self.task)

    def note(self, text: str) -> None:
        self.bar.update(self.task, note=text)


@contextmanager
def progress(label: str, total: int) -> Iterator[Steps]:
    """Progress on a terminal's stderr while an action runs over ``total`` processes
    (a bar for several, a spinner and the elapsed time for one), with the latest
    ``note`` (a transition waiting for threads). Nothing when stderr is not a terminal
    or rich is not installed; it is erased when the action ends."""
    if total < 1 or not sys.stderr.isatty():
        yield Steps()
        return
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
    except ImportError:
        yield Steps()
        return
    columns: list[ProgressColumn] = [SpinnerColumn(), TextColumn("{task.description}")]
    if total > 1:
        columns += [BarColumn(), MofNCompleteColumn(), TextColumn("processes")]
    columns += [TimeElapsedColumn(), TextColumn("{task.fields[note]}")]
    console = Console(file=sys.stderr, width=_width(sys.stderr))
    with Progress(*columns, console=console, transient=True) as bar:
        yield _Bar(bar, bar.add_task(label, total=total, note=""))
