"""Patterns in requests are untrusted: RE2 (linear time) compiles them, so a
catastrophic one neither freezes the container nor outlives its call, and what
RE2 cannot match in linear time is INVALID_ARGUMENT saying so."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import Host, make_container, start_container

from pycontainer.agent._metrics import MetricFilter
from pycontainer.agent._pattern import MAX_PATTERN_LENGTH, PatternError, compile_pattern
from pycontainer.cli import _args
from pycontainer.v1 import logs_pb2, management_pb2

# Exponential for a backtracking engine on any line without a "z".
CATASTROPHIC = r"(.*\w){12}z"
ENTRIES = 5000


class _HealthProbe:
    """Health checks against the container while a call runs: each must
    answer within its deadline."""

    def __init__(self, target: str) -> None:
        self._channel = grpc.insecure_channel(target)
        self._stub = health_pb2_grpc.HealthStub(self._channel)
        self._done = threading.Event()
        self.answered = 0
        self.failures: list[BaseException] = []
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                self._stub.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=1)
                self.answered += 1
            except grpc.RpcError as exc:
                self.failures.append(exc)
            self._done.wait(0.05)

    def __enter__(self) -> _HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(10)
        self._channel.close()


@pytest.fixture
def filled_host(new_host: Callable[..., Host]) -> Host:
    host = new_host(make_container("patterns"))
    start_container(host)
    for i in range(ENTRIES):
        host.container.logs.append(
            logs_pb2.SEVERITY_INFO, "INFO", "app", f"request {i} served from cache aaaaaaaaaaaaaaaa"
        )
    return host


@pytest.mark.parametrize("new_host", ["sync", "aio"], indirect=True)
def test_catastrophic_log_pattern_answers_fast_and_the_container_stays_up(
    filled_host: Host,
) -> None:
    with _HealthProbe(filled_host.target) as probe:
        started = time.monotonic()
        responses = list(
            filled_host.management.StreamLogs(
                management_pb2.StreamLogsRequest(pattern=CATASTROPHIC), timeout=10
            )
        )
        elapsed = time.monotonic() - started
    assert [e for r in responses for e in r.entries] == []
    assert elapsed < 3, f"StreamLogs took {elapsed:.1f}s"
    assert probe.failures == []
    # A pattern that matches still finds its entries.
    found = [
        e.message
        for r in filled_host.management.StreamLogs(
            management_pb2.StreamLogsRequest(pattern=r"request 4999\b"), timeout=10
        )
        for e in r.entries
    ]
    assert found == ["request 4999 served from cache aaaaaaaaaaaaaaaa"]


@pytest.mark.parametrize("new_host", ["sync", "aio"], indirect=True)
def test_catastrophic_metric_filter_answers_fast(new_host: Callable[..., Host]) -> None:
    host = new_host(make_container("metric-patterns"))
    start_container(host)
    with _HealthProbe(host.target) as probe:
        started = time.monotonic()
        stream = host.management.WatchMetrics(
            management_pb2.WatchMetricsRequest(metric_filters=["re:" + CATASTROPHIC]), timeout=10
        )
        next(stream)
        elapsed = time.monotonic() - started
        stream.cancel()
    assert elapsed < 3, f"the first snapshot took {elapsed:.1f}s"
    assert probe.failures == []


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        (r"(a)\1", "backreferences"),
        (r"error(?!s)", "lookaround"),
        (r"(?<=x)y", "lookaround"),
        ("(", "missing )"),
        ("a" * (MAX_PATTERN_LENGTH + 1), f"at most {MAX_PATTERN_LENGTH}"),
    ],
)
@pytest.mark.parametrize("new_host", ["sync", "aio"], indirect=True)
def test_patterns_re2_refuses_are_invalid_argument(
    new_host: Callable[..., Host], pattern: str, says: str
) -> None:
    host = new_host(make_container("bad-patterns"))
    requests: list[Callable[[], object]] = [
        lambda: list(
            host.management.StreamLogs(management_pb2.StreamLogsRequest(pattern=pattern), timeout=5)
        ),
        lambda: next(
            host.management.WatchMetrics(
                management_pb2.WatchMetricsRequest(metric_filters=["re:" + pattern]), timeout=5
            )
        ),
    ]
    for call in requests:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert says in caught.value.details()


def test_long_globs_are_refused() -> None:
    with pytest.raises(Exception, match="too long"):
        MetricFilter.from_patterns(["*a" * MAX_PATTERN_LENGTH])
    assert MetricFilter.from_patterns(["rpc.*"]).matches("rpc.server.duration")


def test_compile_pattern_keeps_re_syntax_re2_shares() -> None:
    level = compile_pattern(r"(?P<level>ERROR|WARN)\s+\d+")
    assert level.search("x WARN 12") is not None
    assert level.search("x warn 12") is None
    with pytest.raises(PatternError, match="RE2"):
        compile_pattern(r"(?=a)")


def test_cli_grep_checks_with_re2() -> None:
    assert _args.pattern(r"disk \d+") == r"disk \d+"
    with pytest.raises(Exception, match="lookaround"):
        _args.pattern(r"x(?=y)")


def test_sidecar_severity_rules_are_re2() -> None:
    from pycontainer.sidecar._severity import INFO, Severities, parse_rule

    rule = parse_rule(CATASTROPHIC + "=error")
    started = time.monotonic()
    assert rule.match("a" * 5000) is None
    assert time.monotonic() - started < 1
    assert Severities([rule]).classify("a" * 40 + "z", INFO).text == "ERROR"
    with pytest.raises(ValueError, match="lookaround"):
        parse_rule(r"x(?=y)=error")
