"""The server of a manager that is not leading: a standby.

A standby has no :class:`Manager` (no registry of its own, no sessions): what
it knows may be behind the leader's. So it

- **forwards reads** (the Manager methods of the read role, METHOD_ROLES) to
  the leader over the managers' own channel (mutual TLS with its manager
  certificate, which the leader binds to the read role, unless insecure) and
  returns the leader's answer as it came, streams included (WatchEvents,
  StreamLogs, WatchMetrics), bytes in and bytes out. The caller's identity is
  checked here first, with the same roles as on the leader: forwarding lends
  nobody the standby's own;
- **refuses everything else** (writes, Lifecycle sessions, the mesh's xDS)
  with FAILED_PRECONDITION naming the leader: in the message, in the
  ``pycontainer-leader`` trailing metadata (what containers and clients
  follow), and in a ``google.rpc.ErrorInfo`` detail (reason ``NOT_LEADER``,
  ``metadata["leader"]``);
- **serves grpc.health.v1** on its address and on ``--health-listen``, so
  that kubelet's probes pass on standbys too (see :class:`StandbyHealth` for
  what each service says and why);
- **answers reflection and gRPC's admin services itself**: reflection lists
  what the leader serves (grpcurl finds every method, then each call is
  forwarded or refused), and channelz and CSDS are this process's own;
- **serves an HTTP face** on ``--http-listen`` (_standbyface): its probes,
  its ``/metrics`` (``pycontainer_manager_leader 0``), and 503 naming the
  leader for the rest of what the leader's face serves.

Every answer of a standby, forwarded or refused, carries ``pycontainer-leader``
(the leader's answers do not): a client given several addresses tells a
standby from the leader by it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2

from ..client._leader import LEADER_METADATA
from ..limits import MAX_LIFECYCLE_MESSAGE_BYTES
from ..security import MANAGER, Role, channel_credentials, server_name_options
from ..security._roles import METHOD_ROLES
from ..v1 import manager_pb2
from ._admin import add_admin_services
from ._exclusive import bind
from ._server import (
    MANAGER_SERVICES,
    SERVER_OPTIONS,
    ManagerHealth,
    add_reflection,
    build_health_server,
)
from ._settings import ManagerSettings
from ._trust import Trust
from ._xds._forward import AdsForwarder

if TYPE_CHECKING:
    from ._http import HttpFace

#: google.rpc.ErrorInfo of a standby's refusal: its reason and domain
#: (``metadata["leader"]`` the leader's address, "" when none is elected).
NOT_LEADER_REASON = "NOT_LEADER"
ERROR_DOMAIN = "pycontainer.v1"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"

_MANAGER_SERVICE = manager_pb2.DESCRIPTOR.services_by_name["Manager"]
#: The reads a standby forwards to the leader: full method name -> whether
#: the leader answers with a stream.
FORWARDED: dict[str, bool] = {
    f"/{_MANAGER_SERVICE.full_name}/{method.name}": method.server_streaming
    for method in _MANAGER_SERVICE.methods
    if METHOD_ROLES.get(f"/{_MANAGER_SERVICE.full_name}/{method.name}") == Role.READ
}
# Metadata a forwarded call does not pass on: gRPC's own and HTTP/2's.
_HOP_BY_HOP = frozenset({"user-agent", "te", "content-type", "authority", "host"})
# Channels to leaders kept (the managers of one cluster: a few addresses).
_MAX_LEADER_CHANNELS = 8
# A standby's channel to the leader takes messages as big as the leader
# sends (a batch of logs, a metrics snapshot).
_CHANNEL_OPTIONS = (("grpc.max_receive_message_length", MAX_LIFECYCLE_MESSAGE_BYTES),)


def standby_message(leader: str) -> str:
    """What a standby says to a call it does not forward."""
    if leader:
        return f"this manager is a standby; the leader is at {leader}"
    return "this manager is a standby and no leader is elected yet: try again shortly"


def _refusal_details(leader: str, message: str) -> bytes:
    """The google.rpc.Status of a refusal, with its ErrorInfo."""
    info = error_details_pb2.ErrorInfo(
        reason=NOT_LEADER_REASON, domain=ERROR_DOMAIN, metadata={"leader": leader}
    )
    packed = any_pb2.Any()
    packed.Pack(info)
    status = status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=message, details=[packed])
    serialized: bytes = status.SerializeToString()
    return serialized


class StandbyHealth(ManagerHealth):
    """grpc.health.v1 of a standby.

    - ``liveness``: SERVING (it answers; restarting it would change nothing);
    - ``readiness`` and ``""``: SERVING too. Kubernetes counts only Ready pods:
      a PodDisruptionBudget of ``minAvailable: 2`` over three managers of which
      two were never Ready would allow no eviction at all (no node with a
      manager could be drained), and a StatefulSet's or Deployment's rollout
      waits for each new pod to be Ready, so it would stall on the first one
      that comes back a standby. Nor does a Service that sends a call to a
      standby lose it: reads are answered (forwarded) and writes refused
      naming the leader, which pycontainer's clients, the CLI and containers
      follow. A standby that is not ready would buy nothing but these stalls;
    - ``leader``: NOT_SERVING (SERVING on the leader alone), for whatever must
      send writes to the leader only (a load balancer whose clients do not
      follow the refusal);
    - ``pycontainer.v1.Manager``: SERVING (reads); ``pycontainer.v1.Lifecycle``:
      NOT_SERVING (sessions go to the leader).
    """

    def standby(self) -> None:
        self.serving()
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        self.servicer.set_nowait(self.LEADER, not_serving)
        self.servicer.set_nowait("pycontainer.v1.Lifecycle", not_serving)


class Standby:
    """A standby's servers (its address, ``--health-listen``'s and
    ``--http-listen``'s), each bound when it is made, serving from
    :meth:`start` to :meth:`stop`.
    ``leader`` is kept current by the caller (the election's value);
    ``own`` is this manager's address (never forwarded to)."""

    def __init__(self, settings: ManagerSettings, trust: Trust) -> None:
        self.leader = ""
        self.own = ""
        self._trust = trust
        # By (leader, when the certificate was written): a renewed one dials anew.
        self._channels: dict[tuple[str, int], grpc.aio.Channel] = {}
        self._renewing: asyncio.Future[None] | None = None
        self.health = StandbyHealth()
        self.health.standby()
        # Authorised as the leader authorises: the caller's roles, checked here.
        self._server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=trust.interceptors())
        # Answered here, before the catch-all handler below. Reflection lists
        # what the leader lists: grpcurl through a Service that lands on a
        # standby finds every method, and each call is then forwarded or
        # refused. Channelz and CSDS are per process: this one's own.
        add_reflection(self._server, MANAGER_SERVICES)
        add_admin_services(self._server)
        self._server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "grpc.health.v1.Health", self.health.handlers()
                ),
                # The mesh's xDS streams go on to the leader (_xds._forward).
                AdsForwarder(self.current_leader, self.channel),
                _StandbyHandler(self),
            )
        )
        # Served as the leader serves (mutual TLS unless insecure), so that
        # a container's dial gets the refusal, not a failed handshake.
        self.port = trust.bind(self._server, settings.listen)
        self._health_server: grpc.aio.Server | None = None
        self.health_port = 0
        if settings.health_listen:
            self._health_server = build_health_server(self.health)
            self.health_port = bind(
                self._health_server, settings.health_listen, flag="--health-listen"
            )
        # The leader's HTTP address, served here while this one does not lead.
        self.http: HttpFace[Standby] | None = None
        if settings.http_listen is not None:
            from ._standbyface import standby_face  # aiohttp loaded only for one

            self.http = standby_face(self, settings)
            self.http.bind()

    async def start(self) -> None:
        await self._server.start()
        if self._health_server is not None:
            await self._health_server.start()
        if self.http is not None:
            await self.http.start()
        # A standby may outlive its certificates (a day by default): it keeps
        # them current as the leader does, or containers' dials and its
        # forwarded reads would fail their handshakes.
        self._renewing = asyncio.ensure_future(self._trust.renewals())

    async def stop(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
            self._renewing = None
        await self._server.stop(0)
        if self._health_server is not None:
            await self._health_server.stop(0)
        if self.http is not None:
            # Its port released: a won term's Manager binds it next.
            await self.http.stop()
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()

    def current_leader(self) -> str:
        """The leader to forward to, "" when none is known (or it is us:
        the election's value of a term of ours just ended)."""
        return self.leader if self.leader != self.own else ""

    def channel(self, leader: str) -> grpc.aio.Channel:
        """The channel to ``leader`` (one per address and certificate, kept:
        one dialled before a renewal carries on with its calls)."""
        key = (leader, self._certificate_version())
        channel = self._channels.get(key)
        if channel is not None:
            return channel
        if len(self._channels) >= _MAX_LEADER_CHANNELS:
            oldest = next(iter(self._channels))
            # Closed in the background: a stream on it ends CANCELLED.
            _close_later(self._channels.pop(oldest))
        if self._trust.insecure:
            channel = grpc.aio.insecure_channel(leader, options=_CHANNEL_OPTIONS)
        else:
            # The managers' own certificate, which the leader binds to the
            # read role; the leader's checked to be a manager's.
            credentials = channel_credentials(self._trust.manager_files)
            options = [*_CHANNEL_OPTIONS, *server_name_options(MANAGER)]
            channel = grpc.aio.secure_channel(leader, credentials, options=options)
        self._channels[key] = channel
        return channel

    def _certificate_version(self) -> int:
        """When the manager's certificate was last written (0 when insecure)."""
        if self._trust.insecure:
            return 0
        try:
            return self._trust.manager_files.leaf.stat().st_mtime_ns
        except OSError:
            return 0


# Channels closing in the background (a task kept until it is done).
_closing: set[asyncio.Task[None]] = set()


def _close_later(channel: grpc.aio.Channel) -> None:
    task = asyncio.ensure_future(channel.close(None))
    _closing.add(task)
    task.add_done_callback(_closing.discard)


class _StandbyHandler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Reads forwarded, everything else refused."""

    def __init__(self, standby: Standby) -> None:
        self._standby = standby
        self._refuse = grpc.stream_stream_rpc_method_handler(self._refusal)
        self._forwarders = {
            method: self._forwarder(method, streaming) for method, streaming in FORWARDED.items()
        }

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return self._forwarders.get(handler_call_details.method, self._refuse)

    async def _refusal(self, requests: AsyncIterator[bytes], context: Any) -> None:
        await _refuse(context, self._standby.current_leader())

    def _forwarder(self, method: str, streaming: bool) -> grpc.RpcMethodHandler[Any, Any]:
        standby = self._standby
        if not streaming:

            async def unary(request: bytes, context: Any) -> bytes:
                leader = await _leader_or_refuse(standby, context)
                call = standby.channel(leader).unary_unary(method, None, None)(
                    request, timeout=context.time_remaining(), metadata=_passed_on(context)
                )
                try:
                    response: bytes = await call
                except grpc.aio.AioRpcError as exc:
                    await _relay_error(context, exc, leader)
                    raise  # abort raised already
                context.set_trailing_metadata(((LEADER_METADATA, leader),))
                return response

            return grpc.unary_unary_rpc_method_handler(unary)

        async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
            leader = await _leader_or_refuse(standby, context)
            call = standby.channel(leader).unary_stream(method, None, None)(
                request, timeout=context.time_remaining(), metadata=_passed_on(context)
            )
            try:
                async for item in call:
                    yield item
            except grpc.aio.AioRpcError as exc:
                await _relay_error(context, exc, leader)
            finally:
                call.cancel()
            context.set_trailing_metadata(((LEADER_METADATA, leader),))

        return grpc.unary_stream_rpc_method_handler(stream)


async def _refuse(context: Any, leader: str) -> None:
    """FAILED_PRECONDITION naming the leader (message, metadata, ErrorInfo)."""
    message = standby_message(leader)
    await context.abort(
        grpc.StatusCode.FAILED_PRECONDITION,
        message,
        trailing_metadata=(
            (LEADER_METADATA, leader),
            (_STATUS_DETAILS_KEY, _refusal_details(leader, message)),
        ),
    )


async def _leader_or_refuse(standby: Standby, context: Any) -> str:
    """The leader to forward to; none known, the call is refused saying so."""
    leader = standby.current_leader()
    if not leader:
        await _refuse(context, "")
    return leader


def _passed_on(context: Any) -> tuple[tuple[str, Any], ...]:
    """The caller's metadata the leader is given (its request ids, say)."""
    return tuple(
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if not key.startswith((":", "grpc-")) and key not in _HOP_BY_HOP
    )


async def _relay_error(context: Any, exc: grpc.aio.AioRpcError, leader: str) -> None:
    """The leader's error, as it came (its rich details too), naming the
    leader; a leader not reached says so."""
    metadata: Any = exc.trailing_metadata() or ()
    trailing: list[tuple[str, Any]] = [(k, v) for k, v in metadata]
    answered = any(k == _STATUS_DETAILS_KEY for k, _ in trailing)
    details = exc.details() or ""
    if exc.code() == grpc.StatusCode.UNAVAILABLE and not answered:
        details = (
            f"this manager is a standby and cannot reach the leader at {leader} "
            f"to forward the call: {details}"
        )
    if not any(k == LEADER_METADATA for k, _ in trailing):
        # A leader that stepped down names its successor itself.
        trailing.append((LEADER_METADATA, leader))
    await context.abort(exc.code(), details, trailing_metadata=tuple(trailing))
