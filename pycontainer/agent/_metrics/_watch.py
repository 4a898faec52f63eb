"""One WatchMetrics stream: process figures (psutil), the name filter, and
the snapshots that put RPC stats, app metrics and the process together."""

from __future__ import annotations

import asyncio
import datetime
import fnmatch
import re
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from dataclasses import dataclass

import psutil

from pycontainer import units
from pycontainer._errors import invalid_argument
from pycontainer.v1 import management_pb2, metrics_pb2

from .._pattern import MAX_PATTERN_LENGTH, Pattern, PatternError, compile_pattern
from ._otel import AppMetrics
from ._rpc_stats import RpcStats

__all__ = [
    "DEFAULT_INTERVAL",
    "MAX_INTERVAL",
    "MIN_INTERVAL",
    "MetricFilter",
    "MetricsWatch",
    "process_metrics",
]

MIN_INTERVAL = 0.1
"""Shortest WatchMetrics interval, in seconds."""
MAX_INTERVAL = 3600.0
"""Longest WatchMetrics interval, in seconds."""
DEFAULT_INTERVAL = 1.0
"""WatchMetrics interval when the request leaves it unset, in seconds."""

# How often a sync stream wakes to check that its client is still there.
_POLL = 0.25


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
    # Rates are computed over the durations as reported (to the microsecond).
    reported = datetime.timedelta(seconds=uptime)
    out.uptime.CopyFrom(units.duration_to_proto(reported))
    busy = cpu.user + cpu.system
    elapsed = reported.total_seconds()
    if previous is not None:
        busy -= previous.cpu_user_seconds + previous.cpu_system_seconds
        elapsed -= units.duration_from_proto(previous.uptime).total_seconds()
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

    patterns: tuple[Pattern, ...] = ()

    @classmethod
    def from_patterns(cls, patterns: Sequence[str]) -> MetricFilter:
        """Compile ``patterns``; bad ones raise INVALID_ARGUMENT on ``metric_filters[i]``."""
        return cls(tuple(_compile(i, p) for i, p in enumerate(patterns)))

    def matches(self, name: str) -> bool:
        """Whether ``name`` passes the filter."""
        return not self.patterns or any(p.search(name) for p in self.patterns)


_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*:")


def _compile(index: int, pattern: str) -> Pattern:
    field = f"metric_filters[{index}]"
    if not pattern:
        raise invalid_argument(field, "empty pattern")
    if len(pattern) > MAX_PATTERN_LENGTH + len("re:"):
        raise invalid_argument(
            field, f"too long: {len(pattern)} characters, at most {MAX_PATTERN_LENGTH} are accepted"
        )
    if pattern.startswith("re:"):
        regex = pattern[3:]
        if not regex:
            raise invalid_argument(field, "empty regular expression after 're:'")
        # Untrusted: RE2 (linear time), never the backtracking re.
        try:
            return compile_pattern(regex)
        except PatternError as e:
            raise invalid_argument(field, f"invalid regular expression {regex!r}: {e}") from None
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
    # fnmatch's translation (bounded in length above) does not backtrack
    # catastrophically: runs of '*' become atomic lookahead groups, which is why
    # it is compiled by re (RE2 has no lookahead).
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
        asked = units.duration_field(req, "interval")
        if asked is not None:
            interval = asked.total_seconds()
            if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
                raise invalid_argument("interval", f"must be from 100ms to 1h, got {interval:.9g}s")
        metric_filter = MetricFilter.from_patterns(req.metric_filters)
        return cls(rpc_stats, app_metrics, process, interval=interval, metric_filter=metric_filter)

    def snapshot(self) -> management_pb2.WatchMetricsResponse:
        """Measure now; rates cover the time since the previous snapshot."""
        now = time.monotonic()
        response = management_pb2.WatchMetricsResponse()
        snap = response.snapshot
        snap.time.CopyFrom(units.timestamp_to_proto(datetime.datetime.now(datetime.UTC)))
        process = process_metrics(self._process, self._last_process)
        snap.process.CopyFrom(process)
        if self._last_time is None:
            elapsed = units.duration_from_proto(process.uptime).total_seconds()
        else:
            elapsed = now - self._last_time
        # The rates below cover the interval as reported (to the microsecond).
        interval = datetime.timedelta(seconds=max(0.0, elapsed))
        snap.interval.CopyFrom(units.duration_to_proto(interval))
        elapsed = interval.total_seconds()
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
        self, is_active: Callable[[], bool], woken: threading.Event | None = None
    ) -> Generator[management_pb2.WatchMetricsResponse, None, None]:
        """Snapshots for a sync server: one at once, then one per interval.

        Stops when ``is_active()`` (such as ``context.is_active``) turns false,
        checked at least every 0.25 s and at once when ``woken`` is set (by
        grpc when the call ends: the handler's thread is free then, not at
        its next poll).
        """
        pause = woken.wait if woken is not None else time.sleep
        due = time.monotonic()
        while is_active():
            yield self.snapshot()
            # Keep to the schedule, but after a stall start afresh rather
            # than send a burst of catch-up snapshots.
            due = max(due + self.interval, time.monotonic())
            while (remaining := due - time.monotonic()) > 0:
                if not is_active():
                    return
                pause(min(remaining, _POLL))

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
