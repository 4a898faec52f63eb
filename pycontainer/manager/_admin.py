"""gRPC's admin services on the manager's server: channelz and CSDS (what
grpcdebug reads), as grpc_admin.add_admin_servicers would add them.

grpc_admin itself cannot be used on the manager's server: its CSDS servicer
is synchronous, and the manager's grpc.aio interceptors await every
handler (a synchronous one fails with "can't be used in 'await'
expression"). CSDS's answer (grpcio's xDS clients' configs in this process,
from cygrpc) is wrapped here in coroutines.

Channelz is served here too, from the same cygrpc calls as grpcio-channelz's
servicer, but its JSON read leniently: grpcio-channelz parses grpc-core's
channelz JSON strictly, so a core newer than the channelz package (grpcio
1.85 with grpcio-channelz 1.81, the newest that runs on protobuf 6) fails
GetTopChannels with INTERNAL on fields its proto lacks
("maxConnectionsPerSubchannel"). No upstream issue names it; the servicer
is grpc_channelz/v1/_servicer.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc_csds
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc._cython import cygrpc  # type: ignore[attr-defined]
from grpc_channelz.v1 import channelz_pb2, channelz_pb2_grpc

#: The services add_admin_services adds, for reflection to list.
ADMIN_SERVICES = (
    "grpc.channelz.v1.Channelz",
    "envoy.service.status.v3.ClientStatusDiscoveryService",
)


class _AioCsds(csds_pb2_grpc.ClientStatusDiscoveryServiceServicer):  # type: ignore[misc]
    async def FetchClientStatus(
        self, request: csds_pb2.ClientStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> csds_pb2.ClientStatusResponse:
        response: csds_pb2.ClientStatusResponse = (
            grpc_csds.ClientStatusDiscoveryServiceServicer.FetchClientStatus(request, context)
        )
        return response

    async def StreamClientStatus(
        self,
        requests: AsyncIterator[csds_pb2.ClientStatusRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[csds_pb2.ClientStatusResponse]:
        async for request in requests:
            yield await self.FetchClientStatus(request, context)


async def _channelz(
    context: grpc.aio.ServicerContext[Any, Any],
    read: Any,
    args: tuple[int, ...],
    response: Message,
    *,
    by_id: bool,
) -> Any:
    """grpc-core's channelz answer, as ``response``: NOT_FOUND for an id it
    does not know (``by_id``), INTERNAL for JSON that is no channelz answer."""
    try:
        text = read(*args)
    except ValueError as exc:
        code = grpc.StatusCode.NOT_FOUND if by_id else grpc.StatusCode.INVALID_ARGUMENT
        await context.abort(code, str(exc))
    try:
        return json_format.Parse(text, response, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        await context.abort(grpc.StatusCode.INTERNAL, f"channelz answer unreadable: {exc}")


class _AioChannelz(channelz_pb2_grpc.ChannelzServicer):  # type: ignore[misc]
    async def GetTopChannels(self, request: Any, context: Any) -> Any:
        read = cygrpc.channelz_get_top_channels
        return await _channelz(
            context,
            read,
            (request.start_channel_id,),
            channelz_pb2.GetTopChannelsResponse(),
            by_id=False,
        )

    async def GetServers(self, request: Any, context: Any) -> Any:
        read = cygrpc.channelz_get_servers
        return await _channelz(
            context,
            read,
            (request.start_server_id,),
            channelz_pb2.GetServersResponse(),
            by_id=False,
        )

    async def GetServer(self, request: Any, context: Any) -> Any:
        read = cygrpc.channelz_get_server
        return await _channelz(
            context, read, (request.server_id,), channelz_pb2.GetServerResponse(), by_id=True
        )

    async def GetServerSockets(self, request: Any, context: Any) -> Any:
        read = cygrpc.channelz_get_server_sockets
        args = (request.server_id, request.start_socket_id, request.max_results)
        return await _channelz(
            context, read, args, channelz_pb2.GetServerSocketsResponse(), by_id=True
        )

    async def GetChannel(self, request: Any, context: Any) -> Any:
        read = cygrpc.channelz_get_channel
        return await _channelz(
            context, read, (request.channel_id,), channelz_pb2.GetChannelResponse(), by_id=True
        )

    async def GetSubchannel(self, request: Any, context: Any) -> Any:
        read = cygrpc.channelz_get_subchannel
        return await _channelz(
            context,
            read,
            (request.subchannel_id,),
            channelz_pb2.GetSubchannelResponse(),
            by_id=True,
        )

    async def GetSocket(self, request: Any, context: Any) -> Any:
        read = cygrpc.channelz_get_socket
        return await _channelz(
            context, read, (request.socket_id,), channelz_pb2.GetSocketResponse(), by_id=True
        )


def add_admin_services(server: grpc.aio.Server) -> None:
    """Channelz and CSDS on ``server`` (role read: pycontainer.security's METHOD_ROLES)."""
    channelz_pb2_grpc.add_ChannelzServicer_to_server(_AioChannelz(), server)
    csds_pb2_grpc.add_ClientStatusDiscoveryServiceServicer_to_server(_AioCsds(), server)


__all__ = ["ADMIN_SERVICES", "add_admin_services"]
