"""OpenTelemetry: a server span for every Management call, carrying the
caller's trace context; health checks are not traced."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from support import Host, make_container, start_container

from pycontainer.v1 import management_pb2


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def test_management_calls_are_traced_health_is_not(
    new_host: object, exporter: InMemorySpanExporter
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    host: Host = new_host(make_container("traced", tracer_provider=provider))  # type: ignore[operator]
    start_container(host)
    exporter.clear()

    client_tracer = provider.get_tracer("test-client")
    with client_tracer.start_as_current_span("operator call") as parent:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        host.management.GetInfo(management_pb2.GetInfoRequest(), metadata=tuple(carrier.items()))
    health_pb2_grpc.HealthStub(host.channel).Check(health_pb2.HealthCheckRequest())
    with pytest.raises(grpc.RpcError):
        host.management.GetHealth(management_pb2.GetHealthRequest(check_names=["missing"]))
    stream = host.management.StreamLogs(management_pb2.StreamLogsRequest(tail=1))
    list(stream)

    spans = {s.name: s for s in exporter.get_finished_spans()}
    info = spans["pycontainer.v1.Management/GetInfo"]
    assert info.kind == SpanKind.SERVER
    assert info.parent is not None
    assert info.context.trace_id == parent.get_span_context().trace_id
    assert info.parent.span_id == parent.get_span_context().span_id
    assert info.attributes["rpc.system"] == "grpc"
    assert info.attributes["rpc.grpc.status_code"] == 0

    failed = spans["pycontainer.v1.Management/GetHealth"]
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert "pycontainer.v1.Management/StreamLogs" in spans
    assert not [s for s in spans if s.startswith("grpc.health")]
    assert trace.get_tracer_provider() is not provider  # the global one was not touched
