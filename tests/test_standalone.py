"""Standalone mode: pycontainer runs the server for apps that have none."""

from __future__ import annotations

import asyncio
import datetime
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import make_container

import pycontainer
from pycontainer.v1 import container_pb2, management_pb2, management_pb2_grpc


def test_serve_runs_the_lifecycle_until_stopped() -> None:
    stopped_with: list[str] = []
    container = make_container(
        "standalone",
        hooks=pycontainer.Hooks(on_stop=lambda reason, deadline: stopped_with.append(reason)),
    )
    ready = threading.Event()
    ports: list[int] = []
    box: dict[str, object] = {}

    def main() -> None:
        async def amain() -> None:
            box["loop"] = asyncio.get_running_loop()
            box["stop"] = stop = asyncio.Event()
            await pycontainer.serve(
                container,
                "127.0.0.1:0",
                on_ready=lambda port: (ports.append(port), ready.set()),
                stop=stop,
                handle_signals=False,  # not the main thread
            )

        asyncio.run(amain())

    thread = threading.Thread(target=main)
    thread.start()
    assert ready.wait(10)
    target = f"127.0.0.1:{ports[0]}"
    with grpc.insecure_channel(target) as channel:
        info = management_pb2_grpc.ManagementStub(channel).GetInfo(
            management_pb2.GetInfoRequest(), timeout=5
        )
        assert info.state == container_pb2.LIFECYCLE_STATE_RUNNING
        endpoints = [(e.kind, e.address) for e in info.identity.endpoints]
        assert endpoints == [(container_pb2.ENDPOINT_KIND_MANAGEMENT, target)]
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    loop = box["loop"]
    assert isinstance(loop, asyncio.AbstractEventLoop)
    loop.call_soon_threadsafe(box["stop"].set)  # type: ignore[attr-defined]
    thread.join(15)
    assert not thread.is_alive()
    assert container.state == pycontainer.State.STOPPED
    assert stopped_with == ["signal"]


def test_serve_in_background_for_a_sync_app() -> None:
    container = make_container("background")
    server = pycontainer.serve_in_background(container, "127.0.0.1:0")
    try:
        container.start()
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = management_pb2_grpc.ManagementStub(channel)
            info = stub.GetInfo(management_pb2.GetInfoRequest(), timeout=5)
            assert info.state == container_pb2.LIFECYCLE_STATE_RUNNING
            container.stop(grace_period=datetime.timedelta(seconds=1))
            info = stub.GetInfo(management_pb2.GetInfoRequest(), timeout=5)
            assert info.state == container_pb2.LIFECYCLE_STATE_STOPPED
    finally:
        server.stop()
        container.close()
