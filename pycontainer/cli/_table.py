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
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["Styled", "TableRows", "plain_stream"]

# The width rich gives a console off a terminal (_output.console): wider
# tables are squeezed by rich, so they go through rich.
_PLAIN_WIDTH = 10_000
# Printable ASCII: one column each, as rich measures them.
_ONE_COLUMN = re.compile(r"[ -~]*")
# What rich would not print as it is: markup ("[bold]") and emoji codes (":smile:").
_RICH_SYNTAX = re.compile(r"\[|:\S*?:")


@dataclass(frozen=True)
class Styled:
    """A cell's text with the style a terminal shows it in ("bold red")."""

    text: str
    style: str = ""


Cell = str | Styled


def _text(cell: Cell) -> str:
    return cell.text if isinstance(cell, Styled) else cell


@dataclass
class TableRows:
    """A borderless table with bold headers, as kubectl prints them."""

    headers: Sequence[str]
    rows: list[Sequence[Cell]] = field(default_factory=list)

    def add_row(self, *cells: Cell) -> None:
        self.rows.append(cells)

    def plain(self) -> str | None:
        """The table as rich prints it off a terminal, one line each, without
        trailing spaces; None when a cell needs rich to read it."""
        lines = [list(self.headers), *([_text(c) for c in row] for row in self.rows)]
        for line in lines:
            for text in line:
                if not _ONE_COLUMN.fullmatch(text) or _RICH_SYNTAX.search(text):
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
        for row in self.rows:
            table.add_row(
                *(Text(c.text, style=c.style) if isinstance(c, Styled) else c for c in row)
            )
        return table


def plain_stream(stream: IO[str]) -> bool:
    """Whether rich would print on ``stream`` without styles: not a terminal,
    and no $FORCE_COLOR or $TTY_COMPATIBLE=1 saying to style it anyway."""
    if os.environ.get("FORCE_COLOR") or os.environ.get("TTY_COMPATIBLE") == "1":
        return False
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True
