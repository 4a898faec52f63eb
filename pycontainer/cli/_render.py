"""Readable forms of the manager's messages: state names, ages, times, tables."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterable

from google.protobuf import timestamp_pb2
from rich.table import Table
from rich.text import Text

from ..units import format_cpu, format_memory
from ..v1 import container_pb2, logs_pb2, manager_pb2

__all__ = [
    "STATE_NAMES",
    "age",
    "container_table",
    "local_time",
    "parse_state",
    "plain_table",
    "short_enum",
    "state_name",
    "state_text",
]

_STATE_PREFIX = "LIFECYCLE_STATE_"
STATE_NAMES: dict[str, int] = {
    name.removeprefix(_STATE_PREFIX).lower(): number
    for name, number in container_pb2.LifecycleState.items()
    if number != container_pb2.LIFECYCLE_STATE_UNSPECIFIED
}

_STATE_STYLES: dict[int, str] = {
    container_pb2.LIFECYCLE_STATE_RUNNING: "green",
    container_pb2.LIFECYCLE_STATE_PAUSED: "yellow",
    container_pb2.LIFECYCLE_STATE_FAILED: "bold red",
    container_pb2.LIFECYCLE_STATE_STOPPED: "dim",
}


def parse_state(text: str) -> int:
    """A LifecycleState from ``running`` (or ``RUNNING``, ``LIFECYCLE_STATE_RUNNING``)."""
    key = text.strip().lower().removeprefix(_STATE_PREFIX.lower())
    if key not in STATE_NAMES:
        raise ValueError(f"unknown state {text!r}: use one of {', '.join(STATE_NAMES)}")
    return STATE_NAMES[key]


def state_name(state: int) -> str:
    """``RUNNING`` for LIFECYCLE_STATE_RUNNING."""
    if state == container_pb2.LIFECYCLE_STATE_UNSPECIFIED:
        return "UNKNOWN"
    return short_enum(container_pb2.LifecycleState.Name(state))  # type: ignore[arg-type]


def state_text(state: int) -> Text:
    """The state name, coloured by what it means."""
    return Text(state_name(state), style=_STATE_STYLES.get(state, ""))


def short_enum(name: str) -> str:
    """An enum value name without its type prefix: EVENT_TYPE_LOST -> LOST."""
    for prefix in (_STATE_PREFIX, "EVENT_TYPE_", "ENDPOINT_KIND_", "SEVERITY_"):
        if name.startswith(prefix):
            return name.removeprefix(prefix)
    return name


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


def container_table(
    containers: Iterable[manager_pb2.Container], *, show_labels: bool = False
) -> Table:
    """The ps listing."""
    headers = ["NAME", "ID", "STATE", "CONNECTED", "PRIORITY", "CPU", "MEMORY", "PID"]
    headers += ["RESTARTS", "AGE"]
    if show_labels:
        headers.append("LABELS")
    table = plain_table(*headers)
    now = time.time()
    for c in containers:
        cpu, memory = resources_text(c.identity.resources)
        row: list[str | Text] = [
            c.identity.name,
            c.identity.id,
            state_text(c.state),
            "yes" if c.connected else "no",
            str(c.identity.priority),
            cpu,
            memory,
            str(c.pid) if c.pid else "-",
            str(c.restarts),
            age(c.create_time, now),
        ]
        if show_labels:
            row.append(",".join(f"{k}={v}" for k, v in sorted(c.identity.labels.items())) or "-")
        table.add_row(*row)
    return table


_SEVERITY_NAMES = {
    "trace": logs_pb2.SEVERITY_TRACE,
    "debug": logs_pb2.SEVERITY_DEBUG,
    "info": logs_pb2.SEVERITY_INFO,
    "warn": logs_pb2.SEVERITY_WARN,
    "warning": logs_pb2.SEVERITY_WARN,
    "error": logs_pb2.SEVERITY_ERROR,
    "fatal": logs_pb2.SEVERITY_FATAL,
    "critical": logs_pb2.SEVERITY_FATAL,
}
SEVERITY_CHOICES = ("trace", "debug", "info", "warn", "error", "fatal")


def parse_severity(text: str) -> int:
    """A Severity from ``warn`` (or warning, WARN, error, critical, ...)."""
    key = text.strip().lower()
    if key not in _SEVERITY_NAMES:
        raise ValueError(f"unknown level {text!r}: use one of {', '.join(SEVERITY_CHOICES)}")
    return _SEVERITY_NAMES[key]
