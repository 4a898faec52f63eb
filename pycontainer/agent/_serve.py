"""Standalone hosting: pycontainer runs a grpc.aio server for apps that have
none of their own, in the foreground (``serve``/``run``) or on a background
thread (``serve_in_background``, for sync apps)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from .. import units
from ._container import Container
from ._state import State
from ._tls import tls_dir

_log = logging.getLogger("pycontainer")

#: grpc-core sets SO_REUSEPORT by default, so a second server on a port in use
#: starts "fine" and the kernel splits the connections between the two. Every
#: server pycontainer runs binds exclusively; give this to the app's own too.
EXCLUSIVE_PORT: tuple[str, int] = ("grpc.so_reuseport", 0)

# Options of every server pycontainer builds. Exclusive binding (see above);
# keepalive lets a dead watcher's stream be noticed.
SERVER_OPTIONS: Sequence[tuple[str, int]] = (
    EXCLUSIVE_PORT,
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
)


class ListenError(OSError):
    """A server could not listen where it was told (the message says why)."""


def listen_on(
    server: grpc.Server | grpc.aio.Server,
    listen: str,
    *,
    tls_dir: str | None = None,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    """Bind ``server`` (built with :data:`EXCLUSIVE_PORT`) to ``listen``
    (HOST:PORT, port 0 for any free one); returns the port. With ``tls_dir``
    (a directory with ``tls.pem`` and ``ca.pem``, as $PYCONTAINER_TLS_DIR
    names) it serves mutual TLS, rereading the files when they are renewed;
    ``credentials`` gives server credentials of the caller's own instead.

    Raises :class:`ListenError` naming the address when the port is out of
    range, the host does not resolve or is not this machine's, or the port is
    already in use, rather than grpc-core's generic failure (and its lines of
    C++ logging). Every server pycontainer runs binds through here.
    """
    host, _, port_text = listen.rpartition(":")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ListenError(
            errno.EINVAL,
            f"cannot listen on {listen!r}: write HOST:PORT with a port from 0 to 65535",
        )
    _refuse_if_unservable(host, int(port_text), listen)
    if tls_dir and credentials is None:
        from ..security import CredentialFiles, server_credentials

        credentials = server_credentials(CredentialFiles.in_directory(tls_dir))
    try:
        if credentials is not None:
            port = server.add_secure_port(listen, credentials)
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError:
        port = 0
    if port == 0:
        raise ListenError(
            errno.EADDRINUSE,
            f"cannot listen on {listen}: the address is in use or not available here",
        )
    return port


def _refuse_if_unservable(host: str, port: int, listen: str) -> None:
    """Fail with a clear message when ``host`` does not resolve or is not this
    machine's, or something already listens on host:port."""
    name = host.strip("[]")
    try:
        infos = socket.getaddrinfo(
            name or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, UnicodeError) as exc:
        raise ListenError(
            errno.EINVAL, f"cannot listen on {listen}: cannot resolve {host!r} ({exc})"
        ) from None
    if port == 0:
        return
    for family, kind, proto, _, address in infos:
        # Bound as grpc-core binds (SO_REUSEADDR: TIME_WAIT is no owner).
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ListenError(
                        errno.EADDRINUSE,
                        f"cannot listen on {listen}: the address is in use "
                        "(is another server already running there?)",
                    ) from None
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise ListenError(
                        errno.EADDRNOTAVAIL,
                        f"cannot listen on {listen}: {host!r} is not an address of this machine",
                    ) from None
                raise ListenError(
                    exc.errno or errno.EINVAL, f"cannot listen on {listen}: {exc.strerror}"
                ) from None


async def _start_server(container: Container, listen: str) -> tuple[grpc.aio.Server, int]:
    tls = tls_dir()
    interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = []
    if tls:
        # The manager may read (it forwards logs and metrics); user/admin is admin.
        interceptors.append(container.aio_authorization_interceptor())
    # grpc.aio, not grpc.server: a request the sync server cannot decode stays
    # with it (~19 KB each, without bound, bare grpcio alike; the aio server
    # frees it). No upstream issue names that case exactly; the closest is
    # grpc/grpc#36908 (a sync server's failed calls keep a few kB each).
    # pycontainer's other long-running servers (the manager's) are aio too.
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
    # First: a refused address leaves the container untouched.
    port = listen_on(server, listen, tls_dir=tls)
    container.add_to_server(server)
    host = listen.rsplit(":", 1)[0] or "127.0.0.1"
    if host in ("[::]", "0.0.0.0", ""):
        host = "127.0.0.1"
    container.add_endpoint("management", f"{host}:{port}", kind="management", tls=bool(tls))
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

    An address it cannot listen on ends the process with one line saying so
    (exit status 1), not a traceback.
    """
    try:
        asyncio.run(serve(container, listen, on_ready=on_ready))
    except ListenError as exc:
        raise SystemExit(f"error: {exc.strerror}") from None


@dataclass
class BackgroundServer:
    """A Management server on its own thread and event loop."""

    port: int
    _loop: asyncio.AbstractEventLoop
    _server: grpc.aio.Server
    _thread: threading.Thread

    def stop(self, grace: float = 2.0) -> None:
        """Shut the server down and join its thread."""
        if self._loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop)
        future.result(timeout=grace + 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def serve_in_background(container: Container, listen: str = "127.0.0.1:0") -> BackgroundServer:
    """Host the Management API on a grpc.aio server in a daemon thread, so that a
    sync app's own server and threads are untouched. The app still drives the
    lifecycle (container.start() / container.stop())."""
    loop = asyncio.new_event_loop()
    started: dict[str, object] = {}
    ready = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            started["server"], started["port"] = loop.run_until_complete(
                _start_server(container, listen)
            )
        except BaseException as exc:  # reported to the caller below
            started["error"] = exc
            loop.close()
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=main, name="pycontainer-server", daemon=True)
    thread.start()
    ready.wait()
    if "error" in started:
        raise started["error"]  # type: ignore[misc]
    return BackgroundServer(started["port"], loop, started["server"], thread)  # type: ignore[arg-type]
