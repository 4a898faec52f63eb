"""Runtime profile of the process, one module per source: thread and task
stacks (:mod:`._stacks`), lock contention (:mod:`._locks`), the CPU sampler
(:mod:`._cpu`) and its pprof / collapsed output (:mod:`._encode`), gRPC
socket statistics (:mod:`._channelz`); :mod:`._build` assembles the
``GetProfileResponse`` of ``Management.GetProfile``.
"""

from ._build import ProfileRequest, build_profile
from ._channelz import channelz_sockets
from ._cpu import CpuSamples, sample_cpu
from ._encode import to_collapsed, to_pprof
from ._locks import DEFAULT_LOCK_REGISTRY, LockRegistry, TrackedLock, TrackedRLock, lock_contention
from ._stacks import DEFAULT_LOOP_REGISTRY, LoopRegistry, task_stacks, thread_stacks

__all__ = [
    "DEFAULT_LOCK_REGISTRY",
    "DEFAULT_LOOP_REGISTRY",
    "CpuSamples",
    "LockRegistry",
    "LoopRegistry",
    "ProfileRequest",
    "TrackedLock",
    "TrackedRLock",
    "build_profile",
    "channelz_sockets",
    "lock_contention",
    "sample_cpu",
    "task_stacks",
    "thread_stacks",
    "to_collapsed",
    "to_pprof",
]
