"""Metrics of the container: gRPC server figures, OpenTelemetry app metrics, process figures.

:class:`RpcStats` counts the calls the container's gRPC server handles,
:class:`AppMetrics` reads what the application records through the
OpenTelemetry metrics API, :func:`process_metrics` reads the process with
psutil, and :class:`MetricsWatch` puts the three together into the snapshots
that ``Management.WatchMetrics`` streams.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import re
import threading
import time
from bisect import bisect_left
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from dataclasses import dataclass

import grpc
import psutil
from opentelemetry import metrics as otel_metrics
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData
from opentelemetry.sdk.metrics.export import Metric as SdkMetric
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import Resource

from pycontainer._errors import invalid_argument
from pycontainer.v1 import management_pb2, metrics_pb2

__all__ = [
    "LATENCY_BOUNDS",
    "MAX_INTERVAL",
    "MIN_INTERVAL",
    "AppMetrics",
    "MetricFilter",
    "MetricsWatch",
    "RpcStats",
    "process_metrics",
]

_log = logging.getLogger(__name__)

# Upper bounds (seconds) of the RPC latency buckets: 0.5 ms to 10 s, roughly
# 1-2.5-5 steps, so both in-process calls and slow backends are resolved.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

MIN_INTERVAL = 0.1
"""Shortest WatchMetrics interval, in seconds."""
MAX_INTERVAL = 3600.0
"""Longest WatchMetrics interval, in seconds."""
DEFAULT_INTERVAL = 1.0
"""WatchMetrics interval when the request leaves it unset, in seconds."""

# How often a sync stream wakes to check that its client is still there.
_POLL = 0.25


# --------------------------------------------------------------------------
# RPC figures


class _MethodStats:
    """Mutable counters of one method; only touched under RpcStats._lock."""

    __slots__ = (
        "bucket_counts",
        "bytes_in",
        "bytes_out",
        "codes",
        "count",
        "failed",
        "in_flight",
        "max",
        "messages_in",
        "messages_out",
        "min",
        "ok",
        "started",
        "sum",
    )

    def __init__(self) -> None:
        self.started = 0
        self.ok = 0
        self.failed = 0
        self.in_flight = 0
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.codes: dict[grpc.StatusCode, int] = {}
        self.bucket_counts = [0] * (len(LATENCY_BOUNDS) + 1)
        self.count = 0
        self.sum = 0.0
        self.min = 0.0
        self.max = 0.0


class RpcStats:
    """Thread-safe per-method counters of the container's gRPC server.

    A handler wrapper calls :meth:`call_started`, :meth:`message_received` /
    :meth:`message_sent` per message and :meth:`call_finished` once per call.
    Methods are full names such as ``"/pycontainer.v1.Management/GetInfo"``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._methods: dict[str, _MethodStats] = {}

    def _stats(self, method: str) -> _MethodStats:
        # Caller holds the lock.
        stats = self._methods.get(method)
        if stats is None:
            stats = self._methods[method] = _MethodStats()
        return stats

    def call_started(self, method: str) -> None:
        """A call of ``method`` began."""
        with self._lock:
            stats = self._stats(method)
            stats.started += 1
            stats.in_flight += 1

    def message_received(self, method: str, nbytes: int) -> None:
        """A request message of ``nbytes`` serialized bytes arrived."""
        with self._lock:
            stats = self._stats(method)
            stats.messages_in += 1
            stats.bytes_in += nbytes

    def message_sent(self, method: str, nbytes: int) -> None:
        """A response message of ``nbytes`` serialized bytes was sent."""
        with self._lock:
            stats = self._stats(method)
            stats.messages_out += 1
            stats.bytes_out += nbytes

    def call_finished(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """A call ended with ``code`` after ``seconds``."""
        with self._lock:
            stats = self._stats(method)
            if stats.in_flight > 0:
                stats.in_flight -= 1
            if code is grpc.StatusCode.OK:
                stats.ok += 1
            else:
                stats.failed += 1
            stats.codes[code] = stats.codes.get(code, 0) + 1
            # Bucket i holds bounds[i-1] < x <= bounds[i], as OpenTelemetry's.
            stats.bucket_counts[bisect_left(LATENCY_BOUNDS, seconds)] += 1
            if stats.count == 0 or seconds < stats.min:
                stats.min = seconds
            if stats.count == 0 or seconds > stats.max:
                stats.max = seconds
            stats.count += 1
            stats.sum += seconds

    def figures(
        self, include: Callable[[str], bool] | None = None
    ) -> list[metrics_pb2.RpcMethodMetrics]:
        """Cumulative figures per method, sorted by method, optionally filtered.

        ``calls_per_second`` is left 0: rates belong to a watch's interval.
        """
        with self._lock:
            # Copy under the lock, build messages outside it: the recorders
            # on the serving path should not wait for protobuf work.
            rows = [
                (
                    method,
                    s.started,
                    s.ok,
                    s.failed,
                    s.in_flight,
                    s.messages_in,
                    s.messages_out,
                    s.bytes_in,
                    s.bytes_out,
                    dict(s.codes),
                    list(s.bucket_counts),
                    s.count,
                    s.sum,
                    s.min,
                    s.max,
                )
                for method, s in self._methods.items()
                if include is None or include(method)
            ]
        out = []
        for (
            method,
            started,
            ok,
            failed,
            in_flight,
            messages_in,
            messages_out,
            bytes_in,
            bytes_out,
            codes,
            buckets,
            count,
            total,
            lo,
            hi,
        ) in sorted(rows, key=lambda row: row[0]):
            out.append(
                metrics_pb2.RpcMethodMetrics(
                    method=method,
                    calls_started=started,
                    calls_ok=ok,
                    calls_failed=failed,
                    calls_in_flight=in_flight,
                    latency_seconds=metrics_pb2.Histogram(
                        count=count,
                        sum=total,
                        explicit_bounds=LATENCY_BOUNDS,
                        bucket_counts=buckets,
                        min=lo,
                        max=hi,
                    ),
                    messages_received=messages_in,
                    messages_sent=messages_out,
                    bytes_received=bytes_in,
                    bytes_sent=bytes_out,
                    status_codes={code.name: n for code, n in codes.items()},
                )
            )
        return out


# --------------------------------------------------------------------------
# Application metrics (OpenTelemetry)


def _cumulative_reader() -> InMemoryMetricReader:
    # Cumulative, so that any number of watches can collect concurrently
    # without stealing each other's deltas.
    cumulative = AggregationTemporality.CUMULATIVE
    return InMemoryMetricReader(
        preferred_temporality={
            Counter: cumulative,
            UpDownCounter: cumulative,
            Histogram: cumulative,
            ObservableCounter: cumulative,
            ObservableUpDownCounter: cumulative,
            ObservableGauge: cumulative,
        }
    )


# The provider and reader pycontainer installed globally, shared by every
# container of the process.
_INSTALLED: tuple[MeterProvider, InMemoryMetricReader] | None = None


class AppMetrics:
    """The application's OpenTelemetry metrics, read through an in-memory reader.

    The application records as usual (``metrics.get_meter("app")
    .create_counter(...)``); the metrics appear here once :attr:`reader` is
    registered with the MeterProvider the application's meters come from:

    * :meth:`install_global` makes an SDK MeterProvider with the reader and
      sets it as OpenTelemetry's global provider, if none is set yet;
    * an application that sets its own SDK MeterProvider must include the
      reader itself: ``MeterProvider(metric_readers=[app_metrics.reader, ...])``
      (older SDKs cannot add a reader to a provider once made;
      :meth:`install_global` adds it where the SDK can, and warns otherwise).
      Such an application should set its provider before the container calls
      :meth:`install_global`: the global provider can be set only once.

    Pass ``reader`` to use a reader made elsewhere; it should be cumulative.
    Exponential histograms are not reported (the snapshot has no place for them).
    """

    def __init__(self, reader: InMemoryMetricReader | None = None) -> None:
        self.reader: InMemoryMetricReader = reader if reader is not None else _cumulative_reader()
        self.provider: MeterProvider | None = None
        """The MeterProvider :meth:`install_global` made, if it made one."""
        # The application's own provider install_global added the reader to.
        self._added_to: MeterProvider | None = None

    def install_global(
        self, *, resource: Resource | None = None, views: Sequence[View] = ()
    ) -> bool:
        """Feed :attr:`reader` from OpenTelemetry's global MeterProvider.

        Sets a new SDK MeterProvider (with ``resource`` and ``views``) as the
        global one if none is set yet; otherwise adds the reader to the global
        SDK provider where the SDK allows it. Returns whether the reader is
        now registered; logs a warning when it is not.
        """
        global _INSTALLED
        with _INSTALL_LOCK:
            if _is_registered(self.reader):
                return True
            current = otel_metrics.get_meter_provider()
            if _INSTALLED is not None and current is _INSTALLED[0]:
                # Another container of this process installed it: the metrics
                # are process-wide, so share its reader (works on every SDK).
                self.provider, self.reader = _INSTALLED
                return True
            if _is_unset(current):
                provider = MeterProvider(
                    metric_readers=[self.reader], resource=resource, views=list(views)
                )
                otel_metrics.set_meter_provider(provider)
                current = otel_metrics.get_meter_provider()
                if current is provider:
                    self.provider = provider
                    _INSTALLED = (provider, self.reader)
                    return True
                # The application set one at the same moment: it wins, and
                # the reader is now spoken for by the provider made here.
                return self._warn_not_registered(current)
            add_reader = getattr(current, "add_metric_reader", None)
            if isinstance(current, MeterProvider) and add_reader is not None:
                add_reader(self.reader)
                self._added_to = current
                return True
            return self._warn_not_registered(current)

    def uninstall(self) -> None:
        """Undo what :meth:`install_global` can undo: take the reader back out
        of the application's own provider. A global provider it set stays
        (OpenTelemetry sets the global provider once per process); it keeps
        serving the containers of this process that install later."""
        with _INSTALL_LOCK:
            provider, self._added_to = self._added_to, None
        if provider is not None:
            remove_reader = getattr(provider, "remove_metric_reader", None)
            if remove_reader is not None:
                remove_reader(self.reader)

    @staticmethod
    def _warn_not_registered(current: otel_metrics.MeterProvider) -> bool:
        _log.warning(
            "the global OpenTelemetry MeterProvider (%s) was set by the application and "
            "cannot take pycontainer's reader, so application metrics will not be "
            "reported; pass app_metrics.reader in MeterProvider(metric_readers=[...])",
            type(current).__name__,
        )
        return False

    def collect(self, include: Callable[[str], bool] | None = None) -> list[metrics_pb2.Metric]:
        """The current (cumulative) application metrics, optionally filtered by name."""
        if not _is_registered(self.reader):
            # The SDK would log a warning on every collect.
            return []
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        out = []
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                scope = scope_metrics.scope.name
                for metric in scope_metrics.metrics:
                    if include is not None and not include(metric.name):
                        continue
                    converted = _convert_metric(metric, scope)
                    if converted is not None:
                        out.append(converted)
        out.sort(key=lambda m: (m.name, m.scope))
        return out


_INSTALL_LOCK = threading.Lock()


def _is_registered(reader: InMemoryMetricReader) -> bool:
    # The SDK sets the collect callback when a MeterProvider takes the reader;
    # there is no public way to ask.
    return getattr(reader, "_collect", True) is not None


def _is_unset(provider: otel_metrics.MeterProvider) -> bool:
    # Until a provider is set, the API hands out its proxy provider (private).
    return type(provider).__name__ == "_ProxyMeterProvider"


def _convert_metric(metric: SdkMetric, scope: str) -> metrics_pb2.Metric | None:
    """One SDK metric as a message; None for kinds the snapshot cannot carry."""
    data = metric.data
    if isinstance(data, Sum):
        kind = (
            metrics_pb2.METRIC_KIND_COUNTER
            if data.is_monotonic
            else metrics_pb2.METRIC_KIND_UP_DOWN_COUNTER
        )
    elif isinstance(data, Gauge):
        kind = metrics_pb2.METRIC_KIND_GAUGE
    elif isinstance(data, HistogramData):
        kind = metrics_pb2.METRIC_KIND_HISTOGRAM
    else:
        return None  # exponential histograms: no field for them
    points = []
    for point in data.data_points:
        if isinstance(point, NumberDataPoint):
            pb = metrics_pb2.MetricPoint()
            if isinstance(point.value, int):
                pb.as_int = point.value
            else:
                pb.as_double = point.value
        elif isinstance(point, HistogramDataPoint):
            empty = point.count == 0
            pb = metrics_pb2.MetricPoint(
                histogram=metrics_pb2.Histogram(
                    count=point.count,
                    sum=point.sum,
                    explicit_bounds=point.explicit_bounds,
                    bucket_counts=point.bucket_counts,
                    min=0.0 if empty else point.min,
                    max=0.0 if empty else point.max,
                )
            )
        else:
            continue
        for key, value in (point.attributes or {}).items():
            pb.attributes[key] = _attribute_text(value)
        if point.start_time_unix_nano:
            pb.start_time.FromNanoseconds(point.start_time_unix_nano)
        pb.time.FromNanoseconds(point.time_unix_nano)
        points.append(pb)
    return metrics_pb2.Metric(
        name=metric.name,
        description=metric.description or "",
        unit=metric.unit or "",
        kind=kind,
        scope=scope,
        points=points,
    )


def _attribute_text(value: object) -> str:
    """An attribute value as text: strings as is, the rest as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


# --------------------------------------------------------------------------
# Process figures


def process_metrics(
    proc: psutil.Process, previous: metrics_pb2.ProcessMetrics | None = None
) -> metrics_pb2.ProcessMetrics:
    """Read ``proc`` now.

    ``cpu_percent`` covers the time since ``previous`` (an earlier reading of
    the same process) or, without one, the whole life of the process.
    """
    with proc.oneshot():
        cpu = proc.cpu_times()
        memory = proc.memory_info()
        threads = proc.num_threads()
        fds = _optional(lambda: proc.num_fds()) if hasattr(proc, "num_fds") else 0
        switches = _optional(lambda: sum(proc.num_ctx_switches()))
        created = proc.create_time()
    uptime = max(0.0, time.time() - created)
    out = metrics_pb2.ProcessMetrics(
        pid=proc.pid,
        cpu_user_seconds=cpu.user,
        cpu_system_seconds=cpu.system,
        rss_bytes=memory.rss,
        vms_bytes=memory.vms,
        threads=threads,
        open_fds=fds,
        context_switches=switches,
    )
    out.uptime.FromNanoseconds(int(uptime * 1e9))
    busy = cpu.user + cpu.system
    elapsed = uptime
    if previous is not None:
        busy -= previous.cpu_user_seconds + previous.cpu_system_seconds
        elapsed -= previous.uptime.ToNanoseconds() / 1e9
    # A wall-clock step can make elapsed <= 0; report 0 rather than nonsense.
    out.cpu_percent = max(0.0, busy) / elapsed * 100.0 if elapsed > 0 else 0.0
    return out


def _optional(read: Callable[[], int]) -> int:
    # Some figures are refused on some platforms; 0 means "not known".
    try:
        return read()
    except (psutil.Error, NotImplementedError):
        return 0


# --------------------------------------------------------------------------
# Filters


@dataclass(frozen=True)
class MetricFilter:
    """Which metric names and RPC method names to include.

    Globs (``fnmatch``: ``*``, ``?``, ``[...]``) match the whole name, case
    sensitively; ``re:<regex>`` patterns are searched (use ``^``/``$`` to
    anchor). No patterns means everything.
    """

    patterns: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def from_patterns(cls, patterns: Sequence[str]) -> MetricFilter:
        """Compile ``patterns``; bad ones raise INVALID_ARGUMENT on ``metric_filters[i]``."""
        return cls(tuple(_compile(i, p) for i, p in enumerate(patterns)))

    def matches(self, name: str) -> bool:
        """Whether ``name`` passes the filter."""
        return not self.patterns or any(p.search(name) for p in self.patterns)


_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*:")


def _compile(index: int, pattern: str) -> re.Pattern[str]:
    field = f"metric_filters[{index}]"
    if not pattern:
        raise invalid_argument(field, "empty pattern")
    if pattern.startswith("re:"):
        regex = pattern[3:]
        if not regex:
            raise invalid_argument(field, "empty regular expression after 're:'")
        try:
            return re.compile(regex)
        except re.error as e:
            raise invalid_argument(field, f"invalid regular expression {regex!r}: {e}") from e
    prefix = _PREFIX.match(pattern)
    if prefix:
        # Metric and method names have no ':', so this is a mistyped prefix.
        raise invalid_argument(
            field,
            f"unknown prefix {prefix.group()!r} in {pattern!r}: the only prefix is 're:' "
            "(a regular expression); patterns without it are globs",
        )
    _check_glob(field, pattern)
    # Anchored at the start as well: matches() searches, and a glob is whole-name.
    return re.compile(r"\A" + fnmatch.translate(pattern))


def _check_glob(field: str, pattern: str) -> None:
    """Reject an unterminated ``[``, which fnmatch would quietly take literally."""
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] != "[":
            i += 1
            continue
        # Same scan as fnmatch.translate: "[!" negates, a first "]" is literal.
        j = i + 1
        if j < n and pattern[j] == "!":
            j += 1
        if j < n and pattern[j] == "]":
            j += 1
        while j < n and pattern[j] != "]":
            j += 1
        if j >= n:
            raise invalid_argument(
                field,
                f"unterminated '[' at position {i} in glob {pattern!r} "
                "(write '[[]' for a literal '[')",
            )
        i = j + 1


# --------------------------------------------------------------------------
# Watch


class MetricsWatch:
    """One WatchMetrics stream: an interval, a filter and the previous reading.

    Rates (``calls_per_second``, ``cpu_percent``) cover the time since this
    watch's previous snapshot; the first snapshot's rates cover the life of
    the process, and its ``interval`` says so (it is the process uptime).
    """

    def __init__(
        self,
        rpc_stats: RpcStats | None,
        app_metrics: AppMetrics | None,
        process: psutil.Process | None = None,
        *,
        interval: float = DEFAULT_INTERVAL,
        metric_filter: MetricFilter | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        self.interval = interval
        self.metric_filter = metric_filter if metric_filter is not None else MetricFilter()
        self._rpc_stats = rpc_stats
        self._app_metrics = app_metrics
        self._process = process if process is not None else psutil.Process()
        self._last_time: float | None = None  # time.monotonic() of the previous snapshot
        self._last_process: metrics_pb2.ProcessMetrics | None = None
        self._last_started: dict[str, int] = {}

    @classmethod
    def from_request(
        cls,
        req: management_pb2.WatchMetricsRequest,
        rpc_stats: RpcStats | None,
        app_metrics: AppMetrics | None,
        process: psutil.Process | None = None,
    ) -> MetricsWatch:
        """Validate ``req``; raises INVALID_ARGUMENT on ``interval`` or ``metric_filters[i]``."""
        interval = DEFAULT_INTERVAL
        if req.HasField("interval"):
            interval = req.interval.seconds + req.interval.nanos / 1e9
            if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
                raise invalid_argument("interval", f"must be from 100ms to 1h, got {interval:.9g}s")
        metric_filter = MetricFilter.from_patterns(req.metric_filters)
        return cls(rpc_stats, app_metrics, process, interval=interval, metric_filter=metric_filter)

    def snapshot(self) -> management_pb2.WatchMetricsResponse:
        """Measure now; rates cover the time since the previous snapshot."""
        now = time.monotonic()
        response = management_pb2.WatchMetricsResponse()
        snap = response.snapshot
        snap.time.GetCurrentTime()
        process = process_metrics(self._process, self._last_process)
        snap.process.CopyFrom(process)
        if self._last_time is None:
            elapsed = process.uptime.ToNanoseconds() / 1e9
        else:
            elapsed = now - self._last_time
        snap.interval.FromNanoseconds(int(elapsed * 1e9))
        include = self.metric_filter.matches
        if self._rpc_stats is not None:
            methods = self._rpc_stats.figures(include)
            for m in methods:
                calls = m.calls_started - self._last_started.get(m.method, 0)
                m.calls_per_second = calls / elapsed if elapsed > 0 else 0.0
                self._last_started[m.method] = m.calls_started
            snap.rpc_methods.extend(methods)
        if self._app_metrics is not None:
            snap.metrics.extend(self._app_metrics.collect(include))
        self._last_time = now
        self._last_process = process
        return response

    def iter_responses(
        self, is_active: Callable[[], bool]
    ) -> Generator[management_pb2.WatchMetricsResponse, None, None]:
        """Snapshots for a sync server: one at once, then one per interval.

        Stops when ``is_active()`` (such as ``context.is_active``) turns false,
        checked at least every 0.25 s.
        """
        due = time.monotonic()
        while is_active():
            yield self.snapshot()
            # Keep to the schedule, but after a stall start afresh rather
            # than send a burst of catch-up snapshots.
            due = max(due + self.interval, time.monotonic())
            while (remaining := due - time.monotonic()) > 0:
                if not is_active():
                    return
                time.sleep(min(remaining, _POLL))

    async def aiter_responses(
        self, ended: Callable[[], bool] = lambda: False
    ) -> AsyncGenerator[management_pb2.WatchMetricsResponse, None]:
        """Snapshots for grpc.aio: one at once, then one per interval, until
        cancelled or ``ended()`` turns true (checked at least every 0.25 s;
        the stream then ends normally, so a server stops without cancelling it)."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not ended():
            # OTel collect and psutil reads are short but blocking: keep them
            # off the event loop.
            yield await asyncio.to_thread(self.snapshot)
            due = max(due + self.interval, loop.time())
            while (remaining := due - loop.time()) > 0:
                if ended():
                    return
                await asyncio.sleep(min(remaining, _POLL))
