"""Capacity, priorities and eviction planning.

Pure logic: :func:`plan_admission` decides whether a container may start and
which lower-priority containers must be evicted to make room; the manager
carries the plan out. Quantities use Kubernetes syntax (``500m`` cpu,
``256Mi`` memory) through :mod:`pycontainer.units`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psutil

from ..units import format_cpu, format_memory

__all__ = [
    "Admission",
    "Claim",
    "Resources",
    "eviction_order",
    "machine_capacity",
    "plan_admission",
    "total",
]


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of cpu (thousandths of a core) and memory (bytes)."""

    cpu_millis: int = 0
    memory_bytes: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu_millis + other.cpu_millis, self.memory_bytes + other.memory_bytes)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpu_millis - other.cpu_millis, self.memory_bytes - other.memory_bytes)

    def fits_in(self, available: Resources) -> bool:
        """True when this request fits in ``available``.

        A zero amount fits anywhere, even where the machine is already
        oversubscribed: asking for nothing never needs room.
        """
        return (self.cpu_millis <= 0 or self.cpu_millis <= available.cpu_millis) and (
            self.memory_bytes <= 0 or self.memory_bytes <= available.memory_bytes
        )

    def shortfall(self, available: Resources) -> Resources:
        """How much more than ``available`` this request needs (0 where it fits)."""
        return Resources(
            max(0, self.cpu_millis - available.cpu_millis) if self.cpu_millis > 0 else 0,
            max(0, self.memory_bytes - available.memory_bytes) if self.memory_bytes > 0 else 0,
        )


def total(resources: Iterable[Resources]) -> Resources:
    """The sum of some amounts."""
    return sum(resources, Resources())


def machine_capacity() -> Resources:
    """This machine's cpu (the cores this process may run on) and physical memory."""
    # The affinity mask, where there is one, is what a cgroup/taskset leaves us;
    # os.cpu_count() would overcommit a manager pinned to a few cores.
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - macOS, Windows
        cores = os.cpu_count() or 1
    return Resources(cores * 1000, psutil.virtual_memory().total)


@dataclass(frozen=True, slots=True)
class Claim:
    """A container's hold on capacity: its priority, resources and start time."""

    id: str
    name: str
    priority: int
    resources: Resources
    # When it started (time.time()); among equal priorities the youngest goes first.
    start_time: float


def eviction_order(claim: Claim) -> tuple[int, float, str]:
    """Sort key of eviction: lowest priority first, then youngest first."""
    # The id breaks exact ties so that a plan never depends on input order.
    return (claim.priority, -claim.start_time, claim.id)


@dataclass(frozen=True, slots=True)
class Admission:
    """The scheduler's decision about one incoming container."""

    admitted: bool
    # Containers to evict first, in eviction order; empty when refused.
    victims: tuple[Claim, ...]
    # Human-readable why: what is evicted, or exactly what is short.
    reason: str


def plan_admission(capacity: Resources, running: Sequence[Claim], incoming: Claim) -> Admission:
    """Whether ``incoming`` may start on ``capacity`` beside ``running``, and at whose cost.

    It is admitted without victims when it fits in the free capacity. Otherwise
    containers of strictly lower priority are chosen in :func:`eviction_order`
    until it fits, and then those whose eviction turned out unnecessary are
    dropped (latest chosen first), so no container is evicted needlessly. When
    even evicting every lower-priority container leaves too little room, it is
    refused with no victims and a reason that says what is short.

    ``running`` must not include ``incoming`` itself (a restart re-admits it).
    """
    need = incoming.resources
    free = capacity - total(c.resources for c in running)
    if need.fits_in(free):
        return Admission(True, (), f"fits: {_free_phrase(free)}")
    if not need.fits_in(capacity):
        return Admission(
            False,
            (),
            f"needs {_need_phrase(need)}, but the machine has only "
            f"{_amounts(capacity)} in all: short by {_amounts(need.shortfall(capacity))}",
        )

    candidates = sorted((c for c in running if c.priority < incoming.priority), key=eviction_order)
    victims: list[Claim] = []
    room = free
    for claim in candidates:
        if need.fits_in(room):
            break
        victims.append(claim)
        room += claim.resources
    if not need.fits_in(room):
        evictable = total(c.resources for c in candidates)
        if candidates:
            evicting = (
                f"evicting the {len(candidates)} lower-priority "
                f"{'container' if len(candidates) == 1 else 'containers'} would free "
                f"{_amounts(evictable)}"
            )
        else:
            evicting = f"no running container has a priority below {incoming.priority}"
        return Admission(
            False,
            (),
            f"needs {_need_phrase(need)}; {_free_phrase(free)}, and {evicting}: "
            f"short by {_amounts(need.shortfall(room))}",
        )

    # An early victim may have freed only what a later, bigger one also covers
    # (say cpu, when memory was short): walking back from the newest choice,
    # drop each victim the incoming container still fits without.
    for i in reversed(range(len(victims))):
        if need.fits_in(room - victims[i].resources):
            room -= victims[i].resources
            del victims[i]
    names = ", ".join(f"{v.name} ({v.id}, priority {v.priority})" for v in victims)
    return Admission(True, tuple(victims), f"fits after evicting {names}")


def _need_phrase(need: Resources) -> str:
    return f"cpu {format_cpu(need.cpu_millis)}, memory {format_memory(need.memory_bytes)}"


def _amounts(r: Resources) -> str:
    """'700m cpu and 1Gi memory', leaving out zero amounts."""
    parts = []
    if r.cpu_millis:
        parts.append(f"{format_cpu(r.cpu_millis)} cpu")
    if r.memory_bytes:
        parts.append(f"{format_memory(r.memory_bytes)} memory")
    return " and ".join(parts) or "nothing"


def _free_phrase(free: Resources) -> str:
    shown = Resources(max(0, free.cpu_millis), max(0, free.memory_bytes))
    cpu, memory = format_cpu(shown.cpu_millis), format_memory(shown.memory_bytes)
    text = f"{cpu} cpu and {memory} memory are free"
    over = shown - free
    if over != Resources():
        # Capacity can shrink under running containers (a smaller machine after
        # a manager restart); say so rather than print negative free amounts.
        text += f" (running containers already exceed capacity by {_amounts(over)})"
    return text
