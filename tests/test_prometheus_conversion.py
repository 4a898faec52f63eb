"""A Management API MetricsSnapshot as Prometheus families (the manager's
scrape-through), written by prometheus-client and read back by its parser:
OpenTelemetry names and units as the specification maps them, histograms'
buckets made cumulative, two containers' samples in one family each, and an
attribute named like the manager's own labels kept as exported_*."""

from __future__ import annotations

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pycontainer.manager._prometheus._snapshot import Families
from pycontainer.v1 import metrics_pb2

M = metrics_pb2


def _snapshot(requests: int) -> metrics_pb2.MetricsSnapshot:
    snapshot = M.MetricsSnapshot()
    counter = snapshot.metrics.add(
        name="http.server.requests",
        unit="{request}",
        kind=M.METRIC_KIND_COUNTER,
        scope="shop",
        description="Requests served",
    )
    counter.points.add(as_int=requests, attributes={"route": "/cart", "container": "mine"})
    latency = snapshot.metrics.add(name="http.latency", unit="ms", kind=M.METRIC_KIND_HISTOGRAM)
    latency.points.add(
        histogram=M.Histogram(
            count=4, sum=31.0, explicit_bounds=[5.0, 10.0], bucket_counts=[1, 2, 1]
        )
    )
    queue = snapshot.metrics.add(name="queue.size", unit="By", kind=M.METRIC_KIND_UP_DOWN_COUNTER)
    queue.points.add(as_double=2048.0)
    return snapshot


class _Fixed:
    def __init__(self, families: Families) -> None:
        self._metrics = families.metrics()

    def collect(self) -> list[object]:
        return self._metrics  # type: ignore[return-value]


def test_snapshots_of_two_containers_become_one_family_per_metric() -> None:
    families = Families()
    families.add_snapshot(_snapshot(3), {"container": "a-1", "name": "a"})
    families.add_snapshot(_snapshot(5), {"container": "b-1", "name": "b"})
    # Another container's "queue.size" that is a counter: one family, one type.
    other = M.MetricsSnapshot()
    other.metrics.add(name="queue.size", unit="By", kind=M.METRIC_KIND_COUNTER).points.add(as_int=1)
    families.add_snapshot(other, {"container": "c-1", "name": "c"})
    assert families.conflicts == 1
    # Attributes that are one label once made valid: one series, not two.
    twice = M.MetricsSnapshot()
    gauge = twice.metrics.add(name="temp", kind=M.METRIC_KIND_GAUGE)
    gauge.points.add(as_int=1, attributes={"room.id": "7"})
    gauge.points.add(as_int=2, attributes={"room_id": "7"})
    families.add_snapshot(twice, {"container": "d-1", "name": "d"})

    text = generate_latest(_Fixed(families)).decode()  # type: ignore[arg-type]
    assert families.conflicts == 2
    assert text.count("temp{") == 1
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert text.count("# TYPE http_server_requests_total counter") == 1
    requests = parsed["http_server_requests"]
    assert requests.type == "counter"
    assert requests.documentation == "Requests served"
    by_container = {s.labels["container"]: s for s in requests.samples}
    assert by_container["a-1"].value == 3
    assert by_container["b-1"].value == 5
    assert by_container["a-1"].labels == {
        "container": "a-1",
        "name": "a",
        "route": "/cart",
        "exported_container": "mine",
        "otel_scope_name": "shop",
    }

    latency = parsed["http_latency_milliseconds"]
    assert latency.type == "histogram"
    buckets = {
        s.labels["le"]: s.value
        for s in latency.samples
        if s.name.endswith("_bucket") and s.labels["container"] == "a-1"
    }
    assert buckets == {"5.0": 1, "10.0": 3, "+Inf": 4}
    count = [s for s in latency.samples if s.name.endswith("_count")]
    assert {s.value for s in count} == {4}

    queue = parsed["queue_size_bytes"]
    assert queue.type == "gauge"
    assert queue.documentation == "The OpenTelemetry instrument queue.size (unit By)."
    assert {s.labels["container"]: s.value for s in queue.samples} == {
        "a-1": 2048.0,
        "b-1": 2048.0,
    }
