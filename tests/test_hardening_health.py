"""Health.Watch under short deadlines cannot wedge a sync app's server: the
stock sync servicer's close callback (on grpc's poll thread) and Watch (holding
its lock while sending, which waits for that thread) waited on each other."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import Host, make_container, start_container

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Each client loop's Watch calls; the deadlock came within about a dozen.
ITERATIONS = 25


def _watch_loop(target: str, service: str, errors: list[BaseException]) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            for _ in range(ITERATIONS):
                call = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=0.2)
                try:
                    for _response in call:
                        pass
                except grpc.RpcError as exc:
                    # The deadline ends every Watch; anything else is a failure.
                    if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise
        except BaseException as exc:
            errors.append(exc)


@pytest.mark.parametrize("new_host", ["sync", "aio"], indirect=True)
def test_watch_with_short_deadlines_leaves_the_server_answering(
    new_host: Callable[..., Host],
) -> None:
    container = make_container("watched")
    container.health.add_check("flapping")
    host = new_host(container)
    start_container(host)
    errors: list[BaseException] = []
    loops = [
        threading.Thread(target=_watch_loop, args=(host.target, service, errors))
        for service in ("", "readiness")
    ]
    done = threading.Event()

    def flap() -> None:
        # Status changes while watchers come and go: set() pushes to them.
        serving = False
        while not done.is_set():
            container.health.set_check("flapping", serving)
            serving = not serving
            time.sleep(0.01)

    flapper = threading.Thread(target=flap)
    for thread in [*loops, flapper]:
        thread.start()
    for thread in loops:
        thread.join(ITERATIONS * 0.2 + 30)
    done.set()
    flapper.join(10)
    assert not any(t.is_alive() for t in loops), "a Watch loop hung"
    assert errors == []
    container.health.set_check("flapping", True)
    health = health_pb2_grpc.HealthStub(host.channel)
    response = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
    assert response.status == SERVING
    # And a Watch still starts and follows a change.
    watch = health.Watch(health_pb2.HealthCheckRequest(service="readiness"), timeout=10)
    assert next(watch).status == SERVING
    container.health.set_check("flapping", False)
    assert next(watch).status == NOT_SERVING
    watch.cancel()


def test_watch_on_a_sync_server_with_the_authorization_interceptor() -> None:
    """A sync app's server built as examples/sync_app.py builds it (the role
    check first): the wrapper of our non-blocking Watch is non-blocking too
    (it was an UNKNOWN "needs grpc's non-blocking stream handling")."""
    from concurrent import futures

    container = make_container("authorized")
    container.health.add_check("flapping")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[container.authorization_interceptor(), container.server_interceptor()],
    )
    container.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        container.start()
        container.health.set_check("flapping", True)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service="readiness"), timeout=10)
            assert next(watch).status == SERVING
            container.health.set_check("flapping", False)
            assert next(watch).status == NOT_SERVING
            watch.cancel()
    finally:
        server.stop(None)
        container.close()
