"""The mesh as the manager sees it: services, their subsets and endpoints.

Pure data, built from the registry's entries (:func:`services_of`): a
container is an endpoint of the service its spec names while it takes
traffic (RUNNING, connected, ready) or while it is being drained (a stop
under way: DRAINING, so that clients stop picking it before the Stop is
sent), or while it is held: a container a new manager inherited from the
state store (an earlier leader's), RUNNING there and not connected yet, keeps
its endpoints for a bounded window (Mesh.hold_inherited) so that a client
reconnecting its xDS stream meanwhile is given the same endpoints, not none.
Nothing here knows xDS; _resources turns it into Envoy's API.
"""

from __future__ import annotations

import datetime
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field

from ..._meshrules import DEFAULT_SERVICE_ENDPOINT, MESH_ENDPOINT
from ...client._target import TargetError, split_address
from ...units import duration_field
from ...v1 import container_pb2, mesh_pb2, spec_pb2
from .._registry import Entry

S = container_pb2

#: The endpoint a service is served on when its spec names none: the app's
#: own gRPC endpoint, else the Management one (an app that added its
#: services to the Management server).
DEFAULT_ENDPOINTS = (DEFAULT_SERVICE_ENDPOINT, "management")


@dataclass(frozen=True, slots=True)
class MeshEndpoint:
    """One container's endpoint in a service."""

    container_id: str
    host: str
    port: int
    weight: int
    zone: str
    draining: bool
    # Served with mutual TLS (the container's certificate).
    tls: bool


@dataclass(frozen=True)
class ServiceSettings:
    """How a service's calls are balanced and routed (from its specs)."""

    load_balancing: mesh_pb2.LoadBalancingPolicy.ValueType = (
        mesh_pb2.LOAD_BALANCING_POLICY_UNSPECIFIED
    )
    hash_header: str = ""
    timeout: datetime.timedelta | None = None
    retry: mesh_pb2.MeshRetryPolicy | None = None
    outlier_detection: mesh_pb2.MeshOutlierDetection | None = None


@dataclass(frozen=True)
class ServiceView:
    """One service: its endpoints by subset, and how traffic is split."""

    name: str
    settings: ServiceSettings
    # Subset name -> its endpoints, in a stable order.
    subsets: Mapping[str, tuple[MeshEndpoint, ...]]
    # Subset name -> weight, when the traffic is split; empty: one cluster.
    split: Mapping[str, int] = field(default_factory=dict)
    # Where the split comes from: "route", "specs" or "".
    split_source: str = ""

    @property
    def endpoints(self) -> tuple[MeshEndpoint, ...]:
        return tuple(e for subset in self.subsets.values() for e in subset)


def service_of(entry: Entry) -> mesh_pb2.MeshService | None:
    """The mesh service ``entry``'s spec names, if any."""
    spec = entry.spec
    if spec is None or not spec.HasField("service") or not spec.service.name:
        return None
    return spec.service


def subset_of(entry: Entry, service: mesh_pb2.MeshService) -> str:
    assert entry.spec is not None
    return service.subset or entry.spec.name


def _address(entry: Entry, service: mesh_pb2.MeshService) -> container_pb2.Endpoint | None:
    by_name = {e.name: e for e in entry.identity.endpoints}
    names = (service.endpoint,) if service.endpoint else DEFAULT_ENDPOINTS
    # An Envoy beside the program (spec.proxy envoy): the mesh reaches the
    # program through Envoy's inbound listener, which the sidecar advertises.
    names = (MESH_ENDPOINT, *names)
    for name in names:
        if name in by_name:
            return by_name[name]
    return None


def split_host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a HOST:PORT or [V6]:PORT address; None for anything
    else (a unix socket is no mesh endpoint)."""
    if address.startswith(("unix:", "unix-abstract:")):
        return None
    address = address.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    try:
        return split_address(address)
    except TargetError:
        return None


def endpoint_of(entry: Entry, *, held: bool = False) -> tuple[str, MeshEndpoint] | None:
    """(service name, endpoint) of ``entry`` while it belongs in the mesh
    (taking traffic, or draining, or ``held``: inherited RUNNING and not
    connected yet, as it was last known); None otherwise."""
    service = service_of(entry)
    if service is None:
        return None
    draining = entry.draining and entry.connected and entry.state == S.LIFECYCLE_STATE_RUNNING
    carried = (
        held
        and entry.state == S.LIFECYCLE_STATE_RUNNING
        and not entry.connected
        and not entry.draining
        and entry.ready is not False
    )
    if not (entry.serving or draining or carried):
        return None
    advertised = _address(entry, service)
    if advertised is None:
        return None
    host_port = split_host_port(advertised.address)
    if host_port is None:
        return None
    host, port = host_port
    return service.name, MeshEndpoint(
        container_id=entry.id,
        host=host,
        port=port,
        weight=service.weight or 1,
        zone=service.zone,
        draining=draining,
        tls=advertised.tls,
    )


def settings_of(spec: spec_pb2.ContainerSpec) -> ServiceSettings:
    service = spec.service
    return ServiceSettings(
        load_balancing=service.load_balancing,
        hash_header=service.hash_header,
        timeout=duration_field(service, "timeout"),
        retry=service.retry if service.HasField("retry") else None,
        outlier_detection=(
            service.outlier_detection if service.HasField("outlier_detection") else None
        ),
    )


def build_view(
    name: str,
    members: Iterable[Entry],
    route: Mapping[str, int] | None,
    held: Container[str] = frozenset(),
) -> ServiceView:
    """The view of service ``name`` from the entries naming it (``members``:
    every entry whose spec names it, whether it takes traffic or not) and the
    route set for it (SetMeshRoute), if any; the ids in ``held`` keep their
    endpoints while not connected (endpoint_of). The settings come from the
    member spec whose name sorts first, so that two specs of one service
    that disagree give one answer, the same each time."""
    subsets: dict[str, list[MeshEndpoint]] = {}
    weights: dict[str, int] = {}
    settings = ServiceSettings()
    settings_from = ""
    for entry in members:
        service = service_of(entry)
        if service is None or service.name != name:
            continue
        assert entry.spec is not None
        subset = subset_of(entry, service)
        subsets.setdefault(subset, [])
        if service.traffic_weight:
            weights[subset] = service.traffic_weight
        if not settings_from or entry.spec.name < settings_from:
            settings, settings_from = settings_of(entry.spec), entry.spec.name
        found = endpoint_of(entry, held=entry.id in held)
        if found is not None:
            subsets[subset].append(found[1])
    ordered = {
        subset: tuple(sorted(endpoints, key=lambda e: e.container_id))
        for subset, endpoints in sorted(subsets.items())
    }
    if route:
        split, source = dict(route), "route"
    elif weights:
        # A subset whose specs give no weight takes none of the traffic.
        split, source = {s: weights.get(s, 0) for s in ordered}, "specs"
    else:
        split, source = {}, ""
    return ServiceView(name, settings, ordered, split, source)


def route_proto(view: ServiceView) -> mesh_pb2.MeshRoute:
    return mesh_pb2.MeshRoute(service=view.name, weights=view.split, source=view.split_source)


__all__ = [
    "DEFAULT_ENDPOINTS",
    "MESH_ENDPOINT",
    "MeshEndpoint",
    "ServiceSettings",
    "ServiceView",
    "build_view",
    "endpoint_of",
    "route_proto",
    "service_of",
    "settings_of",
    "split_host_port",
    "subset_of",
]
