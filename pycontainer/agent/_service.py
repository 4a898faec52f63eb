"""The Management servicer: one core, a thin sync face and a thin aio face.

The core turns requests into responses using the container's parts; the
faces only adapt blocking vs. awaitable calls. Long or blocking work (a CPU
profile) runs in a thread on the aio face.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, Protocol, cast

import grpc

from ..v1 import management_pb2, management_pb2_grpc, profile_pb2
from ._config import Config
from ._health import HealthState
from ._logs import LogBuffer, LogQuery, LogReader, write_frame
from ._metrics import MetricsWatch
from ._profile import LockRegistry, LoopRegistry, ProfileRequest, build_profile

SERVICE = "pycontainer.v1.Management"


class ManagedParts(Protocol):
    """What the Management API reads of a container (a Container is one);
    declared here so that this module does not depend on the container's."""

    @property
    def health(self) -> HealthState: ...
    @property
    def config(self) -> Config: ...
    @property
    def logs(self) -> LogBuffer: ...
    @property
    def locks(self) -> LockRegistry: ...
    @property
    def loops(self) -> LoopRegistry: ...
    def info(self) -> management_pb2.GetInfoResponse: ...
    def rpc_message_stats(self) -> list[profile_pb2.RpcMessageStats]: ...
    def metrics_watch(self, request: management_pb2.WatchMetricsRequest) -> MetricsWatch: ...
    def streams_ended(self) -> bool: ...


class ManagementCore:
    """Answers Management requests from a container's parts."""

    def __init__(self, container: ManagedParts) -> None:
        self._c = container

    def get_info(self, request: management_pb2.GetInfoRequest) -> management_pb2.GetInfoResponse:
        return self._c.info()

    def get_health(
        self, request: management_pb2.GetHealthRequest
    ) -> management_pb2.GetHealthResponse:
        return self._c.health.report(request.check_names)

    def get_config(
        self, request: management_pb2.GetConfigRequest
    ) -> management_pb2.GetConfigResponse:
        return management_pb2.GetConfigResponse(entries=self._c.config.entries(request.prefix))

    def profile_request(self, request: management_pb2.GetProfileRequest) -> ProfileRequest:
        return ProfileRequest.from_request(request)

    def get_profile(
        self, request: ProfileRequest, stop: threading.Event | None
    ) -> management_pb2.GetProfileResponse:
        response = build_profile(request, locks=self._c.locks, loops=self._c.loops, stop=stop)
        response.rpc_messages.extend(self._c.rpc_message_stats())
        return response

    def logs(self, request: management_pb2.StreamLogsRequest) -> LogReader:
        return LogReader(self._c.logs, LogQuery.from_request(request))

    def streams_ended(self) -> bool:
        """Whether long-lived streams should end: the container stopped or closed."""
        return self._c.streams_ended()

    def metrics(self, request: management_pb2.WatchMetricsRequest) -> MetricsWatch:
        return self._c.metrics_watch(request)


class ManagementServicer(management_pb2_grpc.ManagementServicer):
    """The sync (grpc.server) face."""

    def __init__(self, core: ManagementCore) -> None:
        self._core = core

    def GetInfo(self, request: Any, context: Any) -> Any:
        return self._core.get_info(request)

    def GetHealth(self, request: Any, context: Any) -> Any:
        return self._core.get_health(request)

    def GetConfig(self, request: Any, context: Any) -> Any:
        return self._core.get_config(request)

    def GetProfile(self, request: Any, context: Any) -> Any:
        parsed = self._core.profile_request(request)
        stop = threading.Event()
        context.add_callback(stop.set)  # a cancelled call ends the sampling early
        return self._core.get_profile(parsed, stop)

    # A sync handler learns that its call ended (the client cancelled or
    # went) only when it looks: woken by grpc when the call ends, it frees its
    # thread of the stream pool at once. Polling alone held it up to 0.25 s
    # (longer on a busy machine) after every cancelled stream, so a churn of
    # short streams kept StreamSlots' pool full of handlers whose clients had
    # gone, and new calls (a manager's history read among them) queued behind them.
    def StreamLogs(self, request: Any, context: Any) -> Iterator[Any]:
        reader = self._core.logs(request)
        # On grpc's poll thread when the call ends: wake_all never waits.
        context.add_callback(reader.buffer.wake_all)
        context.send_initial_metadata(())  # see AsyncManagementServicer.StreamLogs
        # Frames: encoded responses, sent as they are (see method_handlers).
        yield from reader.iter_frames(context.is_active, self._core.streams_ended)

    def WatchMetrics(self, request: Any, context: Any) -> Iterator[Any]:
        watch = self._core.metrics(request)
        core = self._core
        call_ended = threading.Event()
        if not context.add_callback(call_ended.set):
            return  # the call is over already
        yield from watch.iter_responses(
            lambda: context.is_active() and not core.streams_ended(), woken=call_ended
        )


class AsyncManagementServicer(management_pb2_grpc.ManagementServicer):
    """The asyncio (grpc.aio.server) face."""

    def __init__(self, core: ManagementCore) -> None:
        self._core = core

    async def GetInfo(self, request: Any, context: Any) -> Any:
        return self._core.get_info(request)

    async def GetHealth(self, request: Any, context: Any) -> Any:
        return self._core.get_health(request)

    async def GetConfig(self, request: Any, context: Any) -> Any:
        return self._core.get_config(request)

    async def GetProfile(self, request: Any, context: Any) -> Any:
        parsed = self._core.profile_request(request)
        stop = threading.Event()
        try:
            return await asyncio.to_thread(self._core.get_profile, parsed, stop)
        finally:
            stop.set()  # also when the call is cancelled

    async def StreamLogs(self, request: Any, context: Any) -> AsyncIterator[Any]:
        reader = self._core.logs(request)
        # At once, not with the first entry (a quiet follow may have none for
        # long): a grpc.aio client's call is set up only once it has them,
        # and one cancelled before leaks the batch that waits for them
        # (grpc/grpc#43360), as the manager's relay of every follow did.
        await context.send_initial_metadata(())
        async for frame in reader.aiter_frames(self._core.streams_ended):
            yield frame

    async def WatchMetrics(self, request: Any, context: Any) -> AsyncIterator[Any]:
        watch = self._core.metrics(request)
        async for response in watch.aiter_responses(self._core.streams_ended):
            yield response


# Methods that hold a stream open (or run long) and so, on a sync server, run
# in pycontainer's own thread pool rather than the app's.
LONG_RUNNING = frozenset({"StreamLogs", "WatchMetrics", "GetProfile"})


class _Registrar(Protocol):
    """The part of a server that generated ``add_*_to_server`` functions call."""

    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None: ...

    def add_registered_method_handlers(
        self, name: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None: ...


def method_handlers(
    servicer: ManagementServicer | AsyncManagementServicer,
) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """Unwrapped handlers by method name, built from the generated code's own
    registration so that serializers and arities always match the protos."""
    captured: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    class _Capture:
        def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
            for handler in handlers:
                captured.update(
                    {k.rsplit("/", 1)[-1]: v for k, v in handler._method_handlers.items()}
                )

        def add_registered_method_handlers(
            self, name: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
        ) -> None:
            captured.update(handlers)

    capture: _Registrar = _Capture()
    # The generated signature asks for a real server; registration uses only
    # the two methods of _Registrar.
    management_pb2_grpc.add_ManagementServicer_to_server(servicer, cast("grpc.Server", capture))
    # StreamLogs yields each batch already encoded (joined from entries
    # encoded once when logged): the same StreamLogsResponse on the wire,
    # written as it is.
    logs = captured["StreamLogs"]
    captured["StreamLogs"] = grpc.unary_stream_rpc_method_handler(
        cast(Any, logs.unary_stream),
        request_deserializer=logs.request_deserializer,
        response_serializer=write_frame,
    )
    return captured
