"""A standby's HTTP face: ``--http-listen`` served while the manager does
not lead, so that what probes and scrapes every replica over HTTP (kubelet's
``httpGet``, Prometheus) finds each one up, as their gRPC probes do.

It serves what a standby can say of itself, from the same parts as the
leader's face (_http's HttpFace, with the standby's route sources):

- ``/livez``, ``/readyz``, ``/healthz`` from the standby's grpc.health.v1
  statuses (_healthprobes.standby_routes): an HTTP and a gRPC probe never
  disagree;
- ``/metrics``: ``pycontainer_manager_leader 0`` (_prometheus.standby_routes);
- anything else (the containers' metrics, the web view and its API): 503
  naming the leader's gRPC address, with a ``Retry-After``. Not forwarded:
  a standby knows the leader's gRPC address, not its HTTP one.

The face is the Standby's (bound with its ports, served from its start to
its stop): the leader's Manager binds the same address once the standby
has stopped, and the next standby once that Manager has stopped.
"""

from __future__ import annotations

import math

from aiohttp import web

from ._healthprobes import standby_routes as probe_routes
from ._http import HttpFace
from ._prometheus import standby_routes as metrics_routes
from ._settings import ManagerSettings
from ._standby import Standby, standby_message

__all__ = ["standby_face"]


def standby_face(standby: Standby, settings: ManagerSettings) -> HttpFace[Standby]:
    """The HTTP face of ``standby`` on ``settings.http_listen`` (unbound)."""
    assert settings.http_listen is not None
    # A dead leader's successor is elected within a lease: this manager,
    # perhaps, and then this address serves the leader's face.
    retry_after = str(max(1, math.ceil(settings.leader_ttl.total_seconds())))

    def elsewhere(standby: Standby) -> list[web.RouteDef]:
        async def refuse(request: web.Request) -> web.Response:
            return web.Response(
                status=503,
                text=standby_message(standby.current_leader()) + "\n",
                headers={"Retry-After": retry_after},
            )

        # Last: the routes above take theirs first.
        return [web.route("*", "/{tail:.*}", refuse)]

    return HttpFace(standby, settings.http_listen, [probe_routes, metrics_routes, elsewhere])
