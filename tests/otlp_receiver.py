"""A real OTLP receiver for tests: opentelemetry-proto's collector services
(logs, metrics and traces) on a gRPC server, and the same three over
OTLP/HTTP (protobuf bodies on /v1/logs, /v1/metrics, /v1/traces), on
ephemeral loopback ports; it keeps every request it is sent."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

__all__ = ["OtlpReceiver", "Received", "attributes"]


def attributes(values: Any) -> dict[str, Any]:
    """OTLP KeyValues as a dict of plain values."""
    out: dict[str, Any] = {}
    for kv in values:
        value: common_pb2.AnyValue = kv.value
        kind = value.WhichOneof("value")
        out[kv.key] = getattr(value, kind) if kind else None
    return out


@dataclass(frozen=True)
class Received:
    """One log record, data point or span, with its resource's attributes
    and the transport that brought it ("grpc" or "http")."""

    transport: str
    resource: dict[str, Any]
    item: Any


class OtlpReceiver:
    """Records what OTLP exporters send it, over gRPC (:attr:`grpc_endpoint`)
    and HTTP (:attr:`http_endpoint`)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self.logs: list[tuple[str, logs_service_pb2.ExportLogsServiceRequest]] = []
        self.metrics: list[tuple[str, metrics_service_pb2.ExportMetricsServiceRequest]] = []
        self.traces: list[tuple[str, trace_service_pb2.ExportTraceServiceRequest]] = []
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(self), self._grpc)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(self), self._grpc)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(self), self._grpc)
        grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(self))
        self.grpc_endpoint = f"http://127.0.0.1:{grpc_port}"
        self.http_endpoint = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._http_thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def start(self) -> OtlpReceiver:
        self._grpc.start()
        self._http_thread.start()
        return self

    def stop(self) -> None:
        self._grpc.stop(grace=None)
        self._http.shutdown()
        self._http.server_close()
        self._http_thread.join(10)

    def record(self, kind: str, transport: str, request: Message) -> None:
        with self._lock:
            getattr(self, kind).append((transport, request))
            self._lock.notify_all()

    # -- what arrived, flattened ----------------------------------------------------

    def log_records(self) -> Iterator[Received]:
        with self._lock:
            requests = list(self.logs)
        for transport, request in requests:
            for resource_logs in request.resource_logs:
                resource = attributes(resource_logs.resource.attributes)
                for scope_logs in resource_logs.scope_logs:
                    for record in scope_logs.log_records:
                        yield Received(transport, resource, record)

    def data_points(self, name: str) -> Iterator[Received]:
        """The number data points of every metric called ``name``."""
        with self._lock:
            requests = list(self.metrics)
        for transport, request in requests:
            for resource_metrics in request.resource_metrics:
                resource = attributes(resource_metrics.resource.attributes)
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        if metric.name != name:
                            continue
                        data = getattr(metric, metric.WhichOneof("data") or "sum")
                        for point in getattr(data, "data_points", []):
                            yield Received(transport, resource, point)

    def spans(self) -> Iterator[Received]:
        with self._lock:
            requests = list(self.traces)
        for transport, request in requests:
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        yield Received(transport, resource, span)

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Until ``predicate()`` holds: checked as each request arrives, and
        every 0.1 s for what else it looks at (a process that ended)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the OTLP receiver got no {what} in {timeout:g}s")
                self._lock.wait(min(left, 0.1))


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: Any, context: Any) -> logs_service_pb2.ExportLogsServiceResponse:
        self._receiver.record("logs", "grpc", request)
        return logs_service_pb2.ExportLogsServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: Any, context: Any
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self._receiver.record("metrics", "grpc", request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        self._receiver.record("traces", "grpc", request)
        return trace_service_pb2.ExportTraceServiceResponse()


# OTLP/HTTP: each signal's path, request message and (empty) response.
_HTTP_PATHS: dict[str, tuple[str, type[Message], Message]] = {
    "/v1/logs": (
        "logs",
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse(),
    ),
    "/v1/metrics": (
        "metrics",
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse(),
    ),
    "/v1/traces": (
        "traces",
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse(),
    ),
}


def _http_handler(receiver: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            route = _HTTP_PATHS.get(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if route is None or self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_error(404 if route is None else 415)
                return
            kind, request_type, response = route
            if self.headers.get("Content-Encoding") == "gzip":
                import gzip

                body = gzip.decompress(body)
            receiver.record(kind, "http", request_type.FromString(body))
            payload = response.SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # not on the test's stderr

    return Handler
