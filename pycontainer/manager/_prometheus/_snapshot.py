"""A Management API MetricsSnapshot as Prometheus metric families.

Snapshots of several containers go into one :class:`Families`: a family is
written once, with every container's samples in it (each with its
``container`` and ``name`` labels), as the exposition formats require.

What a snapshot holds becomes:

- its process figures: Prometheus' standard ``process_*`` names;
- its per-method RPC figures: the ``grpc_server_*`` names of gRPC's
  Prometheus conventions (go-grpc-prometheus), with ``grpc_service``,
  ``grpc_method`` and ``grpc_code`` labels;
- its application metrics (OpenTelemetry instruments): named by the
  OpenTelemetry specification's Prometheus rules (invalid characters as
  ``_``, the unit as a suffix, ``_total`` for counters), their attributes as
  labels, and the meter's name as ``otel_scope_name``. An attribute named as
  one of the labels the manager sets (``container``, ``name``) is kept as
  ``exported_container`` / ``exported_name``, as Prometheus keeps a target's
  own labels it overrides.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ...units import duration_field, timestamp_field
from ...v1 import metrics_pb2
from ._names import label_name, metric_name, split_method, unit_suffix

__all__ = ["Families", "cumulative_buckets"]

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"

# A value: a number, or a histogram's (cumulative buckets, sum).
Value = float | tuple[list[tuple[str, float]], float]


@dataclass
class _Family:
    kind: str
    help: str
    unit: str
    samples: list[tuple[dict[str, str], Value]] = field(default_factory=list)


def cumulative_buckets(
    bounds: Sequence[float], bucket_counts: Sequence[int]
) -> list[tuple[str, float]]:
    """Per-bucket counts (OpenTelemetry's: bucket i holds bounds[i-1] < x <=
    bounds[i], one more for the overflow) as Prometheus' cumulative ``le``
    buckets, ending with ``+Inf``."""
    out: list[tuple[str, float]] = []
    running = 0
    for index, bound in enumerate(bounds):
        running += bucket_counts[index] if index < len(bucket_counts) else 0
        out.append((_bound(bound), float(running)))
    running += sum(bucket_counts[len(bounds) :])
    out.append(("+Inf", float(running)))
    return out


def _bound(value: float) -> str:
    # Prometheus writes le="0.5", le="1.0": floats as Python repr does.
    return repr(float(value)) if math.isfinite(value) else "+Inf"


class Families:
    """Metric families under construction, by name: add snapshots (and any
    other sample), then :meth:`metrics`. A name met again with another kind
    (two containers disagreeing on what ``orders`` is) keeps the first and
    drops the rest: one family has one type."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        #: Samples dropped for a name already of another kind.
        self.conflicts = 0

    # -- any sample ---------------------------------------------------------------------
    def add(
        self,
        name: str,
        kind: str,
        help_text: str,
        labels: Mapping[str, str],
        value: Value,
        unit: str = "",
    ) -> None:
        """One sample of the family ``name`` (for counters: without ``_total``)."""
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = _Family(kind, help_text, unit)
        elif family.kind != kind:
            self.conflicts += 1
            return
        family.samples.append((dict(labels), value))

    def metrics(self) -> list[Metric]:
        """Every family, each with the union of its samples' label names (a
        sample without one of them has it empty: Prometheus' absent label).
        A sample whose labels another of the family has already (attributes
        "a.b" and "a_b" are one label) is dropped and counted in
        :attr:`conflicts`: Prometheus refuses a whole scrape with a series twice."""
        out: list[Metric] = []
        for name, family in sorted(self._families.items()):
            names = sorted({key for labels, _ in family.samples for key in labels})
            metric: CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
            help_text = family.help or name
            if family.kind == COUNTER:
                metric = CounterMetricFamily(name, help_text, labels=names, unit=family.unit)
            elif family.kind == GAUGE:
                metric = GaugeMetricFamily(name, help_text, labels=names, unit=family.unit)
            else:
                metric = HistogramMetricFamily(name, help_text, labels=names, unit=family.unit)
            seen: set[tuple[str, ...]] = set()
            for labels, value in family.samples:
                values = [labels.get(key, "") for key in names]
                if tuple(values) in seen:
                    self.conflicts += 1
                    continue
                seen.add(tuple(values))
                if isinstance(value, tuple):
                    assert isinstance(metric, HistogramMetricFamily)
                    metric.add_metric(values, value[0], value[1])
                else:
                    assert not isinstance(metric, HistogramMetricFamily)
                    metric.add_metric(values, value)
            out.append(metric)
        return out

    # -- snapshots ----------------------------------------------------------------------
    def add_snapshot(
        self, snapshot: metrics_pb2.MetricsSnapshot, labels: Mapping[str, str]
    ) -> None:
        """Everything ``snapshot`` holds, each sample with ``labels`` (the
        container's) besides its own."""
        if snapshot.HasField("process"):
            self._add_process(snapshot, labels)
        self.add_rpc_methods(snapshot.rpc_methods, labels)
        for metric in snapshot.metrics:
            self._add_app_metric(metric, labels)

    def _add_process(
        self, snapshot: metrics_pb2.MetricsSnapshot, labels: Mapping[str, str]
    ) -> None:
        process = snapshot.process
        self.add(
            "process_cpu_seconds",
            COUNTER,
            "Total user and system CPU time spent in seconds.",
            labels,
            process.cpu_user_seconds + process.cpu_system_seconds,
            "seconds",
        )
        gauges = (
            ("process_resident_memory_bytes", "Resident memory size in bytes.", process.rss_bytes),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes.", process.vms_bytes),
            ("process_open_fds", "Number of open file descriptors.", process.open_fds),
            ("process_threads", "Number of OS threads in the process.", process.threads),
        )
        for name, help_text, value in gauges:
            self.add(name, GAUGE, help_text, labels, float(value), _unit_of(name))
        self.add(
            "process_context_switches",
            COUNTER,
            "Voluntary and involuntary context switches since the process started.",
            labels,
            float(process.context_switches),
        )
        try:
            taken = timestamp_field(snapshot, "time")
            uptime = duration_field(process, "uptime")
        except (ValueError, OverflowError):  # a time no datetime holds: not shown
            return
        if taken is not None and uptime is not None:
            self.add(
                "process_start_time_seconds",
                GAUGE,
                "Start time of the process since unix epoch in seconds.",
                labels,
                (taken - uptime).timestamp(),
                "seconds",
            )

    def add_rpc_methods(
        self, methods: Iterable[metrics_pb2.RpcMethodMetrics], labels: Mapping[str, str]
    ) -> None:
        """Per-method figures of a gRPC server, as gRPC's ``grpc_server_*``."""
        for method in methods:
            service, name = split_method(method.method)
            own = {**labels, "grpc_service": service, "grpc_method": name}
            m = method
            counters = (
                ("grpc_server_started", "RPCs started on the server.", m.calls_started),
                (
                    "grpc_server_msg_received",
                    "Messages received from clients.",
                    m.messages_received,
                ),
                ("grpc_server_msg_sent", "Messages sent to clients.", m.messages_sent),
                ("grpc_server_received_bytes", "Serialized bytes received.", m.bytes_received),
                ("grpc_server_sent_bytes", "Serialized bytes sent.", m.bytes_sent),
            )
            for family, help_text, value in counters:
                self.add(family, COUNTER, help_text, own, float(value))
            for code, count in sorted(method.status_codes.items()):
                self.add(
                    "grpc_server_handled",
                    COUNTER,
                    "RPCs completed on the server, by status code.",
                    {**own, "grpc_code": code},
                    float(count),
                )
            self.add(
                "grpc_server_in_flight",
                GAUGE,
                "RPCs in flight on the server.",
                own,
                float(method.calls_in_flight),
            )
            latency = method.latency_seconds
            self.add(
                "grpc_server_handling_seconds",
                HISTOGRAM,
                "Time the server took to complete RPCs, in seconds.",
                own,
                (cumulative_buckets(latency.explicit_bounds, latency.bucket_counts), latency.sum),
                "seconds",
            )

    def _add_app_metric(self, metric: metrics_pb2.Metric, labels: Mapping[str, str]) -> None:
        name = metric_name(metric.name)
        suffix = unit_suffix(metric.unit)
        if suffix and not name.endswith(f"_{suffix}"):
            name = f"{name}_{suffix}"
        kind = {
            metrics_pb2.METRIC_KIND_COUNTER: COUNTER,
            metrics_pb2.METRIC_KIND_UP_DOWN_COUNTER: GAUGE,
            metrics_pb2.METRIC_KIND_GAUGE: GAUGE,
            metrics_pb2.METRIC_KIND_HISTOGRAM: HISTOGRAM,
        }.get(metric.kind)
        if kind is None:
            return
        if kind == COUNTER and name.endswith("_total"):
            name = name[: -len("_total")]
        unit = suffix if suffix in ("seconds", "bytes") else ""
        # HELP for every family, an instrument made without a description too.
        help_text = metric.description or (
            f"The OpenTelemetry instrument {metric.name}"
            + (f" (unit {metric.unit})" if metric.unit else "")
            + (f" of {metric.scope}" if metric.scope else "")
            + "."
        )
        for point in metric.points:
            own = dict(labels)
            if metric.scope:
                own["otel_scope_name"] = metric.scope
            for key, text in point.attributes.items():
                key = label_name(key)
                own[f"exported_{key}" if key in labels or key == "otel_scope_name" else key] = text
            which = point.WhichOneof("value")
            value: Value
            if which == "histogram":
                if kind != HISTOGRAM:
                    continue
                h = point.histogram
                value = (cumulative_buckets(h.explicit_bounds, h.bucket_counts), h.sum)
            elif which in ("as_int", "as_double") and kind != HISTOGRAM:
                value = float(getattr(point, which))
            else:
                continue
            self.add(name, kind, help_text, own, value, unit)


def _unit_of(name: str) -> str:
    return "bytes" if name.endswith("_bytes") else ""
