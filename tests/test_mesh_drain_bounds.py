"""The drain's bounds, with a real manager, an in-process container serving a
mesh service and a raw xDS client on the manager's ADS: a client that never
acknowledges holds a stop for the drain timeout at most, and for half the
grace period at most when that is shorter; the stop then goes on, and the
container's events say who did not acknowledge. A container in no service
has nothing to drain."""

from __future__ import annotations

import concurrent.futures
import datetime
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pycontainer.manager._xds._resources import ENDPOINT
from pycontainer.testing import ManagerHost
from pycontainer.v1 import (
    container_pb2,
    management_pb2,
    management_pb2_grpc,
    manager_pb2,
    mesh_pb2,
    spec_pb2,
)
from pycontainer.v1 import health_pb2 as health_pb2_pc

SERVICE = "svc"


class SilentClient:
    """An xDS client that subscribes to a service's assignment, reads what it
    is sent and never answers (a hung proxy)."""

    def __init__(self, address: str, node_id: str) -> None:
        self._requests: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
        self._channel = grpc.insecure_channel(address)
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        self._requests.put(
            discovery_pb2.DiscoveryRequest(
                node=base_pb2.Node(id=node_id),
                type_url=ENDPOINT,
                resource_names=[SERVICE],
            )
        )
        self._call = stub.StreamAggregatedResources(iter(self._requests.get, None))
        self.first = next(self._call)

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self._channel.close()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[ManagerHost]:
    manager = ManagerHost(tmp_path / "state", mesh_drain_timeout=datetime.timedelta(seconds=1))
    try:
        yield manager
    finally:
        manager.close()


def _run(host: ManagerHost, name: str, service: str = SERVICE, group: str = "") -> str:
    spec = spec_pb2.ContainerSpec(
        name=name,
        runtime=spec_pb2.RUNTIME_KIND_IN_PROCESS,
        labels={"group": group} if group else {},
    )
    if service:
        spec.service.CopyFrom(mesh_pb2.MeshService(name=service))
    [container] = host.stub.RunContainer(
        manager_pb2.RunContainerRequest(spec=spec), timeout=30
    ).containers
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status = host.stub.GetMeshStatus(manager_pb2.GetMeshStatusRequest(), timeout=10)
        if not service or any(container.identity.id in s.healthy for s in status.services):
            return container.identity.id
        time.sleep(0.05)
    raise AssertionError(f"{container.identity.id} never became an endpoint of {service}")


def _stop(host: ManagerHost, container: str, grace: float) -> float:
    started = time.monotonic()
    host.stub.StopContainer(
        manager_pb2.StopContainerRequest(
            container=container,
            grace_period=duration_pb2.Duration(nanos=int(grace * 1e9) % 10**9, seconds=int(grace)),
        ),
        timeout=30,
    )
    return time.monotonic() - started


def _events(host: ManagerHost, container: str) -> list[str]:
    stream = host.stub.WatchEvents(
        manager_pb2.WatchEventsRequest(
            include_history=True, history_only=True, container=container
        ),
        timeout=10,
    )
    return [r.event.message for r in stream]


def test_a_client_that_never_acknowledges_holds_a_stop_for_the_drain_timeout_at_most(
    host: ManagerHost,
) -> None:
    first, second = _run(host, "a"), _run(host, "b")
    silent = SilentClient(host.address, "hung-proxy")
    try:
        # Bounded by the drain timeout (1 s; the grace period is 10 s).
        took = _stop(host, first, grace=10)
        assert 1.0 <= took < 5.0, took
        [drained] = [m for m in _events(host, first) if m.startswith("drained from")]
        assert "1 of 1 client(s) did not acknowledge within 1s" in drained, drained
        # Bounded by half the grace period (0.4 s of 0.8 s) when that is shorter.
        took = _stop(host, second, grace=0.8)
        assert 0.4 <= took < 4.0, took
        [drained] = [m for m in _events(host, second) if m.startswith("drained from")]
        assert "within 400ms" in drained, drained
    finally:
        silent.close()
    states = {
        c.identity.id: c.state
        for c in host.stub.ListContainers(
            manager_pb2.ListContainersRequest(), timeout=10
        ).containers
    }
    # The stops went on after the drain's bound, and worked.
    assert states[first] == states[second] == container_pb2.LIFECYCLE_STATE_STOPPED


def test_a_container_in_no_service_is_not_drained(host: ManagerHost) -> None:
    plain = _run(host, "plain", service="")
    _run(host, "served")  # a service exists, and a client waits on it
    silent = SilentClient(host.address, "hung-proxy")
    try:
        assert _stop(host, plain, grace=10) < 1.0
    finally:
        silent.close()
    assert not [m for m in _events(host, plain) if m.startswith("drained from")]


def test_a_bulk_stop_drains_every_container_at_once(host: ManagerHost) -> None:
    """StopContainers (and a manager's shutdown, which stops the same way):
    each container drained, their drains overlapping (one bound, not two)."""
    first, second = _run(host, "bulk-1", group="bulk"), _run(host, "bulk-2", group="bulk")
    silent = SilentClient(host.address, "hung-proxy")
    try:
        started = time.monotonic()
        host.stub.StopContainers(
            manager_pb2.StopContainersRequest(
                label_selector="group=bulk", grace_period=duration_pb2.Duration(seconds=10)
            ),
            timeout=30,
        )
        took = time.monotonic() - started
    finally:
        silent.close()
    for container in (first, second):
        [drained] = [m for m in _events(host, container) if m.startswith("drained from")]
        assert "did not acknowledge within 1s" in drained, drained
    # Two drains one after the other would take 2 s at least.
    assert 1.0 <= took < 2.0, took


def test_a_container_is_not_ready_from_the_start_of_its_drain(tmp_path: Path) -> None:
    """The stop begins with the drain, before the Stop is sent: the container
    is told (DrainCommand) and its readiness fails at once, while it still
    runs, so that every probe (grpc.health.v1, HTTP /readyz) sees the stop
    from its start; the report names the failing check as the apiserver
    does ("shutdown")."""
    host = ManagerHost(tmp_path / "state", mesh_drain_timeout=datetime.timedelta(seconds=3))
    try:
        container = _run(host, "drained")
        [endpoint] = [
            e.address
            for e in host.stub.GetContainer(
                manager_pb2.GetContainerRequest(container=container), timeout=10
            ).container.identity.endpoints
            if e.kind == container_pb2.ENDPOINT_KIND_MANAGEMENT
        ]
        channel = grpc.insecure_channel(endpoint)
        health = health_pb2_grpc.HealthStub(channel)
        readiness = health_pb2.HealthCheckRequest(service="readiness")
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(readiness, timeout=10).status == serving
        silent = SilentClient(host.address, "hung-proxy")  # holds the drain 3 s
        try:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                stopping = pool.submit(_stop, host, container, 10.0)
                deadline = time.monotonic() + 10
                while health.Check(readiness, timeout=10).status == serving:
                    assert time.monotonic() < deadline, "still ready 10 s into its stop"
                    time.sleep(0.02)
                state = host.stub.GetContainer(
                    manager_pb2.GetContainerRequest(container=container), timeout=10
                ).container.state
                report = management_pb2_grpc.ManagementStub(channel).GetHealth(
                    management_pb2.GetHealthRequest(), timeout=10
                )
                stopping.result(timeout=30)
        finally:
            silent.close()
            channel.close()
        # Not ready while it still runs: the Stop had not been sent yet.
        assert state == container_pb2.LIFECYCLE_STATE_RUNNING
        [shutdown] = [c for c in report.checks if c.name == "shutdown"]
        assert shutdown.status == health_pb2_pc.HEALTH_STATUS_NOT_SERVING
        assert "a stop begins" in shutdown.message
    finally:
        host.close()
