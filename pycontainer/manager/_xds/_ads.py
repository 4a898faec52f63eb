"""The aggregated discovery service (ADS, xDS v3, state of the world).

One stream per client (a proxyless gRPC channel's xDS client, or an Envoy).
Each stream keeps, per resource type, what the client subscribed to, what it
was sent and what it acknowledged, so that:

- a change is pushed only where it changes what that client has (an
  assignment of one service goes alone; Listener and Cluster responses, whose
  every response is the whole set, go when anything in the set changed);
- an ACK (a request carrying the last nonce and no error) records the version
  the client now runs; a NACK (with ``error_detail``) is logged, kept in the
  client's status, and leaves the client on its last good config: what it
  rejected is not sent again until it changes;
- a request with an older nonce is ignored, as the protocol says;
- the drain before a stop can wait until every client subscribed to a
  service's assignment has acknowledged the one marking an endpoint DRAINING
  (:meth:`AdsServicer.wait_acknowledged`).

What each client sees comes from a :class:`ResourceSource` (per-client views:
an Envoy is not given gRPC's ``api_listener`` listeners).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from ...units import timestamp_to_proto
from ...v1 import mesh_pb2
from ._resources import ENDPOINT, STATE_OF_THE_WORLD, TYPES

_log = logging.getLogger("pycontainer.manager.xds")

#: The service's full name (reflection lists it).
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
#: A resource as a source gives it: (digest of its bytes, the packed resource).
Versioned = tuple[int, any_pb2.Any]


@dataclass(frozen=True)
class Client:
    """Who is at the other end of a stream."""

    node_id: str
    # "envoy" or "grpc" (proxyless).
    kind: str
    user_agent: str
    peer: str
    identity: str
    # The node's metadata (pycontainer.container_id, ...), as given.
    metadata: Mapping[str, str]


class ResourceSource(Protocol):
    """What each client is to have, by type."""

    def resources(self, client: Client, type_url: str) -> Mapping[str, Versioned]: ...


@dataclass
class _TypeState:
    """One resource type on one stream."""

    names: set[str] = field(default_factory=set)
    wildcard: bool = False
    # Digests of what the client was sent last, by name (what it will have
    # once it accepts the responses under way).
    sent: dict[str, int] = field(default_factory=dict)
    # What it accepted (by its ACKs), by name.
    acked: dict[str, int] = field(default_factory=dict)
    # What the responses not yet answered carried, by nonce.
    in_flight: dict[str, dict[str, int]] = field(default_factory=dict)
    # What it rejected last (not sent again until it changes).
    rejected: dict[str, int] = field(default_factory=dict)
    answered_once: bool = False
    sent_version: str = ""
    acked_version: str = ""
    nonce: str = ""
    nack_error: str = ""
    nacks: int = 0
    nack_time: float | None = None
    # Something may have changed for this type: look before sleeping again.
    dirty: bool = True
    # While dirty, the only names that may have changed (a push of one
    # service's assignment looks at that name, not at every name the client
    # subscribed to); None: any of them.
    touched: set[str] | None = None


class _Stream:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.types: dict[str, _TypeState] = {}
        self.wake = asyncio.Event()
        self.connect_time = time.time()
        self._nonces = itertools.count(1)

    def next_nonce(self) -> str:
        return str(next(self._nonces))

    def mark_dirty(
        self,
        type_urls: Iterable[str] | None = None,
        names: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        """Look again at ``type_urls`` (every type when None); of a type in
        ``names``, at those names only: a client subscribed to none of them
        is not woken."""
        woken = False
        for type_url, state in self.types.items():
            if type_urls is not None and type_url not in type_urls:
                continue
            changed = None if names is None else names.get(type_url)
            if changed is None:
                state.touched = None
            elif not state.wildcard and state.names.isdisjoint(changed):
                continue
            elif not state.dirty:
                state.touched = set(changed)
            elif state.touched is not None:
                state.touched |= changed
            state.dirty = woken = True
        if woken:
            self.wake.set()


_KNOWN_TYPES = frozenset(TYPES)


def _count(counts: dict[str, int], type_url: str) -> None:
    """One more of ``type_url`` in ``counts`` (a bounded set of keys)."""
    key = type_url if type_url in _KNOWN_TYPES else "other"
    counts[key] = counts.get(key, 0) + 1


def _kind(node: base_pb2.Node) -> str:
    return "envoy" if node.user_agent_name == "envoy" else "grpc"


def _user_agent(node: base_pb2.Node) -> str:
    version = node.user_agent_version
    if not version and node.HasField("user_agent_build_version"):
        v = node.user_agent_build_version.version
        version = f"{v.major_number}.{v.minor_number}.{v.patch}"
    return f"{node.user_agent_name} {version}".strip()


def _metadata(node: base_pb2.Node) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in node.metadata.fields.items():
        if value.HasField("string_value"):
            out[key] = value.string_value
    return out


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """ADS over grpc.aio, from a :class:`ResourceSource`."""

    def __init__(self, source: ResourceSource, *, identify: Any = None) -> None:
        self._source = source
        self._streams: set[_Stream] = set()
        # The mesh's version: one more on every change (the version_info sent).
        self._version = 1
        # Notified on every ACK, NACK and stream end while a drain waits
        # (_waiters of them): they look again.
        self._answered = asyncio.Condition()
        self._waiters = 0
        self._identify = identify or (lambda context: "")
        #: ACKs and NACKs taken since the manager started, by resource type
        #: (one of TYPES, or "other": a client may name any type), and the
        #: streams opened (/metrics).
        self.acks: dict[str, int] = {}
        self.nacks: dict[str, int] = {}
        self.streams_opened = 0

    # -- the mesh tells of changes ----------------------------------------------------------
    @property
    def version(self) -> str:
        return str(self._version)

    def changed(
        self,
        type_urls: Iterable[str] | None = None,
        names: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        """The mesh changed (in ``type_urls``, or anything): push what differs.
        ``names``, by type, are the only resources of that type that changed
        (the others are not looked at)."""
        self._version += 1
        types = None if type_urls is None else frozenset(type_urls)
        for stream in self._streams:
            stream.mark_dirty(types, names)

    @property
    def clients(self) -> int:
        return len(self._streams)

    def clients_by_kind(self) -> dict[str, int]:
        """Connected clients by kind ("envoy", "grpc")."""
        out: dict[str, int] = {}
        for stream in self._streams:
            out[stream.client.kind] = out.get(stream.client.kind, 0) + 1
        return out

    def rejecting(self) -> dict[str, int]:
        """Clients whose last answer of a type was a NACK (they run an older
        config of it), by type, as the ACK and NACK counts name types."""
        out: dict[str, int] = {}
        for stream in self._streams:
            for type_url, state in stream.types.items():
                if state.nack_error:
                    key = type_url if type_url in _KNOWN_TYPES else "other"
                    out[key] = out.get(key, 0) + 1
        return out

    # -- the RPC -------------------------------------------------------------------------
    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        if not first.HasField("node"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first DiscoveryRequest of an ADS stream must carry the node "
                "(node.id: who the client is)",
            )
        node = first.node
        stream = _Stream(
            Client(
                node_id=node.id,
                kind=_kind(node),
                user_agent=_user_agent(node),
                peer=context.peer(),
                identity=self._identify(context),
                metadata=_metadata(node),
            )
        )
        self._streams.add(stream)
        self.streams_opened += 1
        _log.info(
            "xDS client %s (%s, %s) connected from %s",
            node.id,
            stream.client.kind,
            stream.client.user_agent,
            stream.client.peer,
        )
        self._take(stream, first)
        reader = asyncio.ensure_future(self._read(stream, request_iterator))
        # The reader's end wakes the stream too: one event to wait on, not a
        # task and an asyncio.wait for each push.
        reader.add_done_callback(lambda _: stream.wake.set())
        try:
            while not reader.done():
                for response in self._responses(stream):
                    yield response
                stream.wake.clear()
                if any(state.dirty for state in stream.types.values()):
                    continue
                await stream.wake.wait()
        finally:
            reader.cancel()
            self._streams.discard(stream)
            _log.info("xDS client %s disconnected", node.id)
            await self._notify()

    async def DeltaAggregatedResources(
        self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "incremental (delta) xDS is not served: use the state-of-the-world "
            "StreamAggregatedResources (grpcio's and Envoy's default)",
        )

    async def _read(
        self, stream: _Stream, requests: AsyncIterator[discovery_pb2.DiscoveryRequest]
    ) -> None:
        async for request in requests:
            if self._take(stream, request):
                await self._notify()

    async def _notify(self) -> None:
        if not self._waiters:
            return
        async with self._answered:
            self._answered.notify_all()

    # -- requests ----------------------------------------------------------------------------
    def _take(self, stream: _Stream, request: discovery_pb2.DiscoveryRequest) -> bool:
        """Apply one request to the stream's state; True when it answered
        (ACK or NACK) a response."""
        type_url = request.type_url
        if not type_url:
            return False
        # Read once: each look into the repeated field makes its strings
        # anew (an ACK of a hundred names is read on every push).
        requested = list(request.resource_names)
        state = stream.types.get(type_url)
        if state is None:
            state = stream.types[type_url] = _TypeState()
            # An empty list (or "*") on a type's first request: every resource
            # of the type (a wildcard subscription).
            state.wildcard = not requested or "*" in requested
        answered = False
        if not state.answered_once:
            # The type's first request on this stream: a nonce it carries is
            # of an earlier stream (a client reconnecting after the manager
            # restarted); what counts is what it subscribes to.
            pass
        elif request.response_nonce and request.response_nonce not in state.in_flight:
            if request.response_nonce != state.nonce:
                return False  # stale: a newer response is under way
            # The latest response, answered already: a change of subscription.
            # grpcio repeats its last answer's version and error in it, so it
            # is neither another ACK nor another NACK (a NACK taken twice
            # would forget what was rejected and send it again).
        elif request.response_nonce:
            carried = state.in_flight.pop(request.response_nonce)
            # Older responses than this one are answered by it, too.
            for nonce in [n for n in state.in_flight if int(n) < int(request.response_nonce)]:
                del state.in_flight[nonce]
            answered = True
            if request.HasField("error_detail"):
                self._nack(stream, type_url, state, request, carried)
            else:
                _count(self.acks, type_url)
                state.acked_version = request.version_info
                if type_url in STATE_OF_THE_WORLD:
                    state.acked = dict(carried)
                else:
                    state.acked.update(carried)
                state.nack_error = ""
        names = set(requested)
        if "*" in names:
            names.discard("*")
            state.wildcard = True
        elif names and state.wildcard and type_url in STATE_OF_THE_WORLD:
            state.wildcard = False
        if names != state.names:
            for gone in state.names - names:
                state.sent.pop(gone, None)
                state.acked.pop(gone, None)
            state.names = names
            state.dirty = True
            state.touched = None
        if not state.answered_once:
            state.dirty = True
            state.touched = None
        if state.dirty:
            stream.wake.set()
        return answered

    def _nack(
        self,
        stream: _Stream,
        type_url: str,
        state: _TypeState,
        request: discovery_pb2.DiscoveryRequest,
        carried: dict[str, int],
    ) -> None:
        state.nacks += 1
        _count(self.nacks, type_url)
        state.nack_time = time.time()
        state.nack_error = request.error_detail.message or f"code {request.error_detail.code}"
        state.rejected = dict(carried)
        # The client keeps its last good config: that is what it has now.
        if type_url in STATE_OF_THE_WORLD:
            state.sent = dict(state.acked)
        else:
            for name in carried:
                if name in state.acked:
                    state.sent[name] = state.acked[name]
                else:
                    state.sent.pop(name, None)
        _log.warning(
            "xDS NACK from %s (%s) of %s version %s (it keeps version %s): %s",
            stream.client.node_id,
            stream.client.kind,
            type_url.rsplit(".", 1)[-1],
            state.sent_version,
            state.acked_version or "none",
            state.nack_error,
        )

    # -- responses ---------------------------------------------------------------------------
    def _responses(self, stream: _Stream) -> list[discovery_pb2.DiscoveryResponse]:
        out = []
        order = [t for t in TYPES if t in stream.types]
        order += [t for t in stream.types if t not in TYPES]
        for type_url in order:
            state = stream.types[type_url]
            if not state.dirty:
                continue
            state.dirty = False
            response = self._response(stream, type_url, state, state.touched)
            state.touched = None
            if response is not None:
                out.append(response)
        return out

    def _response(
        self,
        stream: _Stream,
        type_url: str,
        state: _TypeState,
        touched: set[str] | None = None,
    ) -> discovery_pb2.DiscoveryResponse | None:
        available = self._source.resources(stream.client, type_url)
        # After a NACK, what the client kept may become what it is to have
        # again (the rejected change undone): that is sent too, so that it
        # acknowledges it and its status (and the client's own) stops showing
        # the rejection.
        if type_url in STATE_OF_THE_WORLD:
            if state.wildcard:
                wanted = dict(available)
            else:
                wanted = {n: available[n] for n in state.names if n in available}
            digests = {n: d for n, (d, _) in wanted.items()}
            if state.answered_once and (
                digests == state.rejected or (digests == state.sent and not state.nack_error)
            ):
                return None
            carried = digests
            resources = [r for _, r in wanted.values()]
            state.sent = dict(digests)
            state.rejected = {}
        else:
            # Only what was touched can differ from what the client was sent
            # (one name of a hundred on a push); everything on the first answer.
            if touched is None or not state.answered_once:
                looked: Iterable[str] = available if state.wildcard else state.names
            else:
                looked = touched if state.wildcard else touched & state.names
            changed = {}
            for n in looked:
                current = available.get(n)
                if current is None:
                    continue
                d = current[0]
                if state.rejected.get(n) != d and (state.sent.get(n) != d or n in state.rejected):
                    changed[n] = current
            if not changed and state.answered_once:
                return None
            carried = {n: d for n, (d, _) in changed.items()}
            resources = [r for _, r in changed.values()]
            state.sent.update(carried)
            for name in carried:
                state.rejected.pop(name, None)
        state.answered_once = True
        state.nonce = stream.next_nonce()
        state.sent_version = self.version
        state.in_flight[state.nonce] = carried
        return discovery_pb2.DiscoveryResponse(
            version_info=state.sent_version,
            resources=resources,
            type_url=type_url,
            nonce=state.nonce,
        )

    # -- the drain -----------------------------------------------------------------------------
    def _settled(self, names: frozenset[str]) -> list[str]:
        """Node ids of the clients subscribed to any of ``names`` (assignments)
        that have not yet acknowledged (or rejected) what they are to have."""
        waiting = []
        for stream in self._streams:
            state = stream.types.get(ENDPOINT)
            if state is None:
                continue
            mine = names if state.wildcard else names & state.names
            if not mine:
                continue
            available = self._source.resources(stream.client, ENDPOINT)
            for name in mine:
                current = available.get(name)
                if current is None:
                    continue
                digest = current[0]
                if state.acked.get(name) != digest and state.rejected.get(name) != digest:
                    waiting.append(stream.client.node_id or stream.client.peer)
                    break
        return waiting

    def subscribed(self, names: Iterable[str]) -> int:
        """How many clients are subscribed to any of the assignments ``names``."""
        wanted = frozenset(names)
        count = 0
        for stream in self._streams:
            state = stream.types.get(ENDPOINT)
            if state is not None and (state.wildcard or wanted & state.names):
                count += 1
        return count

    async def wait_acknowledged(self, names: Iterable[str], seconds: float) -> list[str]:
        """Wait until every client subscribed to the assignments ``names`` has
        acknowledged what it is to have now (a NACK counts as answered: it
        keeps its last good config, logged), at most ``seconds``; the
        node ids of the clients still waited for when it ran out (empty: all)."""
        wanted = frozenset(names)
        deadline = time.monotonic() + seconds
        self._waiters += 1
        try:
            async with self._answered:
                while True:
                    waiting = self._settled(wanted)
                    remaining = deadline - time.monotonic()
                    if not waiting or remaining <= 0:
                        return waiting
                    try:
                        await asyncio.wait_for(self._answered.wait(), remaining)
                    except TimeoutError:
                        return self._settled(wanted)
        finally:
            self._waiters -= 1

    # -- status -------------------------------------------------------------------------------
    def status(self, names: frozenset[str] | None = None) -> list[mesh_pb2.MeshClient]:
        """Every connected client with where each of its types stands (only
        those subscribed to one of ``names``, when given)."""
        out = []
        for stream in sorted(self._streams, key=lambda s: (s.client.node_id, s.connect_time)):
            if names is not None and not any(
                state.wildcard or state.names & names for state in stream.types.values()
            ):
                continue
            client = mesh_pb2.MeshClient(
                node_id=stream.client.node_id,
                peer=stream.client.peer,
                user_agent=stream.client.user_agent,
                kind=stream.client.kind,
                connect_time=timestamp_to_proto(stream.connect_time),
                identity=stream.client.identity,
            )
            for type_url, state in sorted(stream.types.items()):
                resource = client.resources.add(
                    type_url=type_url,
                    names=sorted(state.names),
                    wildcard=state.wildcard,
                    sent_version=state.sent_version,
                    acked_version=state.acked_version,
                    nonce=state.nonce,
                    nack_error=state.nack_error,
                    nacks=state.nacks,
                )
                if state.nack_time is not None:
                    resource.nack_time.CopyFrom(timestamp_to_proto(state.nack_time))
            out.append(client)
        return out


__all__ = ["ADS_SERVICE", "AdsServicer", "Client", "ResourceSource", "Versioned"]
