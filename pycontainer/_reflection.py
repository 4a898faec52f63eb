"""Server reflection, v1 and v1alpha, over a descriptor pool that also knows
grpc.health.v1's ``List`` method.

grpcio-reflection serves only ``grpc.reflection.v1alpha``; grpcurl tries
``grpc.reflection.v1`` first. The two protocols are the same messages under
another package, so the v1 service is served by the same servicer with the
v1alpha message classes, and its descriptor is a renamed copy of v1alpha's.
Likewise grpcio-health-checking's health.proto predates ``List``: the
reflection pool serves a copy of it with ``List`` added, so ``grpcurl
describe grpc.health.v1.Health`` shows what is actually served.

The pool falls back to the process's default pool for every other file, so
the app's own services resolve too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection as reflection_sync
from grpc_reflection.v1alpha import reflection_pb2

try:  # the aio twin lives in a private module of grpcio-reflection
    from grpc_reflection.v1alpha._async import ReflectionServicer as _AioReflectionServicer
except ImportError:  # pragma: no cover - present in every supported version
    _AioReflectionServicer = None

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
HEALTH = "grpc.health.v1.Health"


def _file_proto(fd: FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    fd.CopyToProto(proto)
    return proto


def _health_with_list() -> descriptor_pb2.FileDescriptorProto:
    proto = _file_proto(health_pb2.DESCRIPTOR)
    service = next(s for s in proto.service if s.name == "Health")
    if any(m.name == "List" for m in service.method):
        return proto
    request = proto.message_type.add(name="HealthListRequest")
    del request  # an empty message
    response = proto.message_type.add(name="HealthListResponse")
    entry = response.nested_type.add(name="StatusesEntry")
    entry.options.map_entry = True
    entry.field.add(
        name="key",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        json_name="key",
    )
    entry.field.add(
        name="value",
        number=2,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        type_name=".grpc.health.v1.HealthCheckResponse",
        json_name="value",
    )
    response.field.add(
        name="statuses",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
        type_name=".grpc.health.v1.HealthListResponse.StatusesEntry",
        json_name="statuses",
    )
    service.method.add(
        name="List",
        input_type=".grpc.health.v1.HealthListRequest",
        output_type=".grpc.health.v1.HealthListResponse",
    )
    return proto


def _reflection_v1() -> descriptor_pb2.FileDescriptorProto:
    proto = _file_proto(reflection_pb2.DESCRIPTOR)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = "grpc.reflection.v1"
    for message in proto.message_type:
        for f in message.field:
            if f.HasField("type_name"):
                f.type_name = f.type_name.replace(
                    ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
                )
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace("v1alpha", "v1")
        method.output_type = method.output_type.replace("v1alpha", "v1")
    proto.options.Clear()
    return proto


class _Database:
    """A descriptor database: our amended files first, then the default pool."""

    def __init__(self, overrides: Iterable[descriptor_pb2.FileDescriptorProto]) -> None:
        self._files = {p.name: p for p in overrides}
        self._default = descriptor_pool.Default()
        self._symbols: dict[str, str] = {}
        for p in self._files.values():
            prefix = f"{p.package}." if p.package else ""
            for m in p.message_type:
                self._symbols[prefix + m.name] = p.name
            for s in p.service:
                self._symbols[prefix + s.name] = p.name
                for method in s.method:
                    self._symbols[f"{prefix}{s.name}.{method.name}"] = p.name
            for e in p.enum_type:
                self._symbols[prefix + e.name] = p.name

    def FindFileByName(self, name: str) -> descriptor_pb2.FileDescriptorProto:
        if name in self._files:
            return self._files[name]
        return _file_proto(self._default.FindFileByName(name))

    def FindFileContainingSymbol(self, symbol: str) -> descriptor_pb2.FileDescriptorProto:
        if symbol in self._symbols:
            return self._files[self._symbols[symbol]]
        return _file_proto(self._default.FindFileContainingSymbol(symbol))

    def FindFileContainingExtension(self, extendee: str, number: int) -> Any:
        message = self._default.FindMessageTypeByName(extendee)
        extension = self._default.FindExtensionByNumber(message, number)
        # types-protobuf's FieldDescriptor omits ``file``, which protobuf sets.
        return _file_proto(extension.file)  # type: ignore[attr-defined]

    def FindAllExtensionNumbers(self, extendee: str) -> list[int]:
        message = self._default.FindMessageTypeByName(extendee)
        return [e.number for e in self._default.FindAllExtensions(message)]


_POOL: descriptor_pool.DescriptorPool | None = None


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """The process-wide pool reflection serves from (built once)."""
    global _POOL
    if _POOL is None:
        _POOL = descriptor_pool.DescriptorPool(
            descriptor_db=_Database([_health_with_list(), _reflection_v1()])
        )
    return _POOL


def health_list_messages() -> tuple[type[Any], type[Any]]:
    """HealthListRequest and HealthListResponse classes from the amended file."""
    pool = reflection_pool()
    return (
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("grpc.health.v1.HealthListRequest")
        ),
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("grpc.health.v1.HealthListResponse")
        ),
    )


def _dynamic_services(base: type[Any]) -> type[Any]:
    """A reflection servicer whose service list is read at call time."""

    class Servicer(base):  # type: ignore[misc]  # base is type[Any]: either servicer
        def __init__(self, names: Callable[[], Iterable[str]]) -> None:
            super().__init__((), pool=reflection_pool())
            self._names = names

        def _list_services(self, request: Any) -> Any:
            self._service_names = tuple(sorted(set(self._names())))
            return super()._list_services(request)

    return Servicer


def reflection_handlers(
    names: Callable[[], Iterable[str]], *, aio: bool
) -> dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]]:
    """Handlers of both reflection services, by service name."""
    base = _AioReflectionServicer if aio else reflection_sync.ReflectionServicer
    servicer = _dynamic_services(base)(names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    return {
        REFLECTION_V1: {"ServerReflectionInfo": handler},
        REFLECTION_V1ALPHA: {"ServerReflectionInfo": handler},
    }
