"""Every Management RPC, health and the app's own service, over a real server
on an ephemeral port, for both a sync and an asyncio host."""

from __future__ import annotations

import datetime
import logging
import threading
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from opentelemetry import metrics
from support import Host, make_container, start_container, stop_container, wait_until

import pycontainer
from pycontainer.v1 import (
    config_pb2,
    container_pb2,
    logs_pb2,
    management_pb2,
    profile_pb2,
)
from pycontainer.v1 import health_pb2 as pc_health_pb2


def _status_of(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_get_info(host: Host) -> None:
    info = host.management.GetInfo(management_pb2.GetInfoRequest(), timeout=5)
    assert info.identity.name == "orders"
    assert info.identity.id.startswith("orders-")
    assert info.identity.version == "1.2.3"
    assert info.identity.labels["app"] == "orders"
    assert info.identity.priority == 5
    assert info.identity.grace_period.seconds == 30
    assert info.state == container_pb2.LIFECYCLE_STATE_RUNNING
    assert info.pid > 0
    assert info.uptime.ToNanoseconds() > 0
    assert info.start_time.seconds > 1_600_000_000
    assert info.runtime.startswith("CPython")
    assert info.pycontainer_version == pycontainer.__version__


def test_get_health_and_standard_health(host: Host) -> None:
    host.container.add_check("db", lambda: (True, "connected"))
    host.container.add_check("cache", kind=pycontainer.CheckKind.LIVENESS)
    host.container.set_check("cache", True)
    host.container.health.run_checks_now()
    report = host.management.GetHealth(management_pb2.GetHealthRequest(), timeout=5)
    assert report.status == pc_health_pb2.HEALTH_STATUS_SERVING
    assert {c.name: c.status for c in report.checks} == {
        "db": pc_health_pb2.HEALTH_STATUS_SERVING,
        "cache": pc_health_pb2.HEALTH_STATUS_SERVING,
    }
    db = next(c for c in report.checks if c.name == "db")
    assert db.message == "connected"
    assert db.last_transition_time.seconds > 0
    only = host.management.GetHealth(management_pb2.GetHealthRequest(check_names=["db"]))
    assert [c.name for c in only.checks] == ["db"]

    health = health_pb2_grpc.HealthStub(host.channel)
    for service in ("", "liveness", "readiness", "pycontainer.v1.Management"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, service

    host.container.set_check("cache", False, "evicted everything")
    report = host.management.GetHealth(management_pb2.GetHealthRequest())
    assert report.liveness == pc_health_pb2.HEALTH_STATUS_NOT_SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="liveness")).status == (
        health_pb2.HealthCheckResponse.NOT_SERVING
    )
    assert health.Check(health_pb2.HealthCheckRequest(service="readiness")).status == (
        health_pb2.HealthCheckResponse.SERVING
    )


def test_a_pulled_check_runs_every_period(host: Host) -> None:
    """``period`` is a timedelta; the check is pulled again within it."""
    healthy = {"ok": True}
    host.container.add_check(
        "flag", lambda: (healthy["ok"], "flag"), period=datetime.timedelta(milliseconds=50)
    )

    def status() -> int:
        report = host.management.GetHealth(management_pb2.GetHealthRequest(), timeout=5)
        return report.readiness

    wait_until(lambda: status() == pc_health_pb2.HEALTH_STATUS_SERVING, what="serving")
    healthy["ok"] = False
    wait_until(lambda: status() == pc_health_pb2.HEALTH_STATUS_NOT_SERVING, what="pulled again")
    with pytest.raises(ValueError, match="period must be positive"):
        host.container.add_check("never", lambda: (True, ""), period=datetime.timedelta(0))


def test_unknown_check_is_not_found(host: Host) -> None:
    err = _status_of(
        lambda: host.management.GetHealth(
            management_pb2.GetHealthRequest(check_names=["nope"]), timeout=5
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "check_names" in err.details()
    assert "nope" in err.details()


def test_health_list(host: Host) -> None:
    from pycontainer._reflection import health_list_messages

    request_cls, response_cls = health_list_messages()
    list_call = host.channel.unary_unary(
        "/grpc.health.v1.Health/List",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    resp = list_call(request_cls(), timeout=5)
    statuses = {k: v.status for k, v in resp.statuses.items()}
    assert statuses[""] == health_pb2.HealthCheckResponse.SERVING
    assert {"liveness", "readiness", "pycontainer.v1.Management"} <= set(statuses)


def test_health_watch_follows_state(new_host: Any) -> None:
    host: Host = new_host(make_container("watched"))
    health = health_pb2_grpc.HealthStub(host.channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=20)
    first = next(watch)
    assert first.status == health_pb2.HealthCheckResponse.NOT_SERVING
    start_container(host)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    stop_container(host)
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()


def test_health_not_serving_before_start_and_once_stop_begins(new_host: Any) -> None:
    in_stop, release = threading.Event(), threading.Event()

    def on_stop(reason: str, deadline: float) -> None:
        in_stop.set()
        assert release.wait(10)

    host: Host = new_host(make_container("graceful", hooks=pycontainer.Hooks(on_stop=on_stop)))
    health = health_pb2_grpc.HealthStub(host.channel)
    req = health_pb2.HealthCheckRequest()
    assert health.Check(req, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
    info = host.management.GetInfo(management_pb2.GetInfoRequest())
    assert info.state == container_pb2.LIFECYCLE_STATE_CREATED
    start_container(host)
    assert health.Check(req, timeout=5).status == health_pb2.HealthCheckResponse.SERVING

    stopper = threading.Thread(target=stop_container, args=(host,))
    stopper.start()
    assert in_stop.wait(10)
    # on_stop is still running: the stop has begun, so nothing serves.
    assert health.Check(req, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
    info = host.management.GetInfo(management_pb2.GetInfoRequest())
    assert info.state == container_pb2.LIFECYCLE_STATE_STOPPING
    release.set()
    stopper.join(10)
    info = host.management.GetInfo(management_pb2.GetInfoRequest())
    assert info.state == container_pb2.LIFECYCLE_STATE_STOPPED
    assert health.Check(req, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_get_config(new_host: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_SERVER__PORT", "9090")
    config = pycontainer.Config(
        defaults={"server": {"port": 8080, "host": "0.0.0.0"}, "db": {"password": "hunter2"}},
        env_prefix="ORDERS_",
    )
    host: Host = new_host(make_container("configured", config=config))
    resp = host.management.GetConfig(management_pb2.GetConfigRequest(), timeout=5)
    entries = {e.key: e for e in resp.entries}
    assert entries["server.port"].value == "9090"
    assert entries["server.port"].source == config_pb2.CONFIG_SOURCE_ENVIRONMENT
    assert entries["server.port"].source_detail == "ORDERS_SERVER__PORT"
    assert entries["server.host"].source == config_pb2.CONFIG_SOURCE_DEFAULT
    assert entries["db.password"].redacted
    assert "hunter2" not in entries["db.password"].value
    only = host.management.GetConfig(management_pb2.GetConfigRequest(prefix="server."))
    assert sorted(e.key for e in only.entries) == ["server.host", "server.port"]
    err = _status_of(
        lambda: host.management.GetConfig(
            management_pb2.GetConfigRequest(prefix="bad prefix!"), timeout=5
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prefix" in err.details()


def test_stream_logs_tail_and_filters(host: Host) -> None:
    log = logging.getLogger("orders.db")
    other = logging.getLogger("billing")
    for i in range(5):
        log.info("query %d done", i, extra={"table": "items"})
    log.warning("slow query took %d ms", 1500)
    other.error("card declined")

    def read(**kw: Any) -> list[logs_pb2.LogEntry]:
        out: list[logs_pb2.LogEntry] = []
        for batch in host.management.StreamLogs(management_pb2.StreamLogsRequest(**kw), timeout=10):
            out.extend(batch.entries)
        return out

    everything = read(logger="orders")
    assert [e.message for e in everything][-1] == "slow query took 1500 ms"
    assert everything[0].attributes["table"] == "items"
    assert everything[0].severity == logs_pb2.SEVERITY_INFO
    assert [e.message for e in read(tail=2, logger="orders")] == [
        "query 4 done",
        "slow query took 1500 ms",
    ]
    assert [e.message for e in read(min_severity=logs_pb2.SEVERITY_WARN, logger="orders")] == [
        "slow query took 1500 ms"
    ]
    assert [e.message for e in read(contains="declined")] == ["card declined"]
    assert [e.message for e in read(pattern=r"query [34] ")] == ["query 3 done", "query 4 done"]
    assert [e.logger for e in read(logger="billing")] == ["billing"]
    seqs = [e.sequence for e in everything]
    assert seqs == sorted(seqs)


def test_stream_logs_bad_requests(host: Host) -> None:
    for kw, field in (
        ({"tail": -1}, "tail"),
        ({"pattern": "(unclosed"}, "pattern"),
        ({"max_batch_size": 1_000_000}, "max_batch_size"),
    ):
        err = _status_of(
            lambda kw=kw: list(
                host.management.StreamLogs(management_pb2.StreamLogsRequest(**kw), timeout=5)
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, kw
        assert field in err.details()
        status = rpc_status.from_call(err)  # rich details name the field
        assert status is not None
        bad = error_details_pb2.BadRequest()
        assert status.details[0].Unpack(bad)
        assert bad.field_violations[0].field == field


def test_stream_logs_follow(host: Host) -> None:
    log = logging.getLogger("orders.follow")
    stream = host.management.StreamLogs(
        management_pb2.StreamLogsRequest(
            follow=True, tail=0, logger="orders.follow", contains="keep"
        ),
        timeout=20,
    )
    got: list[str] = []
    ended: list[grpc.StatusCode] = []

    def read() -> None:
        try:
            for batch in stream:
                got.extend(e.message for e in batch.entries)
        except grpc.RpcError as exc:
            ended.append(exc.code())

    reader = threading.Thread(target=read)
    reader.start()
    # Follow starts "now": log a marker until the stream shows it is open.
    wait_until(lambda: bool(log.info("keep opened") or got), 10, "the stream to open")
    for i in range(50):
        log.info("keep %d", i)
        log.info("drop %d", i)
    wait_until(lambda: len(got) >= 50 and got[-1] == "keep 49", 10, "the 50 entries")
    stream.cancel()
    reader.join(5)
    opened = got.index("keep 0")
    assert set(got[:opened]) == {"keep opened"}
    assert got[opened:] == [f"keep {i}" for i in range(50)]
    # The stream ends only by our cancel (or not at all): never another error.
    assert all(code == grpc.StatusCode.CANCELLED for code in ended), ended


def test_watch_metrics_sees_otel_counter(host: Host) -> None:
    counter = metrics.get_meter("orders.app").create_counter(
        "orders.processed", unit="1", description="orders processed"
    )
    counter.add(3, {"region": "eu"})
    stream = host.management.WatchMetrics(
        management_pb2.WatchMetricsRequest(
            interval=duration_pb2.Duration(nanos=200_000_000), metric_filters=["orders.*"]
        ),
        timeout=20,
    )
    first = next(stream).snapshot
    value = _counter_value(first, "orders.processed", "eu")
    assert value is not None
    assert value >= 3
    assert first.process.rss_bytes > 0
    assert first.process.threads > 0
    assert first.process.pid > 0
    assert all(m.name.startswith("orders.") for m in first.metrics)
    counter.add(4, {"region": "eu"})
    second = next(stream).snapshot
    assert _counter_value(second, "orders.processed", "eu") == value + 4
    assert second.interval.ToNanoseconds() > 0
    stream.cancel()


def test_watch_metrics_counts_rpcs(host: Host) -> None:
    echo = host.channel.unary_unary("/demo.Echo/Echo")
    for _ in range(5):
        echo(b"hello", timeout=5)
    host.management.GetInfo(management_pb2.GetInfoRequest())
    stream = host.management.WatchMetrics(management_pb2.WatchMetricsRequest(), timeout=10)
    snapshot = next(stream).snapshot
    stream.cancel()
    methods = {m.method: m for m in snapshot.rpc_methods}
    assert methods["/demo.Echo/Echo"].calls_ok >= 5
    assert methods["/demo.Echo/Echo"].bytes_received >= 25
    info = methods["/pycontainer.v1.Management/GetInfo"]
    assert info.calls_ok >= 1
    assert info.latency_seconds.count >= 1
    assert info.messages_sent >= 1
    assert info.bytes_sent > 0


def test_watch_metrics_bad_requests(host: Host) -> None:
    cases = [
        (management_pb2.WatchMetricsRequest(interval=duration_pb2.Duration(nanos=1)), "interval"),
        (
            management_pb2.WatchMetricsRequest(interval=duration_pb2.Duration(seconds=7200)),
            "interval",
        ),
        (management_pb2.WatchMetricsRequest(metric_filters=["re:("]), "metric_filters[0]"),
        (management_pb2.WatchMetricsRequest(metric_filters=["ok.*", "xx:y"]), "metric_filters[1]"),
    ]
    for request, field in cases:
        err = _status_of(
            lambda request=request: next(iter(host.management.WatchMetrics(request, timeout=5)))
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in err.details()


def _counter_value(snapshot: Any, name: str, region: str) -> int | None:
    for metric in snapshot.metrics:
        if metric.name == name:
            for point in metric.points:
                if point.attributes.get("region") == region:
                    return int(point.as_int)
    return None


def test_get_profile_threads_and_lock(host: Host) -> None:
    lock = pycontainer.TrackedLock(f"orders.inventory.{host.kind}")
    holding, done = threading.Event(), threading.Event()

    def holder() -> None:
        with lock:
            holding.set()
            done.wait(10)

    def blocked_waiter() -> None:
        with lock:
            pass

    t1 = threading.Thread(target=holder, name="holder")
    t1.start()
    assert holding.wait(5)
    t2 = threading.Thread(target=blocked_waiter, name="blocked-waiter")
    t2.start()
    try:
        wait_until(lambda: bool(lock.waiting()), 10, "the waiter to block on the lock")
        profile = host.management.GetProfile(management_pb2.GetProfileRequest(), timeout=10)
    finally:
        done.set()
        t1.join(5)
        t2.join(5)
    threads = {t.name: t for t in profile.threads}
    assert threads["blocked-waiter"].waiting_for_lock == f"orders.inventory.{host.kind}"
    assert any(f.function == "blocked_waiter" for f in threads["blocked-waiter"].frames)
    locks = {lk.name: lk for lk in profile.locks}
    assert locks[f"orders.inventory.{host.kind}"].contentions >= 1
    assert locks[f"orders.inventory.{host.kind}"].holder == "holder"
    assert not profile.HasField("cpu_profile")


def test_get_profile_cpu_collapsed(host: Host) -> None:
    stop = threading.Event()

    def spin_for_profile() -> None:
        x = 0
        while not stop.is_set():
            x += 1

    t = threading.Thread(target=spin_for_profile, name="spinner")
    t.start()
    try:
        profile = host.management.GetProfile(
            management_pb2.GetProfileRequest(
                cpu_duration=duration_pb2.Duration(nanos=500_000_000),
                cpu_sample_hz=200,
                cpu_format=profile_pb2.CPU_PROFILE_FORMAT_COLLAPSED,
            ),
            timeout=20,
        )
    finally:
        stop.set()
        t.join(5)
    assert profile.cpu_profile.format == profile_pb2.CPU_PROFILE_FORMAT_COLLAPSED
    assert profile.cpu_profile.samples > 0
    assert b"spin_for_profile" in profile.cpu_profile.data
    err = _status_of(
        lambda: host.management.GetProfile(
            management_pb2.GetProfileRequest(cpu_duration=duration_pb2.Duration(seconds=3600)),
            timeout=5,
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cpu_duration" in err.details()
