"""The routes of a container's HTTP face (an aiohttp application), read-only
over the same parts, and so the same messages, as the Management API.

- ``/livez``, ``/readyz``, ``/healthz``: 200 or 503 (:mod:`._probes`),
  ``?verbose`` lists the checks;
- ``/metrics``: the Prometheus text format, or OpenMetrics when the scraper's
  ``Accept`` asks for it (prometheus-client's exposition; the families are
  :mod:`pycontainer._prometheus`'s, as the manager's scrape-through gives them);
- ``/v1/info``, ``/v1/health`` (``?check=NAME``, repeatable),
  ``/v1/config`` (``?prefix=P``): GetInfo, GetHealth and GetConfig responses
  in protobuf's JSON mapping, secrets redacted as GetConfig redacts them.

GET (and HEAD) only: any other method is 405 with ``Allow``; unknown paths 404;
a query the endpoint does not take is 400 saying what it takes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from prometheus_client import exposition
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric

from ..._errors import RequestError, echo
from ..._prometheus import FamiliesCollector, registry_of, snapshot_families
from ...v1 import health_pb2, management_pb2
from .._health import HealthState
from .._metrics import MetricsWatch
from .._state import State
from ._probes import Probe, ProbeAnswer, answer

__all__ = ["FaceParts", "build_app", "probe_routes"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# HTTP statuses of the request errors the JSON endpoints can meet.
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
}
_TRUE = ("", "1", "true")
_FALSE = ("0", "false")


class FaceParts:
    """What the face reads of a container: its health, info, config and
    metrics, as the Management API's core reads them."""

    def __init__(
        self,
        health: HealthState,
        info: Callable[[], management_pb2.GetInfoResponse],
        config: Callable[[management_pb2.GetConfigRequest], management_pb2.GetConfigResponse],
        metrics_watch: Callable[[management_pb2.WatchMetricsRequest], MetricsWatch],
    ) -> None:
        self.health = health
        self.info = info
        self.config = config
        self.metrics_watch = metrics_watch


class BadQuery(Exception):
    """A query string the endpoint does not take (400, the message says why)."""


def _query(
    request: web.Request, *, single: Sequence[str] = (), repeated: Sequence[str] = ()
) -> dict[str, list[str]]:
    """The query's values by name; BadQuery for a name the endpoint does not
    take, or a single-valued one given twice."""
    out: dict[str, list[str]] = {}
    for key, value in request.query.items():
        out.setdefault(key, []).append(value)
    for key, values in out.items():
        if key not in single and key not in repeated:
            takes = ", ".join((*single, *repeated)) or "no parameters"
            raise BadQuery(
                f"{request.path} does not take the query parameter {echo(key)}; it takes {takes}"
            )
        if key in single and len(values) > 1:
            raise BadQuery(f"{request.path}: {key} is given {len(values)} times; give it once")
    return out


def _flag(request: web.Request, query: Mapping[str, list[str]], name: str) -> bool:
    if name not in query:
        return False
    [value] = query[name]
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise BadQuery(
        f"{request.path}: {name}={echo(value)} is not a flag; write ?{name} (or {name}=false)"
    )


def _text(status: int, body: str) -> web.Response:
    return web.Response(status=status, text=body, headers={"Cache-Control": "no-store"})


def _json(message: Message) -> web.Response:
    return web.Response(
        text=json_format.MessageToJson(message),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _json_error(exc: RequestError) -> web.Response:
    status = _HTTP_STATUS.get(exc.code, 500)
    error: dict[str, Any] = {"code": status, "status": exc.code.name, "message": exc.message}
    if exc.field:
        error["field"] = exc.field
    return web.json_response({"error": error}, status=status)


def _bad_query(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadQuery as exc:
            if request.path.startswith("/v1/"):
                return web.json_response(
                    {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": str(exc)}},
                    status=400,
                )
            return _text(400, f"{exc}\n")
        except RequestError as exc:
            return _json_error(exc)

    return guarded


def probe_routes(answer_of: Callable[[Probe, bool], ProbeAnswer]) -> list[web.RouteDef]:
    """GET (and HEAD) ``/livez``, ``/readyz`` and ``/healthz``, each
    answered ``answer_of(probe, verbose)`` as text: ``?verbose`` (a flag) is
    the one query they take, any other a 400 saying so. The container's face
    and the manager's (manager/_healthprobes) both serve these."""

    def route(which: Probe) -> web.RouteDef:
        async def handle(request: web.Request) -> web.StreamResponse:
            query = _query(request, single=("verbose",))
            got = answer_of(which, _flag(request, query, "verbose"))
            return _text(got.status, got.body)

        return web.get(f"/{which.value}", _bad_query(handle))

    return [route(which) for which in Probe]


def _container_families(parts: FaceParts) -> Iterator[Metric]:
    """The container's identity and health beside its snapshot's families."""
    info = parts.info()
    identity = info.identity
    family = InfoMetricFamily("pycontainer_container", "The container: who it is and its state.")
    family.add_metric(
        [],
        {
            "id": identity.id,
            "name": identity.name,
            "version": identity.version,
            "state": State(info.state).name if info.state else "UNKNOWN",
        },
    )
    yield family
    report = parts.health.report(())
    serving = GaugeMetricFamily(
        "pycontainer_health_serving",
        "Whether each grpc.health.v1 verdict serves (1) or not (0).",
        labels=["probe"],
    )
    for probe, status in (
        ("liveness", report.liveness),
        ("readiness", report.readiness),
        ("overall", report.status),
    ):
        serving.add_metric([probe], 1.0 if status == health_pb2.HEALTH_STATUS_SERVING else 0.0)
    yield serving
    checks = GaugeMetricFamily(
        "pycontainer_health_check_serving",
        "Whether each health check serves (1) or not (0, also before its first result).",
        labels=["check", "kind"],
    )
    for check in report.checks:
        kind = "liveness" if check.kind == health_pb2.CHECK_KIND_LIVENESS else "readiness"
        checks.add_metric(
            [check.name, kind], 1.0 if check.status == health_pb2.HEALTH_STATUS_SERVING else 0.0
        )
    yield checks


def build_app(parts: FaceParts) -> web.Application:
    """The face's aiohttp application over ``parts``."""

    def families() -> list[Metric]:
        # A watch per scrape: every figure is cumulative, and Prometheus
        # takes the rates itself.
        snapshot = parts.metrics_watch(management_pb2.WatchMetricsRequest()).snapshot().snapshot
        return [*snapshot_families(snapshot), *_container_families(parts)]

    registry = registry_of(FamiliesCollector(families))

    async def metrics(request: web.Request) -> web.StreamResponse:
        _query(request)
        encoder, content_type = exposition.choose_encoder(request.headers.get("Accept", ""))
        # psutil and the OpenTelemetry collect block: off the event loop.
        body = await asyncio.get_running_loop().run_in_executor(None, encoder, registry)
        response = web.Response(body=body, headers={"Cache-Control": "no-store"})
        response.headers["Content-Type"] = content_type
        return response

    async def info(request: web.Request) -> web.StreamResponse:
        _query(request)
        return _json(parts.info())

    async def health(request: web.Request) -> web.StreamResponse:
        query = _query(request, repeated=("check",))
        return _json(parts.health.report(query.get("check", [])))

    async def config(request: web.Request) -> web.StreamResponse:
        query = _query(request, single=("prefix",))
        [prefix] = query.get("prefix", [""])
        return _json(parts.config(management_pb2.GetConfigRequest(prefix=prefix)))

    app = web.Application()
    app.add_routes(
        probe_routes(lambda which, verbose: answer(parts.health.report(()), which, verbose=verbose))
    )
    routes: dict[str, Handler] = {
        "/metrics": metrics,
        "/v1/info": info,
        "/v1/health": health,
        "/v1/config": config,
    }
    for path, handler in routes.items():
        app.router.add_get(path, _bad_query(handler))  # and HEAD
    return app
