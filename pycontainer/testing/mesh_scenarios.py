"""The "no request lost" scenarios, one function each, for the tests and
the bench alike: each does one thing to a running service under a load
(:class:`~pycontainer.testing.Load`) and returns what the load counted
while it happened, from the request until every client acknowledged the
service's new endpoints (and ``lag`` seconds more: give a plain stop the
moment grpcio takes after its ACK to change its picker, so that the calls
picked meanwhile are counted with it). The drain is on or off as the rig
says (:meth:`MeshRig.set_drain`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._mesh import CallCounts, Load, MeshRig

__all__ = [
    "Outcome",
    "evict_replica",
    "restart_replica",
    "roll_out",
    "scale",
    "stop_replica",
    "summary",
]


@dataclass(frozen=True)
class Outcome:
    """What a scenario did and what the load counted meanwhile."""

    counts: CallCounts
    # The service's endpoints before and after.
    before: frozenset[str]
    after: frozenset[str]
    # The containers the manager drained meanwhile (by its events).
    drained: frozenset[str]
    # From the request to the clients' acknowledgement.
    seconds: float

    @property
    def removed(self) -> frozenset[str]:
        return self.before - self.after

    @property
    def added(self) -> frozenset[str]:
        return self.after - self.before


def _measure(
    rig: MeshRig,
    load: Load,
    service: str,
    act: Any,
    expect: int,
    lag: float,
    accept: Any = None,
) -> Outcome:
    before = frozenset(rig.endpoints(service)[0])
    drained_before = set(rig.drains())
    started = time.monotonic()
    act()
    after = frozenset(rig.wait_endpoints(service, expect, accept=accept))
    rig.wait_acknowledged(service)
    seconds = time.monotonic() - started
    if lag:
        time.sleep(lag)
    counts = load.phase()
    drained = frozenset(set(rig.drains()) - drained_before)
    return Outcome(counts, before, after, drained, seconds)


def stop_replica(rig: MeshRig, load: Load, service: str, victim: str, lag: float = 0.0) -> Outcome:
    """StopContainer one replica of ``service``."""
    from ..v1 import manager_pb2

    count = len(rig.endpoints(service)[0]) - 1

    def act() -> None:
        rig.host.stub.StopContainer(manager_pb2.StopContainerRequest(container=victim), timeout=60)

    return _measure(rig, load, service, act, count, lag)


def restart_replica(
    rig: MeshRig, load: Load, service: str, victim: str, lag: float = 0.0
) -> Outcome:
    """RestartContainer one replica; done once it answers calls again."""
    from ..v1 import manager_pb2

    count = len(rig.endpoints(service)[0])

    def act() -> None:
        rig.host.stub.RestartContainer(
            manager_pb2.RestartContainerRequest(container=victim), timeout=60
        )

    outcome = _measure(rig, load, service, act, count, lag)
    counts = outcome.counts + load.until_answered([victim])
    return Outcome(counts, outcome.before, outcome.after, outcome.drained, outcome.seconds)


def evict_replica(
    rig: MeshRig,
    load: Load,
    service: str,
    newcomer: Any,
    lag: float = 0.0,
) -> Outcome:
    """Run ``newcomer`` (a spec of a higher priority than the service's, on a
    manager whose capacity it does not fit beside them): one replica is
    evicted for it. Done once the evicted one has stopped."""
    count = len(rig.endpoints(service)[0]) - 1
    outcome = _measure(rig, load, service, lambda: rig.run(newcomer), count, lag)
    for victim in outcome.removed:
        rig.wait_state(victim, ("STOPPED", "FAILED"))
    return outcome


def scale(rig: MeshRig, load: Load, service: str, replicas: int, lag: float = 0.0) -> Outcome:
    """ScaleContainer the service's spec (named as the service) to ``replicas``."""
    from ..v1 import manager_pb2

    def act() -> None:
        rig.host.stub.ScaleContainer(
            manager_pb2.ScaleContainerRequest(container=service, replicas=replicas), timeout=120
        )

    return _measure(rig, load, service, act, replicas, lag)


def roll_out(
    rig: MeshRig,
    load: Load,
    service: str,
    spec: Any,
    lag: float = 0.0,
    owner: str = "",
) -> Outcome:
    """ApplySpecs a changed ``spec`` of the service: its replicas replaced one
    at a time (a new one surged and ready, then an old one retired). Done
    once none of the old ones is an endpoint."""
    old = set(rig.endpoints(service)[0])
    return _measure(
        rig,
        load,
        service,
        lambda: rig.apply(spec, owner=owner),
        spec.replicas,
        lag,
        accept=lambda ids: not set(ids) & old,
    )


def summary(outcomes: Mapping[str, Outcome]) -> str:
    """One line per scenario: its counts and how long it took."""
    return "\n".join(
        f"{name}: {o.counts} (action {o.seconds:.2f}s, drained {len(o.drained)})"
        for name, o in outcomes.items()
    )
