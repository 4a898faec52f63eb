"""Standalone hosting: pycontainer runs a grpc.aio server for apps that have
none of their own, in the foreground (``serve``/``run``) or on a background
thread (``serve_in_background``, for sync apps)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import grpc

from .. import units
from .._otel import TelemetryConfigError
from ._background import BackgroundServer as BackgroundServer
from ._background import start_in_background
from ._container import Container
from ._join import JoinError
from ._listen import EXCLUSIVE_PORT as EXCLUSIVE_PORT
from ._listen import SERVER_OPTIONS as SERVER_OPTIONS
from ._listen import ListenError as ListenError
from ._listen import advertised_address
from ._listen import listen_on as listen_on
from ._state import State
from ._tls import tls_dir

_log = logging.getLogger("pycontainer")


async def _start_server(container: Container, listen: str) -> tuple[grpc.aio.Server, int]:
    # A container joining with a bootstrap token gets its certificate first.
    await asyncio.to_thread(container.join_if_bootstrapping)
    tls = tls_dir()
    interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = []
    if tls:
        # The manager may read (it forwards logs and metrics); user/admin is admin.
        interceptors.append(container.aio_authorization_interceptor())
    if container.rpc_tracing.enabled:  # spans of the app RPCs this server gets
        interceptors.append(container.aio_tracing_interceptor())
    # grpc.aio, not grpc.server: a request the sync server cannot decode stays
    # with it (~19 KB each, without bound, bare grpcio alike; the aio server
    # frees it). No upstream issue names that case exactly; the closest is
    # grpc/grpc#36908 (a sync server's failed calls keep a few kB each).
    # pycontainer's other long-running servers (the manager's) are aio too.
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
    # First: a refused address leaves the container untouched.
    port = listen_on(server, listen, tls_dir=tls)
    container.add_to_server(server)
    container.add_endpoint(
        "management", advertised_address(listen, port), kind="management", tls=bool(tls)
    )
    await server.start()
    return server, port


async def serve(
    container: Container,
    listen: str = "127.0.0.1:0",
    *,
    on_ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
    manager: str | None = None,
    exit_hard_on_overrun: bool = True,
) -> None:
    """Serve the container until SIGTERM/SIGINT (or ``stop``), then stop it
    gracefully through its lifecycle and shut the server down.

    With a manager (``manager`` or $PYCONTAINER_MANAGER, which the manager's
    process runtime sets), the container registers and waits for the
    manager to start it; it also ends when the manager stops it. An on_stop
    that overruns its grace period ends the process at once (exit status 137,
    as SIGKILL would) unless ``exit_hard_on_overrun`` is False.
    """
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    manager = manager or os.environ.get("PYCONTAINER_MANAGER") or None
    if exit_hard_on_overrun:

        def kill(message: str) -> None:
            container.flush_reports(0.5)  # the manager learns it FAILED, and why
            _exit_hard(message)

        container.lifecycle.kill = kill
    server, port = await _start_server(container, listen)
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)

    def on_change(previous: State, state: State, command_id: str, message: str) -> None:
        if state.terminal:  # stopped by the manager (or failed): the process ends
            loop.call_soon_threadsafe(stop.set)

    try:
        if manager:
            container.use_event_loop(loop)
            container.connect(manager)
        # After connect(): the connector hears of a final state before this
        # listener starts closing the session, so the last report gets out.
        container.add_state_listener(on_change)
        if not manager:
            await container.astart()
        if on_ready is not None:
            on_ready(port)
        await stop.wait()
        if not container.state.terminal:
            _log.info(
                "container %s: stopping (grace %s)",
                container.id,
                units.format_duration(container.settings.grace_period),
            )
            with contextlib.suppress(Exception):
                await container.astop(reason="signal")
    finally:
        if container.streams_ended():
            # Log readers still sending what the ring holds (a follower behind
            # when the container ended) finish first, within the grace period:
            # stopping the server would cut them. At once when none is open.
            limit = container.settings.grace_period.total_seconds()
            await asyncio.to_thread(container.logs.wait_read, limit)
        await server.stop(grace=2.0)
        container.close()


def _exit_hard(message: str) -> None:
    _log.error("%s: exiting now", message)
    logging.shutdown()
    os._exit(137)


def run(
    container: Container, listen: str = "127.0.0.1:0", on_ready: Callable[[int], None] | None = None
) -> None:
    """serve() in a new event loop: the whole main function of a standalone app.

    An address it cannot listen on, or a bad OTEL_* value, ends the process
    with one line saying so (exit status 1), not a traceback.
    """
    try:
        asyncio.run(serve(container, listen, on_ready=on_ready))
    except ListenError as exc:
        raise SystemExit(f"error: {exc.strerror}") from None
    except (JoinError, TelemetryConfigError) as exc:
        raise SystemExit(f"error: {exc}") from None


def serve_in_background(container: Container, listen: str = "127.0.0.1:0") -> BackgroundServer:
    """Host the Management API on a grpc.aio server in a daemon thread, so that a
    sync app's own server and threads are untouched. The app still drives the
    lifecycle (container.start() / container.stop())."""
    return start_in_background(lambda: _start_server(container, listen), name="pycontainer-server")
