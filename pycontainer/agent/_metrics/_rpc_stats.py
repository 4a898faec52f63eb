"""gRPC server figures: what the container's interceptors count per method."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable

import grpc

from pycontainer.v1 import metrics_pb2

__all__ = ["LATENCY_BOUNDS", "RpcStats"]

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
