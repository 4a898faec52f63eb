"""`pycontainer health ADDR`: a probe with grpc_health_probe's exit codes."""

from __future__ import annotations

import argparse
import enum
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


class ProbeExit(enum.IntEnum):
    """Exit codes, as grpc_health_probe's."""

    SERVING = 0
    INVALID_ARGUMENTS = 1
    CONNECTION_FAILED = 2
    RPC_FAILED = 3
    NOT_SERVING = 4


def probe(
    address: str, service: str = "", timeout: float = 1.0, connect_timeout: float = 1.0
) -> tuple[ProbeExit, str]:
    """Check one service's health; the exit code and a line for the operator."""
    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=connect_timeout)
        except grpc.FutureTimeoutError:
            return ProbeExit.CONNECTION_FAILED, (
                f"error: failed to connect service at {address!r}: timed out after "
                f"{connect_timeout:g}s"
            )
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            code = exc.code()
            return ProbeExit.RPC_FAILED, f"error: health rpc failed: {code.name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        return ProbeExit.NOT_SERVING, f"service unhealthy (responded with {status!r})"
    return ProbeExit.SERVING, f"status: {status}"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "health",
        help="probe a container's grpc.health.v1 service",
        description=(
            "Exit 0 serving, 2 connection failed, 3 RPC failed, 4 not serving "
            "(grpc_health_probe's codes)."
        ),
    )
    parser.add_argument("address", help="HOST:PORT of the container")
    parser.add_argument(
        "--service", default="", help='service name: "" (overall), "liveness" or "readiness"'
    )
    parser.add_argument("--timeout", type=float, default=1.0, help="RPC timeout in seconds")
    parser.add_argument(
        "--connect-timeout", type=float, default=1.0, help="connection timeout in seconds"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    code, line = probe(args.address, args.service, args.timeout, args.connect_timeout)
    print(line, file=sys.stdout if code == ProbeExit.SERVING else sys.stderr)
    return int(code)
