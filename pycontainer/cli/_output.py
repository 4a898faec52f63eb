"""Printing a verb's results on the context's streams: rich consoles (colour
only on a terminal), tables without padding off a terminal, JSON and YAML.

rich and yaml are imported when something is printed with them: a listing
off a terminal (``print_table``) needs neither."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

from ._context import Context
from ._table import TableRows, plain_stream

if TYPE_CHECKING:
    from google.protobuf.message import Message
    from rich.console import Console, RenderableType

__all__ = [
    "console",
    "error_console",
    "message_dict",
    "print_data",
    "print_table",
    "show",
    "spinner",
]


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def console(ctx: Context, no_color: bool = False) -> Console:
    """A console on the context's stdout: colour only on a terminal (and never
    with --no-color or $NO_COLOR); no wrapping when piped."""
    from rich.console import Console

    terminal = _isatty(ctx.stdout)
    return Console(
        file=ctx.stdout,
        no_color=no_color or None,
        color_system=None if no_color else "auto",
        highlight=False,
        soft_wrap=not terminal,
        width=None if terminal else 10_000,
    )


def error_console(ctx: Context) -> Console:
    """A console on stderr, for spinners and notes that must not mix with output."""
    from rich.console import Console

    return Console(file=ctx.stderr, highlight=False)


def show(out: Console, *renderables: RenderableType) -> None:
    """Print tables and grids; off a terminal, without the spaces that pad
    their lines to the column widths (as kubectl's output has none)."""
    if out.is_terminal and _isatty(out.file):
        out.print(*renderables)
        return
    with out.capture() as captured:
        out.print(*renderables)
    text = "\n".join(line.rstrip() for line in captured.get().splitlines())
    out.file.write(text + "\n")
    out.file.flush()


def print_table(ctx: Context, table: TableRows, no_color: bool = False) -> None:
    """A listing on stdout: through rich on a terminal, else as the plain text
    rich would print (without importing it)."""
    text = table.plain() if plain_stream(ctx.stdout) else None
    if text is None:
        show(console(ctx, no_color), table.rich())
        return
    ctx.stdout.write(text + "\n")
    ctx.stdout.flush()


def message_dict(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data, with its zero-valued fields too."""
    from google.protobuf import json_format

    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def print_data(ctx: Context, data: Any, output: str) -> None:
    """``data`` as JSON or YAML on stdout."""
    if output == "json":
        import json

        ctx.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    else:
        import yaml

        ctx.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    ctx.stdout.flush()


@contextlib.contextmanager
def spinner(ctx: Context, text: str) -> Iterator[None]:
    """A rich.status spinner on stderr while something takes a moment (nothing
    when stderr is not a terminal)."""
    err = error_console(ctx)
    if not err.is_terminal:
        yield
        return
    with err.status(text):
        yield
