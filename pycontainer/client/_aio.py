# ruff: noqa: ASYNC109  # timeout= is the call's gRPC deadline, sent to the server
"""The asyncio clients: :class:`AsyncManagerClient` for the manager's Manager
API and :class:`AsyncManagementClient` for one container's Management API,
with the same methods as the blocking ones (coroutines, and async iterators
for streams)."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from ..v1 import management_pb2, management_pb2_grpc, manager_pb2, manager_pb2_grpc
from ._errors import CallError
from ._leader import find_leader_aio
from ._request_ids import with_request_id
from ._target import manager_targets, parse_target
from ._timeouts import DEFAULT, DEFAULT_TIMEOUT, Timeout, seconds
from ._transport import PLAINTEXT, Transport, manager_transport

__all__ = ["AsyncManagementClient", "AsyncManagerClient", "open_aio_channel"]

Resp = TypeVar("Resp")

ChannelOptions = Sequence[tuple[str, Any]]


def open_aio_channel(target: str, options: ChannelOptions = ()) -> grpc.aio.Channel:
    """An insecure asyncio channel to ``target`` (checked first)."""
    return grpc.aio.insecure_channel(parse_target(target), options=list(options))


class _AsyncClient:
    def __init__(
        self,
        target: str,
        *,
        channel: grpc.aio.Channel | None = None,
        default_timeout: datetime.timedelta | None = DEFAULT_TIMEOUT,
        options: ChannelOptions = (),
        transport: Transport = PLAINTEXT,
    ) -> None:
        self.target = parse_target(target)
        self.default_timeout = default_timeout
        self.transport = transport
        self._owns_channel = channel is None
        self.channel = (
            channel if channel is not None else transport.aio_channel(self.target, options)
        )

    async def close(self) -> None:
        """Close the channel (unless it was given: its owner closes it)."""
        if self._owns_channel:
            await self.channel.close(None)

    async def __aenter__(self: _C) -> _C:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(
        self, method: Callable[..., Awaitable[Resp]], request: Any, timeout: Timeout, name: str
    ) -> Resp:
        try:
            return await method(request, timeout=seconds(timeout, self.default_timeout))
        except grpc.RpcError as exc:
            raise CallError.from_rpc_error(
                exc, self.target, name, hint=self.transport.hint
            ) from None

    async def _mutating(
        self, method: Callable[..., Awaitable[Resp]], request: Any, timeout: Timeout, name: str
    ) -> Resp:
        """A mutating call with its request_id (a new one unless the request has
        one); a CallError tells it (``request_id``) to ask GetOperation with."""
        request = with_request_id(request)
        try:
            return await self._unary(method, request, timeout, name)
        except CallError as exc:
            exc.request_id = request.request_id
            raise

    async def _stream(
        self, method: Callable[..., Any], request: Any, timeout: Timeout, name: str
    ) -> AsyncIterator[Any]:
        call = method(request, timeout=seconds(timeout, None))
        try:
            async for response in call:
                yield response
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return
            raise CallError.from_rpc_error(
                exc, self.target, name, hint=self.transport.hint
            ) from None
        finally:
            call.cancel()


_C = TypeVar("_C", bound=_AsyncClient)


class AsyncManagerClient(_AsyncClient):
    """An asyncio client of the manager's Manager API (``async with`` it).

    ``target`` may name several managers, comma-separated (managers in high
    availability): the first call finds the leader (find_leader_aio), and a
    call a standby refuses naming the leader is made again there, once, as
    ManagerClient does.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.aio.Channel | None = None,
        default_timeout: datetime.timedelta | None = DEFAULT_TIMEOUT,
        options: ChannelOptions = (),
        transport: Transport | None = None,
    ) -> None:
        if transport is None:
            # Mutual TLS with the certificate found (manager_transport), unless a
            # channel is given or plaintext is asked for.
            transport = PLAINTEXT if channel is not None else manager_transport()
        #: Every manager address given (one, or several in high availability).
        self.targets = manager_targets(target)
        super().__init__(
            self.targets[0],
            channel=channel,
            default_timeout=default_timeout,
            options=options,
            transport=transport,
        )
        self._options = options
        self._retired: list[grpc.aio.Channel] = []
        # Found once, by the first call (a constructor cannot await).
        self._leader_known = len(self.targets) == 1 or channel is not None
        self._stub = manager_pb2_grpc.ManagerStub(self.channel)

    async def _find_leader(self) -> None:
        if self._leader_known:
            return
        self._leader_known = True
        leader = await find_leader_aio(self.targets, self.transport, self._options)
        if leader != self.target:
            self._follow(leader)

    def _follow(self, leader: str) -> None:
        """Dial ``leader`` instead (the old channel closed with the client:
        another task's call may be on it)."""
        self._retired.append(self.channel)
        self.target = parse_target(leader)
        self.channel = self.transport.aio_channel(self.target, self._options)
        self._stub = manager_pb2_grpc.ManagerStub(self.channel)

    async def close(self) -> None:
        for channel in self._retired:
            await channel.close(None)
        self._retired.clear()
        await super().close()

    async def _unary(
        self, method: Callable[..., Awaitable[Resp]], request: Any, timeout: Timeout, name: str
    ) -> Resp:
        if not self._leader_known:
            await self._find_leader()
            method = getattr(self._stub, name)
        try:
            return await super()._unary(method, request, timeout, name)
        except CallError as exc:
            # A standby's refusal (it did nothing): the same call to the
            # leader it names, once, on a channel of this client's own.
            if not exc.leader or exc.leader == self.target or not self._owns_channel:
                raise
            self._follow(exc.leader)
        followed: Callable[..., Awaitable[Resp]] = getattr(self._stub, name)
        return await super()._unary(followed, request, timeout, name)

    async def _stream(
        self, method: Callable[..., Any], request: Any, timeout: Timeout, name: str
    ) -> AsyncIterator[Any]:
        if not self._leader_known:
            await self._find_leader()
            method = getattr(self._stub, name)
        async for response in super()._stream(method, request, timeout, name):
            yield response

    async def list_containers(
        self,
        request: manager_pb2.ListContainersRequest | None = None,
        *,
        timeout: Timeout = DEFAULT,
    ) -> manager_pb2.ListContainersResponse:
        """The containers the manager knows (filtered by labels and states)."""
        return await self._unary(
            self._stub.ListContainers,
            request if request is not None else manager_pb2.ListContainersRequest(),
            timeout,
            "ListContainers",
        )

    async def get_container(
        self, request: manager_pb2.GetContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.GetContainerResponse:
        """One container, by id or name."""
        return await self._unary(self._stub.GetContainer, request, timeout, "GetContainer")

    def watch_events(
        self, request: manager_pb2.WatchEventsRequest | None = None, *, timeout: Timeout = None
    ) -> AsyncIterator[manager_pb2.WatchEventsResponse]:
        """Events: the retained history and/or what happens next."""
        return self._stream(
            self._stub.WatchEvents,
            request if request is not None else manager_pb2.WatchEventsRequest(),
            timeout,
            "WatchEvents",
        )

    async def run_container(
        self, request: manager_pb2.RunContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.RunContainerResponse:
        """Launch the replicas of a spec."""
        return await self._mutating(self._stub.RunContainer, request, timeout, "RunContainer")

    async def stop_container(
        self, request: manager_pb2.StopContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.StopContainerResponse:
        """Stop a container gracefully."""
        return await self._mutating(self._stub.StopContainer, request, timeout, "StopContainer")

    async def stop_containers(
        self, request: manager_pb2.StopContainersRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.StopContainersResponse:
        """Stop every live container a label selector matches (or all), at once."""
        return await self._mutating(self._stub.StopContainers, request, timeout, "StopContainers")

    async def pause_container(
        self, request: manager_pb2.PauseContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.PauseContainerResponse:
        """Pause a running container."""
        return await self._mutating(self._stub.PauseContainer, request, timeout, "PauseContainer")

    async def resume_container(
        self, request: manager_pb2.ResumeContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.ResumeContainerResponse:
        """Resume a paused container."""
        return await self._mutating(self._stub.ResumeContainer, request, timeout, "ResumeContainer")

    async def checkpoint_container(
        self, request: manager_pb2.CheckpointContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.CheckpointContainerResponse:
        """Take and store a checkpoint."""
        return await self._mutating(
            self._stub.CheckpointContainer, request, timeout, "CheckpointContainer"
        )

    async def restore_container(
        self, request: manager_pb2.RestoreContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.RestoreContainerResponse:
        """Give a stored checkpoint back to a container."""
        return await self._mutating(
            self._stub.RestoreContainer, request, timeout, "RestoreContainer"
        )

    async def evict_container(
        self, request: manager_pb2.EvictContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.EvictContainerResponse:
        """Evict a container as the scheduler would."""
        return await self._mutating(self._stub.EvictContainer, request, timeout, "EvictContainer")

    async def scale_container(
        self, request: manager_pb2.ScaleContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.ScaleContainerResponse:
        """Change the number of replicas of a name."""
        return await self._mutating(self._stub.ScaleContainer, request, timeout, "ScaleContainer")

    def stream_logs(
        self, request: manager_pb2.ManagerStreamLogsRequest, *, timeout: Timeout = None
    ) -> AsyncIterator[manager_pb2.ManagerStreamLogsResponse]:
        """Containers' logs, proxied from their Management APIs."""
        return self._stream(self._stub.StreamLogs, request, timeout, "StreamLogs")

    def watch_metrics(
        self, request: manager_pb2.ManagerWatchMetricsRequest, *, timeout: Timeout = None
    ) -> AsyncIterator[manager_pb2.ManagerWatchMetricsResponse]:
        """A container's metrics, proxied from its Management API."""
        return self._stream(self._stub.WatchMetrics, request, timeout, "WatchMetrics")

    async def restart_container(
        self, request: manager_pb2.RestartContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.RestartContainerResponse:
        """Stop a container gracefully and start it again."""
        return await self._mutating(
            self._stub.RestartContainer, request, timeout, "RestartContainer"
        )

    async def kill_container(
        self, request: manager_pb2.KillContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.KillContainerResponse:
        """Send a signal to a container's process now."""
        return await self._mutating(self._stub.KillContainer, request, timeout, "KillContainer")

    async def delete_container(
        self, request: manager_pb2.DeleteContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.DeleteContainerResponse:
        """Remove the record of a container that has ended."""
        return await self._mutating(self._stub.DeleteContainer, request, timeout, "DeleteContainer")

    async def apply_specs(
        self, request: manager_pb2.ApplySpecsRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.ApplySpecsResponse:
        """Make the running set match a list of specs."""
        return await self._mutating(self._stub.ApplySpecs, request, timeout, "ApplySpecs")

    async def get_operation(
        self, request: manager_pb2.GetOperationRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.GetOperationResponse:
        """The outcome of a mutating call, by its request_id."""
        return await self._unary(self._stub.GetOperation, request, timeout, "GetOperation")

    async def list_operations(
        self,
        request: manager_pb2.ListOperationsRequest | None = None,
        *,
        timeout: Timeout = DEFAULT,
    ) -> manager_pb2.ListOperationsResponse:
        """The newest operations, newest first."""
        return await self._unary(
            self._stub.ListOperations,
            request if request is not None else manager_pb2.ListOperationsRequest(),
            timeout,
            "ListOperations",
        )

    async def get_version(
        self, request: manager_pb2.GetVersionRequest | None = None, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.GetVersionResponse:
        """The manager's version and those of what it runs on."""
        return await self._unary(
            self._stub.GetVersion,
            request if request is not None else manager_pb2.GetVersionRequest(),
            timeout,
            "GetVersion",
        )

    async def create_bootstrap_token(
        self,
        request: manager_pb2.CreateBootstrapTokenRequest | None = None,
        *,
        timeout: Timeout = DEFAULT,
    ) -> manager_pb2.CreateBootstrapTokenResponse:
        """A new bootstrap token (in this answer only) and what a joiner needs with it."""
        return await self._unary(
            self._stub.CreateBootstrapToken,
            request if request is not None else manager_pb2.CreateBootstrapTokenRequest(),
            timeout,
            "CreateBootstrapToken",
        )

    async def list_bootstrap_tokens(
        self,
        request: manager_pb2.ListBootstrapTokensRequest | None = None,
        *,
        timeout: Timeout = DEFAULT,
    ) -> manager_pb2.ListBootstrapTokensResponse:
        """The bootstrap tokens not expired yet (ids, never secrets)."""
        return await self._unary(
            self._stub.ListBootstrapTokens,
            request if request is not None else manager_pb2.ListBootstrapTokensRequest(),
            timeout,
            "ListBootstrapTokens",
        )

    async def revoke_bootstrap_token(
        self, request: manager_pb2.RevokeBootstrapTokenRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.RevokeBootstrapTokenResponse:
        """Forget a bootstrap token."""
        return await self._unary(
            self._stub.RevokeBootstrapToken, request, timeout, "RevokeBootstrapToken"
        )

    async def issue_certificate(
        self, request: manager_pb2.IssueCertificateRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.IssueCertificateResponse:
        """A certificate for a user identity, signed by the manager's CA for the
        request's CSR (the key stays with the caller), and the roles it holds."""
        return await self._mutating(
            self._stub.IssueCertificate, request, timeout, "IssueCertificate"
        )

    async def get_mesh_status(
        self, request: manager_pb2.GetMeshStatusRequest | None = None, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.GetMeshStatusResponse:
        """The mesh's services (endpoints, route) and its xDS clients (what each
        acknowledged, its NACKs)."""
        return await self._unary(
            self._stub.GetMeshStatus,
            request if request is not None else manager_pb2.GetMeshStatusRequest(),
            timeout,
            "GetMeshStatus",
        )

    async def set_mesh_route(
        self, request: manager_pb2.SetMeshRouteRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.SetMeshRouteResponse:
        """Split a service's traffic between its subsets by weight (empty: clear
        the split). Setting the same weights again changes nothing."""
        return await self._unary(self._stub.SetMeshRoute, request, timeout, "SetMeshRoute")


class AsyncManagementClient(_AsyncClient):
    """A client of one container's Management API, at the address it
    advertises as its Management endpoint."""

    def __init__(
        self,
        target: str,
        *,
        channel: grpc.aio.Channel | None = None,
        default_timeout: datetime.timedelta | None = DEFAULT_TIMEOUT,
        options: ChannelOptions = (),
        transport: Transport = PLAINTEXT,
    ) -> None:
        super().__init__(
            target,
            channel=channel,
            default_timeout=default_timeout,
            options=options,
            transport=transport,
        )
        self._stub = management_pb2_grpc.ManagementStub(self.channel)

    async def get_info(
        self, request: management_pb2.GetInfoRequest | None = None, *, timeout: Timeout = DEFAULT
    ) -> management_pb2.GetInfoResponse:
        """The container's identity and state."""
        return await self._unary(
            self._stub.GetInfo,
            request if request is not None else management_pb2.GetInfoRequest(),
            timeout,
            "GetInfo",
        )

    async def get_health(
        self, request: management_pb2.GetHealthRequest | None = None, *, timeout: Timeout = DEFAULT
    ) -> management_pb2.GetHealthResponse:
        """The container's checks and their results."""
        return await self._unary(
            self._stub.GetHealth,
            request if request is not None else management_pb2.GetHealthRequest(),
            timeout,
            "GetHealth",
        )

    def watch_metrics(
        self, request: management_pb2.WatchMetricsRequest | None = None, *, timeout: Timeout = None
    ) -> AsyncIterator[management_pb2.WatchMetricsResponse]:
        """Metric snapshots, one per interval."""
        return self._stream(
            self._stub.WatchMetrics,
            request if request is not None else management_pb2.WatchMetricsRequest(),
            timeout,
            "WatchMetrics",
        )

    def stream_logs(
        self, request: management_pb2.StreamLogsRequest | None = None, *, timeout: Timeout = None
    ) -> AsyncIterator[management_pb2.StreamLogsResponse]:
        """The container's log entries (and new ones with follow)."""
        return self._stream(
            self._stub.StreamLogs,
            request if request is not None else management_pb2.StreamLogsRequest(),
            timeout,
            "StreamLogs",
        )

    async def get_profile(
        self, request: management_pb2.GetProfileRequest | None = None, *, timeout: Timeout = DEFAULT
    ) -> management_pb2.GetProfileResponse:
        """Threads, tasks, locks and optionally a CPU profile."""
        return await self._unary(
            self._stub.GetProfile,
            request if request is not None else management_pb2.GetProfileRequest(),
            timeout,
            "GetProfile",
        )

    async def get_config(
        self, request: management_pb2.GetConfigRequest | None = None, *, timeout: Timeout = DEFAULT
    ) -> management_pb2.GetConfigResponse:
        """The container's effective configuration."""
        return await self._unary(
            self._stub.GetConfig,
            request if request is not None else management_pb2.GetConfigRequest(),
            timeout,
            "GetConfig",
        )
