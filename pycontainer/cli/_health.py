"""`pycontainer health ADDR`: a probe with grpc_health_probe's exit codes."""

from __future__ import annotations

import argparse
import datetime
import enum
import socket
import ssl

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..units import format_duration
from ._context import Context


class ProbeExit(enum.IntEnum):
    """Exit codes, as grpc_health_probe's."""

    SERVING = 0
    INVALID_ARGUMENTS = 1
    CONNECTION_FAILED = 2
    RPC_FAILED = 3
    NOT_SERVING = 4


_SECOND = datetime.timedelta(seconds=1)


def probe(
    address: str,
    service: str = "",
    timeout: datetime.timedelta = _SECOND,
    connect_timeout: datetime.timedelta = _SECOND,
) -> tuple[ProbeExit, str]:
    """Check one service's health; the exit code and a line for the operator."""
    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=connect_timeout.total_seconds())
        except grpc.FutureTimeoutError:
            if _speaks_tls(address, connect_timeout):
                return ProbeExit.CONNECTION_FAILED, (
                    f"error: {address} serves TLS, and this probe speaks plaintext (as "
                    "kubelet's gRPC probe): probe the plaintext health port that server was "
                    "started with (--health-listen HOST:PORT, a spec's healthListen)"
                )
            return ProbeExit.CONNECTION_FAILED, (
                f"error: failed to connect service at {address!r}: timed out after "
                f"{format_duration(connect_timeout)}"
            )
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout.total_seconds()
            )
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.NOT_FOUND:
                known = _service_names(channel, timeout)
                listed = f" (it serves {', '.join(map(repr, known))})" if known else ""
                return ProbeExit.RPC_FAILED, f"error: no health service named {service!r}{listed}"
            return ProbeExit.RPC_FAILED, f"error: health rpc failed: {code.name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        return ProbeExit.NOT_SERVING, f"service unhealthy (responded with {status!r})"
    return ProbeExit.SERVING, f"status: {status}"


def _speaks_tls(address: str, timeout: datetime.timedelta) -> bool:
    """Whether the server at ``address`` answers a TLS handshake (a mutual-TLS
    port, which a plaintext probe only sees time out)."""
    host, _, port = address.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Unverified on purpose: only whether it speaks TLS at all is asked.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(
                (host.strip("[]"), int(port)), timeout=timeout.total_seconds()
            ) as raw,
            context.wrap_socket(raw, server_hostname=host.strip("[]") or None),
        ):
            return True
    except ssl.SSLError:
        return True  # it answered in TLS (such as an alert: certificate required)
    except (OSError, ValueError):
        return False


def _service_names(channel: grpc.Channel, timeout: datetime.timedelta) -> list[str]:
    """The service names the server's Health/List reports (none if it has no List)."""
    from .._reflection import health_list_messages

    request_type, response_type = health_list_messages()
    list_call = channel.unary_unary(
        "/grpc.health.v1.Health/List",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    try:
        response = list_call(request_type(), timeout=timeout.total_seconds())
    except grpc.RpcError:
        return []
    return sorted(response.statuses)


def run(args: argparse.Namespace, ctx: Context) -> int:
    code, line = probe(args.address, args.service, args.timeout, args.connect_timeout)
    (ctx.out if code == ProbeExit.SERVING else ctx.err)(line)
    return int(code)
