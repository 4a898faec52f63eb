"""The ADS push looks only at what changed: a change of one assignment goes
to the streams subscribed to it, carrying it alone; a stream subscribed to
other names is not sent anything; a change without names still looks at
everything; the drain's wait sees the ACK. Over a real grpc.aio server and
real ADS streams (raw DiscoveryRequests, as grpcio's xDS client sends)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from pycontainer.manager._xds import AdsServicer, Client
from pycontainer.manager._xds._ads import Versioned
from pycontainer.manager._xds._mesh import _versioned
from pycontainer.manager._xds._model import MeshEndpoint, ServiceSettings, ServiceView
from pycontainer.manager._xds._resources import ENDPOINT, build

_WAIT = 10.0


def _view(name: str, ports: range) -> ServiceView:
    endpoints = tuple(
        MeshEndpoint(f"{name}-{port}", "127.0.0.1", port, 1, "", False, False) for port in ports
    )
    return ServiceView(name, ServiceSettings(), {name: endpoints})


class _Assignments:
    """Every client sees the same assignments (a ResourceSource)."""

    def __init__(self) -> None:
        self.by_name: dict[str, Versioned] = {}

    def set(self, name: str, ports: range) -> None:
        self.by_name.update(_versioned(build(_view(name, ports)).by_type)[ENDPOINT])

    def resources(self, client: Client, type_url: str) -> Mapping[str, Versioned]:
        return self.by_name if type_url == ENDPOINT else {}


class _Stream:
    """One ADS stream subscribed to assignments by name, ACKing each response."""

    def __init__(
        self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, node: str, names: list[str]
    ):
        self.names = names
        self.outgoing: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
        self.outgoing.put_nowait(
            discovery_pb2.DiscoveryRequest(
                node=base_pb2.Node(id=node), type_url=ENDPOINT, resource_names=names
            )
        )
        self.call = stub.StreamAggregatedResources(self._requests())

    async def _requests(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while True:
            yield await self.outgoing.get()

    async def next(self) -> list[str]:
        """The names the next response carries (ACKed)."""
        response = await asyncio.wait_for(self.call.read(), _WAIT)
        assert isinstance(response, discovery_pb2.DiscoveryResponse)
        self.outgoing.put_nowait(
            discovery_pb2.DiscoveryRequest(
                type_url=ENDPOINT,
                resource_names=self.names,
                version_info=response.version_info,
                response_nonce=response.nonce,
            )
        )
        names = []
        for packed in response.resources:
            assignment = endpoint_pb2.ClusterLoadAssignment()
            assert packed.Unpack(assignment)
            names.append(assignment.cluster_name)
        return sorted(names)


async def test_a_push_carries_what_changed_to_whom_it_concerns() -> None:
    source = _Assignments()
    source.set("orders", range(9000, 9003))
    source.set("users", range(9100, 9102))
    servicer = AdsServicer(source)
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        both = _Stream(stub, "both", ["orders", "users"])
        users = _Stream(stub, "users-only", ["users"])
        assert await both.next() == ["orders", "users"]
        assert await users.next() == ["users"]

        # One endpoint of orders leaves: only the stream subscribed to it
        # hears, and of orders alone; the drain's wait ends at its ACK.
        source.set("orders", range(9000, 9002))
        servicer.changed({ENDPOINT}, {ENDPOINT: frozenset({"orders"})})
        assert await both.next() == ["orders"]
        assert await servicer.wait_acknowledged(["orders"], _WAIT) == []

        # Then users changes: the users-only stream's next response is that
        # one (it was sent nothing for orders).
        source.set("users", range(9100, 9103))
        servicer.changed({ENDPOINT}, {ENDPOINT: frozenset({"users"})})
        assert await users.next() == ["users"]
        assert await both.next() == ["users"]

        # A change without names looks at every name: what differs goes.
        source.set("orders", range(9000, 9004))
        servicer.changed({ENDPOINT})
        assert await both.next() == ["orders"]
        assert await servicer.wait_acknowledged(["orders", "users"], _WAIT) == []
    finally:
        await channel.close()
        await server.stop(None)
