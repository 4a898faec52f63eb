"""A Management API MetricsSnapshot as Prometheus metric families: the one
conversion behind a container's own ``/metrics`` (its HTTP face) and the
manager's scrape-through of it (``/metrics/containers``,
``/containers/{name}/metrics``), which differ only in the labels the
manager adds (``container``, ``name``).

Snapshots of several containers go into one :class:`Families`: a family is
written once, with every container's samples in it, as the exposition
formats require.

What a snapshot holds becomes:

- its process figures: Prometheus' standard ``process_*`` names (those its
  own client libraries write, so stock dashboards read them);
- its per-method RPC figures: the ``grpc_server_*`` names of gRPC's
  Prometheus conventions (go-grpc-prometheus), with ``grpc_service``,
  ``grpc_method`` and ``grpc_code`` labels;
- its application metrics (OpenTelemetry instruments): named by the
  OpenTelemetry specification's Prometheus rules (invalid characters as
  ``_``, the unit as a suffix, ``_total`` for counters), their attributes as
  labels (two keys made alike, ``a.b`` and ``a_b``, one label with both values
  joined by ``;``, as the specification says), and the meter's name as
  ``otel_scope_name``. An attribute named as a label set here (the manager's
  ``container`` and ``name``, ``otel_scope_name``, a histogram's ``le``) is
  kept as ``exported_container`` and so on, as Prometheus keeps a target's own
  labels it overrides.

Nothing a snapshot holds can break a scrape (Prometheus refuses a whole
scrape with a series twice or a family of two types): a name met again with
another type, or a series met again, is dropped and counted
(:attr:`Families.conflicts`, and a warning the first time a name meets it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import Metric

from ..units import duration_field, timestamp_field
from ..v1 import metrics_pb2
from ._names import label_name, metric_name, split_method, unit_suffix

__all__ = ["COUNTER", "GAUGE", "HISTOGRAM", "Families", "cumulative_buckets", "snapshot_families"]

_log = logging.getLogger("pycontainer")

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"

# A value: a number, or a histogram's (cumulative buckets ending at +Inf, sum).
Value = float | tuple[list[tuple[str, float]], float]

# Names a warning was logged for (each once per process, and only so many:
# a scrape every few seconds must not repeat it, nor a fleet grow it).
_WARNED: set[str] = set()
_MAX_WARNED = 256

_KINDS = {
    metrics_pb2.METRIC_KIND_COUNTER: COUNTER,
    metrics_pb2.METRIC_KIND_UP_DOWN_COUNTER: GAUGE,  # a value that goes both ways
    metrics_pb2.METRIC_KIND_GAUGE: GAUGE,
    metrics_pb2.METRIC_KIND_HISTOGRAM: HISTOGRAM,
}


@dataclass
class _Family:
    kind: str
    help: str
    unit: str
    samples: list[tuple[dict[str, str], Value]] = field(default_factory=list)
    # The series already in the family (Prometheus' identity: a label with
    # an empty value is no label).
    series: set[frozenset[tuple[str, str]]] = field(default_factory=set)


def cumulative_buckets(
    bounds: Sequence[float], bucket_counts: Sequence[int], count: int = 0
) -> list[tuple[str, float]]:
    """Per-bucket counts (OpenTelemetry's: bucket i holds bounds[i-1] < x <=
    bounds[i], one more for the overflow) as Prometheus' cumulative ``le``
    buckets, ending with ``+Inf``. A bound that is not finite or not above
    the one before is left out (its count stays in the next: buckets are
    cumulative); ``+Inf`` is at least ``count``, the histogram's own, so one
    without buckets still says how many it saw."""
    out: list[tuple[str, float]] = []
    running = 0
    last = -math.inf
    for index, bound in enumerate(bounds):
        running += bucket_counts[index] if index < len(bucket_counts) else 0
        if math.isfinite(bound) and bound > last:
            # Prometheus writes le="0.5", le="1.0": floats as Python repr does.
            out.append((repr(float(bound)), float(running)))
            last = bound
    running += sum(bucket_counts[len(bounds) :])
    out.append(("+Inf", float(max(running, count))))
    return out


def _warn_once(name: str, why: str) -> None:
    if name not in _WARNED and len(_WARNED) < _MAX_WARNED:
        _WARNED.add(name)
        _log.warning("Prometheus: samples of %s are left out: %s", name, why)


class Families:
    """Metric families under construction, by name: add snapshots (and any
    other sample), then :meth:`metrics`."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        #: Samples dropped: for a name already of another type, or a series
        #: already in its family.
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
            _warn_once(name, f"the name is a {family.kind} already, these are a {kind}")
            return
        series = frozenset((key, text) for key, text in labels.items() if text)
        if series in family.series:
            # Attributes "a.b" and "a_b" on two points are one label, say.
            self.conflicts += 1
            _warn_once(name, f"the series {dict(sorted(series))} is there twice")
            return
        family.series.add(series)
        family.samples.append((dict(labels), value))

    def metrics(self) -> list[Metric]:
        """Every family, by name, each sample with its own labels."""
        out: list[Metric] = []
        for name, family in sorted(self._families.items()):
            metric = Metric(name, family.help or name, family.kind, family.unit)
            for labels, value in family.samples:
                if isinstance(value, tuple):
                    buckets, total = value
                    for le, cumulative in buckets:
                        metric.add_sample(f"{metric.name}_bucket", {**labels, "le": le}, cumulative)
                    metric.add_sample(f"{metric.name}_count", labels, buckets[-1][1])
                    metric.add_sample(f"{metric.name}_sum", labels, total)
                else:
                    suffix = "_total" if family.kind == COUNTER else ""
                    metric.add_sample(metric.name + suffix, labels, value)
            out.append(metric)
        return out

    # -- snapshots ----------------------------------------------------------------------
    def add_snapshot(
        self, snapshot: metrics_pb2.MetricsSnapshot, labels: Mapping[str, str]
    ) -> None:
        """Everything ``snapshot`` holds, each sample with ``labels`` (a
        manager's ``container`` and ``name``, say) besides its own."""
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
            unit = "bytes" if name.endswith("_bytes") else ""
            self.add(name, GAUGE, help_text, labels, float(value), unit)
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
            self.add(
                "grpc_server_handling_seconds",
                HISTOGRAM,
                "Time the server took to complete RPCs, in seconds.",
                own,
                _histogram(method.latency_seconds),
                "seconds",
            )

    def _add_app_metric(self, metric: metrics_pb2.Metric, labels: Mapping[str, str]) -> None:
        kind = _KINDS.get(metric.kind)
        if kind is None:  # METRIC_KIND_UNSPECIFIED: nothing to call it
            return
        name = metric_name(metric.name)
        suffix = unit_suffix(metric.unit)
        if suffix and not name.endswith(f"_{suffix}"):
            name = f"{name}_{suffix}"
        if kind == COUNTER and name.endswith("_total"):
            name = name[: -len("_total")]
        # OpenMetrics' UNIT line for the base units alone (the name ends with it).
        unit = suffix if suffix in ("seconds", "bytes") else ""
        # HELP for every family, an instrument made without a description too.
        help_text = metric.description or (
            f"The OpenTelemetry instrument {metric.name}"
            + (f" (unit {metric.unit})" if metric.unit else "")
            + (f" of {metric.scope}" if metric.scope else "")
            + "."
        )
        # Labels an attribute must not take: the caller's, ours, Prometheus'.
        taken = {*labels, "otel_scope_name", *(("le",) if kind == HISTOGRAM else ())}
        for point in metric.points:
            which = point.WhichOneof("value")
            value: Value
            if which == "histogram" and kind == HISTOGRAM:
                value = _histogram(point.histogram)
            elif which in ("as_int", "as_double") and kind != HISTOGRAM:
                value = float(getattr(point, which))
            else:  # a point of another type than its metric: no sample of it
                continue
            own = dict(labels)
            if metric.scope:
                own["otel_scope_name"] = metric.scope
            for key, text in _attribute_labels(point.attributes).items():
                own[f"exported_{key}" if key in taken else key] = text
            self.add(name, kind, help_text, own, value, unit)


def _attribute_labels(attributes: Mapping[str, str]) -> dict[str, str]:
    """Attributes as labels: keys made valid; values of keys made alike
    joined by ``;`` in the order of the keys (the specification's rule)."""
    out: dict[str, str] = {}
    for key, text in sorted(attributes.items()):
        name = label_name(key)
        out[name] = f"{out[name]};{text}" if name in out else text
    return out


def _histogram(histogram: metrics_pb2.Histogram) -> Value:
    buckets = cumulative_buckets(
        histogram.explicit_bounds, histogram.bucket_counts, histogram.count
    )
    return buckets, histogram.sum


def snapshot_families(
    snapshot: metrics_pb2.MetricsSnapshot, labels: Mapping[str, str] | None = None
) -> list[Metric]:
    """``snapshot`` alone as metric families, each sample with ``labels`` too."""
    families = Families()
    families.add_snapshot(snapshot, labels or {})
    return families.metrics()
