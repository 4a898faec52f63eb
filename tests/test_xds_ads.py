"""The ADS servicer (manager/_xds/_ads.py) on a real grpc.aio server, driven
by a raw xDS client stream (Envoy's generated stubs from xds-protos): ACKs
record the version, NACKs the error (the next change still goes out, what
was rejected is not sent again until it changes), stale nonces are ignored,
wildcard and named subscriptions, unsubscribing, and the order of types in
one push (Cluster, then assignments, then Listener, then Route).

What the stream carries is a small source of real Envoy resources the test
changes, the servicer's own ResourceSource protocol; nothing of the server
is replaced. Where a test shows that something was NOT sent, it does so by
the stream's order (the next response carries only what changed next), not
by waiting for silence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2
from google.rpc import status_pb2

from pycontainer.manager._xds import AdsServicer, Client
from pycontainer.manager._xds._ads import Versioned
from pycontainer.manager._xds._resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, TYPES

TIMEOUT = 5.0


class Source:
    """Resources by type, as the mesh would give them (the same to every client)."""

    def __init__(self) -> None:
        self.by_type: dict[str, dict[str, Versioned]] = {t: {} for t in TYPES}

    def resources(self, client: Client, type_url: str) -> Mapping[str, Versioned]:
        return self.by_type.get(type_url, {})

    def put(self, type_url: str, name: str, port: int = 1) -> None:
        packed = any_pb2.Any()
        packed.Pack(_resource(type_url, name, port))
        self.by_type[type_url][name] = (hash(packed.value), packed)

    def drop(self, type_url: str, name: str) -> None:
        del self.by_type[type_url][name]


def _resource(type_url: str, name: str, port: int) -> object:
    if type_url == ENDPOINT:
        address = address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)
        )
        endpoint = endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=address)
        )
        return endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])],
        )
    if type_url == CLUSTER:
        return cluster_pb2.Cluster(name=name, per_connection_buffer_limit_bytes={"value": port})
    if type_url == LISTENER:
        return listener_pb2.Listener(name=name, stat_prefix=str(port))
    return route_pb2.RouteConfiguration(
        name=name, max_direct_response_body_size_bytes={"value": port}
    )


def _names(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    """The names of the resources a response carries, sorted."""
    out = []
    for packed in response.resources:
        if response.type_url == ENDPOINT:
            message: object = endpoint_pb2.ClusterLoadAssignment()
            packed.Unpack(message)
            out.append(message.cluster_name)  # type: ignore[attr-defined]
        else:
            message = {
                CLUSTER: cluster_pb2.Cluster,
                LISTENER: listener_pb2.Listener,
                ROUTE: route_pb2.RouteConfiguration,
            }[response.type_url]()
            packed.Unpack(message)
            out.append(message.name)  # type: ignore[attr-defined]
    return sorted(out)


@dataclass
class Rig:
    servicer: AdsServicer
    source: Source
    stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub


class Stream:
    """One raw ADS stream, as a client's xDS library would drive it."""

    def __init__(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, node_id: str) -> None:
        self.call = stub.StreamAggregatedResources()
        self.node = base_pb2.Node(id=node_id, user_agent_name="test")
        self._first = True

    async def send(
        self,
        type_url: str,
        names: list[str] | None = None,
        *,
        answering: discovery_pb2.DiscoveryResponse | None = None,
        nonce: str | None = None,
        version: str = "",
        error: str = "",
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=names or [], version_info=version
        )
        if self._first:
            request.node.CopyFrom(self.node)
            self._first = False
        if answering is not None:
            request.response_nonce = answering.nonce
            if not error:
                request.version_info = answering.version_info
        if nonce is not None:
            request.response_nonce = nonce
        if error:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(request)

    async def ack(
        self, response: discovery_pb2.DiscoveryResponse, names: list[str] | None = None
    ) -> None:
        await self.send(response.type_url, names, answering=response)

    async def read(self) -> discovery_pb2.DiscoveryResponse:
        response = await asyncio.wait_for(self.call.read(), TIMEOUT)
        assert response is not grpc.aio.EOF, "the stream ended"
        assert isinstance(response, discovery_pb2.DiscoveryResponse)
        return response


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    source = Source()
    servicer = AdsServicer(source)
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Rig(servicer, source, ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel))
    finally:
        await channel.close()
        await server.stop(None)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until ``condition`` holds: the servicer's reader takes
    requests on its own task."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {TIMEOUT:g}s: {what}")
        await asyncio.sleep(0.01)


def type_status(rig: Rig, node_id: str, type_url: str):  # type: ignore[no-untyped-def]
    [client] = [c for c in rig.servicer.status() if c.node_id == node_id]
    [state] = [r for r in client.resources if r.type_url == type_url]
    return state


async def test_an_ack_records_the_version_and_settles_the_drain(rig: Rig) -> None:
    rig.source.put(ENDPOINT, "orders", 1)
    stream = Stream(rig.stub, "node-1")
    await stream.send(ENDPOINT, ["orders"])
    first = await stream.read()
    assert _names(first) == ["orders"]
    assert first.nonce
    assert first.version_info
    # Not acknowledged yet: the drain's wait runs out naming the client.
    assert await rig.servicer.wait_acknowledged(["orders"], 0.2) == ["node-1"]
    await stream.ack(first, ["orders"])
    await until(
        lambda: type_status(rig, "node-1", ENDPOINT).acked_version == first.version_info,
        "the ACK recorded",
    )
    assert await rig.servicer.wait_acknowledged(["orders"], TIMEOUT) == []
    state = type_status(rig, "node-1", ENDPOINT)
    assert (state.sent_version, state.nonce, state.nack_error, state.nacks) == (
        first.version_info,
        first.nonce,
        "",
        0,
    )
    # A change: sent, and waited for until it is acknowledged in turn.
    rig.source.put(ENDPOINT, "orders", 2)
    rig.servicer.changed([ENDPOINT])
    second = await stream.read()
    assert _names(second) == ["orders"]
    assert second.nonce != first.nonce
    assert int(second.version_info) > int(first.version_info)
    waiter = asyncio.ensure_future(rig.servicer.wait_acknowledged(["orders"], TIMEOUT))
    await stream.ack(second, ["orders"])
    assert await waiter == []
    assert type_status(rig, "node-1", ENDPOINT).acked_version == second.version_info
    stream.call.cancel()


async def test_a_nack_records_the_error_and_the_next_change_still_goes_out(rig: Rig) -> None:
    rig.source.put(ENDPOINT, "orders", 1)
    stream = Stream(rig.stub, "node-1")
    await stream.send(ENDPOINT, ["orders"])
    good = await stream.read()
    await stream.ack(good, ["orders"])
    rig.source.put(ENDPOINT, "orders", 2)
    rig.servicer.changed([ENDPOINT])
    bad = await stream.read()
    # The client rejects it: it keeps the version it had (version_info of the last good).
    await stream.send(
        ENDPOINT, ["orders"], nonce=bad.nonce, version=good.version_info, error="no way"
    )
    await until(lambda: type_status(rig, "node-1", ENDPOINT).nacks == 1, "the NACK recorded")
    state = type_status(rig, "node-1", ENDPOINT)
    assert state.nack_error == "no way"
    assert state.acked_version == good.version_info
    assert state.HasField("nack_time")
    # A NACK answers the drain's wait (the client stays on its last good config).
    assert await rig.servicer.wait_acknowledged(["orders"], TIMEOUT) == []
    # The next change goes out, and its ACK clears the error.
    rig.source.put(ENDPOINT, "orders", 3)
    rig.servicer.changed([ENDPOINT])
    fixed = await stream.read()
    assert _names(fixed) == ["orders"]
    await stream.ack(fixed, ["orders"])
    await until(
        lambda: type_status(rig, "node-1", ENDPOINT).acked_version == fixed.version_info,
        "the ACK of the fix recorded",
    )
    assert type_status(rig, "node-1", ENDPOINT).nack_error == ""
    assert type_status(rig, "node-1", ENDPOINT).nacks == 1
    stream.call.cancel()


async def test_a_nacked_config_is_not_sent_again_until_it_changes(rig: Rig) -> None:
    for name in ("a", "b"):
        rig.source.put(ENDPOINT, name, 1)
    stream = Stream(rig.stub, "node-1")
    await stream.send(ENDPOINT, ["a", "b"])
    good = await stream.read()
    assert _names(good) == ["a", "b"]
    await stream.ack(good, ["a", "b"])
    rig.source.put(ENDPOINT, "a", 2)
    rig.servicer.changed([ENDPOINT])
    bad = await stream.read()
    assert _names(bad) == ["a"]
    await stream.send(
        ENDPOINT, ["a", "b"], nonce=bad.nonce, version=good.version_info, error="rejected a"
    )
    await until(lambda: type_status(rig, "node-1", ENDPOINT).nacks == 1, "the NACK recorded")
    # Another resource changes: the push carries it alone, not the rejected a.
    rig.source.put(ENDPOINT, "b", 2)
    rig.servicer.changed([ENDPOINT])
    only_b = await stream.read()
    assert _names(only_b) == ["b"]
    await stream.ack(only_b, ["a", "b"])
    # Once a changes again, it goes out.
    rig.source.put(ENDPOINT, "a", 3)
    rig.servicer.changed([ENDPOINT])
    assert _names(await stream.read()) == ["a"]
    stream.call.cancel()


async def test_undoing_a_rejected_change_is_sent_and_clears_the_nack(rig: Rig) -> None:
    rig.source.put(CLUSTER, "orders", 1)
    rig.source.put(ENDPOINT, "orders", 1)
    stream = Stream(rig.stub, "node-1")
    for type_url in (CLUSTER, ENDPOINT):
        await stream.send(type_url, ["orders"])
        good = await stream.read()
        await stream.ack(good, ["orders"])
        rig.source.put(type_url, "orders", 2)
        rig.servicer.changed([type_url])
        bad = await stream.read()
        await stream.send(
            type_url, ["orders"], nonce=bad.nonce, version=good.version_info, error="bad"
        )
        await until(lambda t=type_url: type_status(rig, "node-1", t).nacks == 1, "NACK recorded")  # type: ignore[misc]
        # Back to what the client kept: it is sent, acknowledged, and the
        # error clears (the client and its status agree again).
        rig.source.put(type_url, "orders", 1)
        rig.servicer.changed([type_url])
        again = await stream.read()
        assert _names(again) == ["orders"]
        await stream.ack(again, ["orders"])
        await until(
            lambda t=type_url, a=again: (
                type_status(rig, "node-1", t).acked_version  # type: ignore[misc]
                == a.version_info
            ),
            "the ACK recorded",
        )
        assert type_status(rig, "node-1", type_url).nack_error == ""
    stream.call.cancel()


async def test_a_subscription_change_repeating_the_last_nack_does_not_resend_it(
    rig: Rig,
) -> None:
    for name in ("a", "b"):
        rig.source.put(ENDPOINT, name, 1)
    stream = Stream(rig.stub, "node-1")
    await stream.send(ENDPOINT, ["a"])
    good = await stream.read()
    await stream.ack(good, ["a"])
    rig.source.put(ENDPOINT, "a", 2)
    rig.servicer.changed([ENDPOINT])
    bad = await stream.read()
    await stream.send(ENDPOINT, ["a"], nonce=bad.nonce, version=good.version_info, error="no")
    await until(lambda: type_status(rig, "node-1", ENDPOINT).nacks == 1, "the NACK recorded")
    # The client subscribes to b as well; as grpcio does, the request repeats
    # the nonce, version and error of its last answer.
    await stream.send(ENDPOINT, ["a", "b"], nonce=bad.nonce, version=good.version_info, error="no")
    only_b = await stream.read()
    assert _names(only_b) == ["b"]
    state = type_status(rig, "node-1", ENDPOINT)
    assert (state.nacks, state.nack_error) == (1, "no")
    stream.call.cancel()


async def test_a_stale_nonce_is_ignored(rig: Rig) -> None:
    rig.source.put(ENDPOINT, "orders", 1)
    stream = Stream(rig.stub, "node-1")
    await stream.send(ENDPOINT, ["orders"])
    first = await stream.read()
    await stream.ack(first, ["orders"])
    rig.source.put(ENDPOINT, "orders", 2)
    rig.servicer.changed([ENDPOINT])
    second = await stream.read()
    # A NACK naming a nonce never sent, and one repeating the first (already
    # answered) response's: both ignored.
    await stream.send(ENDPOINT, ["orders"], nonce="12345", error="stale")
    await stream.send(ENDPOINT, ["orders"], nonce=first.nonce, error="stale too")
    # The ACK of the latest response, after them on the stream: once it is
    # recorded, the stale ones were taken (and ignored) before it.
    await stream.ack(second, ["orders"])
    await until(
        lambda: type_status(rig, "node-1", ENDPOINT).acked_version == second.version_info,
        "the ACK recorded",
    )
    state = type_status(rig, "node-1", ENDPOINT)
    assert (state.nacks, state.nack_error) == (0, "")
    stream.call.cancel()


async def test_a_first_request_with_a_nonce_of_an_earlier_stream_subscribes(rig: Rig) -> None:
    rig.source.put(ENDPOINT, "orders", 1)
    stream = Stream(rig.stub, "node-1")
    # A client reconnecting (the manager restarted) may carry its last nonce
    # and version: still a subscription, answered with what there is.
    await stream.send(ENDPOINT, ["orders"], nonce="41", version="7")
    response = await stream.read()
    assert _names(response) == ["orders"]
    assert list(type_status(rig, "node-1", ENDPOINT).names) == ["orders"]
    stream.call.cancel()


async def test_an_ack_of_an_older_response_does_not_settle_the_newer(rig: Rig) -> None:
    rig.source.put(ENDPOINT, "orders", 1)
    stream = Stream(rig.stub, "node-1")
    await stream.send(ENDPOINT, ["orders"])
    first = await stream.read()
    rig.source.put(ENDPOINT, "orders", 2)
    rig.servicer.changed([ENDPOINT])
    second = await stream.read()
    await stream.ack(first, ["orders"])
    await until(
        lambda: type_status(rig, "node-1", ENDPOINT).acked_version == first.version_info,
        "the older ACK recorded",
    )
    # What the client is to have is the second: the drain still waits.
    assert await rig.servicer.wait_acknowledged(["orders"], 0.2) == ["node-1"]
    await stream.ack(second, ["orders"])
    assert await rig.servicer.wait_acknowledged(["orders"], TIMEOUT) == []
    stream.call.cancel()


async def test_wildcard_and_named_subscriptions(rig: Rig) -> None:
    for name in ("a", "b"):
        rig.source.put(CLUSTER, name, 1)
        rig.source.put(ENDPOINT, name, 1)
    stream = Stream(rig.stub, "node-1")
    # Clusters by wildcard (no names): every one; assignments by name.
    await stream.send(CLUSTER)
    clusters = await stream.read()
    assert _names(clusters) == ["a", "b"]
    await stream.ack(clusters)
    await stream.send(ENDPOINT, ["a"])
    endpoints = await stream.read()
    assert _names(endpoints) == ["a"]
    await stream.ack(endpoints, ["a"])
    state = type_status(rig, "node-1", CLUSTER)
    assert state.wildcard
    assert list(state.names) == []
    state = type_status(rig, "node-1", ENDPOINT)
    assert not state.wildcard
    assert list(state.names) == ["a"]
    # A new cluster c: the wildcard subscriber gets the whole set again (state
    # of the world); c's assignment is not sent to one that did not ask for
    # it, b's change neither: the next assignment response is a's alone.
    rig.source.put(CLUSTER, "c", 1)
    rig.source.put(ENDPOINT, "c", 1)
    rig.source.put(ENDPOINT, "b", 2)
    rig.servicer.changed([CLUSTER, ENDPOINT])
    clusters = await stream.read()
    assert clusters.type_url == CLUSTER
    assert _names(clusters) == ["a", "b", "c"]
    await stream.ack(clusters)
    rig.source.put(ENDPOINT, "a", 2)
    rig.servicer.changed([ENDPOINT])
    endpoints = await stream.read()
    assert endpoints.type_url == ENDPOINT
    assert _names(endpoints) == ["a"]
    # A cluster removed: the wildcard subscriber's set shrinks.
    rig.source.drop(CLUSTER, "b")
    rig.servicer.changed([CLUSTER])
    clusters = await stream.read()
    assert _names(clusters) == ["a", "c"]
    # The drain waits only for those subscribed: b's assignment has none.
    assert await rig.servicer.wait_acknowledged(["b"], 0.2) == []
    assert rig.servicer.subscribed(["a"]) == 1
    assert rig.servicer.subscribed(["b"]) == 0
    stream.call.cancel()


async def test_unsubscribing_stops_the_pushes_of_that_resource(rig: Rig) -> None:
    for name in ("a", "b"):
        rig.source.put(ENDPOINT, name, 1)
    stream = Stream(rig.stub, "node-1")
    await stream.send(ENDPOINT, ["a", "b"])
    both = await stream.read()
    assert _names(both) == ["a", "b"]
    await stream.ack(both, ["b"])  # the ACK drops a from the subscription
    await until(lambda: list(type_status(rig, "node-1", ENDPOINT).names) == ["b"], "a dropped")
    assert rig.servicer.subscribed(["a"]) == 0
    assert await rig.servicer.wait_acknowledged(["a"], 0.2) == []
    # a changes, then b: only b's change comes.
    rig.source.put(ENDPOINT, "a", 2)
    rig.servicer.changed([ENDPOINT])
    rig.source.put(ENDPOINT, "b", 2)
    rig.servicer.changed([ENDPOINT])
    only_b = await stream.read()
    assert _names(only_b) == ["b"]
    # Subscribing to a again (with the ACK of the latest) sends it at once.
    await stream.ack(only_b, ["a", "b"])
    assert _names(await stream.read()) == ["a"]
    stream.call.cancel()


async def test_one_push_of_every_type_goes_cluster_endpoint_listener_route(rig: Rig) -> None:
    for type_url in TYPES:
        rig.source.put(type_url, "orders", 1)
    stream = Stream(rig.stub, "node-1")
    # Subscribed in the reverse order: the push's order is the servicer's.
    for type_url in (ROUTE, LISTENER, ENDPOINT, CLUSTER):
        await stream.send(type_url, ["orders"])
        response = await stream.read()
        assert response.type_url == type_url
        await stream.ack(response, ["orders"])
    for type_url in TYPES:
        rig.source.put(type_url, "orders", 2)
    rig.servicer.changed()
    order = [(await stream.read()).type_url for _ in TYPES]
    # Make before break (the xDS protocol's order): a cluster before its
    # assignment, a listener before its route.
    assert order == [CLUSTER, ENDPOINT, LISTENER, ROUTE]
    stream.call.cancel()


async def test_a_stream_without_a_node_is_refused(rig: Rig) -> None:
    call = rig.stub.StreamAggregatedResources()
    await call.write(discovery_pb2.DiscoveryRequest(type_url=ENDPOINT))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(call.read(), TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node" in (info.value.details() or "")
