"""xDS resources of the mesh for proxyless gRPC clients (gRFC A27 and on).

Each service NAME becomes a Listener NAME (the target of ``xds:///NAME``;
its HttpConnectionManager sits in ``api_listener``, its filters end with
the router), a RouteConfiguration NAME, a Cluster NAME (EDS over ADS) and a
ClusterLoadAssignment NAME; a service split between subsets also has a
Cluster and an assignment ``NAME/SUBSET`` for each, the route weighing them.

What grpcio's client needs, or silently drops: the Listener named exactly as
the target, the router last, the cluster's EDS config source ``ads``, and
every locality with a non-zero ``load_balancing_weight`` (without it the
locality is dropped and calls fail with "contains no localities", no NACK).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    extension_pb2,
    health_check_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.load_balancing_policies.wrr_locality.v3 import wrr_locality_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from ..._meshrules import (
    DEFAULT_FAILURE_PERCENTAGE_THRESHOLD,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_EJECTION_PERCENT,
    DEFAULT_REQUEST_VOLUME,
    DEFAULT_RETRY_INITIAL_BACKOFF,
)
from ...units import duration_to_proto
from ...v1 import mesh_pb2
from ._model import MeshEndpoint, ServiceView

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
#: The order a change is pushed in, so that nothing refers to what a client
#: has not been sent yet (clusters before their endpoints, listeners before
#: their routes), as Envoy's xDS docs ask ("eventual consistency").
TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
#: Types whose every response is the whole set (a name missing is deleted);
#: in the others, a response carries only what changed.
STATE_OF_THE_WORLD = frozenset({LISTENER, CLUSTER})

#: The certificate provider instance of the bootstraps pycontainer writes
#: (pycontainer.client.mesh): the container's own certificate and the CA.
CERTIFICATE_PROVIDER = "pycontainer"

_DEFAULT_RETRY_ON = "unavailable"

# Resources as a client gets them: name -> the packed resource.
Resources = dict[str, any_pb2.Any]


@dataclass(frozen=True)
class Built:
    """One service's resources, by type."""

    by_type: Mapping[str, Resources]


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def _router() -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(
        name="envoy.filters.http.router", typed_config=pack(router_pb2.Router())
    )


def connection_manager(route_name: str, stat_prefix: str) -> hcm_pb2.HttpConnectionManager:
    """An HTTP connection manager taking route ``route_name`` over ADS."""
    return hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=_ads_source(), route_config_name=route_name),
        http_filters=[_router()],
    )


def api_listener(name: str) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=name,
        api_listener=api_listener_pb2.ApiListener(
            api_listener=pack(connection_manager(name, name))
        ),
    )


def cluster_names(view: ServiceView) -> dict[str, tuple[MeshEndpoint, ...]]:
    """The clusters of a service: one for all its endpoints, and one per
    subset when its traffic is split."""
    clusters = {view.name: view.endpoints}
    if view.split:
        for subset in view.split:
            clusters[f"{view.name}/{subset}"] = view.subsets.get(subset, ())
    return clusters


def _retry(policy: mesh_pb2.MeshRetryPolicy) -> route_components_pb2.RetryPolicy:
    initial = duration_to_proto_or(policy, "initial_backoff") or duration_to_proto(
        DEFAULT_RETRY_INITIAL_BACKOFF
    )
    backoff = route_components_pb2.RetryPolicy.RetryBackOff(base_interval=initial)
    if policy.HasField("max_backoff"):
        backoff.max_interval.CopyFrom(policy.max_backoff)
    attempts = policy.max_attempts or DEFAULT_MAX_ATTEMPTS
    return route_components_pb2.RetryPolicy(
        retry_on=",".join(policy.retry_on) or _DEFAULT_RETRY_ON,
        num_retries=wrappers_pb2.UInt32Value(value=attempts - 1),
        retry_back_off=backoff,
    )


def duration_to_proto_or(message: Message, name: str) -> duration_pb2.Duration | None:
    if not message.HasField(name):
        return None
    value = getattr(message, name)
    assert isinstance(value, duration_pb2.Duration)
    return value


def route_configuration(view: ServiceView) -> route_pb2.RouteConfiguration:
    action = route_components_pb2.RouteAction()
    live = {subset: weight for subset, weight in view.split.items() if weight > 0}
    if live:
        action.weighted_clusters.CopyFrom(
            route_components_pb2.WeightedCluster(
                clusters=[
                    route_components_pb2.WeightedCluster.ClusterWeight(
                        name=f"{view.name}/{subset}", weight=wrappers_pb2.UInt32Value(value=weight)
                    )
                    for subset, weight in sorted(live.items())
                ]
            )
        )
    else:
        action.cluster = view.name
    settings = view.settings
    if settings.timeout is not None:
        action.max_stream_duration.max_stream_duration.CopyFrom(duration_to_proto(settings.timeout))
    if settings.retry is not None:
        action.retry_policy.CopyFrom(_retry(settings.retry))
    if settings.load_balancing == mesh_pb2.LOAD_BALANCING_POLICY_RING_HASH and settings.hash_header:
        action.hash_policy.append(
            route_components_pb2.RouteAction.HashPolicy(
                header=route_components_pb2.RouteAction.HashPolicy.Header(
                    header_name=settings.hash_header
                )
            )
        )
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix=""), route=action
    )
    return route_pb2.RouteConfiguration(
        name=view.name,
        virtual_hosts=[
            route_components_pb2.VirtualHost(name=view.name, domains=["*"], routes=[route])
        ],
    )


def _policy(message: Message) -> cluster_pb2.LoadBalancingPolicy.Policy:
    name = (
        "envoy.load_balancing_policies."
        + {
            round_robin_pb2.RoundRobin: "round_robin",
            ring_hash_pb2.RingHash: "ring_hash",
            least_request_pb2.LeastRequest: "least_request",
        }[type(message)]
    )
    return cluster_pb2.LoadBalancingPolicy.Policy(
        typed_extension_config=extension_pb2.TypedExtensionConfig(
            name=name, typed_config=pack(message)
        )
    )


def load_balancing_policy(
    policy: mesh_pb2.LoadBalancingPolicy.ValueType,
) -> cluster_pb2.LoadBalancingPolicy:
    """The cluster's load_balancing_policy (gRFC A52): a list a client takes
    the first it supports of. Round robin and least request go under
    wrr_locality, which weighs localities by their load_balancing_weight;
    least request lists round robin after it for grpcio, which rejects it."""
    if policy == mesh_pb2.LOAD_BALANCING_POLICY_RING_HASH:
        return cluster_pb2.LoadBalancingPolicy(policies=[_policy(ring_hash_pb2.RingHash())])
    children = [_policy(round_robin_pb2.RoundRobin())]
    if policy == mesh_pb2.LOAD_BALANCING_POLICY_LEAST_REQUEST:
        children.insert(0, _policy(least_request_pb2.LeastRequest()))
    return cluster_pb2.LoadBalancingPolicy(
        policies=[
            cluster_pb2.LoadBalancingPolicy.Policy(
                typed_extension_config=extension_pb2.TypedExtensionConfig(
                    name="envoy.load_balancing_policies.wrr_locality",
                    typed_config=pack(
                        wrr_locality_pb2.WrrLocality(
                            endpoint_picking_policy=cluster_pb2.LoadBalancingPolicy(
                                policies=[child]
                            )
                        )
                    ),
                )
            )
            for child in children
        ]
    )


def _outlier(policy: mesh_pb2.MeshOutlierDetection) -> outlier_detection_pb2.OutlierDetection:
    detection = outlier_detection_pb2.OutlierDetection(
        max_ejection_percent=wrappers_pb2.UInt32Value(
            value=policy.max_ejection_percent or DEFAULT_MAX_EJECTION_PERCENT
        ),
        failure_percentage_threshold=wrappers_pb2.UInt32Value(
            value=policy.failure_percentage_threshold or DEFAULT_FAILURE_PERCENTAGE_THRESHOLD
        ),
        failure_percentage_request_volume=wrappers_pb2.UInt32Value(
            value=policy.request_volume or DEFAULT_REQUEST_VOLUME
        ),
        # Judged by failure percentage alone (gRFC A50): success-rate
        # ejection, on by default, is turned off, and a service of two
        # replicas is judged too (the default minimum is 5 hosts).
        enforcing_failure_percentage=wrappers_pb2.UInt32Value(value=100),
        enforcing_success_rate=wrappers_pb2.UInt32Value(value=0),
        failure_percentage_minimum_hosts=wrappers_pb2.UInt32Value(value=2),
        # Envoy's own consecutive-failure ejections are off too: one rule.
        enforcing_consecutive_5xx=wrappers_pb2.UInt32Value(value=0),
        enforcing_consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=0),
    )
    for name in ("interval", "base_ejection_time"):
        value = duration_to_proto_or(policy, name)
        if value is not None:
            getattr(detection, name).CopyFrom(value)
    return detection


def upstream_tls() -> base_pb2.TransportSocket:
    """Mutual TLS to the endpoints with the bootstrap's certificate provider
    (gRFC A29): the client's certificate, and the CA that signed the
    containers'. Proxyless clients only (Envoy takes files, _envoy)."""
    instance = common_pb2.CertificateProviderPluginInstance(instance_name=CERTIFICATE_PROVIDER)
    context = tls_pb2.UpstreamTlsContext(
        common_tls_context=common_pb2.CommonTlsContext(
            tls_certificate_provider_instance=instance,
            validation_context=common_pb2.CertificateValidationContext(
                ca_certificate_provider_instance=instance
            ),
        )
    )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))


def cluster(name: str, view: ServiceView, *, tls: bool) -> cluster_pb2.Cluster:
    built = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=_ads_source(), service_name=name
        ),
        load_balancing_policy=load_balancing_policy(view.settings.load_balancing),
    )
    if view.settings.outlier_detection is not None:
        built.outlier_detection.CopyFrom(_outlier(view.settings.outlier_detection))
    if tls:
        built.transport_socket.CopyFrom(upstream_tls())
    return built


def load_assignment(
    name: str, endpoints: tuple[MeshEndpoint, ...]
) -> endpoint_pb2.ClusterLoadAssignment:
    """The endpoints of cluster ``name``, grouped by zone; a draining one is
    DRAINING (not DEGRADED: Envoy still spills traffic to degraded hosts)."""
    zones: dict[str, list[MeshEndpoint]] = {}
    for endpoint in endpoints:
        zones.setdefault(endpoint.zone, []).append(endpoint)
    localities = []
    for zone, members in sorted(zones.items()):
        serving = sum(e.weight for e in members if not e.draining)
        localities.append(
            endpoint_components_pb2.LocalityLbEndpoints(
                locality=base_pb2.Locality(zone=zone),
                # Never 0: grpcio drops a locality without a weight. A zone
                # whose every endpoint drains keeps 1, and takes nothing.
                load_balancing_weight=wrappers_pb2.UInt32Value(value=max(serving, 1)),
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=address_pb2.Address(
                                socket_address=address_pb2.SocketAddress(
                                    address=e.host, port_value=e.port
                                )
                            )
                        ),
                        health_status=(
                            health_check_pb2.DRAINING if e.draining else health_check_pb2.HEALTHY
                        ),
                        load_balancing_weight=wrappers_pb2.UInt32Value(value=e.weight),
                    )
                    for e in members
                ],
            )
        )
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=localities)


def build(view: ServiceView) -> Built:
    """Every resource of one service, for proxyless clients."""
    clusters: Resources = {}
    assignments: Resources = {}
    for name, endpoints in cluster_names(view).items():
        tls = any(e.tls for e in endpoints)
        clusters[name] = pack(cluster(name, view, tls=tls))
        assignments[name] = pack(load_assignment(name, endpoints))
    return Built(
        {
            LISTENER: {view.name: pack(api_listener(view.name))},
            ROUTE: {view.name: pack(route_configuration(view))},
            CLUSTER: clusters,
            ENDPOINT: assignments,
        }
    )


__all__ = [
    "CERTIFICATE_PROVIDER",
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "STATE_OF_THE_WORLD",
    "TYPES",
    "Built",
    "Resources",
    "api_listener",
    "build",
    "cluster",
    "cluster_names",
    "connection_manager",
    "load_assignment",
    "load_balancing_policy",
    "pack",
    "route_configuration",
    "upstream_tls",
]
