"""A listing's table as rows of cells: a rich Table for a terminal, or, off a
terminal, the same text rich would print, written without rich.

A verb such as ``ps`` is mostly run in scripts and pipes, where rich's
styles are dropped anyway; rendering its rows through rich (and importing
it) took more time than the call to the manager. Off a terminal the text
here is rich's, character for character: columns as wide as their widest
cell, two spaces between them, lines without trailing spaces (as
``_output.show`` strips them). A cell rich would read differently (markup,
an emoji code, a character wider or narrower than one column) sends the
whole table through rich, so the two never differ.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["Styled", "TableRows", "indented", "plain_grid", "plain_stream", "plain_text"]

# The width rich gives a console off a terminal (_output.console): wider
# tables are squeezed by rich, so they go through rich.
_PLAIN_WIDTH = 10_000
# What rich reads as an emoji code (":smile:", rich._emoji_replace's pattern);
# compiled when a cell has a colon.
_EMOJI_CODE = r"(:(\S*?)(?:(?:\-)(emoji|text))?:)"
# The emoji names made of digits only: a time's ":15:" is none.
_DIGIT_EMOJI = ("100", "1234")


class Styled(NamedTuple):
    """A cell's text with the style a terminal shows it in ("bold red")."""

    text: str
    style: str = ""


Cell = str | Styled


def _text(cell: Cell) -> str:
    return cell.text if isinstance(cell, Styled) else cell


def _as_is(text: str) -> bool:
    """Whether rich prints ``text`` as it is, one column per character:
    printable ASCII, without markup ("[bold]") or an emoji code."""
    if not (text.isascii() and text.isprintable()) or "[" in text:
        return False
    if ":" not in text:
        return True
    # A code rich may replace: any name but digits (telling which names are
    # emoji would import rich's table of them).
    return all(
        name.isdigit() and name not in _DIGIT_EMOJI for _, name, _ in re.findall(_EMOJI_CODE, text)
    )


class TableRows:
    """A borderless table with bold headers, as kubectl prints them."""

    def __init__(self, headers: Sequence[str], *, wrap_last: bool = False) -> None:
        self.headers = headers
        self.rows: list[Sequence[Cell]] = []
        # Whether the last column wraps on a terminal (a message); off one, no
        # line is wrapped (the console is 10,000 columns wide).
        self.wrap_last = wrap_last

    def add_row(self, *cells: Cell) -> None:
        self.rows.append(cells)

    def plain(self) -> str | None:
        """The table as rich prints it off a terminal, one line each, without
        trailing spaces; None when a cell needs rich to read it."""
        lines = [list(self.headers), *([_text(c) for c in row] for row in self.rows)]
        if not all(_as_is(text) for line in lines for text in line):
            return None
        widths = [max(len(line[i]) for line in lines) for i in range(len(self.headers))]
        if sum(widths) + 2 * (len(widths) - 1) > _PLAIN_WIDTH:
            return None
        return "\n".join(
            "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
            for line in lines
        )

    def rich(self) -> Table:
        """The table for a rich console (styles shown on a terminal)."""
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        for header in self.headers:
            table.add_column(header, no_wrap=True)
        if self.wrap_last and table.columns:
            table.columns[-1].no_wrap = False
        for row in self.rows:
            table.add_row(
                *(Text(c.text, style=c.style) if isinstance(c, Styled) else c for c in row)
            )
        return table


def plain_grid(rows: Sequence[tuple[str, Cell]]) -> str | None:
    """Labels and values as rich prints ``Table.grid(padding=(0, 2))`` off a
    terminal: the labels' column as wide as the widest, two spaces, the value
    (a value's further lines under its first); None when a cell needs rich."""
    if not rows:
        return ""
    values = [_text(value).split("\n") for _, value in rows]
    if not all(_as_is(key) for key, _ in rows) or not all(
        _as_is(line) for lines in values for line in lines
    ):
        return None
    width = max(len(key) for key, _ in rows)
    if width + 2 + max(len(line) for lines in values for line in lines) > _PLAIN_WIDTH:
        return None
    out = []
    for (key, _), lines in zip(rows, values, strict=True):
        for index, line in enumerate(lines):
            out.append(f"{key if index == 0 else '':<{width}}  {line}".rstrip())
    return "\n".join(out)


def plain_text(text: str) -> bool:
    """Whether rich prints ``Text(text)`` off a terminal as it is: printable
    lines (no tab, which rich expands) that no 10,000-column console wraps."""
    return all(line.isprintable() and len(line) < _PLAIN_WIDTH - 2 for line in text.split("\n"))


def indented(text: str) -> str:
    """``text`` as rich's Padding(..., (0, 0, 0, 2)) prints it: each line two
    spaces in (an empty line stays empty: show() strips trailing spaces)."""
    return "\n".join(f"  {line}".rstrip() for line in text.split("\n"))


def plain_stream(stream: IO[str]) -> bool:
    """Whether rich would print on ``stream`` without styles: not a terminal,
    and no $FORCE_COLOR or $TTY_COMPATIBLE=1 saying to style it anyway."""
    if os.environ.get("FORCE_COLOR") or os.environ.get("TTY_COMPATIBLE") == "1":
        return False
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True
