"""gRPC's admin services on the manager's server: channelz and CSDS (what
grpcdebug reads), as grpc_admin.add_admin_servicers would add them.

grpc_admin itself cannot be used on the manager's server: its CSDS servicer
is synchronous, and the manager's grpc.aio interceptors await every
handler (a synchronous one fails with "can't be used in 'await'
expression"). channelz has an asyncio servicer of its own; CSDS's answer
(grpcio's xDS clients' configs in this process, from cygrpc) is wrapped
here in coroutines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc_csds
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from grpc_channelz.v1 import channelz

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


def add_admin_services(server: grpc.aio.Server) -> None:
    """Channelz and CSDS on ``server`` (role read: pycontainer.security's METHOD_ROLES)."""
    # Its asyncio servicer for a grpc.aio server (its stub types say grpc.Server).
    channelz.add_channelz_servicer(server)  # type: ignore[arg-type]
    csds_pb2_grpc.add_ClientStatusDiscoveryServiceServicer_to_server(_AioCsds(), server)


__all__ = ["ADMIN_SERVICES", "add_admin_services"]
