"""The manager's HTTP face: one aiohttp application on the manager's own
event loop, served on ``ManagerSettings.http_listen`` (``--http-listen``).

It is the paper's adapter pattern on the manager's side: the fleet's state in
the forms the outside world reads over HTTP (Prometheus' ``/metrics``, a web
view in a browser, ``/livez``, ``/readyz`` and ``/healthz`` for HTTP probes).
Each of those features is a module of its own that gives its routes (a
:data:`RouteSource`); this one only serves them, so that a new face changes
one list here and nothing else. A standby serves one too, with its own
sources (_standbyface): it has no Manager to read.

On the manager's loop, not a thread: every route reads the manager's state
(the registry, the event bus, the mesh) that only the loop may touch.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Generic, TypeVar

from aiohttp import web

from ..agent._listen import ListenError, listen_socket
from ..client._target import TargetError, split_address
from ._exclusive import StartRefused, refusal

if TYPE_CHECKING:
    from ._manager import Manager

__all__ = ["HttpFace", "RouteSource"]

_log = logging.getLogger("pycontainer.manager")

# How long the open requests of a stopping manager are given to end.
_SHUTDOWN_SECONDS = 2.0

# A feature of the HTTP face: the routes it serves for a manager.
RouteSource = Callable[["Manager"], Iterable[web.AbstractRouteDef]]
# Whose face it is: a Manager, or a standby (_standbyface).
Owner = TypeVar("Owner")


def manager_sources() -> list[RouteSource]:
    """Every feature a manager serves over HTTP (imported here, when the face
    is made: a manager without http_listen never loads aiohttp's routes)."""
    from ._healthprobes import routes as probe_routes
    from ._prometheus import routes as prometheus_routes
    from ._web import routes as web_view  # the web view of the fleet

    return [prometheus_routes, probe_routes, web_view]


class HttpFace(Generic[Owner]):
    """The HTTP server of ``owner`` on ``listen`` (HOST:PORT, port 0 for any
    free one), serving the routes ``sources`` give for it (a Manager's:
    manager_sources()): inert until :meth:`bind` and :meth:`start`."""

    def __init__(
        self,
        owner: Owner,
        listen: str,
        sources: Iterable[Callable[[Owner], Iterable[web.AbstractRouteDef]]],
    ) -> None:
        self._listen = listen
        self.app = web.Application()
        for source in sources:
            self.app.add_routes(list(source(owner)))
        self._runner: web.AppRunner | None = None
        self._socket: socket.socket | None = None
        self.host = ""
        self.port = 0

    @property
    def url(self) -> str:
        """``http://HOST:PORT/`` to open in a browser: a wildcard host is
        named as loopback, which every local browser reaches."""
        host = self.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def bind(self) -> int:
        """Bind the address; the port. StartRefused, in one line naming
        --http-listen, when it is malformed, in use or cannot be served
        (before anything serves, as the manager's other ports are bound)."""
        try:
            host, _ = split_address(self._listen)
            # Bound as every server's port is (agent._listen), here rather
            # than by aiohttp: a port in use is refused before anything serves.
            self._socket = listen_socket(self._listen)
        except TargetError as exc:
            raise StartRefused(f"--http-listen {self._listen!r}: {exc}") from None
        except ListenError as exc:
            raise refusal(exc, "--http-listen") from None
        self.host, self.port = host, self._socket.getsockname()[1]
        return self.port

    async def start(self) -> None:
        """Serve on the address :meth:`bind` took."""
        if self._socket is None:
            self.bind()
        assert self._socket is not None
        # access_log=None: a scraper every few seconds would flood the
        # manager's log; the routes log what matters themselves.
        # shutdown_timeout: a route that streams (an open page's events)
        # holds the manager's stop no longer than this.
        runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_SECONDS
        )
        await runner.setup()
        await web.SockSite(runner, self._socket).start()
        self._runner = runner

    async def stop(self) -> None:
        """Stop serving (open requests are cut: the manager is stopping)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        elif self._socket is not None:
            self._socket.close()
        self._socket = None
