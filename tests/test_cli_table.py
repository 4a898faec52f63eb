"""A listing off a terminal is printed without rich, as the same text rich prints."""

from __future__ import annotations

import io
import random
import string

import pytest

from pycontainer.cli import Context
from pycontainer.cli._output import console, print_table, show
from pycontainer.cli._table import Styled, TableRows


def _through_rich(table: TableRows) -> str:
    out = io.StringIO()
    show(console(Context(out, io.StringIO())), table.rich())
    return out.getvalue()


def _printed(table: TableRows) -> str:
    out = io.StringIO()
    print_table(Context(out, io.StringIO()), table)
    return out.getvalue()


def _random_table(rng: random.Random) -> TableRows:
    alphabet = string.ascii_letters + string.digits + " -=,./_()"
    times = ["12:34:56.789", "2026-01-02 03:04:05.678", "127.0.0.1:50050", "a:b"]
    headers = [
        rng.choice(["NAME", "ID", "A", "LONGER HEADER", "X"]) for _ in range(rng.randint(1, 6))
    ]
    table = TableRows(headers, wrap_last=rng.random() < 0.5)
    for _ in range(rng.randint(0, 8)):
        cells: list[str | Styled] = []
        for _ in headers:
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
            if rng.random() < 0.2:
                text = rng.choice(times)
            cells.append(Styled(text, "bold red") if rng.random() < 0.3 else text)
        table.add_row(*cells)
    return table


@pytest.mark.parametrize("seed", range(40))
def test_the_plain_text_is_what_rich_prints(seed: int) -> None:
    table = _random_table(random.Random(seed))
    plain = table.plain()
    assert plain is not None
    assert plain + "\n" == _through_rich(table)
    assert _printed(table) == _through_rich(table)


@pytest.mark.parametrize(
    "cell",
    [
        "[bold]x[/bold]",
        "a [b] c",
        ":thumbs_up:",
        "x:y:z",
        "at 1:100:2",
        ":Smile-emoji:",
        "tab\there",
        "two\nlines",
        "naïve",
        "名前",
    ],
)
def test_a_cell_rich_reads_differently_goes_through_rich(cell: str) -> None:
    table = TableRows(["NAME", "VALUE"])
    table.add_row("n", cell)
    table.add_row("other", "-")
    assert table.plain() is None
    assert _printed(table) == _through_rich(table)


def test_a_terminal_or_forced_colour_gets_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    table = TableRows(["STATE"])
    table.add_row(Styled("RUNNING", "green"))
    monkeypatch.setenv("FORCE_COLOR", "1")
    coloured = _printed(table)
    assert "\x1b[" in coloured
    assert coloured == _through_rich(table)
