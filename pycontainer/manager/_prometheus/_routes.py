"""The manager's Prometheus routes (GET only: aiohttp answers 405 to anything else):

- ``/metrics``: the fleet (FleetCollector, read at scrape time);
- ``/metrics/containers``: every running container's own metrics, fetched
  through the manager, each sample labelled ``container`` (its id) and
  ``name`` (``?selector=app=web`` for some of them);
- ``/containers/{name_or_id}/metrics``: one container's.

A standby's face (standby_routes) serves ``/metrics`` alone: that it does
not lead (the fleet and the containers are the leader's to give).

Text exposition format 0.0.4, or OpenMetrics when the scraper's Accept
asks for it (prometheus-client's choose_encoder). A bad request is answered
with a status and one line that says what to fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from ... import limits
from ..._errors import RequestError
from ..._prometheus import Families, FamiliesCollector
from ...units import format_duration, parse_duration
from ...v1 import container_pb2, metrics_pb2
from .._registry import Entry, state_word
from ._fleet import FleetCollector, StandbyCollector
from ._scrape import ScrapeError, Scraper

if TYPE_CHECKING:
    from .._manager import Manager
    from .._standby import Standby

__all__ = ["routes", "standby_routes"]

# What a scrape keeps of the scraper's own timeout: the rest is for the
# manager to write the answer and for the network.
_TIMEOUT_SHARE = 0.9
#: The containers /metrics/containers asks: those whose app runs.
SCRAPED_STATES = (container_pb2.LIFECYCLE_STATE_RUNNING, container_pb2.LIFECYCLE_STATE_PAUSED)

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAVAILABLE: 503,
}


def routes(manager: Manager) -> list[web.RouteDef]:
    """The Prometheus routes of ``manager`` (a RouteSource of _http)."""
    scraper = Scraper(manager.trust.container_channel)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(manager, scraper))

    async def fleet(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return _answer(request, encoder(registry), content_type)

    async def containers(request: web.Request) -> web.Response:
        try:
            per, total = _timeouts(request)
            selector = request.query.get("selector", "")
            chosen = [e for e in manager.select(selector, SCRAPED_STATES) if e.connected]
        except RequestError as exc:
            # Named as this route takes it (?selector=), not as the gRPC field.
            why = exc.message.removeprefix("label_selector: ")
            return _refused(
                RequestError(exc.code, f"selector: {why}" if why != exc.message else why)
            )
        results = await scraper.snapshots(chosen, per, total)
        labelled = [(_labels(entry), result) for entry, result in results]
        return await _encoded(request, lambda: _families(labelled))

    async def one(request: web.Request) -> web.Response:
        name_or_id = request.match_info["name_or_id"]
        try:
            per, _ = _timeouts(request)
            entry = manager.resolve(name_or_id)
        except RequestError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                exc = RequestError(
                    exc.code,
                    f"{exc.message}: give the id or name of a container this manager knows "
                    "(pycontainer ps lists them)",
                )
            return _refused(exc)
        if entry.terminal:
            return _refused(
                RequestError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"container {entry.id} is {state_word(entry.state)}: it has no metrics to "
                    "give until it runs again (one the manager launched: "
                    f"pycontainer restart {entry.id})",
                )
            )
        try:
            snapshot = await scraper.snapshot(entry, per)
        except ScrapeError as exc:
            return web.Response(status=504 if exc.timed_out else 502, text=f"{exc.message}\n")
        labelled: list[tuple[dict[str, str], metrics_pb2.MetricsSnapshot | ScrapeError]]
        labelled = [(_labels(entry), snapshot)]
        return await _encoded(request, lambda: _families(labelled, with_up=False))

    return [
        web.get("/metrics", fleet, allow_head=False),
        web.get("/metrics/containers", containers, allow_head=False),
        web.get("/containers/{name_or_id}/metrics", one, allow_head=False),
    ]


def standby_routes(standby: Standby) -> list[web.RouteDef]:
    """A standby's ``/metrics`` (a source of its HTTP face, _standbyface)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StandbyCollector())

    async def own(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return _answer(request, encoder(registry), content_type)

    return [web.get("/metrics", own, allow_head=False)]


def _labels(entry: Entry) -> dict[str, str]:
    return {"container": entry.id, "name": entry.name}


def _families(
    labelled: list[tuple[dict[str, str], metrics_pb2.MetricsSnapshot | ScrapeError]],
    *,
    with_up: bool = True,
) -> list[Metric]:
    """The snapshots as families; with ``with_up``, which containers answered."""
    families = Families()
    up = GaugeMetricFamily(
        "pycontainer_container_up",
        "1 when the container gave its metrics to this scrape through the manager, 0 when "
        "it did not (then its other series are missing; "
        "pycontainer_manager_scrape_errors_total counts these).",
        labels=["container", "name"],
    )
    for labels, result in labelled:
        if isinstance(result, ScrapeError):
            up.add_metric([labels["container"], labels["name"]], 0)
        else:
            families.add_snapshot(result, labels)
            up.add_metric([labels["container"], labels["name"]], 1)
    return [*families.metrics(), up] if with_up else families.metrics()


async def _encoded(request: web.Request, make: Callable[[], list[Metric]]) -> web.Response:
    """The families ``make`` gives, encoded as the scraper asked: both off
    the manager's loop (thousands of containers' series are CPU work)."""
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = await asyncio.to_thread(encoder, FamiliesCollector(make))
    return _answer(request, body, content_type)


def _answer(request: web.Request, body: bytes, content_type: str) -> web.Response:
    response = web.Response(body=body, headers={"Content-Type": content_type})
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        # Prometheus asks for gzip: a fleet's series compress tenfold.
        response.enable_compression()
    return response


def _refused(exc: RequestError) -> web.Response:
    return web.Response(status=_HTTP_STATUS.get(exc.code, 500), text=f"{exc.message}\n")


def _timeouts(request: web.Request) -> tuple[float, float]:
    """Seconds for one container and for the whole scrape: ``?timeout=``
    (a duration, "500ms") or Prometheus' X-Prometheus-Scrape-Timeout-Seconds
    bound both; otherwise limits.SCRAPE_CONTAINER_TIMEOUT and SCRAPE_TIMEOUT."""
    per = limits.SCRAPE_CONTAINER_TIMEOUT.total_seconds()
    total = limits.SCRAPE_TIMEOUT.total_seconds()
    given: float | None = None
    if "timeout" in request.query:
        text = request.query["timeout"]
        try:
            given = parse_duration(text).total_seconds()
        except ValueError as exc:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT, f"timeout: {exc} (such as timeout=2s)"
            ) from None
    elif "X-Prometheus-Scrape-Timeout-Seconds" in request.headers:
        # Prometheus' own header: one it could not mean is not the user's to
        # fix, and is left out (the defaults hold).
        with contextlib.suppress(ValueError):
            seconds = float(request.headers["X-Prometheus-Scrape-Timeout-Seconds"])
            if math.isfinite(seconds) and seconds > 0:
                given = seconds
    if given is not None:
        if given <= 0:  # ?timeout=0s
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"timeout: {format_duration(datetime.timedelta(seconds=given))} is not "
                "positive (such as timeout=2s)",
            )
        total = given * _TIMEOUT_SHARE
        per = min(per, total)
    return per, total
