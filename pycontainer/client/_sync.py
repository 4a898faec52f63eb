"""The blocking clients: :class:`ManagerClient` for the manager's Manager API
and :class:`ManagementClient` for one container's Management API.

Each method takes the request message and returns the response message (the
ones in ``pycontainer.v1``); a failed call raises :class:`CallError`. Unary
calls get the client's default deadline unless ``timeout`` says otherwise
(a ``timedelta``, or None for none); streams have none unless given, and are
cancelled when the caller stops iterating.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from ..v1 import management_pb2, management_pb2_grpc, manager_pb2, manager_pb2_grpc
from ._errors import CallError
from ._leader import find_leader
from ._request_ids import with_request_id
from ._target import manager_targets, parse_target
from ._timeouts import DEFAULT, DEFAULT_TIMEOUT, Timeout, seconds
from ._transport import PLAINTEXT, Transport, manager_transport

__all__ = ["ManagementClient", "ManagerClient", "open_channel"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")

ChannelOptions = Sequence[tuple[str, Any]]


def open_channel(target: str, options: ChannelOptions = ()) -> grpc.Channel:
    """An insecure channel to ``target`` (checked first: TargetError saying what to write)."""
    return grpc.insecure_channel(parse_target(target), options=list(options))


class _Client:
    def __init__(
        self,
        target: str,
        *,
        channel: grpc.Channel | None = None,
        default_timeout: datetime.timedelta | None = DEFAULT_TIMEOUT,
        options: ChannelOptions = (),
        transport: Transport = PLAINTEXT,
    ) -> None:
        self.target = parse_target(target)
        self.default_timeout = default_timeout
        self.transport = transport
        self._owns_channel = channel is None
        self.channel = channel if channel is not None else transport.channel(self.target, options)

    def close(self) -> None:
        """Close the channel (unless it was given: its owner closes it)."""
        if self._owns_channel:
            self.channel.close()

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(
        self, method: Callable[..., Resp], request: Any, timeout: Timeout, name: str
    ) -> Resp:
        try:
            return method(request, timeout=seconds(timeout, self.default_timeout))
        except grpc.RpcError as exc:
            raise CallError.from_rpc_error(
                exc, self.target, name, hint=self.transport.hint
            ) from None

    def _mutating(
        self, method: Callable[..., Resp], request: Any, timeout: Timeout, name: str
    ) -> Resp:
        """A mutating call with its request_id (a new one unless the request has
        one); a CallError tells it (``request_id``) to ask GetOperation with."""
        request = with_request_id(request)
        try:
            return self._unary(method, request, timeout, name)
        except CallError as exc:
            exc.request_id = request.request_id
            raise

    def _stream(
        self, method: Callable[..., Any], request: Any, timeout: Timeout, name: str
    ) -> Iterator[Any]:
        call = method(request, timeout=seconds(timeout, None))
        try:
            yield from call
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return
            raise CallError.from_rpc_error(
                exc, self.target, name, hint=self.transport.hint
            ) from None
        finally:
            call.cancel()


_C = TypeVar("_C", bound=_Client)


class ManagerClient(_Client):
    """A blocking client of the manager's Manager API.

    ``ManagerClient()`` dials --manager's default: $PYCONTAINER_MANAGER, else
    127.0.0.1:50050. ``target`` may name several managers, comma-separated
    (managers in high availability): the client dials the leader
    (find_leader), and a call a standby refuses naming the leader is made
    again there, once (``target`` then says where the client is). Use it as a
    context manager, or ``close()`` it.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.Channel | None = None,
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
        chosen = self.targets[0]
        if len(self.targets) > 1 and channel is None:
            chosen = find_leader(self.targets, transport, options)
        self._options = options
        self._retired: list[grpc.Channel] = []
        super().__init__(
            chosen,
            channel=channel,
            default_timeout=default_timeout,
            options=options,
            transport=transport,
        )
        self._stub = manager_pb2_grpc.ManagerStub(self.channel)

    def _unary(
        self, method: Callable[..., Resp], request: Any, timeout: Timeout, name: str
    ) -> Resp:
        try:
            return super()._unary(method, request, timeout, name)
        except CallError as exc:
            # A standby's refusal (it did nothing): the same call to the
            # leader it names, once, on a channel of this client's own.
            if not exc.leader or exc.leader == self.target or not self._owns_channel:
                raise
            self._follow(exc.leader)
        followed: Callable[..., Resp] = getattr(self._stub, name)
        return super()._unary(followed, request, timeout, name)

    def _follow(self, leader: str) -> None:
        """Dial ``leader`` instead of the manager dialled so far (whose
        channel stays open until close(): another thread's call may be on it)."""
        self._retired.append(self.channel)
        self.target = parse_target(leader)
        self.channel = self.transport.channel(self.target, self._options)
        self._stub = manager_pb2_grpc.ManagerStub(self.channel)

    def close(self) -> None:
        for channel in self._retired:
            channel.close()
        self._retired.clear()
        super().close()

    def list_containers(
        self,
        request: manager_pb2.ListContainersRequest | None = None,
        *,
        timeout: Timeout = DEFAULT,
    ) -> manager_pb2.ListContainersResponse:
        """The containers the manager knows (filtered by labels and states)."""
        return self._unary(
            self._stub.ListContainers,
            request if request is not None else manager_pb2.ListContainersRequest(),
            timeout,
            "ListContainers",
        )

    def get_container(
        self, request: manager_pb2.GetContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.GetContainerResponse:
        """One container, by id or name."""
        return self._unary(self._stub.GetContainer, request, timeout, "GetContainer")

    def watch_events(
        self, request: manager_pb2.WatchEventsRequest | None = None, *, timeout: Timeout = None
    ) -> Iterator[manager_pb2.WatchEventsResponse]:
        """Events: the retained history and/or what happens next."""
        return self._stream(
            self._stub.WatchEvents,
            request if request is not None else manager_pb2.WatchEventsRequest(),
            timeout,
            "WatchEvents",
        )

    def run_container(
        self, request: manager_pb2.RunContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.RunContainerResponse:
        """Launch the replicas of a spec."""
        return self._mutating(self._stub.RunContainer, request, timeout, "RunContainer")

    def stop_container(
        self, request: manager_pb2.StopContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.StopContainerResponse:
        """Stop a container gracefully."""
        return self._mutating(self._stub.StopContainer, request, timeout, "StopContainer")

    def stop_containers(
        self, request: manager_pb2.StopContainersRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.StopContainersResponse:
        """Stop every live container a label selector matches (or all), at once."""
        return self._mutating(self._stub.StopContainers, request, timeout, "StopContainers")

    def pause_container(
        self, request: manager_pb2.PauseContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.PauseContainerResponse:
        """Pause a running container."""
        return self._mutating(self._stub.PauseContainer, request, timeout, "PauseContainer")

    def resume_container(
        self, request: manager_pb2.ResumeContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.ResumeContainerResponse:
        """Resume a paused container."""
        return self._mutating(self._stub.ResumeContainer, request, timeout, "ResumeContainer")

    def checkpoint_container(
        self, request: manager_pb2.CheckpointContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.CheckpointContainerResponse:
        """Take and store a checkpoint."""
        return self._mutating(
            self._stub.CheckpointContainer, request, timeout, "CheckpointContainer"
        )

    def restore_container(
        self, request: manager_pb2.RestoreContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.RestoreContainerResponse:
        """Give a stored checkpoint back to a container."""
        return self._mutating(self._stub.RestoreContainer, request, timeout, "RestoreContainer")

    def evict_container(
        self, request: manager_pb2.EvictContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.EvictContainerResponse:
        """Evict a container as the scheduler would."""
        return self._mutating(self._stub.EvictContainer, request, timeout, "EvictContainer")

    def scale_container(
        self, request: manager_pb2.ScaleContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.ScaleContainerResponse:
        """Change the number of replicas of a name."""
        return self._mutating(self._stub.ScaleContainer, request, timeout, "ScaleContainer")

    def stream_logs(
        self, request: manager_pb2.ManagerStreamLogsRequest, *, timeout: Timeout = None
    ) -> Iterator[manager_pb2.ManagerStreamLogsResponse]:
        """Containers' logs, proxied from their Management APIs."""
        return self._stream(self._stub.StreamLogs, request, timeout, "StreamLogs")

    def watch_metrics(
        self, request: manager_pb2.ManagerWatchMetricsRequest, *, timeout: Timeout = None
    ) -> Iterator[manager_pb2.ManagerWatchMetricsResponse]:
        """A container's metrics, proxied from its Management API."""
        return self._stream(self._stub.WatchMetrics, request, timeout, "WatchMetrics")

    def restart_container(
        self, request: manager_pb2.RestartContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.RestartContainerResponse:
        """Stop a container gracefully and start it again."""
        return self._mutating(self._stub.RestartContainer, request, timeout, "RestartContainer")

    def kill_container(
        self, request: manager_pb2.KillContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.KillContainerResponse:
        """Send a signal to a container's process now."""
        return self._mutating(self._stub.KillContainer, request, timeout, "KillContainer")

    def delete_container(
        self, request: manager_pb2.DeleteContainerRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.DeleteContainerResponse:
        """Remove the record of a container that has ended."""
        return self._mutating(self._stub.DeleteContainer, request, timeout, "DeleteContainer")

    def apply_specs(
        self, request: manager_pb2.ApplySpecsRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.ApplySpecsResponse:
        """Make the running set match a list of specs."""
        return self._mutating(self._stub.ApplySpecs, request, timeout, "ApplySpecs")

    def get_operation(
        self, request: manager_pb2.GetOperationRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.GetOperationResponse:
        """The outcome of a mutating call, by its request_id."""
        return self._unary(self._stub.GetOperation, request, timeout, "GetOperation")

    def list_operations(
        self,
        request: manager_pb2.ListOperationsRequest | None = None,
        *,
        timeout: Timeout = DEFAULT,
    ) -> manager_pb2.ListOperationsResponse:
        """The newest operations, newest first."""
        return self._unary(
            self._stub.ListOperations,
            request if request is not None else manager_pb2.ListOperationsRequest(),
            timeout,
            "ListOperations",
        )

    def get_version(
        self, request: manager_pb2.GetVersionRequest | None = None, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.GetVersionResponse:
        """The manager's version and those of what it runs on."""
        return self._unary(
            self._stub.GetVersion,
            request if request is not None else manager_pb2.GetVersionRequest(),
            timeout,
            "GetVersion",
        )

    def create_bootstrap_token(
        self,
        request: manager_pb2.CreateBootstrapTokenRequest | None = None,
        *,
        timeout: Timeout = DEFAULT,
    ) -> manager_pb2.CreateBootstrapTokenResponse:
        """A new bootstrap token (in this answer only) and what a joiner needs with it."""
        return self._unary(
            self._stub.CreateBootstrapToken,
            request if request is not None else manager_pb2.CreateBootstrapTokenRequest(),
            timeout,
            "CreateBootstrapToken",
        )

    def list_bootstrap_tokens(
        self,
        request: manager_pb2.ListBootstrapTokensRequest | None = None,
        *,
        timeout: Timeout = DEFAULT,
    ) -> manager_pb2.ListBootstrapTokensResponse:
        """The bootstrap tokens not expired yet (ids, never secrets)."""
        return self._unary(
            self._stub.ListBootstrapTokens,
            request if request is not None else manager_pb2.ListBootstrapTokensRequest(),
            timeout,
            "ListBootstrapTokens",
        )

    def revoke_bootstrap_token(
        self, request: manager_pb2.RevokeBootstrapTokenRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.RevokeBootstrapTokenResponse:
        """Forget a bootstrap token."""
        return self._unary(
            self._stub.RevokeBootstrapToken, request, timeout, "RevokeBootstrapToken"
        )

    def issue_certificate(
        self, request: manager_pb2.IssueCertificateRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.IssueCertificateResponse:
        """A certificate for a user identity, signed by the manager's CA for the
        request's CSR (the key stays with the caller), and the roles it holds."""
        return self._mutating(self._stub.IssueCertificate, request, timeout, "IssueCertificate")

    def get_mesh_status(
        self, request: manager_pb2.GetMeshStatusRequest | None = None, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.GetMeshStatusResponse:
        """The mesh's services (endpoints, route) and its xDS clients (what each
        acknowledged, its NACKs)."""
        return self._unary(
            self._stub.GetMeshStatus,
            request if request is not None else manager_pb2.GetMeshStatusRequest(),
            timeout,
            "GetMeshStatus",
        )

    def set_mesh_route(
        self, request: manager_pb2.SetMeshRouteRequest, *, timeout: Timeout = DEFAULT
    ) -> manager_pb2.SetMeshRouteResponse:
        """Split a service's traffic between its subsets by weight (empty: clear
        the split). Setting the same weights again changes nothing."""
        return self._unary(self._stub.SetMeshRoute, request, timeout, "SetMeshRoute")


class ManagementClient(_Client):
    """A client of one container's Management API, at the address it
    advertises as its Management endpoint."""

    def __init__(
        self,
        target: str,
        *,
        channel: grpc.Channel | None = None,
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

    def get_info(
        self, request: management_pb2.GetInfoRequest | None = None, *, timeout: Timeout = DEFAULT
    ) -> management_pb2.GetInfoResponse:
        """The container's identity and state."""
        return self._unary(
            self._stub.GetInfo,
            request if request is not None else management_pb2.GetInfoRequest(),
            timeout,
            "GetInfo",
        )

    def get_health(
        self, request: management_pb2.GetHealthRequest | None = None, *, timeout: Timeout = DEFAULT
    ) -> management_pb2.GetHealthResponse:
        """The container's checks and their results."""
        return self._unary(
            self._stub.GetHealth,
            request if request is not None else management_pb2.GetHealthRequest(),
            timeout,
            "GetHealth",
        )

    def watch_metrics(
        self, request: management_pb2.WatchMetricsRequest | None = None, *, timeout: Timeout = None
    ) -> Iterator[management_pb2.WatchMetricsResponse]:
        """Metric snapshots, one per interval."""
        return self._stream(
            self._stub.WatchMetrics,
            request if request is not None else management_pb2.WatchMetricsRequest(),
            timeout,
            "WatchMetrics",
        )

    def stream_logs(
        self, request: management_pb2.StreamLogsRequest | None = None, *, timeout: Timeout = None
    ) -> Iterator[management_pb2.StreamLogsResponse]:
        """The container's log entries (and new ones with follow)."""
        return self._stream(
            self._stub.StreamLogs,
            request if request is not None else management_pb2.StreamLogsRequest(),
            timeout,
            "StreamLogs",
        )

    def get_profile(
        self, request: management_pb2.GetProfileRequest | None = None, *, timeout: Timeout = DEFAULT
    ) -> management_pb2.GetProfileResponse:
        """Threads, tasks, locks and optionally a CPU profile."""
        return self._unary(
            self._stub.GetProfile,
            request if request is not None else management_pb2.GetProfileRequest(),
            timeout,
            "GetProfile",
        )

    def get_config(
        self, request: management_pb2.GetConfigRequest | None = None, *, timeout: Timeout = DEFAULT
    ) -> management_pb2.GetConfigResponse:
        """The container's effective configuration."""
        return self._unary(
            self._stub.GetConfig,
            request if request is not None else management_pb2.GetConfigRequest(),
            timeout,
            "GetConfig",
        )
