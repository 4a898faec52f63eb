"""Unit tests of pycontainer.agent._metrics: real OTel SDK, real psutil, no mocks."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import psutil
import pytest
from google.protobuf import duration_pb2
from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, NoOpMeterProvider, Observation
from opentelemetry.metrics import _internal as otel_metrics_internal
from opentelemetry.sdk.metrics import Meter, MeterProvider
from opentelemetry.util._once import Once

import pycontainer
from pycontainer._errors import RequestError
from pycontainer.agent._logs import LogBufferHandler
from pycontainer.agent._metrics import (
    LATENCY_BOUNDS,
    AppMetrics,
    MetricFilter,
    MetricsWatch,
    RpcStats,
    process_metrics,
)
from pycontainer.agent._metrics import _otel as metrics_module
from pycontainer.v1 import management_pb2, metrics_pb2

# --------------------------------------------------------------------------
# fixtures


@pytest.fixture
def app() -> Iterator[tuple[AppMetrics, Meter]]:
    """AppMetrics fed by a local (not global) SDK MeterProvider, and a meter of it."""
    app_metrics = AppMetrics()
    provider = MeterProvider(metric_readers=[app_metrics.reader])
    meter = provider.get_meter("test.scope")
    assert isinstance(meter, Meter)
    yield app_metrics, meter
    provider.shutdown()


@pytest.fixture
def fresh_global_meter_provider() -> Iterator[None]:
    """An unset global MeterProvider for the test, the previous state restored after.

    The OpenTelemetry API allows setting the global provider once per process;
    opentelemetry-python's own tests reset these module globals the same way.
    """
    saved = (
        otel_metrics_internal._METER_PROVIDER_SET_ONCE,
        otel_metrics_internal._METER_PROVIDER,
        otel_metrics_internal._PROXY_METER_PROVIDER,
    )
    saved_installed = metrics_module._INSTALLED
    metrics_module._INSTALLED = None
    otel_metrics_internal._METER_PROVIDER_SET_ONCE = Once()
    otel_metrics_internal._METER_PROVIDER = None
    otel_metrics_internal._PROXY_METER_PROVIDER = otel_metrics_internal._ProxyMeterProvider()
    try:
        yield
    finally:
        provider = otel_metrics_internal._METER_PROVIDER
        if isinstance(provider, MeterProvider):
            provider.shutdown()
        (
            otel_metrics_internal._METER_PROVIDER_SET_ONCE,
            otel_metrics_internal._METER_PROVIDER,
            otel_metrics_internal._PROXY_METER_PROVIDER,
        ) = saved
        metrics_module._INSTALLED = saved_installed


def by_name(metrics: list[metrics_pb2.Metric]) -> dict[str, metrics_pb2.Metric]:
    return {m.name: m for m in metrics}


def point_with(metric: metrics_pb2.Metric, **attributes: str) -> metrics_pb2.MetricPoint:
    for point in metric.points:
        if dict(point.attributes) == attributes:
            return point
    raise AssertionError(f"no point with {attributes} in {metric}")


def seconds(d: duration_pb2.Duration) -> float:
    return d.ToNanoseconds() / 1e9


def request(interval: float | None = None, *filters: str) -> management_pb2.WatchMetricsRequest:
    req = management_pb2.WatchMetricsRequest(metric_filters=filters)
    if interval is not None:
        req.interval.FromNanoseconds(round(interval * 1e9))
    return req


# --------------------------------------------------------------------------
# AppMetrics


def test_collect_reports_each_instrument_kind_with_attributes(
    app: tuple[AppMetrics, Meter],
) -> None:
    app_metrics, meter = app
    requests = meter.create_counter("app.requests", unit="1", description="Requests served")
    queue = meter.create_up_down_counter("app.queue")
    temperature = meter.create_gauge("app.temperature", unit="Cel")
    latency = meter.create_histogram("app.latency", unit="ms")
    requests.add(2, {"route": "/a", "cached": True})
    requests.add(1, {"route": "/b", "cached": False})
    queue.add(5)
    queue.add(-2)
    temperature.set(21.5, {"room": "lab"})
    latency.record(3.0)
    latency.record(40.0)

    got = by_name(app_metrics.collect())

    counter = got["app.requests"]
    assert counter.kind == metrics_pb2.METRIC_KIND_COUNTER
    assert (counter.scope, counter.unit, counter.description) == (
        "test.scope",
        "1",
        "Requests served",
    )
    a = point_with(counter, route="/a", cached="true")
    assert a.WhichOneof("value") == "as_int"
    assert a.as_int == 2
    assert point_with(counter, route="/b", cached="false").as_int == 1
    assert a.start_time.ToNanoseconds() > 0
    assert a.time.ToNanoseconds() >= a.start_time.ToNanoseconds()

    updown = got["app.queue"]
    assert updown.kind == metrics_pb2.METRIC_KIND_UP_DOWN_COUNTER
    assert point_with(updown).as_int == 3

    gauge = got["app.temperature"]
    assert gauge.kind == metrics_pb2.METRIC_KIND_GAUGE
    room = point_with(gauge, room="lab")
    assert room.WhichOneof("value") == "as_double"
    assert room.as_double == 21.5

    histogram = got["app.latency"]
    assert histogram.kind == metrics_pb2.METRIC_KIND_HISTOGRAM
    h = point_with(histogram).histogram
    assert (h.count, h.sum, h.min, h.max) == (2, 43.0, 3.0, 40.0)
    assert len(h.bucket_counts) == len(h.explicit_bounds) + 1
    assert sum(h.bucket_counts) == 2

    # More recording shows up in the next collect: values are cumulative.
    requests.add(10, {"route": "/a", "cached": True})
    queue.add(-3)
    temperature.set(19.0, {"room": "lab"})
    latency.record(7.0)
    again = by_name(app_metrics.collect())
    assert point_with(again["app.requests"], route="/a", cached="true").as_int == 12
    assert point_with(again["app.queue"]).as_int == 0
    assert point_with(again["app.temperature"], room="lab").as_double == 19.0
    assert point_with(again["app.latency"]).histogram.count == 3


def test_collect_reports_observable_instruments(app: tuple[AppMetrics, Meter]) -> None:
    app_metrics, meter = app
    level = [1.5]

    def read_level(options: CallbackOptions) -> list[Observation]:
        return [Observation(level[0], {"tank": "a"})]

    def read_total(options: CallbackOptions) -> list[Observation]:
        return [Observation(42)]

    meter.create_observable_gauge("app.level", callbacks=[read_level])
    meter.create_observable_counter("app.total", callbacks=[read_total])

    got = by_name(app_metrics.collect())
    assert got["app.level"].kind == metrics_pb2.METRIC_KIND_GAUGE
    assert point_with(got["app.level"], tank="a").as_double == 1.5
    assert got["app.total"].kind == metrics_pb2.METRIC_KIND_COUNTER
    assert point_with(got["app.total"]).as_int == 42

    level[0] = 2.5
    assert point_with(by_name(app_metrics.collect())["app.level"], tank="a").as_double == 2.5


def test_collect_renders_non_string_attributes(app: tuple[AppMetrics, Meter]) -> None:
    app_metrics, meter = app
    meter.create_counter("app.c").add(1, {"n": 3, "x": 0.5, "tags": ("a", "b")})
    (point,) = by_name(app_metrics.collect())["app.c"].points
    assert dict(point.attributes) == {"n": "3", "x": "0.5", "tags": '["a", "b"]'}


def test_collect_filters_by_name(app: tuple[AppMetrics, Meter]) -> None:
    app_metrics, meter = app
    for name in ("app.a", "app.b", "db.c"):
        meter.create_counter(name).add(1)
    names = [m.name for m in app_metrics.collect(MetricFilter.from_patterns(["app.*"]).matches)]
    assert names == ["app.a", "app.b"]


def test_collect_without_provider_is_empty_and_quiet(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert AppMetrics().collect() == []
    assert caplog.records == []


@pytest.mark.usefixtures("fresh_global_meter_provider")
def test_install_global_feeds_the_reader_from_the_global_api() -> None:
    app_metrics = AppMetrics()
    assert app_metrics.install_global()
    assert otel_metrics.get_meter_provider() is app_metrics.provider
    # What an application writes, unaware of pycontainer:
    otel_metrics.get_meter("my.app").create_counter("app.jobs").add(4)
    jobs = by_name(app_metrics.collect())["app.jobs"]
    assert jobs.scope == "my.app"
    assert point_with(jobs).as_int == 4
    assert app_metrics.install_global()  # idempotent


@pytest.mark.usefixtures("fresh_global_meter_provider")
def test_install_global_when_the_app_set_its_own_sdk_provider() -> None:
    app_metrics = AppMetrics()
    own = MeterProvider()
    otel_metrics.set_meter_provider(own)
    if not hasattr(own, "add_metric_reader"):
        pytest.skip("this opentelemetry-sdk cannot add a reader to a provider")
    assert app_metrics.install_global()
    assert app_metrics.provider is None
    otel_metrics.get_meter("my.app").create_counter("app.jobs").add(1)
    assert "app.jobs" in by_name(app_metrics.collect())


@pytest.mark.usefixtures("fresh_global_meter_provider")
def test_install_global_when_the_app_passed_the_reader_itself() -> None:
    app_metrics = AppMetrics()
    otel_metrics.set_meter_provider(MeterProvider(metric_readers=[app_metrics.reader]))
    assert app_metrics.install_global()
    otel_metrics.get_meter("my.app").create_counter("app.jobs").add(1)
    assert "app.jobs" in by_name(app_metrics.collect())


@pytest.mark.usefixtures("fresh_global_meter_provider")
def test_install_global_warns_when_it_cannot_attach(caplog: pytest.LogCaptureFixture) -> None:
    otel_metrics.set_meter_provider(NoOpMeterProvider())
    app_metrics = AppMetrics()
    with caplog.at_level(logging.WARNING, logger="pycontainer.agent._metrics"):
        assert not app_metrics.install_global()
    assert "app_metrics.reader" in caplog.text
    assert app_metrics.collect() == []


# --------------------------------------------------------------------------
# MetricFilter


def test_filter_globs_and_regexes() -> None:
    f = MetricFilter.from_patterns(["app.*", "re:^db\\.(reads|writes)$", "/svc.V1/Get?", "x[12]"])
    for name in ("app.requests", "db.reads", "/svc.V1/GetA", "x1"):
        assert f.matches(name), name
    for name in ("db.reads.total", "/svc.V1/GetAll", "x3", "myapp.requests", "App.requests"):
        assert not f.matches(name), name


def test_filter_regex_is_searched_not_anchored() -> None:
    assert MetricFilter.from_patterns(["re:latency"]).matches("app.latency.p99")


def test_filter_without_patterns_matches_everything() -> None:
    assert MetricFilter.from_patterns([]).matches("anything")
    assert MetricFilter().matches("")


def test_filter_accepts_glob_brackets_fnmatch_accepts() -> None:
    f = MetricFilter.from_patterns(["a[]]b", "c[!]]d", "[[]e"])
    assert f.matches("a]b")
    assert f.matches("cxd")
    assert f.matches("[e")


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "metric_filters[1]: empty pattern"),
        ("app.[ab", "metric_filters[1]: unterminated '[' at position 4 in glob 'app.[ab'"),
        ("a[]", "unterminated '['"),
        ("re:(", "metric_filters[1]: invalid regular expression '('"),
        ("re:", "metric_filters[1]: empty regular expression after 're:'"),
        ("glob:app.*", "metric_filters[1]: unknown prefix 'glob:'"),
        ("RE:app", "the only prefix is 're:'"),
    ],
)
def test_filter_rejects_bad_patterns(pattern: str, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        MetricFilter.from_patterns(["ok.*", pattern])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field == "metric_filters[1]"
    assert message in caught.value.message


# --------------------------------------------------------------------------
# interval


@pytest.mark.parametrize(
    ("interval", "expected"),
    [(None, 1.0), (0.1, 0.1), (2.5, 2.5), (3600.0, 3600.0)],
)
def test_interval_accepted(interval: float | None, expected: float) -> None:
    watch = MetricsWatch.from_request(request(interval), RpcStats(), None)
    assert watch.interval == pytest.approx(expected)


@pytest.mark.parametrize(
    ("interval", "shown"),
    [(0.099, "0.099s"), (0.0, "0s"), (-1.0, "-1s"), (3600.5, "3600.5s")],
)
def test_interval_rejected(interval: float, shown: str) -> None:
    req = request()
    req.interval.FromNanoseconds(round(interval * 1e9))  # set, even when zero
    with pytest.raises(RequestError) as caught:
        MetricsWatch.from_request(req, RpcStats(), None)
    assert caught.value.field == "interval"
    assert caught.value.message == f"interval: must be from 100ms to 1h, got {shown}"


def test_from_request_validates_filters() -> None:
    with pytest.raises(RequestError, match=r"metric_filters\[0\]"):
        MetricsWatch.from_request(request(1.0, "re:["), RpcStats(), None)


# --------------------------------------------------------------------------
# RpcStats


def test_rpc_stats_figures_after_recorded_calls() -> None:
    stats = RpcStats()
    get, put = "/svc.V1/Get", "/svc.V1/Put"
    for latency in (0.0005, 0.0006, 0.2, 20.0):
        stats.call_started(get)
        stats.message_received(get, 10)
        stats.message_sent(get, 100)
        stats.message_sent(get, 50)
        stats.call_finished(get, grpc.StatusCode.OK, latency)
    stats.call_started(get)
    stats.call_finished(get, grpc.StatusCode.NOT_FOUND, 0.001)
    stats.call_started(put)  # still running

    figures = stats.figures()
    assert [f.method for f in figures] == [get, put]
    g, p = figures
    assert (g.calls_started, g.calls_ok, g.calls_failed, g.calls_in_flight) == (5, 4, 1, 0)
    assert (g.messages_received, g.messages_sent, g.bytes_received, g.bytes_sent) == (
        4,
        8,
        40,
        600,
    )
    assert dict(g.status_codes) == {"OK": 4, "NOT_FOUND": 1}
    assert g.calls_per_second == 0.0
    h = g.latency_seconds
    assert list(h.explicit_bounds) == list(LATENCY_BOUNDS)
    assert (h.count, h.min, h.max) == (5, 0.0005, 20.0)
    assert h.sum == pytest.approx(20.2021)
    buckets = list(h.bucket_counts)
    assert len(buckets) == len(LATENCY_BOUNDS) + 1
    # Upper bounds are inclusive: 0.0005 in the first bucket, 0.0006 and 0.001 in the second.
    assert buckets[0] == 1
    assert buckets[1] == 2
    assert buckets[LATENCY_BOUNDS.index(0.25)] == 1
    assert buckets[-1] == 1
    assert (p.calls_started, p.calls_in_flight, p.latency_seconds.count) == (1, 1, 0)
    assert stats.figures(lambda m: m == put) == [p]


def test_rpc_stats_is_thread_safe() -> None:
    stats = RpcStats()

    def work() -> None:
        for _ in range(2000):
            stats.call_started("/m")
            stats.message_received("/m", 3)
            stats.call_finished("/m", grpc.StatusCode.OK, 0.001)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (f,) = stats.figures()
    assert (f.calls_started, f.calls_ok, f.calls_in_flight, f.bytes_received) == (
        16000,
        16000,
        0,
        48000,
    )
    assert f.latency_seconds.count == 16000


# --------------------------------------------------------------------------
# process figures


def test_process_metrics_of_this_process() -> None:
    proc = psutil.Process()
    gate = threading.Event()
    extra = threading.Thread(target=gate.wait)
    extra.start()
    try:
        m = process_metrics(proc, None)
    finally:
        gate.set()
        extra.join()
    assert m.pid == os.getpid()
    assert m.cpu_user_seconds + m.cpu_system_seconds > 0
    assert m.rss_bytes > 0
    assert m.vms_bytes >= m.rss_bytes
    assert m.threads >= 2
    assert m.context_switches > 0
    assert seconds(m.uptime) > 0
    if hasattr(proc, "num_fds"):
        assert m.open_fds >= 3
    # Without a previous reading, the percentage covers the process's life.
    busy = m.cpu_user_seconds + m.cpu_system_seconds
    assert m.cpu_percent == pytest.approx(busy / seconds(m.uptime) * 100, rel=1e-6)


def test_process_cpu_percent_covers_the_interval() -> None:
    proc = psutil.Process()
    first = process_metrics(proc, None)
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    second = process_metrics(proc, first)
    busy = (second.cpu_user_seconds + second.cpu_system_seconds) - (
        first.cpu_user_seconds + first.cpu_system_seconds
    )
    elapsed = seconds(second.uptime) - seconds(first.uptime)
    assert second.cpu_percent == pytest.approx(busy / elapsed * 100, rel=1e-6)
    # The loop's 0.3 s of CPU is in the reading (in 10 ms clock ticks), however
    # busy the machine (its share of the wall clock, the percentage, is not).
    assert busy >= 0.28


# --------------------------------------------------------------------------
# snapshots and rates


def test_snapshot_rates_over_the_interval(app: tuple[AppMetrics, Meter]) -> None:
    app_metrics, meter = app
    meter.create_counter("app.jobs").add(1)
    stats = RpcStats()
    for _ in range(10):
        stats.call_started("/svc.V1/Get")
        stats.call_finished("/svc.V1/Get", grpc.StatusCode.OK, 0.001)
    watch = MetricsWatch.from_request(request(0.1), stats, app_metrics, psutil.Process())

    first = watch.snapshot().snapshot
    # The first snapshot's rates cover the process's life, and its interval says so.
    assert first.interval == first.process.uptime
    (get,) = first.rpc_methods
    assert get.calls_per_second == pytest.approx(10 / seconds(first.interval))
    assert first.time.ToNanoseconds() > 0
    assert [m.name for m in first.metrics] == ["app.jobs"]

    for _ in range(5):
        stats.call_started("/svc.V1/Get")
    stats.call_started("/svc.V1/Put")
    time.sleep(0.2)
    second = watch.snapshot().snapshot
    interval = seconds(second.interval)
    assert 0.2 <= interval < 1.0
    rates = {m.method: m.calls_per_second for m in second.rpc_methods}
    assert rates == pytest.approx({"/svc.V1/Get": 5 / interval, "/svc.V1/Put": 1 / interval})
    assert second.time.ToNanoseconds() > first.time.ToNanoseconds()

    third = watch.snapshot().snapshot
    assert all(m.calls_per_second == 0 for m in third.rpc_methods)


def test_snapshot_applies_filters_to_methods_and_metrics(app: tuple[AppMetrics, Meter]) -> None:
    app_metrics, meter = app
    meter.create_counter("app.jobs").add(1)
    meter.create_counter("db.reads").add(1)
    stats = RpcStats()
    stats.call_started("/pycontainer.v1.Management/GetInfo")
    stats.call_started("/my.Service/Do")
    watch = MetricsWatch.from_request(
        request(1.0, "app.*", "/pycontainer.v1.Management/*"), stats, app_metrics
    )
    snap = watch.snapshot().snapshot
    assert [m.name for m in snap.metrics] == ["app.jobs"]
    assert [m.method for m in snap.rpc_methods] == ["/pycontainer.v1.Management/GetInfo"]
    assert snap.process.pid == os.getpid()  # always sent


def test_iter_responses_first_at_once_then_every_interval() -> None:
    watch = MetricsWatch.from_request(request(0.3), RpcStats(), None)
    stream = watch.iter_responses(lambda: True)
    start = time.monotonic()
    next(stream)
    assert time.monotonic() - start < 0.2
    second = next(stream)
    assert time.monotonic() - start >= 0.29
    assert seconds(second.snapshot.interval) >= 0.29
    stream.close()


def test_iter_responses_stops_when_inactive() -> None:
    active = threading.Event()
    active.set()
    watch = MetricsWatch.from_request(request(30.0), RpcStats(), None)
    stream = watch.iter_responses(active.is_set)
    next(stream)
    timer = threading.Timer(0.1, active.clear)
    timer.start()
    start = time.monotonic()
    # The interval is 30 s, but the stream notices within a poll (0.25 s).
    assert list(stream) == []
    assert time.monotonic() - start < 1.0
    timer.join()


def test_iter_responses_inactive_from_the_start_yields_nothing() -> None:
    watch = MetricsWatch.from_request(request(), RpcStats(), None)
    assert list(watch.iter_responses(lambda: False)) == []


async def test_aiter_responses_paces_and_cancels() -> None:
    watch = MetricsWatch.from_request(request(0.2), RpcStats(), None)
    got: list[float] = []
    two = asyncio.Event()
    start = time.monotonic()

    async def consume() -> None:
        async for _ in watch.aiter_responses():
            got.append(time.monotonic() - start)
            if len(got) == 2:
                two.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(two.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(got) == 2  # cancelled while waiting out the next interval
    assert got[0] < 0.15
    assert got[1] >= 0.19


# --------------------------------------------------------------------------
# A Container changes nothing process-wide until it is put to use


def _root_logging() -> tuple[list[logging.Handler], int]:
    return list(logging.root.handlers), logging.root.level


@pytest.mark.usefixtures("fresh_global_meter_provider")
def test_constructing_a_container_has_no_side_effects() -> None:
    before = _root_logging()
    container = pycontainer.Container(pycontainer.ContainerSettings(name="quiet"))
    try:
        assert _root_logging() == before
        assert metrics_module._is_unset(otel_metrics.get_meter_provider())
        container.start()
        handlers, level = _root_logging()
        assert [h for h in handlers if isinstance(h, LogBufferHandler)] != []
        assert level <= logging.INFO
        assert otel_metrics.get_meter_provider() is container.app_metrics.provider
        logging.getLogger("quiet.app").info("captured once started")
        assert container.logs.snapshot()[-1].message == "captured once started"
    finally:
        container.stop()
        container.close()
    assert _root_logging() == before


@pytest.mark.usefixtures("fresh_global_meter_provider")
def test_close_takes_the_reader_out_of_the_apps_own_provider() -> None:
    own = MeterProvider()
    otel_metrics.set_meter_provider(own)
    counter = otel_metrics.get_meter("my.app").create_counter("app.jobs")
    container = pycontainer.Container(pycontainer.ContainerSettings(name="borrower"))
    container.add_to_server(grpc.server(futures.ThreadPoolExecutor(max_workers=1)))
    counter.add(2)
    assert "app.jobs" in by_name(container.app_metrics.collect())
    container.close()
    assert container.app_metrics.collect() == []
    counter.add(1)  # the app's provider goes on without the reader, quietly
    own.shutdown()
