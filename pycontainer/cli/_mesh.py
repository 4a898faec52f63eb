"""`pycontainer mesh status|bootstrap` and `pycontainer route`: the mesh as the
manager's xDS control plane serves it (Manager.GetMeshStatus, SetMeshRoute),
and the gRPC xDS bootstrap of a program the manager did not launch.

``mesh status`` prints, as ``istioctl proxy-status`` does, each xDS client's
standing per resource type: SYNCED (it acknowledged what it was sent),
STALE (sent, not acknowledged yet), NACK (it rejected the last one and keeps
its last good config; the error follows the table) or NOT SENT."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..v1 import manager_pb2, mesh_pb2
from ._context import Context
from ._errors import CliError
from ._output import message_dict, print_data, print_table
from ._table import TableRows

if TYPE_CHECKING:
    from ..client import ManagerClient

__all__ = ["route_text", "run", "run_route", "type_name"]

# Resource types by the short names xDS tools use, in istioctl's column order.
_TYPES = {
    "type.googleapis.com/envoy.config.cluster.v3.Cluster": "CDS",
    "type.googleapis.com/envoy.config.listener.v3.Listener": "LDS",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment": "EDS",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration": "RDS",
}


def type_name(type_url: str) -> str:
    """CDS, LDS, EDS, RDS, or the message name of another type."""
    return _TYPES.get(type_url) or type_url.rsplit(".", 1)[-1]


def route_text(route: mesh_pb2.MeshRoute) -> str:
    """``v1=90 v2=10 (route)``, or ``-`` when the service is not split."""
    if not route.weights:
        return "-"
    split = " ".join(f"{subset}={weight}" for subset, weight in sorted(route.weights.items()))
    return f"{split} ({route.source})" if route.source else split


def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.mesh_action == "bootstrap":
        return _bootstrap(args, ctx)
    with ctx.manager(args) as manager:
        return _status(args, ctx, manager)


# -- status ------------------------------------------------------------------------------
def _standing(resource: mesh_pb2.MeshResourceStatus) -> str:
    if resource.nack_error:
        return f"NACK ({resource.acked_version or 'none'} kept)"
    if not resource.sent_version:
        return "NOT SENT"
    if resource.acked_version == resource.sent_version:
        return f"SYNCED ({resource.acked_version})"
    return f"STALE (sent {resource.sent_version}, acked {resource.acked_version or 'none'})"


def _status(args: argparse.Namespace, ctx: Context, manager: ManagerClient) -> int:
    response = manager.get_mesh_status(manager_pb2.GetMeshStatusRequest(service=args.service))
    if args.output != "table":
        print_data(ctx, message_dict(response), args.output)
        return 0
    if response.services:
        services = TableRows(("SERVICE", "HEALTHY", "DRAINING", "ROUTE", "VERSION"))
        for service in response.services:
            services.add_row(
                service.name,
                str(len(service.healthy)),
                str(len(service.draining)),
                route_text(service.route),
                service.version,
            )
        print_table(ctx, services)
    else:
        ctx.err(
            "no mesh services yet (a spec's service declares one; it appears once a "
            "container of it registers)"
        )
    if args.service and response.services:
        ctx.out()
        endpoints = TableRows(("ENDPOINT", "STATE"))
        for service in response.services:
            for container_id in service.healthy:
                endpoints.add_row(container_id, "HEALTHY")
            for container_id in service.draining:
                endpoints.add_row(container_id, "DRAINING")
        if endpoints.rows:
            print_table(ctx, endpoints)
        else:
            ctx.err(f"{args.service}: no endpoints (none of its containers is running and ready)")
    _clients(ctx, response.clients, bool(response.services))
    return 0


def _clients(ctx: Context, clients: Iterable[mesh_pb2.MeshClient], gap: bool) -> None:
    listed = list(clients)
    if not listed:
        ctx.err("no xDS clients connected")
        return
    if gap:
        ctx.out()
    others = sorted(
        {type_name(r.type_url) for c in listed for r in c.resources} - set(_TYPES.values())
    )
    columns = [*_TYPES.values(), *others]
    table = TableRows(("NODE", "KIND", *columns))
    errors: list[str] = []
    for client in listed:
        by_type = {type_name(r.type_url): r for r in client.resources}
        cells = [_standing(by_type[c]) if c in by_type else "NOT SENT" for c in columns]
        table.add_row(client.node_id or client.peer, client.kind, *cells)
        for name in columns:
            resource = by_type.get(name)
            if resource is not None and resource.nack_error:
                errors.append(
                    f"{client.node_id or client.peer} {name}: {resource.nack_error} "
                    f"({resource.nacks} NACK{'s' if resource.nacks != 1 else ''})"
                )
    print_table(ctx, table)
    if errors:
        ctx.out()
        ctx.out("NACKS")
        for line in errors:
            ctx.out(line)


# -- bootstrap ---------------------------------------------------------------------------
def _bootstrap(args: argparse.Namespace, ctx: Context) -> int:
    from ..client import (
        TargetError,
        TransportError,
        bootstrap_json,
        manager_targets,
        manager_transport,
    )

    given = args.manager or getattr(args, "global_manager", None)
    cert_dir = args.cert_dir or getattr(args, "global_cert_dir", None)
    insecure = bool(args.insecure or getattr(args, "global_insecure", None))
    try:
        # Managers in high availability: every one is named (the xDS
        # stream follows the leader through whichever answers).
        addresses = manager_targets(given)
        transport = manager_transport(cert_dir, insecure=insecure)
    except TargetError as exc:
        raise CliError(f"--manager: {exc}") from None
    except TransportError as exc:
        raise CliError(str(exc)) from None
    ctx.stdout.write(
        bootstrap_json(
            addresses,
            node_id=args.node_id or socket.gethostname(),
            cluster=args.cluster,
            zone=args.zone,
            tls_dir=transport.cert_dir,
        )
    )
    ctx.stdout.flush()
    return 0


# -- route -------------------------------------------------------------------------------
def run_route(args: argparse.Namespace, ctx: Context) -> int:
    if args.clear and args.weights:
        raise CliError("give the subsets' weights or --clear, not both")
    if not args.clear and not args.weights:
        raise CliError(
            f"give each subset's weight, such as `pycontainer route {args.service} v1=90 "
            "v2=10`, or --clear to remove the split (`pycontainer mesh status "
            f"{args.service}` shows the service)"
        )
    weights: dict[str, int] = {}
    for subset, weight in args.weights:
        if subset in weights:
            raise CliError(f"subset {subset} is given twice: give each subset once")
        weights[subset] = weight
    with ctx.manager(args) as manager:
        response = manager.set_mesh_route(
            manager_pb2.SetMeshRouteRequest(service=args.service, weights=weights)
        )
    if args.output != "table":
        print_data(ctx, message_dict(response), args.output)
        return 0
    route = response.route
    if route.weights:
        ctx.out(f"{args.service}: {route_text(route)}")
    else:
        ctx.out(f"{args.service}: no split (every ready endpoint of the service takes traffic)")
    return 0
