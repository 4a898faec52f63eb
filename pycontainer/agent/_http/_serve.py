"""The HTTP face on a thread and event loop of its own, as the plaintext
health port runs, so that it answers whatever the app's server is (sync or
asyncio) and however busy the app's own loop is."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

from aiohttp import web

from .._background import run_on_own_loop
from .._listen import listen_socket
from ._face import FaceParts, build_app

__all__ = ["HttpFace", "exposure_warning", "start_http_face"]

_log = logging.getLogger("pycontainer")

# How long stop() lets requests in progress finish.
_SHUTDOWN_TIMEOUT = 2.0


@dataclass
class HttpFace:
    """The HTTP face, serving on ``port``."""

    port: int
    _loop: asyncio.AbstractEventLoop
    _runner: web.AppRunner
    _thread: threading.Thread

    def stop(self) -> None:
        """Stop serving and join the face's thread."""
        if self._loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        future.result(timeout=_SHUTDOWN_TIMEOUT + 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def exposure_warning(listen: str) -> str | None:
    """What to warn of when the face is reachable from other machines; None
    on loopback."""
    # Here, not at the top: pycontainer.security imports cryptography.
    from ...security import is_loopback

    if is_loopback(listen):
        return None
    return (
        f"serving the HTTP face without TLS on {listen}: anyone who can reach it reads "
        "this container's health, metrics, info and config (secrets redacted, nothing "
        "writable); listen on 127.0.0.1 unless a prober or scraper elsewhere needs it"
    )


def start_http_face(parts: FaceParts, listen: str) -> HttpFace:
    """Serve the HTTP face of ``parts`` on ``listen`` (HOST:PORT, port 0 for
    a free one), in plaintext, on a daemon thread; returns once it listens.
    ListenError when it cannot listen there."""
    sock = listen_socket(listen)  # here, so that a ListenError reaches the caller
    port = int(sock.getsockname()[1])
    # No access log: every probe would be a line in the container's logs.
    runner = web.AppRunner(build_app(parts), access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)

    async def start() -> None:
        try:
            await runner.setup()
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            raise

    loop, thread, _ = run_on_own_loop(start, name="pycontainer-http")
    warning = exposure_warning(listen)
    if warning:
        _log.warning("%s", warning)
    return HttpFace(port, loop, runner, thread)
