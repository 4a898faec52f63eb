"""Server reflection as grpcurl uses it: v1 first, then v1alpha; list, then
file_containing_symbol and file_by_filename for every dependency, so that
`grpcurl list` and `describe` work with no proto files at hand."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from support import Host

EXPECTED = {
    "pycontainer.v1.Management",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "demo.Echo",
}


class ReflectionClient:
    """What grpcurl does, over one protocol version."""

    def __init__(self, channel: grpc.Channel, version: str) -> None:
        self._call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )

    def ask(self, **request: Any) -> reflection_pb2.ServerReflectionResponse:
        responses = list(
            self._call(iter([reflection_pb2.ServerReflectionRequest(**request)]), timeout=10)
        )
        assert len(responses) == 1
        return responses[0]

    def list_services(self) -> set[str]:
        return {s.name for s in self.ask(list_services="").list_services_response.service}

    def pool_for(self, symbol: str) -> descriptor_pool.DescriptorPool:
        """A pool with the file defining symbol and, file by file, all it imports."""
        files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        pending: list[descriptor_pb2.FileDescriptorProto] = []
        answer = self.ask(file_containing_symbol=symbol)
        assert answer.WhichOneof("message_response") == "file_descriptor_response", answer
        for raw in answer.file_descriptor_response.file_descriptor_proto:
            pending.append(descriptor_pb2.FileDescriptorProto.FromString(raw))
        while pending:
            proto = pending.pop()
            if proto.name in files:
                continue
            files[proto.name] = proto
            for dep in proto.dependency:
                if dep not in files:
                    by_name = self.ask(file_by_filename=dep)
                    assert by_name.WhichOneof("message_response") == "file_descriptor_response", dep
                    pending.extend(
                        descriptor_pb2.FileDescriptorProto.FromString(raw)
                        for raw in by_name.file_descriptor_response.file_descriptor_proto
                    )
        pool = descriptor_pool.DescriptorPool()
        added: set[str] = set()

        def add(name: str) -> None:
            if name in added:
                return
            for dep in files[name].dependency:
                add(dep)
            pool.Add(files[name])
            added.add(name)

        for name in files:
            add(name)
        return pool


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_list_and_describe_everything(host: Host, version: str) -> None:
    client = ReflectionClient(host.channel, version)
    services = client.list_services()
    assert services >= EXPECTED - {"demo.Echo"}
    # demo.Echo was added with a generic handler after add_to_server: listed.
    assert "demo.Echo" in services
    for service in services - {"demo.Echo"}:
        pool = client.pool_for(service)
        descriptor = pool.FindServiceByName(service)
        for method in descriptor.methods:
            # Every input and output message resolves, fields and all.
            for message in (method.input_type, method.output_type):
                for f in message.fields:
                    if f.message_type is not None:
                        assert f.message_type.full_name

    management = client.pool_for("pycontainer.v1.Management")
    methods = {m.name for m in management.FindServiceByName("pycontainer.v1.Management").methods}
    assert methods == {
        "GetInfo",
        "GetHealth",
        "WatchMetrics",
        "StreamLogs",
        "GetProfile",
        "GetConfig",
    }
    info = management.FindMessageTypeByName("pycontainer.v1.GetInfoResponse")
    assert info.fields_by_name["uptime"].message_type.full_name == "google.protobuf.Duration"
    health = client.pool_for("grpc.health.v1.Health").FindServiceByName("grpc.health.v1.Health")
    assert {m.name for m in health.methods} == {"Check", "Watch", "List"}


def test_unknown_symbol_is_not_found(host: Host) -> None:
    answer = ReflectionClient(host.channel, "v1").ask(file_containing_symbol="no.such.Thing")
    assert answer.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_stock_v1alpha_client_database(host: Host) -> None:
    """grpcio-reflection's own client resolves every service and its types."""
    database = ProtoReflectionDescriptorDatabase(host.channel)
    pool = descriptor_pool.DescriptorPool(database)
    assert set(database.get_services()) >= EXPECTED
    for name in ("pycontainer.v1.Management", "grpc.health.v1.Health"):
        assert pool.FindServiceByName(name).methods
    stream_logs = pool.FindMethodByName("pycontainer.v1.Management.StreamLogs")
    assert (
        stream_logs.output_type.fields_by_name["entries"]
        .message_type.fields_by_name["time"]
        .message_type.full_name
        == "google.protobuf.Timestamp"
    )
