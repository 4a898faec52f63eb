"""A listing off a terminal is printed without rich, as the same text rich prints."""

from __future__ import annotations

import io
import random
import string
from typing import Any

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


def _container(rng: random.Random) -> Any:
    from pycontainer.v1 import container_pb2, manager_pb2, spec_pb2

    c = manager_pb2.Container(
        state=rng.choice(
            [container_pb2.LIFECYCLE_STATE_RUNNING, container_pb2.LIFECYCLE_STATE_FAILED]
        ),
        connected=rng.random() < 0.5,
        pid=rng.choice([0, 4242]),
        reason=rng.choice(["", "stopped by the operator"]),
        restarts=rng.randint(0, 3),
        error=rng.choice(["", "boom: exit code 1", "bad [thing]"]),
    )
    c.identity.name = rng.choice(["web", "a-much-longer-name"])
    c.identity.id = c.identity.name + "-3f2a1b9c"
    c.create_time.seconds = rng.choice([0, 1_700_000_000])
    for i in range(rng.randint(0, 3)):
        c.identity.labels[f"k{i}"] = rng.choice(["v", "x:y:z", "a [b]", "naïve", "1:2"])
    for i in range(rng.randint(0, 2)):
        endpoint = c.identity.endpoints.add(name=f"e{i}", address=f"127.0.0.1:{5000 + i}")
        endpoint.kind = container_pb2.ENDPOINT_KIND_MANAGEMENT
    if rng.random() < 0.5:
        c.spec.CopyFrom(
            spec_pb2.ContainerSpec(
                name=c.identity.name,
                command=["python", "-m", rng.choice(["app", "été"])],
                labels={"app": "web"},
            )
        )
    return c


def test_describe_off_a_terminal_is_what_rich_prints() -> None:
    from pycontainer.cli._containers import (
        _details,
        _endpoints,
        _plain_description,
        _spec_yaml,
        describe,
    )

    printed_plain = 0
    for seed in range(60):
        c = _container(random.Random(seed))
        parts = (_details(c), _endpoints(c), _spec_yaml(c))
        out = io.StringIO()
        describe(console(Context(out, io.StringIO())), *parts)
        plain = _plain_description(*parts)
        if plain is not None:  # (else rich prints it: a value rich reads differently)
            assert plain == out.getvalue(), seed
            printed_plain += 1
    assert printed_plain >= 10
