"""``Management.GetProfile``: the validated request and the response
assembled from stacks, locks, sockets and (when asked) a CPU profile."""

from __future__ import annotations

import datetime
import threading
from dataclasses import dataclass
from typing import Final

from pycontainer import units
from pycontainer._errors import invalid_argument
from pycontainer.v1 import management_pb2, profile_pb2

from ._channelz import channelz_sockets
from ._cpu import sample_cpu
from ._encode import to_collapsed, to_pprof
from ._locks import LockRegistry, lock_contention
from ._stacks import LoopRegistry, task_stacks, thread_stacks

__all__ = ["ProfileRequest", "build_profile"]

_NS: Final = 1_000_000_000

MAX_CPU_DURATION_NS: Final = 5 * 60 * _NS
DEFAULT_CPU_SAMPLE_HZ: Final = 100
MAX_CPU_SAMPLE_HZ: Final = 1000


@dataclass(frozen=True)
class ProfileRequest:
    """A validated ``GetProfileRequest``."""

    cpu_duration_ns: int = 0
    cpu_sample_hz: int = DEFAULT_CPU_SAMPLE_HZ
    cpu_format: profile_pb2.CpuProfileFormat.ValueType = profile_pb2.CPU_PROFILE_FORMAT_PPROF

    @classmethod
    def from_request(cls, req: management_pb2.GetProfileRequest) -> ProfileRequest:
        """Validate req; raises RequestError INVALID_ARGUMENT naming the bad field."""
        duration = req.cpu_duration
        if abs(duration.nanos) >= _NS or (duration.seconds * duration.nanos < 0):
            raise invalid_argument("cpu_duration", "not a valid duration")
        ns = duration.ToNanoseconds()
        if ns < 0:
            raise invalid_argument("cpu_duration", "must not be negative")
        if ns > MAX_CPU_DURATION_NS:
            raise invalid_argument("cpu_duration", "must be at most 5m")
        hz = req.cpu_sample_hz or DEFAULT_CPU_SAMPLE_HZ
        if hz > MAX_CPU_SAMPLE_HZ:
            raise invalid_argument("cpu_sample_hz", f"must be at most {MAX_CPU_SAMPLE_HZ}")
        fmt = req.cpu_format
        if fmt not in profile_pb2.CpuProfileFormat.values():
            raise invalid_argument("cpu_format", f"unknown format {fmt}")
        if fmt == profile_pb2.CPU_PROFILE_FORMAT_UNSPECIFIED:
            fmt = profile_pb2.CPU_PROFILE_FORMAT_PPROF
        return cls(cpu_duration_ns=ns, cpu_sample_hz=hz, cpu_format=fmt)


def build_profile(
    request: ProfileRequest,
    *,
    locks: LockRegistry,
    loops: LoopRegistry,
    stop: threading.Event | None = None,
) -> management_pb2.GetProfileResponse:
    """The profile the request asks for; blocks while sampling the CPU.

    Threads, tasks, locks and sockets are a snapshot taken first. rpc_messages
    is left for the caller.
    """
    resp = management_pb2.GetProfileResponse(
        time=units.timestamp_to_proto(datetime.datetime.now(datetime.UTC)),
        threads=thread_stacks(locks),
        tasks=task_stacks(loops),
        locks=lock_contention(locks),
        sockets=channelz_sockets(),
    )
    if request.cpu_duration_ns > 0:
        samples = sample_cpu(request.cpu_duration_ns / _NS, request.cpu_sample_hz, stop)
        encode = (
            to_collapsed
            if request.cpu_format == profile_pb2.CPU_PROFILE_FORMAT_COLLAPSED
            else to_pprof
        )
        resp.cpu_profile.format = request.cpu_format
        resp.cpu_profile.data = encode(samples)
        resp.cpu_profile.duration.CopyFrom(units.duration_to_proto(_ns(samples.duration_ns)))
        resp.cpu_profile.sample_period.CopyFrom(units.duration_to_proto(_ns(samples.period_ns)))
        resp.cpu_profile.samples = samples.total
    return resp


def _ns(ns: int) -> datetime.timedelta:
    return datetime.timedelta(microseconds=ns / 1_000)
