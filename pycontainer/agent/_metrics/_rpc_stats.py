"""gRPC server figures: what the container's interceptors count per method."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable

import grpc

from pycontainer.v1 import metrics_pb2

from ..._errors import code_number

__all__ = ["LATENCY_BOUNDS", "MethodStats", "RpcStats"]

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


# Status codes by wire number (0..16), so that a call's code is counted in a
# list slot: hashing a StatusCode (an Enum) costs a Python-level __hash__.
_CODE_NAMES: tuple[str, ...] = tuple(code.name for code in sorted(grpc.StatusCode, key=code_number))


class MethodStats:
    """The counters of one method, recorded into by a handler wrapper that
    took them once: a call costs short updates under the shared lock (begin,
    each message, end) and no lookups by method name or hashing of status
    codes (an Enum's hash is a Python-level call)."""

    __slots__ = (
        "_lock",
        "_owner",
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
        "method",
        "min",
        "ok",
        "started",
        "sum",
    )

    def __init__(
        self, lock: threading.Lock, method: str = "", owner: RpcStats | None = None
    ) -> None:
        self._lock = lock
        self._owner = owner
        self.method = method
        self.started = 0
        self.ok = 0
        self.failed = 0
        self.in_flight = 0
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.codes = [0] * len(_CODE_NAMES)  # by wire number
        self.bucket_counts = [0] * (len(LATENCY_BOUNDS) + 1)
        self.count = 0
        self.sum = 0.0
        self.min = 0.0
        self.max = 0.0

    def begin(self) -> None:
        """A call began."""
        with self._lock:
            self.started += 1
            self.in_flight += 1

    def end(self, code: int, seconds: float) -> None:
        """A call ended with the status of wire number ``code`` (0: OK) after ``seconds``."""
        with self._lock:
            if self.in_flight > 0:
                self.in_flight -= 1
            if code == 0:
                self.ok += 1
            else:
                self.failed += 1
            self.codes[code] += 1
            # Bucket i holds bounds[i-1] < x <= bounds[i], as OpenTelemetry's.
            self.bucket_counts[bisect_left(LATENCY_BOUNDS, seconds)] += 1
            if self.count == 0 or seconds < self.min:
                self.min = seconds
            if self.count == 0 or seconds > self.max:
                self.max = seconds
            self.count += 1
            self.sum += seconds
        # Read at each end: an export may begin after the wrappers took these.
        if self._owner is not None and (hook := self._owner.on_call_end) is not None:
            hook(self.method, code, seconds)

    def received(self, nbytes: int) -> None:
        """A request message of ``nbytes`` serialized bytes arrived."""
        with self._lock:
            self.messages_in += 1
            self.bytes_in += nbytes

    def sent(self, nbytes: int) -> None:
        """A response message of ``nbytes`` serialized bytes was sent."""
        with self._lock:
            self.messages_out += 1
            self.bytes_out += nbytes


class RpcStats:
    """Thread-safe per-method counters of the container's gRPC server.

    A handler wrapper takes its method's :class:`MethodStats` once
    (:meth:`method`) and records each call there. :meth:`call_started`,
    :meth:`message_received` / :meth:`message_sent` and :meth:`call_finished`
    do the same by method name. Methods are full names such as
    ``"/pycontainer.v1.Management/GetInfo"``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._methods: dict[str, MethodStats] = {}
        #: Told each call's end (method, status wire number, seconds) while
        #: an OpenTelemetry export takes them (_exported); None otherwise.
        self.on_call_end: Callable[[str, int, float], None] | None = None

    def method(self, method: str) -> MethodStats:
        """The counters of ``method`` (made on first use)."""
        stats = self._methods.get(method)
        if stats is None:
            with self._lock:
                stats = self._methods.get(method)
                if stats is None:
                    stats = self._methods[method] = MethodStats(self._lock, method, self)
        return stats

    def call_started(self, method: str) -> None:
        """A call of ``method`` began."""
        self.method(method).begin()

    def message_received(self, method: str, nbytes: int) -> None:
        """A request message of ``nbytes`` serialized bytes arrived."""
        self.method(method).received(nbytes)

    def message_sent(self, method: str, nbytes: int) -> None:
        """A response message of ``nbytes`` serialized bytes was sent."""
        self.method(method).sent(nbytes)

    def call_finished(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """A call ended with ``code`` after ``seconds``."""
        self.method(method).end(code_number(code), seconds)

    def started_counts(self) -> list[tuple[str, int]]:
        """The calls started so far of each method called."""
        with self._lock:
            return [(method, s.started) for method, s in self._methods.items() if s.started]

    def figures(
        self, include: Callable[[str], bool] | None = None
    ) -> list[metrics_pb2.RpcMethodMetrics]:
        """Cumulative figures per called method, sorted by method, optionally filtered.

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
                    list(s.codes),
                    list(s.bucket_counts),
                    s.count,
                    s.sum,
                    s.min,
                    s.max,
                )
                for method, s in self._methods.items()
                # A method shows once it was called (wrappers take its
                # counters when they are made, before any call).
                if (s.started or s.messages_in or s.messages_out)
                and (include is None or include(method))
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
                    status_codes={_CODE_NAMES[i]: n for i, n in enumerate(codes) if n},
                )
            )
        return out
