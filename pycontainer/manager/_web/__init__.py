"""The web view of the fleet, served on the manager's HTTP face (_http).

Pages (plain HTML and JS in ``static/``, no build step, nothing fetched from
elsewhere): ``/ui/`` lists the containers live; ``/ui/containers/ID`` shows
one: its logs followed, CPU and memory charts, its events, a CPU flame graph,
and the buttons. Their data is JSON and Server-Sent Events under ``/ui/api/``.

Reading is open to whoever reaches the port (the Manager API's read role
holds nothing secret either; the face listens on loopback unless told
otherwise); the buttons need the web token and the operate role (_actions).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web

from ..._errors import RequestError, invalid_argument
from ...security import Role
from . import _actions, _feeds, _profile, _sse
from ._token import COOKIE, WEB_IDENTITY, WEB_NAME, load_token, remember, same
from ._usage import Usage
from ._views import container_view

if TYPE_CHECKING:
    from .._manager import Manager

__all__ = ["WEB_NAME", "routes", "web_url"]

_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# The levels a page filters by (Severity's main values).
_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def web_url(manager: Manager) -> str | None:
    """The web view's URL with the token, as `up` prints it (None without an HTTP face)."""
    if manager.http is None:
        return None
    return f"{manager.http.url}ui/?token={load_token(manager.settings.state_dir)}"


def _static(name: str) -> bytes:
    return resources.files(__name__).joinpath("static", name).read_bytes()


def _failing(handler: Handler) -> Handler:
    """A RequestError as ``{"error": message}`` with its HTTP status."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RequestError as exc:
            status = _actions.HTTP_STATUS.get(exc.code, 500)
            return web.json_response({"error": exc.message}, status=status)

    return wrapped


def routes(manager: Manager) -> Iterable[web.AbstractRouteDef]:
    """The web view's routes (a RouteSource of the HTTP face)."""
    token = load_token(manager.settings.state_dir)
    usage = Usage(manager)
    streams = _sse.Streams()

    async def until_stopped() -> None:
        # The manager cancels its tasks first thing when it stops: the pages'
        # streams end then, before the HTTP face would wait for them.
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            streams.close()

    manager._spawn(until_stopped())
    assets = {
        name: _static(name)
        for name in ("fleet.html", "container.html", "web.css", "web.js", "flame.js")
    }

    def page(name: str) -> Handler:
        async def serve(request: web.Request) -> web.StreamResponse:
            given = request.query.get("token")
            if given is not None and same(given, token):
                # Kept as a cookie, and off the address bar and the history.
                response = web.HTTPSeeOther(request.rel_url.without_query_params("token"))
                remember(response, token)
                raise response
            return web.Response(body=assets[name], content_type="text/html", charset="utf-8")

        return serve

    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in assets or name.endswith(".html"):
            raise web.HTTPNotFound(text=f"no asset {name[:64]!r}")
        kind = _TYPES[name[name.rfind(".") :]]
        return web.Response(body=assets[name], content_type=kind, charset="utf-8")

    async def session(request: web.Request) -> web.StreamResponse:
        holds = same(request.cookies.get(COOKIE, ""), token)
        operate = manager.trust.insecure or (
            Role.OPERATE in manager.trust.authorizer.bindings.roles(WEB_IDENTITY)
        )
        return web.json_response({"token": holds, "operate": operate, "identity": WEB_NAME})

    async def fleet(request: web.Request) -> web.StreamResponse:
        return await streams.serve(
            request, _feeds.fleet(manager, usage), _feeds.events(manager, None)
        )

    async def container(request: web.Request) -> web.StreamResponse:
        entry = manager.resolve(request.match_info["container"])
        replicas = sum(
            1 for e in manager.entries.values() if e.name == entry.name and not e.terminal
        )
        return web.json_response(container_view(entry, usage.latest().get(entry.id), replicas))

    async def live(request: web.Request) -> web.StreamResponse:
        """One container's logs (followed, filtered by ``level`` and
        ``contains``), CPU and memory samples and events: one stream a page."""
        entry = manager.resolve(request.match_info["container"])
        level = request.query.get("level", "").upper()
        if level and level not in _LEVELS:
            raise invalid_argument("level", f"use one of {', '.join(_LEVELS)}")
        contains = request.query.get("contains", "")
        return await streams.serve(
            request,
            _feeds.logs(manager, entry.id, level, contains),
            _feeds.samples(usage, entry.id),
            _feeds.events(manager, entry.id),
        )

    async def profile(request: web.Request) -> web.StreamResponse:
        seconds = _profile.seconds_arg(request.query.get("seconds"))
        name = request.match_info["container"]
        return web.json_response(await _profile.cpu_profile(manager, name, seconds))

    async def act(request: web.Request) -> web.StreamResponse:
        return await _actions.handle(manager, token, request)

    async def home(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/ui/")

    api = "/ui/api/containers/{container}"
    return [
        web.get("/", home),
        web.get("/ui/", page("fleet.html")),
        web.get("/ui/containers/{container}", page("container.html")),
        web.get("/ui/static/{name}", asset),
        web.get("/ui/api/session", session),
        web.get("/ui/api/fleet", _failing(fleet)),
        web.get(api, _failing(container)),
        web.get(api + "/live", _failing(live)),
        web.get(api + "/profile", _failing(profile)),
        web.post(api + "/{action}", _failing(act)),
    ]
