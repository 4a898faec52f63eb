"""A Management API MetricsSnapshot as Prometheus families (pycontainer._prometheus:
a container's /metrics and the manager's scrape-through alike), written by
prometheus-client and read back by its parser: OpenTelemetry names and units
as the specification maps them, histograms' buckets made cumulative, two
containers' samples in one family each, an attribute named like a label set
here kept as exported_*, and what would break a scrape dropped and counted."""

from __future__ import annotations

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pycontainer._prometheus import Families, FamiliesCollector, snapshot_families
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

    text = generate_latest(FamiliesCollector(families.metrics)).decode()  # type: ignore[arg-type]
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


def test_what_prometheus_would_refuse_is_made_valid_or_left_out() -> None:
    snapshot = M.MetricsSnapshot()
    # Keys that are one label once made valid, on one point: both values,
    # joined in the order of the keys; a key with a leading digit; "le" on a
    # histogram and the scope's label as attributes.
    speed = snapshot.metrics.add(name="2fast.rate", unit="By/s", kind=M.METRIC_KIND_GAUGE)
    speed.points.add(as_double=1.5, attributes={"a.b": "x", "a_b": "y", "9lives": "z"})
    waits = snapshot.metrics.add(
        name="queue wait", unit="s", kind=M.METRIC_KIND_HISTOGRAM, scope="jobs"
    )
    # An infinite bound and one not above the last are left out; buckets stay cumulative.
    waits.points.add(
        histogram=M.Histogram(
            count=6,
            sum=9.0,
            explicit_bounds=[1.0, 1.0, 2.0, float("inf")],
            bucket_counts=[1, 1, 2, 1, 1],
        ),
        attributes={"le": "7", "otel_scope_name": "mine"},
    )
    # A histogram without buckets still counts what it saw; a point of
    # another type than its metric is no sample.
    waits.points.add(histogram=M.Histogram(count=3, sum=1.0), attributes={"kind": "none"})
    waits.points.add(as_int=4)
    # A counter named with _total keeps one _total.
    snapshot.metrics.add(name="jobs_total", kind=M.METRIC_KIND_COUNTER).points.add(as_int=2)

    families = Families()
    families.add_snapshot(snapshot, {})
    text = generate_latest(FamiliesCollector(families.metrics)).decode()  # type: ignore[arg-type]
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    [rate] = parsed["_2fast_rate_bytes_per_second"].samples
    assert rate.labels == {"a_b": "x;y", "key_9lives": "z"}
    buckets = {
        tuple(sorted(s.labels.items())): s.value
        for s in parsed["queue_wait_seconds"].samples
        if s.name == "queue_wait_seconds_bucket"
    }
    mine = (("exported_le", "7"), ("exported_otel_scope_name", "mine"), ("otel_scope_name", "jobs"))
    assert buckets == {
        (*mine[:2], ("le", "1.0"), mine[2]): 1,
        (*mine[:2], ("le", "2.0"), mine[2]): 4,
        (*mine[:2], ("le", "+Inf"), mine[2]): 6,
        (("kind", "none"), ("le", "+Inf"), ("otel_scope_name", "jobs")): 3,
    }
    counts = [s.value for s in parsed["queue_wait_seconds"].samples if s.name.endswith("_count")]
    assert sorted(counts) == [3, 6]
    assert [s.name for s in parsed["jobs"].samples] == ["jobs_total"]
    assert families.conflicts == 0
    # The same families as one snapshot's conversion gives (the container's /metrics).
    assert [(m.name, m.samples) for m in snapshot_families(snapshot)] == [
        (m.name, m.samples) for m in families.metrics()
    ]
