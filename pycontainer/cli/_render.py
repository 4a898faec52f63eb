"""Readable forms of the manager's messages: state names, ages, times, tables."""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..units import format_cpu, format_memory
from ..v1 import container_pb2, manager_pb2
from ._args import STATE_NAMES, parse_state
from ._table import Cell, Styled, TableRows

if TYPE_CHECKING:
    from google.protobuf import timestamp_pb2
    from rich.table import Table
    from rich.text import Text

__all__ = [
    "STATE_NAMES",
    "age",
    "container_table",
    "event_message",
    "event_subject",
    "local_time",
    "management_address",
    "parse_state",
    "plain_table",
    "short_enum",
    "short_id",
    "state_cell",
    "state_name",
    "state_text",
]

_STATE_PREFIX = "LIFECYCLE_STATE_"

_STATE_STYLES: dict[int, str] = {
    container_pb2.LIFECYCLE_STATE_RUNNING: "green",
    container_pb2.LIFECYCLE_STATE_PAUSED: "yellow",
    container_pb2.LIFECYCLE_STATE_FAILED: "bold red",
    container_pb2.LIFECYCLE_STATE_STOPPED: "dim",
}


def state_name(state: int) -> str:
    """``RUNNING`` for LIFECYCLE_STATE_RUNNING."""
    if state == container_pb2.LIFECYCLE_STATE_UNSPECIFIED:
        return "UNKNOWN"
    return short_enum(container_pb2.LifecycleState.Name(state))  # type: ignore[arg-type]


def short_id(container_id: str) -> str:
    """The id as events and tables abbreviate it: its last 8 characters
    (ids are NAME-RANDOM, so the tail tells replicas apart)."""
    return container_id[-8:] if len(container_id) > 8 else container_id


def event_subject(name: str, container_id: str) -> str:
    """How an event names its container: ``NAME/SHORT-ID`` (two replicas of a
    name are told apart), or the one of them that is known."""
    if not container_id or container_id == name:
        return name or container_id
    if not name:
        return short_id(container_id)
    return f"{name}/{short_id(container_id)}"


_STATE_WORD = re.compile(r"\bLIFECYCLE_STATE_([A-Z_]+)\b")


def event_message(text: str) -> str:
    """An event's message with the state words the tables use (RUNNING, not
    LIFECYCLE_STATE_RUNNING)."""
    return _STATE_WORD.sub(lambda m: m.group(1), text)


def state_cell(state: int) -> Styled:
    """The state name, coloured by what it means."""
    return Styled(state_name(state), _STATE_STYLES.get(state, ""))


def state_text(state: int) -> Text:
    """The state name, coloured by what it means, for a rich renderable."""
    from rich.text import Text

    cell = state_cell(state)
    return Text(cell.text, style=cell.style)


def short_enum(name: str) -> str:
    """An enum value name without its type prefix: EVENT_TYPE_LOST -> LOST."""
    for prefix in (_STATE_PREFIX, "EVENT_TYPE_", "ENDPOINT_KIND_", "SEVERITY_", "OPERATION_STATE_"):
        if name.startswith(prefix):
            return name.removeprefix(prefix)
    return name


#: The widest a name column shows: a long input a call named (an operation's
#: target, an event's subject) must not squeeze every other column.
NAME_CELL_WIDTH = 48


def clipped(text: str, width: int = NAME_CELL_WIDTH) -> str:
    """``text`` cut to ``width`` characters, the last one an ellipsis when cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def _seconds(ts: timestamp_pb2.Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def age(ts: timestamp_pb2.Timestamp, now: float | None = None) -> str:
    """Time since ``ts`` as kubectl shows it: 45s, 12m, 3h, 5d ("-" when unset)."""
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    elapsed = max(0.0, (time.time() if now is None else now) - _seconds(ts))
    if elapsed < 120:
        return f"{int(elapsed)}s"
    if elapsed < 2 * 3600:
        return f"{int(elapsed // 60)}m"
    if elapsed < 2 * 86400:
        return f"{int(elapsed // 3600)}h"
    return f"{int(elapsed // 86400)}d"


def local_time(ts: timestamp_pb2.Timestamp, *, date: bool | None = None) -> str:
    """``ts`` in local time, to the millisecond; the date too unless today
    (or when ``date`` says)."""
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    moment = datetime.datetime.fromtimestamp(_seconds(ts))
    if date is None:
        date = moment.date() != datetime.date.today()
    text = moment.strftime("%Y-%m-%d %H:%M:%S.%f" if date else "%H:%M:%S.%f")
    return text[:-3]


def plain_table(*headers: str) -> Table:
    """A borderless table with bold headers, as kubectl prints them."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for header in headers:
        table.add_column(header, no_wrap=True)
    return table


def resources_text(resources: container_pb2.ResourceRequirements) -> tuple[str, str]:
    """(cpu, memory) as Kubernetes writes them; "-" where nothing was asked."""
    cpu = format_cpu(resources.cpu_millis) if resources.cpu_millis else "-"
    memory = format_memory(resources.memory_bytes) if resources.memory_bytes else "-"
    return cpu, memory


def human_bytes(n: int) -> str:
    """A size to read at a glance: 812B, 4.0Ki, 68.9Mi, 1.2Gi."""
    size = float(n)
    for unit in ("B", "Ki", "Mi", "Gi", "Ti"):
        if size < 1024 or unit == "Ti":
            return f"{int(size)}B" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    raise AssertionError("unreachable")


def management_address(c: manager_pb2.Container) -> str:
    """The address of a container's Management endpoint ("" without one)."""
    for endpoint in c.identity.endpoints:
        if endpoint.kind == container_pb2.ENDPOINT_KIND_MANAGEMENT:
            return endpoint.address
    return ""


def ready_word(c: manager_pb2.Container) -> str:
    """Its readiness as last reported: yes, no, or - (never reported: an
    older container, taken as ready while RUNNING)."""
    if not c.HasField("readiness"):
        return "-"
    return "yes" if c.readiness.ready else "no"


def container_table(
    containers: Iterable[manager_pb2.Container],
    *,
    show_labels: bool = False,
    wide: bool = False,
) -> TableRows:
    """The ps listing; ``wide`` adds the readiness last reported, the version,
    the Management address, the reason for the state and the labels."""
    headers = ["NAME", "ID", "STATE", "CONNECTED", "PRIORITY", "CPU", "MEMORY", "PID"]
    headers += ["RESTARTS", "AGE"]
    if wide:
        headers += ["READY", "VERSION", "MANAGEMENT", "REASON"]
    show_labels = show_labels or wide
    if show_labels:
        headers.append("LABELS")
    table = TableRows(headers)
    now = time.time()
    for c in containers:
        cpu, memory = resources_text(c.identity.resources)
        row: list[Cell] = [
            c.identity.name,
            c.identity.id,
            state_cell(c.state),
            "yes" if c.connected else "no",
            str(c.identity.priority),
            cpu,
            memory,
            str(c.pid) if c.pid else "-",
            str(c.restarts),
            age(c.create_time, now),
        ]
        if wide:
            row += [
                ready_word(c),
                c.identity.version or "-",
                management_address(c) or "-",
                c.reason or "-",
            ]
        if show_labels:
            row.append(",".join(f"{k}={v}" for k, v in sorted(c.identity.labels.items())) or "-")
        table.add_row(*row)
    return table
