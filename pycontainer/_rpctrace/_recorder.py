"""Records of traced calls, turned into OpenTelemetry spans off the call path.

A call appends one tuple of ids, timestamps and its status to a bounded queue
and goes on; a daemon thread drains the queue into the TracerProvider's span
processors as finished SDK spans (``ReadableSpan``, what every processor's
``on_end`` gets). The SDK's own ``start_span``/``end`` costs ~26 µs a span
here, the finished span ~4 µs: on 2 cores, under one GIL, that difference is
the app's throughput. Processors see each span at its end (``on_end``), never
at its start (``on_start``): it started before it was built.
"""

from __future__ import annotations

import atexit
import collections
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, SynchronousMultiSpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

__all__ = ["CallRecord", "Recorder"]

_log = logging.getLogger("pycontainer.tracing")

# gRPC codes that make a server span an error (OpenTelemetry's RPC semantic
# conventions: the others are the client's doing); every non-OK code does on
# the client.
_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})
_UNSET = Status(StatusCode.UNSET)
_CLIENT = SpanKind.CLIENT
_TRACE_FLAGS = tuple(TraceFlags(flags) for flags in range(256))
EMPTY_TRACE_STATE = TraceState()


_ContextFields = tuple[int, int, bool, TraceFlags, TraceState, bool]


def _span_context_maker() -> Callable[[_ContextFields], SpanContext]:
    """SpanContext from (trace id, span id, remote, flags, state, True), for
    valid ids, without its checks (its ids are ours, valid by construction):
    that tuple as the SpanContext (a partial: no Python frame), when this API
    version lays it out as the one checked here; else the public constructor."""
    fast: Callable[[_ContextFields], SpanContext] = functools.partial(tuple.__new__, SpanContext)
    probe = fast((7, 9, True, _TRACE_FLAGS[1], EMPTY_TRACE_STATE, True))
    public = SpanContext(7, 9, True, _TRACE_FLAGS[1], EMPTY_TRACE_STATE)
    same = (
        type(probe) is SpanContext
        and probe == public
        and all(
            getattr(probe, name) == getattr(public, name)
            for name in (
                "trace_id",
                "span_id",
                "is_remote",
                "trace_flags",
                "trace_state",
                "is_valid",
            )
        )
    )
    if same:
        return fast
    return lambda fields: SpanContext(*fields[:5])


#: SpanContext of (trace id, span id, remote, flags, state, True).
span_context = _span_context_maker()
# Records handed to the processors between two yields of the GIL: the app's
# threads wait at most this many spans' work for it.
_CHUNK = 16


# What the call path keeps of one traced call: a plain tuple (a NamedTuple's
# constructor is a Python call, on the path twice a call), in this order:
# kind, service, method, trace id, span id, parent span id (0: a root),
# whether the parent is remote, trace flags, the parent's tracestate, start
# and end (wall-clock ns, as the SDK's own spans), gRPC status code number, the
# client's target or the server's peer (grpc's peer string), the
# description of an error, and the span's own SpanContext when the call path
# made it already (the server's: it was current), else None.
CallRecord = tuple[
    SpanKind,
    str,
    str,
    int,
    int,
    int,
    bool,
    int,
    str | None,
    int,
    int,
    int,
    str | None,
    str | None,
    SpanContext | None,
]


def _span_ends(processor: SpanProcessor) -> tuple[Callable[[ReadableSpan], None], ...]:
    """What ``processor.on_end(span)`` calls for a sampled span (every span
    recorded is), one call less each: the provider's SynchronousMultiSpanProcessor
    calls each of its processors' on_end in turn; the SDK's BatchSpanProcessor's
    on_end hands a sampled span to its batch's emit. Any other processor, or a
    subclass, is called as it is."""
    if type(processor) is not SynchronousMultiSpanProcessor:
        return (processor.on_end,)
    ends: list[Callable[[ReadableSpan], None]] = []
    for each in processor._span_processors:
        batch = getattr(each, "_batch_processor", None)
        emit = getattr(batch, "emit", None)
        if type(each) is BatchSpanProcessor and emit is not None:
            ends.append(emit)
        else:
            ends.append(each.on_end)
    return tuple(ends)


def _host_port(address: str) -> tuple[str, int | None]:
    """Host and port of a gRPC target or peer ("dns:///h:1", "ipv4:a:1", "[::1]:1")."""
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if address.startswith(scheme):
            address = address[len(scheme) :]
            break
    else:
        if address.startswith(("unix:", "unix-abstract:")):
            return address, None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address, None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class Recorder:
    """The bounded queue of call records and the thread that exports them.

    A full queue drops the new record and counts it (``dropped``); nothing is
    dropped otherwise. ``flush()`` exports what is queued; ``shutdown()``
    flushes and ends the thread (at interpreter exit too).
    """

    def __init__(
        self,
        processor: SpanProcessor,
        resource: Resource,
        scope: InstrumentationScope,
        *,
        max_queue_size: int,
        batch_size: int,
        delay: float,
    ) -> None:
        if max_queue_size < 1 or batch_size < 1:
            raise ValueError("max_queue_size and batch_size must be at least 1")
        self._processor = processor
        self._resource = resource
        self._scope = scope
        self.max_queue_size = max_queue_size
        self._batch_size = min(batch_size, max_queue_size)
        self._delay = delay
        self._queue: collections.deque[CallRecord] = collections.deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()  # the thread's start, and drop counts
        self._drain_lock = threading.Lock()  # one drainer at a time
        self._thread: threading.Thread | None = None
        self._closed = False
        self.dropped = 0
        self._warned = False
        self._shapes: dict[
            tuple[bool, str, str, int, str | None], tuple[str, Mapping[str, str | int], bool]
        ] = {}
        ref = weakref.ref(self)
        atexit.register(_shutdown_ref, ref)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=lambda: _after_fork_ref(ref))

    # -- the call path ---------------------------------------------------------------------
    def record(self, record: CallRecord) -> None:
        queue = self._queue
        waiting = len(queue)
        if waiting >= self.max_queue_size or self._closed:
            self._drop()
            return
        queue.append(record)
        if self._thread is None:
            self._start()
        elif waiting >= self._batch_size - 1 and not self._wake.is_set():
            self._wake.set()

    def _drop(self) -> None:
        with self._lock:
            self.dropped += 1
            warn, self._warned = not self._warned and not self._closed, True
        if warn:
            _log.warning(
                "RPC tracing: the span queue is full (%d records); spans are dropped and "
                "counted (raise max_queue_size, or sample fewer calls)",
                self.max_queue_size,
            )

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(
                target=self._run, name="pycontainer-rpc-tracing", daemon=True
            )
            self._thread.start()

    # -- off the call path -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._delay)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Hand every queued record to the processors (on this thread)."""
        queue, span, chunk = self._queue, self._span, 0
        with self._drain_lock:
            ends = _span_ends(self._processor)  # read per flush: processors may be added
            only = ends[0] if len(ends) == 1 else None
            while queue:
                try:
                    record = queue.popleft()
                except IndexError:
                    break
                try:
                    if only is not None:
                        only(span(record))
                    else:
                        made = span(record)
                        for end in ends:
                            end(made)
                except Exception:  # a processor's failure: its spans, not the app's calls
                    _log.exception("RPC tracing: a span processor failed")
                chunk += 1
                if chunk == _CHUNK:
                    chunk = 0
                    time.sleep(0)  # the app's threads get the GIL between chunks

    def shutdown(self) -> None:
        """Flush, then stop the thread; a record after it is dropped and counted."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self.flush()

    def _span(self, record: CallRecord) -> ReadableSpan:
        (
            kind,
            service,
            method,
            trace_id,
            span_id,
            parent_id,
            parent_remote,
            trace_flags,
            tracestate,
            start_ns,
            end_ns,
            code,
            address,
            description,
            context,
        ) = record
        flags = _TRACE_FLAGS[trace_flags & 0xFF]
        make = span_context
        if context is None:
            state = TraceState.from_header([tracestate]) if tracestate else EMPTY_TRACE_STATE
            context = make((trace_id, span_id, False, flags, state, True))
        else:
            state = context.trace_state
        parent = (
            make((trace_id, parent_id, parent_remote, flags, state, True)) if parent_id else None
        )
        key = (kind is _CLIENT, service, method, code, address)  # SpanKind hashes in Python
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shape(key)
        name, attributes, error = shape
        return ReadableSpan(
            name,
            context,
            parent,
            self._resource,
            attributes,
            (),
            (),
            kind,
            None,
            Status(StatusCode.ERROR, description) if error else _UNSET,
            start_ns,
            end_ns,
            self._scope,
        )

    def _shape(
        self, key: tuple[bool, str, str, int, str | None]
    ) -> tuple[str, Mapping[str, str | int], bool]:
        """Name, attributes and error-ness of the spans of one method, code
        and address: the same for every call of them, so made once (spans
        show their attributes read-only: one mapping serves them all)."""
        client, service, method, code, address = key
        attributes: dict[str, str | int] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
            "rpc.grpc.status_code": code,
        }
        if address:
            host, port = _host_port(address)
            prefix = "server" if client else "network.peer"
            attributes[f"{prefix}.address"] = host
            if port is not None:
                attributes[f"{prefix}.port"] = port
        error = code != 0 and (client or code in _SERVER_ERRORS)
        shape = (f"{service}/{method}", attributes, error)
        if len(self._shapes) < 4096:  # peers' ports vary: keep it bounded
            self._shapes[key] = shape
        return shape

    def _after_fork(self) -> None:
        # The child has no exporter thread and its own locks; the parent's
        # queued calls are the parent's to export.
        self._queue.clear()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._thread = None


def _shutdown_ref(ref: weakref.ref[Recorder]) -> None:
    recorder = ref()
    if recorder is not None:
        recorder.shutdown()


def _after_fork_ref(ref: weakref.ref[Recorder]) -> None:
    recorder = ref()
    if recorder is not None:
        recorder._after_fork()
