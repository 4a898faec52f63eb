"""A standby's ADS: each xDS stream forwarded to the leader's.

A proxyless client's bootstrap names every manager in one ``server_uri``
(pycontainer.client.server_uris): its xDS channel's pick_first stays on the
first manager that answers, which may be a standby. The standby forwards the
stream, message for message (bytes, never decoded), to the leader's ADS, so
that the client is served by the leader (and listed by its mesh status,
from the standby's address). When the leader's side ends (it died or stepped
down), the client's stream ends UNAVAILABLE and the client opens another,
keeping its cached resources meanwhile (gRFC A57): forwarded to whoever
leads by then. With no leader known, a stream is refused UNAVAILABLE: the
client retries it with its backoff, its calls going on with what it has.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from ._ads import ADS_SERVICE

_log = logging.getLogger("pycontainer.manager.xds")

#: The one method forwarded (the state-of-the-world stream gRPC and Envoy use).
ADS_METHOD = f"/{ADS_SERVICE}/StreamAggregatedResources"

#: Metadata on a forwarded stream: a manager that gets one while a standby
#: (it took a standby, or itself, for the leader) refuses it rather than
#: forwarding it again, so a stream makes one hop at most, never a loop.
FORWARDED_METADATA = "pycontainer-xds-forwarded"

#: The channel to the leader's address (the standby's own, kept and renewed
#: with its certificate: _standby.Standby.channel).
LeaderChannel = Callable[[str], grpc.aio.Channel]


class AdsForwarder(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """The ADS method of a standby's server, forwarded to ``leader()``'s
    (an address, "" while none is known); other methods are not its own."""

    def __init__(self, leader: Callable[[], str], channel: LeaderChannel) -> None:
        self._leader = leader
        self._channel = channel

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler[Any, Any] | None:
        if handler_call_details.method != ADS_METHOD:
            return None
        return grpc.stream_stream_rpc_method_handler(self._forward)

    async def _forward(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        leader = self._leader()
        if any(key == FORWARDED_METADATA for key, _ in context.invocation_metadata() or ()):
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "this manager is a standby too (the one forwarding took it for the leader): "
                "the xDS client retries",
            )
        if not leader:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "this manager is a standby and no leader is elected yet: the xDS client "
                "retries, keeping the resources it has",
            )
        # Bytes both ways: no serializer, nothing decoded.
        method = self._channel(leader).stream_stream(ADS_METHOD, None, None)
        call = method(requests, metadata=((FORWARDED_METADATA, "1"),))
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            _log.info("forwarded xDS stream to the leader at %s ended: %s", leader, exc.code())
            # UNAVAILABLE whatever the leader's side said: the client is to
            # retry (on this standby or another manager), not give up.
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"the leader's xDS stream (forwarded by this standby to {leader}) ended: "
                f"{exc.code().name} {exc.details() or ''}".rstrip()
                + "; the xDS client reconnects to whoever leads now",
            )
        finally:
            call.cancel()


__all__ = ["ADS_METHOD", "FORWARDED_METADATA", "AdsForwarder", "LeaderChannel"]
