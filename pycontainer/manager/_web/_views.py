"""What the web view's scripts read: the manager's messages as small JSON
objects (the few fields a page shows, named for it, never the whole proto)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from google.protobuf import timestamp_pb2

from ...units import format_cpu, format_memory
from ...v1 import logs_pb2, manager_pb2
from .._registry import Entry, state_word
from ._usage import Sample

Json = dict[str, Any]


def _seconds(ts: timestamp_pb2.Timestamp) -> float | None:
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.seconds + ts.nanos / 1e9


def _short(enum_name: str, prefix: str) -> str:
    return enum_name[len(prefix) :] if enum_name.startswith(prefix) else enum_name


def health_word(c: manager_pb2.Container) -> str:
    """ready / not ready / - (never reported), as `ps -o wide` says it."""
    if not c.HasField("readiness"):
        return "-"
    return "ready" if c.readiness.ready else "not ready"


def container_view(entry: Entry, usage: Sample | None, replicas: int) -> Json:
    c = entry.to_proto()
    resources = c.identity.resources
    return {
        "id": c.identity.id,
        "name": c.identity.name,
        "state": state_word(c.state),
        "connected": c.connected,
        "health": health_word(c),
        "priority": c.identity.priority,
        "cpu_request": format_cpu(resources.cpu_millis) if resources.cpu_millis else "",
        "memory_request": format_memory(resources.memory_bytes) if resources.memory_bytes else "",
        "cpu_percent": usage.cpu_percent if usage else None,
        "rss_bytes": usage.rss_bytes if usage else None,
        "pid": c.pid or None,
        "restarts": c.restarts,
        "created": _seconds(c.create_time),
        "reason": c.reason or c.error,
        "replicas": replicas,
        "labels": dict(c.identity.labels),
        "terminal": entry.terminal,
    }


def fleet_view(entries: list[Entry], usage: dict[str, Sample]) -> list[Json]:
    """The fleet table's rows: what lives and what ended while this manager
    ran, by name (what `up`'s live view lists)."""
    live = Counter(e.name for e in entries if not e.terminal)
    return [
        container_view(e, usage.get(e.id), live[e.name])
        for e in sorted(entries, key=lambda e: (e.name, e.create_time))
        if not e.terminal or e.finish_time is not None
    ]


def event_view(event: manager_pb2.Event) -> Json:
    return {
        "sequence": event.sequence,
        "time": _seconds(event.time),
        "type": _short(manager_pb2.EventType.Name(event.type), "EVENT_TYPE_"),
        "container": event.container_name or event.container_id,
        "container_id": event.container_id,
        # RUNNING, not LIFECYCLE_STATE_RUNNING, as the CLI says it.
        "message": event.message.replace("LIFECYCLE_STATE_", ""),
        "actor": event.actor,
    }


def log_view(entry: logs_pb2.LogEntry) -> Json:
    return {
        "time": _seconds(entry.time),
        "level": _short(logs_pb2.Severity.Name(entry.severity), "SEVERITY_"),
        "logger": entry.logger,
        "message": entry.message,
    }


def sample_view(sample: Sample) -> Json:
    return {"time": sample.time, "cpu": sample.cpu_percent, "rss": sample.rss_bytes}
