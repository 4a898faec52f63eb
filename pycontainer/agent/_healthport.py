"""grpc.health.v1 alone, in plaintext, on a port of its own
(``ContainerSettings.health_listen``, $PYCONTAINER_HEALTH_LISTEN).

A container's Management endpoint serves mutual TLS when the manager gave it
a certificate; kubelet's gRPC probe and grpc_health_probe speak plaintext
only. This port answers them: Check, Watch and List of the same statuses as
the Management endpoint (overall, liveness, readiness), and reflection
listing nothing but health, so that grpcurl needs no proto files. Nothing
else is served there, so plaintext exposes whether the container serves and
no more.

It runs on a thread and event loop of its own, whatever the app's server is
(sync or asyncio); the statuses come from the container's HealthState, as on
every other server it is on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from .. import _reflection
from ._background import BackgroundServer, start_in_background
from ._health import AioHealthServicer, HealthState, SyncHealthServicer, health_handlers
from ._hosting import register
from ._listen import SERVER_OPTIONS, listen_on

__all__ = ["health_groups", "start_health_port"]

_log = logging.getLogger("pycontainer")

# What reflection lists on the health port: health, and reflection itself.
_LISTED = (_reflection.HEALTH, _reflection.REFLECTION_V1, _reflection.REFLECTION_V1ALPHA)


def health_groups(
    servicer: SyncHealthServicer | AioHealthServicer,
) -> dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]]:
    """grpc.health.v1's handlers (Check, Watch and List) for ``servicer``, by service name."""
    list_request, list_response = _reflection.health_list_messages()

    def health_list() -> Any:
        response = list_response()
        for service, status in servicer.list_statuses().items():
            response.statuses[service].status = status
        return response

    return {
        _reflection.HEALTH: health_handlers(
            servicer, health_list, list_response.SerializeToString, list_request.FromString
        )
    }


def start_health_port(health: HealthState, listen: str) -> BackgroundServer:
    """Serve ``health`` as grpc.health.v1 alone, in plaintext, on ``listen``
    (HOST:PORT; port 0 for a free one), on a thread of its own. ListenError
    when it cannot listen there (in use, not this machine's, malformed)."""

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(options=SERVER_OPTIONS)
        port = listen_on(server, listen)  # plaintext on purpose: kubelet speaks no TLS
        servicer = AioHealthServicer(asyncio.get_running_loop())
        groups = {
            **health_groups(servicer),
            **_reflection.reflection_handlers(lambda: _LISTED, aio=True),
        }
        for service, group in groups.items():
            register(server, service, group)
        await server.start()
        health.attach(servicer.set_nowait)
        return server, port

    port = start_in_background(start, name="pycontainer-health")
    # Here, not at the top: pycontainer.security imports cryptography.
    from ..security import health_port_warning

    warning = health_port_warning(listen, "this container")
    if warning:
        _log.warning("%s", warning)
    return port
