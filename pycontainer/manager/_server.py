"""The manager's grpc.aio server: Lifecycle, Manager, health and reflection.

A sync server would spend one thread per live stream; the manager holds one
Lifecycle stream per container, so it is asyncio. Unary operator calls are
traced with opentelemetry-instrumentation-grpc's aio interceptor; streams are
left out of it (its stream handling has open bugs) and the Lifecycle session
carries trace context inside each command instead. The project's own server
interceptor (pycontainer.agent's, as containers use it) counts every call and
turns a RequestError into its rich status (pycontainer._errors).

It binds its port alone (_exclusive), serves grpc.health.v1 in the model
containers serve (ManagerHealth: "", "liveness", "readiness"; Check, Watch and
List), and StreamLogs from wherever a container's logs are (_logstreams).
"""

from __future__ import annotations

import asyncio
import datetime
import platform
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from .. import _reflection
from .._errors import RequestError, abort, code_number, echo, invalid_argument
from ..agent._health import LIVENESS, OVERALL, READINESS, AioHealthServicer, health_handlers
from ..agent._observe import AioServerInterceptor, Observer
from ..agent._serve import EXCLUSIVE_PORT
from ..limits import MAX_LIFECYCLE_MESSAGE_BYTES
from ..security import Denial, Identity, Role, peer_identity, required_role
from ..spec import MAX_GRACE_PERIOD
from ..units import duration_field, format_duration
from ..v1 import (
    bootstrap_pb2_grpc,
    lifecycle_pb2,
    lifecycle_pb2_grpc,
    management_pb2,
    manager_pb2,
    manager_pb2_grpc,
)
from . import _metricsrelay as metricsrelay
from ._admin import ADMIN_SERVICES, add_admin_services
from ._bootstrap import JoinServicer
from ._certificates import issue_certificate
from ._liveness import with_keepalive
from ._logstreams import LogStreams
from ._logstreams import Response as LogsResponse
from ._logstreams import serialize_response as serialize_logs_response
from ._operations import REQUEST_ID_METADATA, bounded_target, check_request_id, new_request_id
from ._registry import Entry
from ._validation import check_message, check_replicas, check_spec
from ._xds import ADS_SERVICE

if TYPE_CHECKING:
    from ._manager import Manager

    # What the generated servicers' _ServicerContext is (grpc-stubs makes it generic).
    Context = grpc.aio.ServicerContext[Any, Any]

T = TypeVar("T")
R = TypeVar("R")
Resp = TypeVar("Resp", bound=Message)

SERVER_OPTIONS = (
    # One server per port (grpc-core shares a port by default; _exclusive).
    EXCLUSIVE_PORT,
    # A burst of new streams (every container reconnecting to a restarted
    # manager) must queue, not fail with "Internal error from Core".
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 40_000),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_concurrent_streams", 100_000),
    # A connection without a call for a minute is closed (clients dial again
    # on their next call): a container's channel closed while grpc-core was
    # between connection attempts still connects once the manager is back
    # (with a local subchannel pool, as the connector's), and would hold an
    # idle connection here for good: a restart with 1,000 containers left
    # ~600 of them.
    ("grpc.max_connection_idle_ms", 60_000),
    # A checkpoint (or a restore's state) travels in one Lifecycle message:
    # gRPC's default 4 MiB receive limit would end the session on any bigger
    # one, again at each resend. Sized from the checkpoint limit, as the
    # containers' channels are (pycontainer.limits).
    ("grpc.max_receive_message_length", MAX_LIFECYCLE_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_LIFECYCLE_MESSAGE_BYTES),
    # grpc-core cancels a call that waits in its queue for the application
    # longer than this (30 s by default): in a storm of 20,000 sessions
    # dialling back, or of operator calls during one, those still queued at
    # 30 s failed CANCELLED. Calls carry their own deadlines: wait for the
    # application as long as they allow (an hour here, seconds in the arg).
    ("grpc.server_max_unrequested_time_in_server", 3600),
)


def _grace(request: Message) -> datetime.timedelta | None:
    """A request's grace_period: None when unset (the container's own), a set
    zero is zero (kill at once); INVALID_ARGUMENT outside 0..MAX_GRACE_PERIOD."""
    check_message(request, "")  # a Duration past timedelta's range, too
    grace = duration_field(request, "grace_period")
    if grace is None:
        return None
    bound = format_duration(MAX_GRACE_PERIOD)
    if grace < datetime.timedelta(0):
        raise invalid_argument(
            "grace_period", f"must be 0 or more (at most {bound}), got {format_duration(grace)}"
        )
    if grace > MAX_GRACE_PERIOD:
        raise invalid_argument(
            "grace_period", f"must be at most {bound}, got {format_duration(grace)}"
        )
    return grace


class LifecycleServicer(lifecycle_pb2_grpc.LifecycleServicer):
    """Containers dial in here."""

    def __init__(self, manager: Manager) -> None:
        self._m = manager

    async def Connect(
        self,
        request_iterator: AsyncIterator[lifecycle_pb2.ConnectRequest],
        context: Context,
    ) -> AsyncIterator[lifecycle_pb2.ConnectResponse]:
        # A bidirectional stream: the interceptor leaves it alone. A container
        # registers only as the identity its certificate names (_trust).
        try:
            checked = self._m.trust.checked_session(request_iterator, context)
            async for response in self._m.connect(checked):
                yield response
        except RequestError as exc:
            await abort(context, exc)


class ManagerServicer(manager_pb2_grpc.ManagerServicer):
    """The operator API."""

    def __init__(self, manager: Manager) -> None:
        self._m = manager
        self._logs = LogStreams(manager, manager.logs)

    def _audit(
        self, context: Context, verb: str, target: str, detail: str = "", request_id: str = ""
    ) -> str:
        """The audit trail: every mutating call is an event naming its caller
        (the peer's certificate identity), before the manager acts on it; the actor."""
        identity = peer_identity(context)
        actor = identity.uri if identity is not None else f"anonymous (insecure) {context.peer()}"
        words = f"{verb} {echo(target)}" + (f" ({detail})" if detail else "")
        self._m.events.publish(
            manager_pb2.EVENT_TYPE_REQUESTED,
            "",
            target,
            f"{words} by {actor}",
            actor=actor,
            request_id=request_id,
        )
        return actor

    async def _operate(
        self,
        context: Context,
        verb: str,
        request: Any,
        target: str,
        action: Callable[[], Awaitable[Resp]],
        response_type: type[Resp],
        detail: str = "",
    ) -> Resp:
        """A mutating call as an operation (_operations): audited, run once per
        request_id (the manager's own when none is given, returned in the
        trailing metadata), its outcome kept for GetOperation."""
        request_id = request.request_id
        if request_id:
            check_request_id(request_id)
        else:
            request_id = new_request_id()
        context.set_trailing_metadata(((REQUEST_ID_METADATA, request_id),))
        target = bounded_target(target)
        actor = self._audit(context, verb, target, detail, request_id)
        return await self._m.operations.run(
            request_id=request_id,
            method=verb,
            request=request,
            target=target,
            actor=actor,
            action=action,
            response_type=response_type,
        )

    async def ListContainers(
        self, request: manager_pb2.ListContainersRequest, context: Context
    ) -> manager_pb2.ListContainersResponse:
        check_message(request, "")  # states: LifecycleStates only
        entries = self._m.select(request.label_selector, request.states)
        return manager_pb2.ListContainersResponse(containers=[e.to_proto() for e in entries])

    async def GetContainer(
        self, request: manager_pb2.GetContainerRequest, context: Context
    ) -> manager_pb2.GetContainerResponse:
        return manager_pb2.GetContainerResponse(
            container=self._m.resolve(request.container).to_proto()
        )

    async def WatchEvents(
        self, request: manager_pb2.WatchEventsRequest, context: Context
    ) -> AsyncIterator[manager_pb2.WatchEventsResponse]:
        only = request.container
        # A caller that goes while a message is being written (the history,
        # written as fast as it is read) costs that write's batch and message
        # in the C heap, some 250 bytes: grpc.aio drops a cancelled call's
        # pending write without freeing it (grpc/grpc#43360, no way around it
        # here). An idle watch ends for free.
        async for event in self._m.events.subscribe(
            request.include_history or request.history_only, request.history_only
        ):
            if only and only not in (event.container_id, event.container_name):
                continue
            yield manager_pb2.WatchEventsResponse(event=event)

    async def RunContainer(
        self, request: manager_pb2.RunContainerRequest, context: Context
    ) -> manager_pb2.RunContainerResponse:
        async def run() -> manager_pb2.RunContainerResponse:
            check_spec(request.spec, "spec")
            entries = await self._m.run(request.spec)
            return manager_pb2.RunContainerResponse(containers=[e.to_proto() for e in entries])

        return await self._operate(
            context,
            "RunContainer",
            request,
            request.spec.name,
            run,
            manager_pb2.RunContainerResponse,
        )

    async def StopContainer(
        self, request: manager_pb2.StopContainerRequest, context: Context
    ) -> manager_pb2.StopContainerResponse:
        async def stop() -> manager_pb2.StopContainerResponse:
            grace = _grace(request)
            stopped = await self._m.stop_container(request.container, grace, request.message)
            return manager_pb2.StopContainerResponse(
                container=stopped.entry.to_proto(), killed=stopped.killed
            )

        return await self._operate(
            context,
            "StopContainer",
            request,
            request.container,
            stop,
            manager_pb2.StopContainerResponse,
        )

    async def StopContainers(
        self, request: manager_pb2.StopContainersRequest, context: Context
    ) -> manager_pb2.StopContainersResponse:
        async def stop() -> manager_pb2.StopContainersResponse:
            grace = _grace(request)
            outcomes = await self._m.stop_containers(
                request.label_selector, request.all, grace, request.message
            )
            response = manager_pb2.StopContainersResponse()
            for entry, outcome in outcomes:
                result = response.results.add(container=entry.to_proto())
                if isinstance(outcome, RequestError):
                    result.status.code = code_number(outcome.code)
                    result.status.message = outcome.message
                else:
                    result.killed = outcome.killed
            return response

        return await self._operate(
            context,
            "StopContainers",
            request,
            "all" if request.all else request.label_selector,
            stop,
            manager_pb2.StopContainersResponse,
        )

    async def PauseContainer(
        self, request: manager_pb2.PauseContainerRequest, context: Context
    ) -> manager_pb2.PauseContainerResponse:
        async def pause() -> manager_pb2.PauseContainerResponse:
            entry = await self._m.simple(request.container, "pause")
            return manager_pb2.PauseContainerResponse(container=entry.to_proto())

        return await self._operate(
            context,
            "PauseContainer",
            request,
            request.container,
            pause,
            manager_pb2.PauseContainerResponse,
        )

    async def ResumeContainer(
        self, request: manager_pb2.ResumeContainerRequest, context: Context
    ) -> manager_pb2.ResumeContainerResponse:
        async def resume() -> manager_pb2.ResumeContainerResponse:
            entry = await self._m.simple(request.container, "resume")
            return manager_pb2.ResumeContainerResponse(container=entry.to_proto())

        return await self._operate(
            context,
            "ResumeContainer",
            request,
            request.container,
            resume,
            manager_pb2.ResumeContainerResponse,
        )

    async def CheckpointContainer(
        self, request: manager_pb2.CheckpointContainerRequest, context: Context
    ) -> manager_pb2.CheckpointContainerResponse:
        return await self._operate(
            context,
            "CheckpointContainer",
            request,
            request.container,
            lambda: self._m.checkpoint(request.container),
            manager_pb2.CheckpointContainerResponse,
        )

    async def RestoreContainer(
        self, request: manager_pb2.RestoreContainerRequest, context: Context
    ) -> manager_pb2.RestoreContainerResponse:
        async def restore() -> manager_pb2.RestoreContainerResponse:
            entry = await self._m.restore(request.container, request.checkpoint_id)
            return manager_pb2.RestoreContainerResponse(container=entry.to_proto())

        return await self._operate(
            context,
            "RestoreContainer",
            request,
            request.container,
            restore,
            manager_pb2.RestoreContainerResponse,
        )

    async def EvictContainer(
        self, request: manager_pb2.EvictContainerRequest, context: Context
    ) -> manager_pb2.EvictContainerResponse:
        async def evict() -> manager_pb2.EvictContainerResponse:
            entry = self._m.resolve(request.container)
            why = request.message or "evicted by an operator"
            await self._m.evict(entry, _grace(request), why)
            return manager_pb2.EvictContainerResponse(container=entry.to_proto())

        return await self._operate(
            context,
            "EvictContainer",
            request,
            request.container,
            evict,
            manager_pb2.EvictContainerResponse,
        )

    async def ScaleContainer(
        self, request: manager_pb2.ScaleContainerRequest, context: Context
    ) -> manager_pb2.ScaleContainerResponse:
        async def scale() -> manager_pb2.ScaleContainerResponse:
            check_replicas(request.replicas, "replicas")
            entries = await self._m.scale(request.container, request.replicas)
            return manager_pb2.ScaleContainerResponse(containers=[e.to_proto() for e in entries])

        return await self._operate(
            context,
            "ScaleContainer",
            request,
            request.container,
            scale,
            manager_pb2.ScaleContainerResponse,
        )

    def _targets(self, names: Iterable[str], selector: str) -> list[Entry]:
        if names:
            return [self._m.resolve(n) for n in names]
        return [e for e in self._m.select(selector, []) if e.connected]

    # Bytes too (a container's batches passed through): see build_server.
    async def StreamLogs(  # type: ignore[override]
        self, request: manager_pb2.ManagerStreamLogsRequest, context: Context
    ) -> AsyncIterator[LogsResponse]:
        check_message(request, "")
        async for response in self._logs.stream(request):
            yield response

    async def WatchMetrics(  # type: ignore[override]  # bytes: served by build_server's handler
        self, request: manager_pb2.ManagerWatchMetricsRequest, context: Context
    ) -> AsyncIterator[bytes]:
        """Serialized ManagerWatchMetricsResponses, relayed as the containers
        sent them (_metricsrelay; served with a serializer that passes bytes)."""
        check_message(request, "")  # an interval a timedelta holds
        upstream = management_pb2.WatchMetricsRequest(metric_filters=request.metric_filters)
        if request.HasField("interval"):
            upstream.interval.CopyFrom(request.interval)
        targets = self._targets(request.containers, request.label_selector)
        async for item in metricsrelay.relay(self._m.trust.container_channel, targets, upstream):
            yield item

    async def ApplySpecs(
        self, request: manager_pb2.ApplySpecsRequest, context: Context
    ) -> manager_pb2.ApplySpecsResponse:
        async def apply() -> manager_pb2.ApplySpecsResponse:
            for index, spec in enumerate(request.specs):
                check_spec(spec, f"specs[{index}]")
            return await self._m.apply(request)

        if request.dry_run:  # changes nothing: not an operation (request_id is ignored)
            return await apply()
        names = ", ".join(spec.name for spec in request.specs)
        return await self._operate(
            context,
            "ApplySpecs",
            request,
            names,
            apply,
            manager_pb2.ApplySpecsResponse,
            f"owner {request.owner or 'default'}",
        )

    async def CreateBootstrapToken(
        self, request: manager_pb2.CreateBootstrapTokenRequest, context: Context
    ) -> manager_pb2.CreateBootstrapTokenResponse:
        target = request.container_id or "any container"
        self._audit(context, "CreateBootstrapToken", target, f"uses {request.uses or 1}")
        return await self._m.bootstrap.create(request)

    async def ListBootstrapTokens(
        self, request: manager_pb2.ListBootstrapTokensRequest, context: Context
    ) -> manager_pb2.ListBootstrapTokensResponse:
        return await self._m.bootstrap.list()

    async def RevokeBootstrapToken(
        self, request: manager_pb2.RevokeBootstrapTokenRequest, context: Context
    ) -> manager_pb2.RevokeBootstrapTokenResponse:
        self._audit(context, "RevokeBootstrapToken", request.token_id)
        return await self._m.bootstrap.revoke(request.token_id)

    async def GetVersion(
        self, request: manager_pb2.GetVersionRequest, context: Context
    ) -> manager_pb2.GetVersionResponse:
        return version_response()

    async def GetMeshStatus(
        self, request: manager_pb2.GetMeshStatusRequest, context: Context
    ) -> manager_pb2.GetMeshStatusResponse:
        return self._m.mesh.status(request.service)

    async def SetMeshRoute(
        self, request: manager_pb2.SetMeshRouteRequest, context: Context
    ) -> manager_pb2.SetMeshRouteResponse:
        weights = dict(request.weights)
        detail = " ".join(f"{k}={v}" for k, v in sorted(weights.items())) or "no split"
        self._audit(context, "SetMeshRoute", request.service, detail)
        route = await self._m.set_mesh_route(request.service, weights)
        return manager_pb2.SetMeshRouteResponse(route=route)

    async def RestartContainer(
        self, request: manager_pb2.RestartContainerRequest, context: Context
    ) -> manager_pb2.RestartContainerResponse:
        async def restart() -> manager_pb2.RestartContainerResponse:
            entry = await self._m.restart_container(request.container, _grace(request))
            return manager_pb2.RestartContainerResponse(container=entry.to_proto())

        return await self._operate(
            context,
            "RestartContainer",
            request,
            request.container,
            restart,
            manager_pb2.RestartContainerResponse,
        )

    async def KillContainer(
        self, request: manager_pb2.KillContainerRequest, context: Context
    ) -> manager_pb2.KillContainerResponse:
        async def kill() -> manager_pb2.KillContainerResponse:
            entry = await self._m.kill_container(request.container, request.signal)
            return manager_pb2.KillContainerResponse(container=entry.to_proto())

        return await self._operate(
            context,
            "KillContainer",
            request,
            request.container,
            kill,
            manager_pb2.KillContainerResponse,
        )

    async def DeleteContainer(
        self, request: manager_pb2.DeleteContainerRequest, context: Context
    ) -> manager_pb2.DeleteContainerResponse:
        async def delete() -> manager_pb2.DeleteContainerResponse:
            entry = await self._m.delete_container(request.container, purge=request.purge)
            return manager_pb2.DeleteContainerResponse(container=entry.to_proto())

        return await self._operate(
            context,
            "DeleteContainer",
            request,
            request.container,
            delete,
            manager_pb2.DeleteContainerResponse,
        )

    async def GetOperation(
        self, request: manager_pb2.GetOperationRequest, context: Context
    ) -> manager_pb2.GetOperationResponse:
        if not request.request_id:
            raise invalid_argument("request_id", "give the request_id of a mutating call")
        check_request_id(request.request_id)
        return manager_pb2.GetOperationResponse(
            operation=await self._m.operations.get(request.request_id)
        )

    async def ListOperations(
        self, request: manager_pb2.ListOperationsRequest, context: Context
    ) -> manager_pb2.ListOperationsResponse:
        return manager_pb2.ListOperationsResponse(
            operations=self._m.operations.list(request.container, request.page_size)
        )

    async def IssueCertificate(
        self, request: manager_pb2.IssueCertificateRequest, context: Context
    ) -> manager_pb2.IssueCertificateResponse:
        # An operation as every mutating call: on the record before it is
        # checked, naming the identity asked for and who asked, never the CSR.
        ttl = duration_field(request, "ttl")
        detail = f"ttl {format_duration(ttl)}" if ttl is not None else ""
        return await self._operate(
            context,
            "IssueCertificate",
            request,
            request.identity,
            lambda: issue_certificate(request, self._m.trust, self._m.settings),
            manager_pb2.IssueCertificateResponse,
            detail,
        )


def version_response() -> manager_pb2.GetVersionResponse:
    """This process's versions: pycontainer, Python, grpcio and protobuf (with its backend)."""
    from google.protobuf import __version__ as protobuf_version
    from google.protobuf.internal import api_implementation

    from .. import __version__

    return manager_pb2.GetVersionResponse(
        version=__version__,
        python_version=platform.python_version(),
        grpc_version=grpc.__version__,
        protobuf_version=f"{protobuf_version} {api_implementation.Type()}",
    )


class ManagerHealth:
    """The manager's own grpc.health.v1 statuses, in the model containers
    serve: "" (overall) and "readiness" SERVING while it serves and
    NOT_SERVING from the start of its shutdown; "liveness" SERVING for as
    long as it answers; its services' names as overall."""

    SERVICES = ("pycontainer.v1.Manager", "pycontainer.v1.Lifecycle")
    # The state store's writes: NOT_SERVING while they fail (a full or
    # read-only disk), the manager serving meanwhile (_storewriter).
    STATE_STORE = "state-store"
    # SERVING on the leader alone (a standby's says NOT_SERVING: _standby),
    # for what must reach the leader only; a manager without etcd leads.
    LEADER = "leader"

    def __init__(self) -> None:
        self.servicer = AioHealthServicer(asyncio.get_running_loop())
        self._set(live=False, ready=False)
        self.store(True)

    def store(self, ok: bool) -> None:
        """Whether the state store takes writes."""
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        self.servicer.set_nowait(self.STATE_STORE, serving if ok else not_serving)

    def _set(self, *, live: bool, ready: bool) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        statuses = {OVERALL: ready, LIVENESS: live, READINESS: ready}
        statuses.update(dict.fromkeys(self.SERVICES, ready))
        statuses[self.LEADER] = ready
        for service, ok in statuses.items():
            self.servicer.set_nowait(service, serving if ok else not_serving)

    def serving(self) -> None:
        """The manager serves: everything SERVING."""
        self._set(live=True, ready=True)

    def shutting_down(self) -> None:
        """The manager is stopping: not ready any more, still alive."""
        self._set(live=True, ready=False)

    def handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        """Check, Watch and List."""
        list_request, list_response = _reflection.health_list_messages()

        def health_list() -> Any:
            response = list_response()
            for service, status in self.servicer.list_statuses().items():
                response.statuses[service].status = status
            return response

        return health_handlers(
            self.servicer, health_list, list_response.SerializeToString, list_request.FromString
        )


def _refusal_audit(manager: Manager) -> Callable[[str, Identity | None, Denial], None]:
    """The audit trail's record of a mutating call refused for its roles (the
    interceptor ends it before any servicer could record it): a REQUESTED
    event naming the caller, the method and why."""

    def record(method: str, identity: Identity | None, denial: Denial) -> None:
        needed = required_role(method)
        if needed not in (Role.OPERATE, Role.ADMIN):
            return  # a refused read changes nothing: not an audit record
        actor = identity.uri if identity is not None else "a caller without an identity"
        verb = method.rpartition("/")[2]
        manager.events.publish(
            manager_pb2.EVENT_TYPE_REQUESTED,
            "",
            "",
            f"{verb} refused for {actor}: it needs the {needed.value} role ({denial.code.name})",
            actor=actor,
        )

    return record


# What the OpenTelemetry interceptor leaves alone: the Lifecycle sessions
# (they carry trace context in their commands), health, reflection, and the
# operator's streams.
_UNTRACED_SERVICES = frozenset({"pycontainer.v1.Lifecycle", "grpc.health.v1.Health"})
_UNTRACED_METHODS = frozenset({"WatchEvents", "StreamLogs", "WatchMetrics"})


def _traced(details: grpc.HandlerCallDetails) -> bool:
    """Whether a call is traced: a split and two set lookups (the stock
    filters' any_of took isinstance checks and path splits six times over,
    on every one of 20,000 Connects)."""
    service, _, method = details.method.lstrip("/").partition("/")
    return not (
        service in _UNTRACED_SERVICES
        or method in _UNTRACED_METHODS
        or service.startswith("grpc.reflection")
    )


def build_server(manager: Manager) -> tuple[grpc.aio.Server, ManagerHealth]:
    """The server with every manager service on it, and its health (NOT_SERVING
    until told otherwise)."""
    traced = _traced
    observer = Observer(manager.rpc_stats, manager.tracer)
    server = grpc.aio.server(
        # Keepalive at the liveness bound of the settings (_liveness).
        options=with_keepalive(SERVER_OPTIONS, manager.settings),
        interceptors=[
            # First: a call outside the caller's roles goes no further.
            *manager.trust.interceptors(on_denied=_refusal_audit(manager)),
            aio_server_interceptor(  # type: ignore[no-untyped-call]
                tracer_provider=manager._tracer_provider, filter_=traced
            ),
            AioServerInterceptor(observer),
        ],
    )
    lifecycle_pb2_grpc.add_LifecycleServicer_to_server(LifecycleServicer(manager), server)
    servicer = ManagerServicer(manager)
    # StreamLogs passes containers' log batches through as bytes (_logstreams) and
    # WatchMetrics the snapshots containers sent (_metricsrelay): their handlers let
    # bytes by, found before the generated ones' both ways.
    relayed = {
        "StreamLogs": grpc.unary_stream_rpc_method_handler(
            servicer.StreamLogs,
            request_deserializer=manager_pb2.ManagerStreamLogsRequest.FromString,
            response_serializer=serialize_logs_response,
        ),
        "WatchMetrics": grpc.unary_stream_rpc_method_handler(
            servicer.WatchMetrics,
            request_deserializer=manager_pb2.ManagerWatchMetricsRequest.FromString,
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("pycontainer.v1.Manager", relayed),)
    )
    manager_pb2_grpc.add_ManagerServicer_to_server(servicer, server)
    server.add_registered_method_handlers(  # type: ignore[attr-defined]  # not in grpc-stubs
        "pycontainer.v1.Manager", relayed
    )
    # The mesh's xDS server (ADS) for proxyless clients and Envoys.
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(manager.mesh.ads, server)
    # gRPC's admin services (channelz, CSDS), as grpcdebug reads them; role read.
    add_admin_services(server)
    # Bootstrap.RenewCertificate for joined containers (Join has a listener of its own).
    bootstrap_pb2_grpc.add_BootstrapServicer_to_server(
        JoinServicer(manager.bootstrap, main=True), server
    )
    manager_health = ManagerHealth()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_reflection.HEALTH, manager_health.handlers()),)
    )
    add_reflection(server, MANAGER_SERVICES)
    return server, manager_health


# What the manager's address serves, as reflection lists it (a standby lists
# the same: it forwards or refuses each call by its method).
MANAGER_SERVICES = (
    "pycontainer.v1.Lifecycle",
    "pycontainer.v1.Manager",
    "pycontainer.v1.Bootstrap",
    _reflection.HEALTH,
    ADS_SERVICE,
    *ADMIN_SERVICES,
    _reflection.REFLECTION_V1,
    _reflection.REFLECTION_V1ALPHA,
)


def add_reflection(server: grpc.aio.Server, names: Iterable[str]) -> None:
    """Reflection v1 and v1alpha on ``server``, listing ``names``."""
    listed = list(names)
    for service, group in _reflection.reflection_handlers(lambda: listed, aio=True).items():
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, group),))


def build_health_server(manager_health: ManagerHealth) -> grpc.aio.Server:
    """A server of grpc.health.v1 alone, for a plaintext port of its own:
    kubelet's gRPC probe speaks no TLS. It tells whether the manager serves,
    nothing else. Reflection lists health alone (as a container's health port
    does), so that grpcurl needs no proto files."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_reflection.HEALTH, manager_health.handlers()),)
    )
    add_reflection(
        server, (_reflection.HEALTH, _reflection.REFLECTION_V1, _reflection.REFLECTION_V1ALPHA)
    )
    return server
