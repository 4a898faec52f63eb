"""The manager's /livez, /readyz and /healthz on its HTTP face
(--http-listen), over its real socket: the verdicts of its own
grpc.health.v1 statuses (a gRPC Check of the same service agrees), rendered
as a container's (?verbose lists the rows), readiness 503 from the start of
a shutdown, and the state store's failure listed by /healthz?verbose."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_support import get

from pycontainer.testing import ManagerHost

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagerHost]:
    made = ManagerHost(Path(tmp_path_factory.mktemp("probes")) / "state", http_listen="127.0.0.1:0")
    try:
        yield made
    finally:
        made.close(graceful=True)


def _probe(host: ManagerHost, path: str) -> tuple[int, str]:
    assert host.manager.http is not None
    status, _, body = get(host.manager.http.url.rstrip("/") + path)
    return status, body


def _grpc(host: ManagerHost, service: str) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return int(health_pb2_grpc.HealthStub(host.channel).Check(request, timeout=5).status)


def test_the_managers_probes_follow_its_grpc_health(host: ManagerHost) -> None:
    for path in ("/livez", "/readyz", "/healthz"):
        assert _probe(host, path) == (200, "ok\n"), path
    assert _probe(host, "/healthz?verbose") == (
        200,
        "[+]manager ok\n[+]state-store ok\nhealthz check passed\n",
    )
    status, body = _probe(host, "/readyz?bogus=1")
    assert status == 400
    assert "/readyz does not take the query parameter 'bogus'; it takes verbose" in body, body

    health = host.manager.health
    assert health is not None
    health.shutting_down()  # the manager's own step when its shutdown begins
    try:
        assert _grpc(host, "readiness") == NOT_SERVING
        assert _probe(host, "/readyz") == (
            503,
            "[-]manager failed: reason withheld\nreadyz check failed\n",
        )
        status, body = _probe(host, "/readyz?verbose")
        assert status == 503
        assert "[-]manager failed: not serving: the manager is starting, or stopping" in body
        # Still alive: no reason to restart it.
        assert _grpc(host, "liveness") == SERVING
        assert _probe(host, "/livez") == (200, "ok\n")
    finally:
        health.serving()
    assert _probe(host, "/readyz") == (200, "ok\n")

    health.store(False)  # as the store writer says when writes fail
    try:
        assert _grpc(host, "state-store") == NOT_SERVING
        status, body = _probe(host, "/healthz?verbose")
        # Listed for the operator; the manager serves on and retries the writes.
        assert status == 200, body
        assert "[+]manager ok\n[-]state-store failed: " in body, body
        assert _grpc(host, "") == SERVING
    finally:
        health.store(True)
