"""A container's CPU profile for the web view's flame graph: its Management
API's GetProfile with the collapsed format ("frame;frame;frame count" lines,
Brendan Gregg's folded stacks), dialled as the manager dials it for logs and
metrics. The page draws the graph itself (flame.js)."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

import grpc

from ..._errors import RequestError, failed_precondition, invalid_argument
from ...units import duration_from_proto, duration_to_proto, format_duration
from ...v1 import management_pb2, management_pb2_grpc, profile_pb2

if TYPE_CHECKING:
    from .._manager import Manager

#: What the page asks for when it does not say.
DEFAULT_SECONDS = 3
#: The longest a page may sample for (a profile costs the container CPU).
MAX_SECONDS = 30
# Time a profile takes beyond its sampling (the CLI's allowance: cli/_profile).
_ALLOWANCE = datetime.timedelta(seconds=30)


def seconds_arg(text: str | None) -> datetime.timedelta:
    """The ``seconds`` query parameter; INVALID_ARGUMENT outside 1..MAX_SECONDS."""
    if not text:
        return datetime.timedelta(seconds=DEFAULT_SECONDS)
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_SECONDS:
        raise invalid_argument("seconds", f"give 1 to {MAX_SECONDS} seconds, got {text[:20]!r}")
    return datetime.timedelta(seconds=value)


async def cpu_profile(manager: Manager, container: str, cpu: datetime.timedelta) -> dict[str, Any]:
    """``{"collapsed": "...", "samples": N, "duration": "3s"}`` of ``container``."""
    entry = manager.resolve(container)
    if not entry.connected or not entry.management_address():
        raise failed_precondition(
            f"container {entry.id} is not connected with a Management endpoint: "
            "only a running container can be profiled"
        )
    request = management_pb2.GetProfileRequest(
        cpu_duration=duration_to_proto(cpu),
        cpu_format=profile_pb2.CPU_PROFILE_FORMAT_COLLAPSED,
    )
    channel = manager.trust.container_channel(entry)
    try:
        stub = management_pb2_grpc.ManagementStub(channel)
        timeout = (cpu + _ALLOWANCE).total_seconds()
        profile = await stub.GetProfile(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        raise RequestError(exc.code(), f"{entry.id}: {exc.details()}") from None
    finally:
        await channel.close(None)
    return {
        "container_id": entry.id,
        "collapsed": profile.cpu_profile.data.decode("utf-8", "replace"),
        "samples": profile.cpu_profile.samples,
        "duration": format_duration(_to_ms(duration_from_proto(profile.cpu_profile.duration))),
        "threads": len(profile.threads),
    }


def _to_ms(value: datetime.timedelta) -> datetime.timedelta:
    """To the millisecond, for reading (as `pycontainer profile` says it)."""
    return datetime.timedelta(milliseconds=round(value.total_seconds() * 1000))
