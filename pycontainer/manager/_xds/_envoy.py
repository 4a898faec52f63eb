"""Per-node resources of Envoy clients: the Envoy beside a container's
program (spec.proxy MESH_PROXY_ENVOY, started by the sidecar).

An Envoy's node id is its container's id. It subscribes to every Listener
and Cluster (wildcard), and is given exactly its own:

- an inbound Listener ``inbound/<container_id>`` on the container's "mesh"
  endpoint (where the sidecar has Envoy listen), forwarding HTTP/2 (gRPC) to
  the program through the STATIC cluster ``inbound/<container_id>`` (the
  program's address: EnvoySettings.program_address, which the sidecar
  advertises as the service's endpoint);
- an outbound Listener ``outbound/<service>`` on each upstream's listen
  address, whose connection manager takes the service's RouteConfiguration
  over RDS (the very route proxyless clients get);
- the Clusters those routes name, in Envoy's flavour (_resources builds the
  proxyless ones; Envoy's add explicit HTTP/2 and take a load-balancing
  policy Envoy implements, and dial endpoints that serve mutual TLS with
  the container's certificate, static secrets of Envoy's bootstrap, where
  proxyless clients take a certificate provider), with the same EDS
  assignments as everyone.

The inbound listener serves mutual TLS when the container has a certificate
(the manager serves mutual TLS: its "mesh" endpoint says tls), plaintext
otherwise; the program behind it, on loopback, speaks plaintext.

Routes and assignments are shared with proxyless clients (None here: the
mesh's own). Not Envoy's: gRPC's ``api_listener`` listeners, which Envoy
would reject.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from ..._meshrules import ENVOY_CA_SECRET, ENVOY_CERTIFICATE_SECRET
from ...security import container
from ...v1 import mesh_pb2, spec_pb2
from .._registry import Entry, Registry
from ._ads import Client, Versioned
from ._model import DEFAULT_ENDPOINTS, MESH_ENDPOINT, ServiceView, split_host_port
from ._resources import (
    CLUSTER,
    LISTENER,
    cluster,
    cluster_names,
    connection_manager,
    pack,
)

_log = logging.getLogger("pycontainer.manager.xds")

#: Envoy's HttpProtocolOptions key in a cluster's typed_extension_protocol_options.
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
#: How long a new connection to an endpoint may take before Envoy gives up on it.
CONNECT_TIMEOUT = duration_pb2.Duration(seconds=1)
#: How long an outbound listener waits for its route before it serves
#: without one (a service no container has declared yet): Envoy's default of
#: 15s would hold its initialisation, and the sidecar's readiness, that long.
ROUTE_FETCH_TIMEOUT = duration_pb2.Duration(seconds=2)

# Envoys of no known container warned about, at most (any client may claim
# any node id: the set stays bounded).
_STRANGERS_LOGGED = 1000

_LB_POLICIES = {
    mesh_pb2.LOAD_BALANCING_POLICY_RING_HASH: cluster_pb2.Cluster.RING_HASH,
    mesh_pb2.LOAD_BALANCING_POLICY_LEAST_REQUEST: cluster_pb2.Cluster.LEAST_REQUEST,
}


def inbound_name(container_id: str) -> str:
    return f"inbound/{container_id}"


def outbound_name(service: str) -> str:
    return f"outbound/{service}"


def _http2(message: cluster_pb2.Cluster) -> None:
    """Explicit HTTP/2 to the cluster's endpoints (gRPC), as Envoy asks."""
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    message.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(pack(options))


def _own_certificate() -> tls_pb2.CommonTlsContext:
    """The certificate and CA the sidecar gave Envoy as static secrets
    (ENVOY_*_SECRET, files), where proxyless clients take the bootstrap's
    certificate provider."""
    return tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[
            secret_pb2.SdsSecretConfig(name=ENVOY_CERTIFICATE_SECRET)
        ],
        validation_context_sds_secret_config=secret_pb2.SdsSecretConfig(name=ENVOY_CA_SECRET),
        alpn_protocols=["h2"],
    )


def upstream_tls() -> base_pb2.TransportSocket:
    """Mutual TLS to the endpoints, with the container's certificate."""
    context = tls_pb2.UpstreamTlsContext(common_tls_context=_own_certificate())
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))


def downstream_tls() -> base_pb2.TransportSocket:
    """Mutual TLS from the mesh's callers: the container's certificate, and
    theirs required (issued by the same CA)."""
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=_own_certificate(),
        require_client_certificate=wrappers_pb2.BoolValue(value=True),
    )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))


def envoy_cluster(name: str, view: ServiceView, *, tls: bool = False) -> cluster_pb2.Cluster:
    """The proxyless cluster (EDS over ADS, outlier detection) in Envoy's
    flavour: HTTP/2, Envoy's own lb_policy with locality weights (the A52
    policy list names wrr_locality, gRPC's alone), and no panic mode: a
    DRAINING endpoint never takes traffic, however few are left."""
    built = cluster(name, view, tls=False)
    built.ClearField("load_balancing_policy")
    policy = view.settings.load_balancing
    built.lb_policy = _LB_POLICIES.get(policy, cluster_pb2.Cluster.ROUND_ROBIN)
    built.common_lb_config.locality_weighted_lb_config.SetInParent()
    built.common_lb_config.healthy_panic_threshold.CopyFrom(percent_pb2.Percent(value=0))
    built.connect_timeout.CopyFrom(CONNECT_TIMEOUT)
    if tls:
        built.transport_socket.CopyFrom(upstream_tls())
    _http2(built)
    return built


def _socket(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host, port_value=port)
    )


def inbound_cluster(container_id: str, host: str, port: int) -> cluster_pb2.Cluster:
    """The program itself, as one STATIC endpoint spoken to in HTTP/2."""
    name = inbound_name(container_id)
    built = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=CONNECT_TIMEOUT,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(address=_socket(host, port))
                        )
                    ]
                )
            ],
        ),
    )
    _http2(built)
    return built


def _listener(
    name: str,
    host: str,
    port: int,
    manager: hcm_pb2.HttpConnectionManager,
    transport_socket: base_pb2.TransportSocket | None = None,
) -> listener_pb2.Listener:
    listener = listener_pb2.Listener(
        name=name,
        address=_socket(host, port),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=pack(manager),
                    )
                ]
            )
        ],
    )
    if transport_socket is not None:
        listener.filter_chains[0].transport_socket.CopyFrom(transport_socket)
    return listener


def inbound_listener(
    container_id: str, host: str, port: int, *, tls: bool = False
) -> listener_pb2.Listener:
    """The service's traffic from the mesh, to the program (its route inline:
    one cluster, nothing to discover); with ``tls``, mutual TLS (the
    container has a certificate: its "mesh" endpoint says so)."""
    name = inbound_name(container_id)
    manager = connection_manager(name, "inbound")
    manager.ClearField("rds")
    manager.route_config.CopyFrom(
        route_pb2.RouteConfiguration(
            name=name,
            virtual_hosts=[
                route_components_pb2.VirtualHost(
                    name=name,
                    domains=["*"],
                    routes=[
                        route_components_pb2.Route(
                            match=route_components_pb2.RouteMatch(prefix="/"),
                            # No timeout of Envoy's own: the caller's deadline
                            # rules (a streaming call may last).
                            route=route_components_pb2.RouteAction(
                                cluster=name, timeout=duration_pb2.Duration()
                            ),
                        )
                    ],
                )
            ],
        )
    )
    return _listener(name, host, port, manager, downstream_tls() if tls else None)


def outbound_listener(service: str, host: str, port: int) -> listener_pb2.Listener:
    """The program's calls to ``service``, routed as proxyless clients' are."""
    manager = connection_manager(service, f"outbound_{service}")
    manager.rds.config_source.initial_fetch_timeout.CopyFrom(ROUTE_FETCH_TIMEOUT)
    return _listener(outbound_name(service), host, port, manager)


def _versioned(messages: Mapping[str, Message]) -> dict[str, Versioned]:
    out: dict[str, Versioned] = {}
    for name, message in messages.items():
        packed = pack(message)
        out[name] = (hash(packed.value), packed)
    return out


def program_endpoint(entry: Entry) -> tuple[str, int] | None:
    """Where ``entry``'s program serves: the endpoint its service names (or
    "grpc", "management"), never Envoy's own "mesh" one."""
    by_name = {e.name: e for e in entry.identity.endpoints}
    service = entry.spec.service.endpoint if entry.spec is not None else ""
    for name in (service,) if service else DEFAULT_ENDPOINTS:
        endpoint = by_name.get(name)
        if endpoint is not None:
            return split_host_port(endpoint.address)
    return None


def mesh_endpoint(entry: Entry) -> tuple[str, int, bool] | None:
    """(host, port, served with mutual TLS) of Envoy's inbound listener, as
    the sidecar advertised it."""
    for endpoint in entry.identity.endpoints:
        if endpoint.name == MESH_ENDPOINT:
            found = split_host_port(endpoint.address)
            return None if found is None else (*found, endpoint.tls)
    return None


def proxied_by_envoy(entry: Entry) -> bool:
    return entry.spec is not None and entry.spec.proxy == mesh_pb2.MESH_PROXY_ENVOY


class EnvoyResources:
    """The mesh's NodeResources: what each Envoy client is to have of its
    own (listeners and clusters), from its container's entry and spec and
    the views of the services it calls."""

    def __init__(
        self,
        registry: Registry,
        views: Callable[[], Mapping[str, ServiceView]],
        changed: Callable[[frozenset[str]], None],
    ) -> None:
        self._registry = registry
        self._views = views
        self._changed = changed
        # Envoys told already that they are no container's (logged once).
        self._strangers: set[str] = set()
        previous = registry.serving_changed

        def serving_changed(entry: Entry) -> None:
            previous(entry)
            if proxied_by_envoy(entry):
                # Its listeners follow its endpoints and spec.
                self._changed(frozenset({LISTENER, CLUSTER}))

        registry.serving_changed = serving_changed

    def resources(self, client: Client, type_url: str) -> Mapping[str, Versioned] | None:
        if client.kind != "envoy" or type_url not in (LISTENER, CLUSTER):
            return None  # proxyless clients, and what all share
        container_id = client.metadata.get("pycontainer.container_id") or client.node_id
        entry = self._registry.get(container_id)
        if entry is not None and client.identity and client.identity != str(container(entry.id)):
            # Over mutual TLS, an Envoy is the container its certificate names.
            self._warn_once(
                client,
                f"Envoy {client.node_id} presents the certificate of {client.identity}, not "
                f"of container {entry.id}: it is given no listeners or clusters",
            )
            return {}
        if entry is None or not proxied_by_envoy(entry):
            self._warn_once(
                client,
                f"Envoy {client.node_id} is no container with proxy: envoy this manager "
                "knows: it is given no listeners or clusters (its node.id must be its "
                "container's id)",
            )
            return {}
        assert entry.spec is not None
        if type_url == LISTENER:
            return _versioned(self._listeners(entry))
        return _versioned(self._clusters(entry))

    def _warn_once(self, client: Client, message: str) -> None:
        if client.node_id not in self._strangers and len(self._strangers) < _STRANGERS_LOGGED:
            self._strangers.add(client.node_id)
            _log.warning("%s", message)

    def _listeners(self, entry: Entry) -> dict[str, Message]:
        out: dict[str, Message] = {}
        inbound = self._inbound(entry)
        if inbound is not None:
            (host, port, tls), _ = inbound
            out[inbound_name(entry.id)] = inbound_listener(entry.id, host, port, tls=tls)
        for upstream in _upstreams(entry):
            listen = split_host_port(upstream.listen)
            if listen is None or listen[1] == 0:
                continue  # the sidecar refuses these before Envoy starts
            out[outbound_name(upstream.service)] = outbound_listener(upstream.service, *listen)
        return out

    def _clusters(self, entry: Entry) -> dict[str, Message]:
        out: dict[str, Message] = {}
        inbound = self._inbound(entry)
        if inbound is not None:
            _, (host, port) = inbound
            out[inbound_name(entry.id)] = inbound_cluster(entry.id, host, port)
        views = self._views()
        for upstream in _upstreams(entry):
            view = views.get(upstream.service)
            if view is None:
                continue  # no container serves it yet: its route names nothing yet either
            for name, endpoints in cluster_names(view).items():
                out[name] = envoy_cluster(name, view, tls=any(e.tls for e in endpoints))
        return out

    def _inbound(self, entry: Entry) -> tuple[tuple[str, int, bool], tuple[str, int]] | None:
        """(Envoy's inbound address, the program's) when both are advertised."""
        listen, program = mesh_endpoint(entry), program_endpoint(entry)
        if listen is None or program is None:
            return None
        return listen, program


def _upstreams(entry: Entry) -> list[mesh_pb2.MeshUpstream]:
    spec = entry.spec if entry.spec is not None else spec_pb2.ContainerSpec()
    return sorted(spec.envoy.upstreams, key=lambda u: u.service)


__all__ = [
    "MESH_ENDPOINT",
    "EnvoyResources",
    "envoy_cluster",
    "inbound_cluster",
    "inbound_listener",
    "inbound_name",
    "outbound_listener",
    "outbound_name",
]
