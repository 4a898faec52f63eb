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

#: Dials the leader's address (plaintext, or mutual TLS with the manager's leaf).
Dial = Callable[[str], grpc.aio.Channel]


class AdsForwarder(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """The ADS method of a standby's server, forwarded to ``leader()``'s
    (an address, "" while none is known); other methods are not its own."""

    def __init__(self, leader: Callable[[], str], dial: Dial) -> None:
        self._leader = leader
        self._dial = dial
        # One channel per leader's address, kept for the streams that follow.
        self._channels: dict[str, grpc.aio.Channel] = {}

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler[Any, Any] | None:
        if handler_call_details.method != ADS_METHOD:
            return None
        return grpc.stream_stream_rpc_method_handler(self._forward)

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = self._dial(address)
        return channel

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

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close(None)


def dial_leader(insecure: bool, manager_files: Any) -> Dial:
    """How a standby dials the leader: plaintext for an insecure manager,
    else mutual TLS with its own leaf (``manager_files``: the Trust's
    CredentialFiles), read at each dial (renewed meanwhile)."""

    def dial(address: str) -> grpc.aio.Channel:
        if insecure:
            return grpc.aio.insecure_channel(address)
        from ...security import channel_credentials

        return grpc.aio.secure_channel(address, channel_credentials(manager_files))

    return dial


__all__ = ["ADS_METHOD", "FORWARDED_METADATA", "AdsForwarder", "Dial", "dial_leader"]
