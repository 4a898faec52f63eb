"""Container: one managed object with identity, hooks, checks and telemetry,
hosted on the app's own gRPC server (sync or aio) or on one of its own."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import platform
import socket
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc
import psutil
from opentelemetry import trace
from opentelemetry.sdk._logs import LoggerProvider

from .. import __version__, _reflection, units
from .._rpctrace import RpcTracing
from ..v1 import container_pb2, management_pb2, profile_pb2
from . import _health
from ._background import BackgroundServer
from ._config import Config
from ._connector import ManagerConnection
from ._export import LineExport, TelemetryExport
from ._health import DEFAULT_CHECK_PERIOD, CheckFunc, CheckKind, HealthState
from ._healthport import health_groups, start_health_port
from ._hosting import ServiceNames, current_loop, register_services
from ._join import join_if_bootstrapping
from ._lifecycle import Lifecycle, Request, StateListener, resolve_hook_result
from ._listen import ListenError, advertised_address
from ._logs import LogBuffer, install, uninstall
from ._metrics import AppMetrics, MetricsWatch, RpcStats, export_container_figures
from ._observe import AioServerInterceptor, Observer, ServerInterceptor, StreamSlots, guarded
from ._profile import DEFAULT_LOCK_REGISTRY, DEFAULT_LOOP_REGISTRY
from ._service import (
    LONG_RUNNING,
    SERVICE,
    AsyncManagementServicer,
    ManagementCore,
    ManagementServicer,
    method_handlers,
)
from ._settings import ContainerSettings, Hooks
from ._state import Command, State, state_proto
from ._tls import management_authorizer, tls_dir

if TYPE_CHECKING:
    from ._http import HttpFace

__all__ = ["Container", "ContainerSettings", "Hooks"]

_log = logging.getLogger("pycontainer")


class Container:
    """A process (or part of one) as a managed object."""

    def __init__(
        self,
        settings: ContainerSettings | str,
        *,
        hooks: Hooks | None = None,
        config: Config | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        metric_reader: Any = None,
        logger_provider: LoggerProvider | None = None,
    ) -> None:
        self.settings = (
            settings
            if isinstance(settings, ContainerSettings)
            else ContainerSettings(name=settings)
        )
        self.hooks = hooks or Hooks()
        self.config = config or Config()
        self.health = HealthState()
        self.logs = LogBuffer(capacity=self.settings.log_capacity)
        # Process-wide: TrackedLock() and loops register there by default.
        self.locks = DEFAULT_LOCK_REGISTRY
        self.loops = DEFAULT_LOOP_REGISTRY
        self.rpc_stats = RpcStats()
        self.app_metrics = AppMetrics(reader=metric_reader)
        self._install_meter_provider = (
            metric_reader is None and self.settings.install_meter_provider
        )
        # Process-wide hooks (root log handler, global MeterProvider) are put in
        # place when the container is put to use, not when it is made.
        self._active = False
        # The captured logs go to it too (else as OTEL_LOGS_EXPORTER asks).
        self._logger_provider = logger_provider
        self._export: TelemetryExport | None = None
        # Ends the OTLP export of its own figures (process, gRPC), if begun.
        self._end_figure_export: Callable[[], None] | None = None
        self._process = psutil.Process()
        self._started_at = datetime.datetime.fromtimestamp(
            self._process.create_time(), tz=datetime.UTC
        )
        self._tracer = trace.get_tracer("pycontainer", __version__, tracer_provider)
        # Spans of the app's own RPCs (tracing_interceptor()), same provider.
        self.rpc_tracing = RpcTracing(tracer_provider)
        self._observer = Observer(self.rpc_stats, self._tracer)
        self._core = ManagementCore(self)
        self._slots: StreamSlots | None = None
        self._endpoints: list[container_pb2.Endpoint] = []
        self._services = ServiceNames()
        self._listeners: list[StateListener] = []
        self._app_loop: asyncio.AbstractEventLoop | None = None
        self._connection: ManagerConnection | None = None
        # grpc.health.v1 alone in plaintext (settings.health_listen), once hosted.
        self._health_port: BackgroundServer | None = None
        # The HTTP face (settings.http_listen), once hosted.
        self._http_face: HttpFace | None = None
        # Whether join_if_bootstrapping() ran, and the TLS directory it found.
        self._joined = False
        self._tls_dir: str | None = None
        # Set once stopped (or closed): followed logs and metric watches end,
        # so that a server shutting down need not cancel them.
        self._streams_end = threading.Event()
        self._lifecycle = Lifecycle(self.hooks, self._tracer, self._on_change, self.settings.id)
        if self.hooks.on_create is not None:
            with self._tracer.start_as_current_span("pycontainer.hook on_create"):
                resolve_hook_result(self.hooks.on_create())

    # -- identity ---------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.settings.id

    @property
    def state(self) -> State:
        return self._lifecycle.state

    def identity(self) -> container_pb2.ContainerIdentity:
        s = self.settings
        return container_pb2.ContainerIdentity(
            id=s.id,
            name=s.name,
            version=s.version,
            labels=s.labels,
            priority=s.priority,
            resources=container_pb2.ResourceRequirements(
                cpu_millis=s.cpu_millis, memory_bytes=s.memory_bytes
            ),
            endpoints=self._endpoints,
            grace_period=units.duration_to_proto(s.grace_period),
        )

    def add_endpoint(
        self, name: str, address: str, kind: str = "grpc", *, tls: bool = False
    ) -> None:
        """Advertise an endpoint in GetInfo; kind is "management", "grpc",
        "http" or "other" (serve() adds the Management one itself); ``tls``
        when it serves mutual TLS with the container's certificate
        (``listen_on(..., tls_dir=...)``)."""
        try:
            proto_kind = _ENDPOINT_KINDS[kind]
        except KeyError:
            raise ValueError(
                f"endpoint kind {kind!r} is not one of {', '.join(_ENDPOINT_KINDS)}"
            ) from None
        self._endpoints.append(
            container_pb2.Endpoint(name=name, kind=proto_kind, address=address, tls=tls)
        )

    def info(self) -> management_pb2.GetInfoResponse:
        now = datetime.datetime.now(datetime.UTC)
        return management_pb2.GetInfoResponse(
            identity=self.identity(),
            pid=os.getpid(),
            hostname=socket.gethostname(),
            start_time=units.timestamp_to_proto(self._started_at),
            uptime=units.duration_to_proto(max(now - self._started_at, datetime.timedelta(0))),
            state=state_proto(self._lifecycle.state),
            pycontainer_version=__version__,
            runtime=f"{platform.python_implementation()} {platform.python_version()}",
            error=self._lifecycle.error,
        )

    # -- health -----------------------------------------------------------------
    def add_check(
        self,
        name: str,
        func: CheckFunc | None = None,
        *,
        kind: CheckKind = CheckKind.READINESS,
        period: datetime.timedelta = DEFAULT_CHECK_PERIOD,
    ) -> None:
        """Add a named health check (see HealthState.add_check)."""
        self.health.add_check(name, func, kind=kind, period=period)

    def set_check(self, name: str, serving: bool, message: str = "") -> None:
        """Report a pushed check's result."""
        self.health.set_check(name, serving, message)

    # -- metrics ----------------------------------------------------------------
    def metrics_watch(self, request: management_pb2.WatchMetricsRequest) -> MetricsWatch:
        return MetricsWatch.from_request(
            request, rpc_stats=self.rpc_stats, app_metrics=self.app_metrics, process=self._process
        )

    def rpc_message_stats(self) -> list[profile_pb2.RpcMessageStats]:
        out = []
        for m in self.rpc_stats.figures():
            out.append(
                profile_pb2.RpcMessageStats(
                    method=m.method,
                    messages_received=m.messages_received,
                    messages_sent=m.messages_sent,
                    bytes_received=m.bytes_received,
                    bytes_sent=m.bytes_sent,
                    mean_message_received_bytes=m.bytes_received / max(1, m.messages_received),
                    mean_message_sent_bytes=m.bytes_sent / max(1, m.messages_sent),
                )
            )
        return out

    def server_interceptor(self) -> ServerInterceptor:
        """Pass to grpc.server(interceptors=[...]) to count the app's own RPCs."""
        return ServerInterceptor(self._observer)

    def aio_server_interceptor(self) -> AioServerInterceptor:
        """Pass to grpc.aio.server(interceptors=[...]) to count the app's own RPCs."""
        return AioServerInterceptor(self._observer)

    def tracing_interceptor(self) -> grpc.ServerInterceptor[Any, Any]:
        """Pass to grpc.server(interceptors=[...]) for a SERVER span per unary
        call of the app's own services, built off the call path
        (``rpc_tracing``: the container's tracer provider)."""
        return self.rpc_tracing.server_interceptor()

    def aio_tracing_interceptor(self) -> grpc.aio.ServerInterceptor[Any, Any]:
        """tracing_interceptor() for a grpc.aio.server."""
        return self.rpc_tracing.aio_server_interceptor()

    def authorization_interceptor(self) -> grpc.ServerInterceptor[Any, Any]:
        """Pass first to grpc.server(interceptors=[...]): with the certificate the
        manager gave ($PYCONTAINER_TLS_DIR), calls of pycontainer's services
        are authorized by role (the manager reads; user/admin does anything);
        without one, and for the app's own services, every call goes through."""
        from ..security import AuthorizationInterceptor

        return AuthorizationInterceptor(management_authorizer(tls_dir() is not None))

    def aio_authorization_interceptor(self) -> grpc.aio.ServerInterceptor[Any, Any]:
        """authorization_interceptor() for a grpc.aio.server."""
        from ..security import AioAuthorizationInterceptor

        return AioAuthorizationInterceptor(management_authorizer(tls_dir() is not None))

    # -- hosting ----------------------------------------------------------------
    def add_to_server(
        self, server: grpc.Server | grpc.aio.Server, *, services: Iterable[str] = ()
    ) -> None:
        """Add Management, grpc.health.v1 and reflection (v1 and v1alpha) to the
        app's own server. Reflection lists every service added to the server
        after this call, plus ``services`` (for ones added before it). With
        ``settings.health_listen``, the first call also starts the plaintext
        health port (ListenError when it cannot listen there)."""
        self._serve_health_port()
        self._serve_http_face()
        self._activate()
        aio = isinstance(server, grpc.aio.Server)
        self._services.add(services)
        self._services.track(server)
        if aio:
            loop = current_loop()
            self._app_loop = self._app_loop or loop
            self.loops.register(loop)
            servicer: Any = AsyncManagementServicer(self._core)
            health_servicer: Any = _health.AioHealthServicer(loop)
            self.health.attach(health_servicer.set_nowait)
        else:
            if self._slots is None:
                self._slots = StreamSlots(self.settings.stream_limit)
            servicer = ManagementServicer(self._core)
            health_servicer = _health.SyncHealthServicer()
            self.health.attach(health_servicer.set)
        handlers = {
            name: self._observer.wrap(
                f"/{SERVICE}/{name}",
                handler,
                aio=aio,
                traced=True,
                slots=self._slots if (not aio and name in LONG_RUNNING) else None,
            )
            for name, handler in method_handlers(servicer).items()
        }
        # Health and reflection are no app RPCs: not counted nor traced, only
        # guarded against requests that do not decode.
        others = {
            **health_groups(health_servicer),
            **_reflection.reflection_handlers(self.service_names, aio=aio),
        }
        groups = {
            SERVICE: handlers,
            **{
                service: {name: guarded(handler, aio=aio) for name, handler in group.items()}
                for service, group in others.items()
            },
        }
        self._services.add(groups)  # one generic handler for them all: named here
        register_services(server, groups)

    def _serve_health_port(self) -> None:
        listen = self.settings.health_listen
        if not listen or self._health_port is not None:
            return
        try:
            self._health_port = start_health_port(self.health, listen)
        except ListenError as exc:
            # Say which of the container's addresses it is (beside the Management one).
            raise ListenError(exc.errno, f"the plaintext health port: {exc.strerror}") from None
        self.add_endpoint("health", advertised_address(listen, self._health_port.port))

    def _serve_http_face(self) -> None:
        listen = self.settings.http_listen
        if not listen or self._http_face is not None:
            return
        # Here, not at the top: aiohttp and prometheus-client load only for
        # a container that serves the face.
        from ._http import FaceParts, start_http_face

        core = self._core
        parts = FaceParts(self.health, self.info, core.get_config, self.metrics_watch)
        try:
            self._http_face = start_http_face(parts, listen)
        except ListenError as exc:
            raise ListenError(exc.errno, f"the HTTP face: {exc.strerror}") from None
        self.add_endpoint("http", advertised_address(listen, self._http_face.port), kind="http")

    @property
    def http_port(self) -> int | None:
        """The port of the HTTP face, once it serves (settings.http_listen)."""
        return self._http_face.port if self._http_face is not None else None

    @property
    def health_port(self) -> int | None:
        """The port of the plaintext health port, once it serves (settings.health_listen)."""
        return self._health_port.port if self._health_port is not None else None

    def service_names(self) -> list[str]:
        """Every service reflection lists."""
        return self._services.sorted()

    # -- lifecycle ----------------------------------------------------------------
    @property
    def lifecycle(self) -> Lifecycle:
        """The state machine and hook runner (for connectors and runtimes)."""
        return self._lifecycle

    def add_state_listener(self, listener: StateListener) -> None:
        """Call ``listener(from, to, command_id, message)`` on every transition."""
        self._listeners.append(listener)

    def streams_ended(self) -> bool:
        """Whether long-lived Management streams (followed logs, metric
        watches) end: true once the container stopped, failed or was closed."""
        return self._streams_end.is_set()

    def _end_streams(self) -> None:
        self._streams_end.set()
        self.logs.wake_all()

    def _on_change(self, previous: State, state: State, command_id: str, message: str) -> None:
        self.health.set_state(state)
        _log.info(
            "container %s: %s -> %s%s",
            self.id,
            previous.name,
            state.name,
            f" ({message})" if message else "",
        )
        if state.terminal:  # after the line above, so that followers get it
            self._end_streams()
        for listener in list(self._listeners):
            listener(previous, state, command_id, message)

    def _grace(self, grace_period: datetime.timedelta | None) -> datetime.timedelta:
        return self.settings.grace_period if grace_period is None else grace_period

    def _activate(self) -> None:
        """Capture logging and feed app metrics from the global MeterProvider
        (see ContainerSettings): once, when the container is hosted, connected
        or started; close() takes them back."""
        if self._active:
            return
        # First: a bad OTEL_* value (TelemetryConfigError) changes nothing.
        export = self._export = TelemetryExport(self.settings, self._logger_provider)
        self._active = True
        if self._install_meter_provider:
            self.app_metrics.install_global(
                resource=export.resource,
                exporting=export.metrics.readers if export.metrics is not None else None,
            )
            # The exporting readers are on a provider made here: the
            # container's own figures go with the app's metrics.
            if export.metrics is not None and self.app_metrics.provider is not None:
                self._end_figure_export = export_container_figures(
                    self.app_metrics.provider, self.settings.id, self.rpc_stats
                )
        if self.settings.log_level is not None:
            handler = install(self.logs, self.settings.log_level)
            if export.log_handler is not None:
                handler.forward(export.log_handler)

    def log_line_export(self) -> LineExport | None:
        """Where lines the container's logs take other than through logging
        (a sidecar's program output) go to be exported as OTEL_LOGS_EXPORTER
        asks; None when its logs are not exported (or it is not in use yet)."""
        return self._export.line_export() if self._export is not None else None

    def start(self) -> None:
        """Run on_start and enter RUNNING (health turns SERVING when checks pass)."""
        self._activate()
        self.health.run_checks_now()
        self._lifecycle.run(Request(Command.START))

    async def astart(self) -> None:
        """start() for asyncio apps; async hooks are awaited on the running loop."""
        self._activate()
        self._app_loop = asyncio.get_running_loop()
        self.loops.register(self._app_loop)
        await asyncio.to_thread(self.health.run_checks_now)
        await self._lifecycle.arun(Request(Command.START))

    def stop(
        self, grace_period: datetime.timedelta | None = None, reason: str = "requested"
    ) -> None:
        """Graceful stop: NOT_SERVING at once, then on_stop(reason, deadline);
        an on_stop still running at the deadline FAILS the container."""
        self._lifecycle.run(Request(Command.STOP, grace=self._grace(grace_period), reason=reason))

    async def astop(
        self, grace_period: datetime.timedelta | None = None, reason: str = "requested"
    ) -> None:
        """stop() for asyncio apps (an async on_stop past its deadline is cancelled)."""
        await self._lifecycle.arun(
            Request(Command.STOP, grace=self._grace(grace_period), reason=reason)
        )

    def pause(self) -> None:
        """Run on_pause and enter PAUSED (not ready while paused)."""
        self._lifecycle.run(Request(Command.PAUSE))

    def resume(self) -> None:
        """Run on_resume and enter RUNNING again."""
        self._lifecycle.run(Request(Command.RESUME))

    def checkpoint(self) -> bytes:
        """The state on_checkpoint returns."""
        return self._lifecycle.run(Request(Command.CHECKPOINT)).data

    def restore(self, state: bytes) -> None:
        """Give a checkpoint's state to on_restore."""
        self._lifecycle.run(Request(Command.RESTORE, state=state))

    def replicate(self, count: int) -> bytes:
        """The seed state on_replicate returns for ``count`` new replicas."""
        return self._lifecycle.run(Request(Command.REPLICATE, count=count)).data

    @property
    def app_loop(self) -> asyncio.AbstractEventLoop | None:
        """The app's event loop, where commands from a manager run its hooks."""
        return self._app_loop

    def use_event_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the hooks of manager commands on ``loop`` (an asyncio app that
        lets the manager start it calls this instead of astart())."""
        self._app_loop = loop
        self.loops.register(loop)

    def connect(self, manager: str) -> ManagerConnection:
        """Hold a Lifecycle session with the manager at ``manager`` (HOST:PORT):
        register, report every transition, run its commands; reconnects with
        backoff until close(). Returns at once."""
        if self._connection is not None:
            raise RuntimeError(f"already connected to {self._connection.target}")
        joined = self.join_if_bootstrapping()
        self._activate()
        self._connection = ManagerConnection(self, manager, renew_tls_dir=joined)
        return self._connection

    def join_if_bootstrapping(self) -> str | None:
        """With a bootstrap token (settings or $PYCONTAINER_BOOTSTRAP_TOKEN): make
        sure this container holds a certificate from the manager's CA, joining
        for one when it has none (pycontainer.agent._join); its TLS directory,
        or None without a token. JoinError saying why it cannot. Once per
        container: serve() and connect() call it first."""
        if not self._joined:
            self._tls_dir = join_if_bootstrapping(self.settings)
            self._joined = True
        return self._tls_dir

    def flush_reports(self, seconds: float = 0.5) -> None:
        """Let queued reports reach the manager before the process exits hard."""
        if self._connection is not None:
            self._connection.flush(seconds)

    def request_grace_extension(
        self, extension: datetime.timedelta, reason: str = ""
    ) -> datetime.timedelta:
        """From on_stop: ask the manager for ``extension`` more time; returns
        the time granted (zero without a manager, outside a stop, or past the
        manager's cap), which the stop's deadline has moved by."""
        if not isinstance(extension, datetime.timedelta):
            raise TypeError(
                "request_grace_extension takes a datetime.timedelta, "
                f"not {type(extension).__name__}"
                + (
                    f" (write timedelta(seconds={extension!r}))"
                    if isinstance(extension, int | float)
                    else ""
                )
            )
        granted = self._lifecycle.extend_grace(extension.total_seconds(), reason)
        return datetime.timedelta(seconds=granted)

    def close(self) -> None:
        """Release what the container holds in the process (logging capture,
        threads, the manager session) and put back the root logger and an
        application's own MeterProvider as they were (a global MeterProvider
        it set stays: OpenTelemetry sets one per process). Call once its
        servers have stopped."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self._end_streams()
        if self._active:
            self._active = False
            uninstall(self.logs)
            self.app_metrics.uninstall()
            if self._end_figure_export is not None:
                self._end_figure_export()
                self._end_figure_export = None
            if self._export is not None:
                self._export.close()  # flushes the logs it exports
                self._export = None
        self.health.close()
        if self._health_port is not None:
            self._health_port.stop(grace=0)
            self._health_port = None
        if self._http_face is not None:
            self._http_face.stop()
            self._http_face = None
        if self._slots is not None:
            self._slots.close()


_ENDPOINT_KINDS = {
    "management": container_pb2.ENDPOINT_KIND_MANAGEMENT,
    "grpc": container_pb2.ENDPOINT_KIND_GRPC,
    "http": container_pb2.ENDPOINT_KIND_HTTP,
    "other": container_pb2.ENDPOINT_KIND_OTHER,
}
