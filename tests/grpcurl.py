"""What grpcurl does, in Python, so README commands can be run in tests.

grpcurl is a Go program that no package registry here offers. This emulates
the subset the README uses, the way grpcurl does it: server reflection v1,
falling back to v1alpha; `list [SERVICE]`, `describe SYMBOL`, and invoking
`SERVICE/METHOD` (unary or server streaming) with `-d JSON`, printing JSON.
Exit codes as grpcurl's: 0 ok, 1 usage/lookup error, 64+code for an RPC error.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf import (
    descriptor,
    descriptor_pb2,
    descriptor_pool,
    json_format,
    message_factory,
)
from grpc_reflection.v1alpha import reflection_pb2


class Reflection:
    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self.version = "v1"
        self._files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        self.pool = descriptor_pool.DescriptorPool()
        self._added: set[str] = set()

    def _ask(self, **request: Any) -> reflection_pb2.ServerReflectionResponse:
        for version in (self.version, "v1alpha"):
            call = self._channel.stream_stream(
                f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            try:
                answer = next(
                    iter(
                        call(iter([reflection_pb2.ServerReflectionRequest(**request)]), timeout=10)
                    )
                )
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED and version == "v1":
                    continue  # grpcurl falls back to v1alpha
                raise
            self.version = version
            return answer
        raise RuntimeError("server does not support the reflection API")

    def services(self) -> list[str]:
        return sorted(s.name for s in self._ask(list_services="").list_services_response.service)

    def _load(self, answer: reflection_pb2.ServerReflectionResponse, what: str) -> None:
        if answer.HasField("error_response"):
            raise LookupError(f"Symbol not found: {what}")
        for raw in answer.file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
            self._files.setdefault(proto.name, proto)
        for proto in list(self._files.values()):
            for dep in proto.dependency:
                if dep not in self._files:
                    self._load(self._ask(file_by_filename=dep), dep)
        for name in list(self._files):
            self._add(name)

    def _add(self, name: str) -> None:
        if name in self._added:
            return
        for dep in self._files[name].dependency:
            self._add(dep)
        self.pool.Add(self._files[name])
        self._added.add(name)

    def symbol(self, name: str) -> Any:
        try:
            return self.pool.FindServiceByName(name)
        except KeyError:
            pass
        self._load(self._ask(file_containing_symbol=name), name)
        for find in (
            self.pool.FindServiceByName,
            self.pool.FindMessageTypeByName,
            self.pool.FindEnumTypeByName,
            self.pool.FindMethodByName,
        ):
            try:
                return find(name)
            except KeyError:
                continue
        raise LookupError(f"Symbol not found: {name}")


def _describe(d: Any) -> str:
    if isinstance(d, descriptor.ServiceDescriptor):
        lines = [f"{d.full_name} is a service:", f"service {d.name} {{"]
        for m in d.methods:
            stream = "stream " if m.server_streaming else ""
            cstream = "stream " if m.client_streaming else ""
            lines.append(
                f"  rpc {m.name} ( {cstream}.{m.input_type.full_name} ) returns "
                f"( {stream}.{m.output_type.full_name} );"
            )
        return "\n".join([*lines, "}"])
    if isinstance(d, descriptor.Descriptor):
        lines = [f"{d.full_name} is a message:", f"message {d.name} {{"]
        for f in d.fields:
            type_name = (
                f".{f.message_type.full_name}"
                if f.message_type
                else f".{f.enum_type.full_name}"
                if f.enum_type
                else "scalar"
            )
            lines.append(f"  {type_name} {f.name} = {f.number};")
        return "\n".join([*lines, "}"])
    return f"{d.full_name}"


def run(argv: list[str], out: Any = sys.stdout) -> int:
    args = list(argv)
    if args and args[0] == "grpcurl":
        args.pop(0)
    data = None
    plaintext = False
    max_msgs = None
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        if flag == "-plaintext":
            plaintext = True
        elif flag == "-d":
            data = args.pop(0)
        elif flag == "-max-msgs":
            max_msgs = int(args.pop(0))
        elif flag in ("-max-time", "-connect-timeout"):
            args.pop(0)
        else:
            print(f"unsupported flag {flag}", file=sys.stderr)
            return 1
    if not plaintext or not args:
        print("usage: grpcurl -plaintext [-d JSON] ADDR (list|describe|METHOD)", file=sys.stderr)
        return 1
    address, *rest = args
    with grpc.insecure_channel(address) as channel:
        refl = Reflection(channel)
        try:
            if rest[:1] == ["list"]:
                if len(rest) == 1:
                    print("\n".join(refl.services()), file=out)
                else:
                    service = refl.symbol(rest[1])
                    print("\n".join(m.full_name for m in service.methods), file=out)
                return 0
            if rest[:1] == ["describe"]:
                print(_describe(refl.symbol(rest[1])), file=out)
                return 0
            return _invoke(channel, refl, rest[0], data, max_msgs, out)
        except LookupError as exc:
            print(f"Failed to resolve symbol: {exc}", file=sys.stderr)
            return 1


def _invoke(
    channel: grpc.Channel,
    refl: Reflection,
    target: str,
    data: str | None,
    max_msgs: int | None,
    out: Any,
) -> int:
    service_name, _, method_name = target.replace("/", ".").rpartition(".")
    service = refl.symbol(service_name)
    method = service.methods_by_name[method_name]
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    request = json_format.Parse(data or "{}", request_cls())
    path = f"/{service.full_name}/{method.name}"
    try:
        if method.server_streaming:
            call = channel.unary_stream(
                path,
                request_serializer=request_cls.SerializeToString,
                response_deserializer=response_cls.FromString,
            )
            responses: Iterator[Any] = call(request, timeout=30)
            for i, response in enumerate(responses):
                print(json_format.MessageToJson(response, indent=2), file=out)
                if max_msgs is not None and i + 1 >= max_msgs:
                    responses.cancel()  # type: ignore[attr-defined]
                    break
        else:
            call_uu = channel.unary_unary(
                path,
                request_serializer=request_cls.SerializeToString,
                response_deserializer=response_cls.FromString,
            )
            print(json_format.MessageToJson(call_uu(request, timeout=30), indent=2), file=out)
    except grpc.RpcError as exc:
        print(f"ERROR:\n  Code: {exc.code().name}\n  Message: {exc.details()}", file=sys.stderr)
        return 64 + exc.code().value[0]
    return 0


def run_line(line: str, out: Any = sys.stdout) -> int:
    """Run one shell-quoted grpcurl command line."""
    return run(shlex.split(line), out)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
