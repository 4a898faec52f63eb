"""The HTTP face's row: /readyz against grpc.health.v1 Check on the same
container, measured in the same run (issue 12's closing figure)."""

from __future__ import annotations

import http.client
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .harness import Context, Row, Sample
from .rows_servers import alternate, make_container


def http_health(ctx: Context, *, keep_alive: bool) -> list[Sample]:
    """One sync-hosted container serving both: GET /readyz on its HTTP face
    and grpc.health.v1 Check of "readiness" on its gRPC server (one channel),
    sequential, in alternating slices. ``keep_alive``: one connection, as a
    scraper or load balancer holds one; else a new one per probe, as kubelet
    probes."""
    container = make_container("bench-http", http_listen="127.0.0.1:0")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        interceptors=[container.authorization_interceptor(), container.server_interceptor()],
    )
    container.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    container.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    assert container.http_port is not None
    connection = http.client.HTTPConnection("127.0.0.1", container.http_port, timeout=10)
    try:
        check = health_pb2_grpc.HealthStub(channel).Check
        request = health_pb2.HealthCheckRequest(service="readiness")

        def grpc_check() -> None:
            if check(request, timeout=10).status != health_pb2.HealthCheckResponse.SERVING:
                raise RuntimeError("readiness is not SERVING over gRPC")

        def http_get() -> None:
            if not keep_alive:
                connection.close()  # the next request connects anew
            connection.request("GET", "/readyz")
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"/readyz answered {response.status}: {body!r}")

        return alternate(ctx, http_get, grpc_check)
    finally:
        connection.close()
        channel.close()
        server.stop(None)
        container.close()


ROWS = [
    Row(
        "http-health",
        "",
        "context",
        "readiness probe over the HTTP face (GET /readyz, kept-alive connection), sync "
        "container, plaintext, sequential",
        "grpc.health.v1 Check of readiness on the same container's gRPC server",
        "calls/s",
        True,
        lambda ctx: http_health(ctx, keep_alive=True),
    ),
    Row(
        "http-health-connect",
        "",
        "context",
        "readiness probe over the HTTP face (GET /readyz, a new connection each, as kubelet "
        "probes), sync container, plaintext, sequential",
        "grpc.health.v1 Check of readiness on the same container's gRPC server (one channel)",
        "calls/s",
        True,
        lambda ctx: http_health(ctx, keep_alive=False),
    ),
]
