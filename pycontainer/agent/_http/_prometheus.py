"""/metrics: a container's MetricsSnapshot (what WatchMetrics sends) as
Prometheus metric families, through prometheus-client's own exposition.

One custom Collector turns each scrape's snapshot into families: the
process (``process_*``, the names Prometheus' own client libraries use), the
gRPC server per method (``grpc_server_*`` with ``grpc_service`` and
``grpc_method`` labels, the names go-grpc-prometheus made familiar) and the
app's OpenTelemetry metrics (names and attribute keys made Prometheus-safe,
attributes as labels, the meter as ``otel_scope_name``, as OpenTelemetry's
Prometheus exporter does). The families are built from the snapshot alone,
so they fit any snapshot, a container's or one relayed by a manager.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ... import units
from ...v1 import metrics_pb2

__all__ = ["SnapshotCollector", "snapshot_families", "snapshot_registry"]

_log = logging.getLogger("pycontainer")

_NOT_NAME = re.compile(r"[^a-zA-Z0-9_:]")
_NOT_LABEL = re.compile(r"[^a-zA-Z0-9_]")

# UCUM units OpenTelemetry's Prometheus exporter turns into a name suffix;
# "1" (a plain count) and units not listed add none.
_UNIT_SUFFIXES = {
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "%": "percent",
}


def metric_name(name: str, unit: str = "") -> str:
    """A Prometheus metric name for an OpenTelemetry instrument: characters
    outside [a-zA-Z0-9_:] become ``_``, a leading digit gets a ``_``, and a
    known unit its suffix (``app.latency`` in ms: ``app_latency_milliseconds``)."""
    text = _NOT_NAME.sub("_", name)
    if not text or text[0].isdigit():
        text = "_" + text
    suffix = _UNIT_SUFFIXES.get(unit)
    if suffix and not text.endswith("_" + suffix):
        text += "_" + suffix
    return text


def label_name(key: str) -> str:
    """A Prometheus label name for an attribute key (``http.route``: ``http_route``)."""
    text = _NOT_LABEL.sub("_", key)
    if not text or text[0].isdigit():
        text = "_" + text
    if text.startswith("__"):  # reserved for Prometheus' own labels
        text = "key" + text
    return text


def _labels(base: Mapping[str, str], attributes: Mapping[str, str]) -> dict[str, str]:
    out = dict(base)
    for key, value in sorted(attributes.items()):
        name = label_name(key)
        # Two keys that sanitize alike keep both values, as OpenTelemetry's
        # exporter joins them.
        out[name] = f"{out[name]};{value}" if name in out else value
    return out


def _family(families: dict[str, Metric], made: Metric, source: str) -> Metric | None:
    """The family of ``made``'s name, ``made`` itself the first time in a
    scrape; None (and a log line) when a metric of another type took the
    name first."""
    found = families.setdefault(made.name, made)
    if found.type != made.type:
        _log.warning(
            "/metrics: %s is left out: its name %s is a %s already", source, made.name, found.type
        )
        return None
    return found


def _add(family: Metric, labels: Mapping[str, str], value: float) -> None:
    # add_metric takes label values in the order of the family's label names;
    # points of one metric may differ in which attributes they carry, so
    # samples are added directly with their own labels.
    suffix = "_total" if family.type == "counter" else ""
    family.add_sample(family.name + suffix, dict(labels), value)


def _add_histogram(
    family: Metric, labels: Mapping[str, str], histogram: metrics_pb2.Histogram
) -> None:
    cumulative = 0
    bounds = list(histogram.explicit_bounds)
    for i, count in enumerate(histogram.bucket_counts):
        cumulative += count
        bound = bounds[i] if i < len(bounds) else float("inf")
        le = "+Inf" if bound == float("inf") else repr(float(bound))
        family.add_sample(family.name + "_bucket", {**labels, "le": le}, cumulative)
    if not histogram.bucket_counts:
        family.add_sample(family.name + "_bucket", {**labels, "le": "+Inf"}, histogram.count)
    family.add_sample(family.name + "_count", dict(labels), histogram.count)
    family.add_sample(family.name + "_sum", dict(labels), histogram.sum)


def _process(process: metrics_pb2.ProcessMetrics, snapshot_time: float) -> Iterator[Metric]:
    cpu = CounterMetricFamily(
        "process_cpu_seconds", "User and system CPU time spent, in seconds.", labels=["mode"]
    )
    cpu.add_metric(["user"], process.cpu_user_seconds)
    cpu.add_metric(["system"], process.cpu_system_seconds)
    yield cpu
    gauges = (
        ("process_resident_memory_bytes", "Resident memory size in bytes.", process.rss_bytes),
        ("process_virtual_memory_bytes", "Virtual memory size in bytes.", process.vms_bytes),
        ("process_threads", "Number of OS threads.", process.threads),
        ("process_open_fds", "Number of open file descriptors.", process.open_fds),
    )
    for name, documentation, value in gauges:
        yield GaugeMetricFamily(name, documentation, value=value)
    uptime = units.duration_from_proto(process.uptime).total_seconds()
    yield GaugeMetricFamily(
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch, in seconds.",
        value=snapshot_time - uptime,
    )
    yield CounterMetricFamily(
        "process_context_switches",
        "Voluntary and involuntary context switches.",
        value=process.context_switches,
    )


def _method_labels(method: str) -> dict[str, str]:
    service, _, name = method.strip("/").rpartition("/")
    return {"grpc_service": service, "grpc_method": name}


def _rpc(methods: Iterable[metrics_pb2.RpcMethodMetrics]) -> Iterator[Metric]:
    started = CounterMetricFamily("grpc_server_started", "RPCs started on the server.")
    handled = CounterMetricFamily(
        "grpc_server_handled", "RPCs completed on the server, by status code."
    )
    in_flight = GaugeMetricFamily("grpc_server_in_flight", "RPCs in flight on the server.")
    received = CounterMetricFamily(
        "grpc_server_msg_received", "Stream messages received from clients."
    )
    sent = CounterMetricFamily("grpc_server_msg_sent", "Stream messages sent to clients.")
    bytes_received = CounterMetricFamily(
        "grpc_server_received_bytes", "Serialized message bytes received from clients."
    )
    bytes_sent = CounterMetricFamily(
        "grpc_server_sent_bytes", "Serialized message bytes sent to clients."
    )
    latency = HistogramMetricFamily(
        "grpc_server_handling_seconds", "Time from the start of an RPC to its end, in seconds."
    )
    for m in methods:
        labels = _method_labels(m.method)
        _add(started, labels, m.calls_started)
        for code, count in sorted(m.status_codes.items()):
            _add(handled, {**labels, "grpc_code": code}, count)
        _add(in_flight, labels, m.calls_in_flight)
        _add(received, labels, m.messages_received)
        _add(sent, labels, m.messages_sent)
        _add(bytes_received, labels, m.bytes_received)
        _add(bytes_sent, labels, m.bytes_sent)
        _add_histogram(latency, labels, m.latency_seconds)
    yield from (started, handled, in_flight, received, sent, bytes_received, bytes_sent, latency)


def _app(metrics: Iterable[metrics_pb2.Metric], families: dict[str, Metric]) -> None:
    for metric in metrics:
        name = metric_name(metric.name, metric.unit)
        documentation = metric.description or metric.name
        made: Metric
        if metric.kind == metrics_pb2.METRIC_KIND_COUNTER:
            made = CounterMetricFamily(name, documentation)
        elif metric.kind == metrics_pb2.METRIC_KIND_HISTOGRAM:
            made = HistogramMetricFamily(name, documentation)
        else:  # up-down counters and gauges: a value that goes both ways
            made = GaugeMetricFamily(name, documentation)
        family = _family(families, made, f"the app metric {metric.name!r}")
        if family is None:
            continue
        for point in metric.points:
            labels = _labels({"otel_scope_name": metric.scope}, point.attributes)
            which = point.WhichOneof("value")
            if which == "histogram":
                _add_histogram(family, labels, point.histogram)
            elif which == "as_int":
                _add(family, labels, point.as_int)
            elif which == "as_double":
                _add(family, labels, point.as_double)


def snapshot_families(
    snapshot: metrics_pb2.MetricsSnapshot, const_labels: Mapping[str, str] | None = None
) -> list[Metric]:
    """``snapshot`` as Prometheus metric families (process, gRPC server,
    app), every sample labelled with ``const_labels`` too (a manager relaying
    a container's metrics adds ``container``)."""
    families: dict[str, Metric] = {}
    snapshot_time = units.timestamp_from_proto(snapshot.time).timestamp()
    if snapshot.HasField("process"):
        for family in _process(snapshot.process, snapshot_time):
            families[family.name] = family
    for family in _rpc(snapshot.rpc_methods):
        if family.samples:
            families[family.name] = family
    _app(snapshot.metrics, families)
    out = list(families.values())
    if const_labels:
        for family in out:
            family.samples = [
                sample._replace(labels={**const_labels, **sample.labels})
                for sample in family.samples
            ]
    return out


class SnapshotCollector(Collector):
    """A prometheus-client Collector reading a fresh snapshot on every scrape,
    with families of its own beside it (``extra``: the container's info and
    health, say)."""

    def __init__(
        self,
        snapshot: Callable[[], metrics_pb2.MetricsSnapshot],
        extra: Callable[[], Iterable[Metric]] = lambda: (),
    ) -> None:
        self._snapshot = snapshot
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        yield from snapshot_families(self._snapshot())
        yield from self._extra()

    def describe(self) -> list[Metric]:
        # Nothing up front: the registry must not collect (read the process
        # and the app's metrics) when the collector is registered.
        return []


def snapshot_registry(collector: Collector) -> CollectorRegistry:
    """A registry of ``collector`` alone (no process-wide default collectors:
    the snapshot has the process figures)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
