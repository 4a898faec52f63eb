"""The web view's buttons: stop, pause, resume, restart and scale.

Each is the Manager API's call of the same name, decided and recorded as a
gRPC call of it is: the caller is ``user/web`` once it presents the web
token (_token); it needs the operate role under the manager's bindings
(``--role user/web=operate``; ``pycontainer up`` binds it, see cli/_up),
every call passes when the manager runs insecure, as on gRPC; a refusal is
an audit event as the interceptor's are (_server._refusal_audit), and an
accepted call is a REQUESTED event naming its actor and an operation run
once per request id (_operations), as ManagerServicer._operate has it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import web
from google.protobuf.message import Message

from ..._errors import RequestError, echo, invalid_argument
from ...v1 import manager_pb2
from .._operations import bounded_target, check_request_id, new_request_id
from .._validation import check_replicas
from ._token import WEB_IDENTITY, presented

if TYPE_CHECKING:
    from .._manager import Manager

_METHOD = "/pycontainer.v1.Manager/"
#: Why a stop was asked for, as the container's stop reason says it.
STOP_MESSAGE = "stopped from the web view"

# gRPC codes as HTTP statuses, for a call the manager refused.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


@dataclass(frozen=True)
class Action:
    """A button: the Manager method it is, and what it does."""

    method: str
    request: Callable[[str, dict[str, Any]], Message]
    run: Callable[[Manager, Any], Awaitable[Message]]


async def _stop(m: Manager, r: manager_pb2.StopContainerRequest) -> Message:
    stopped = await m.stop_container(r.container, None, r.message)
    return manager_pb2.StopContainerResponse(
        container=stopped.entry.to_proto(), killed=stopped.killed
    )


async def _pause(m: Manager, r: manager_pb2.PauseContainerRequest) -> Message:
    entry = await m.simple(r.container, "pause")
    return manager_pb2.PauseContainerResponse(container=entry.to_proto())


async def _resume(m: Manager, r: manager_pb2.ResumeContainerRequest) -> Message:
    entry = await m.simple(r.container, "resume")
    return manager_pb2.ResumeContainerResponse(container=entry.to_proto())


async def _restart(m: Manager, r: manager_pb2.RestartContainerRequest) -> Message:
    entry = await m.restart_container(r.container, None)
    return manager_pb2.RestartContainerResponse(container=entry.to_proto())


async def _scale(m: Manager, r: manager_pb2.ScaleContainerRequest) -> Message:
    entries = await m.scale(r.container, r.replicas)
    return manager_pb2.ScaleContainerResponse(containers=[e.to_proto() for e in entries])


def _replicas(body: dict[str, Any]) -> int:
    value = body.get("replicas")
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid_argument("replicas", f"give a whole number of replicas, got {echo(value)}")
    check_replicas(value, "replicas")
    return value


ACTIONS: dict[str, Action] = {
    "stop": Action(
        "StopContainer",
        lambda c, b: manager_pb2.StopContainerRequest(container=c, message=STOP_MESSAGE),
        _stop,
    ),
    "pause": Action(
        "PauseContainer", lambda c, b: manager_pb2.PauseContainerRequest(container=c), _pause
    ),
    "resume": Action(
        "ResumeContainer", lambda c, b: manager_pb2.ResumeContainerRequest(container=c), _resume
    ),
    "restart": Action(
        "RestartContainer",
        lambda c, b: manager_pb2.RestartContainerRequest(container=c),
        _restart,
    ),
    "scale": Action(
        "ScaleContainer",
        lambda c, b: manager_pb2.ScaleContainerRequest(container=c, replicas=_replicas(b)),
        _scale,
    ),
}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def handle(manager: Manager, token: str, request: web.Request) -> web.Response:
    """POST /ui/api/containers/{id}/{action}: the call's response, or an
    error ``{"error": "..."}`` with the status saying which kind."""
    action = ACTIONS.get(request.match_info["action"])
    if action is None:
        return _error(
            404, f"no such action {echo(request.match_info['action'])}: use " + ", ".join(ACTIONS)
        )
    refused = presented(request, token)
    if refused is not None:
        return _error(*refused)
    target = bounded_target(request.match_info["container"])
    actor = WEB_IDENTITY.uri
    if not manager.trust.insecure:
        denial = manager.trust.authorizer.check(WEB_IDENTITY, _METHOD + action.method)
        if denial is not None:
            manager.events.publish(
                manager_pb2.EVENT_TYPE_REQUESTED,
                "",
                "",
                f"{action.method} refused for {actor} (web view): it needs the operate role "
                f"({denial.code.name})",
                actor=actor,
            )
            return _error(403, denial.message)
    try:
        body = await _body(request)
        message = action.request(target, body)
        request_id = body.get("request_id") or new_request_id()
        if not isinstance(request_id, str):
            raise invalid_argument("request_id", "give a string")
        check_request_id(request_id)
        peer = request.remote or "?"
        manager.events.publish(
            manager_pb2.EVENT_TYPE_REQUESTED,
            "",
            target,
            f"{action.method} {echo(target)} by {actor} (web view from {peer})",
            actor=actor,
            request_id=request_id,
        )
        response = await manager.operations.run(
            request_id=request_id,
            method=action.method,
            request=message,
            target=target,
            actor=actor,
            action=lambda: action.run(manager, message),
            response_type=getattr(manager_pb2, f"{action.method}Response"),
        )
    except RequestError as exc:
        return _error(HTTP_STATUS.get(exc.code, 500), exc.message)
    return web.json_response({"ok": True, "request_id": request_id, "done": _done(response)})


def _done(response: Message) -> str:
    return type(response).__name__.removesuffix("Response")


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError as exc:
        raise invalid_argument("body", f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise invalid_argument("body", 'give a JSON object, such as {"replicas": 3}')
    return body


__all__ = ["ACTIONS", "STOP_MESSAGE", "handle"]
