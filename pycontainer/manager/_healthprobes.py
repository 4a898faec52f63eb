"""The manager's ``/livez``, ``/readyz`` and ``/healthz`` on its HTTP face
(``--http-listen``): its own grpc.health.v1 statuses (ManagerHealth) as the
container's face renders a container's (agent/_http: one renderer, one
query syntax, ``?verbose`` listing the rows).

Each verdict is the very status grpc.health.v1 publishes for
``"liveness"``, ``"readiness"`` and ``""``, so an HTTP probe and a gRPC
probe of the manager never disagree: live while it answers, ready while it
serves (not from the start of its shutdown). ``/healthz`` lists the state
store too: a store whose writes fail is the operator's to see, and no reason
to restart or bypass a manager that keeps serving and retries them (its
grpc.health.v1 ``"state-store"`` service says the same).

A standby's face answers them from the standby's own statuses
(StandbyHealth: live and ready, see there why), its ``/healthz`` naming the
leader in a row of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from grpc_health.v1 import health_pb2

from ..agent._health import LIVENESS, OVERALL, READINESS
from ..agent._http import Probe, ProbeAnswer, ProbeRow, probe_routes, render
from ._server import ManagerHealth

if TYPE_CHECKING:
    from ._manager import Manager
    from ._standby import Standby

__all__ = [
    "MANAGER_CHECK",
    "STANDBY_CHECK",
    "manager_answer",
    "routes",
    "standby_answer",
    "standby_routes",
]

SERVING = health_pb2.HealthCheckResponse.SERVING
#: The row of the manager's own serving (as a container's "lifecycle" row).
MANAGER_CHECK = "manager"
#: The row of the state store, named as its grpc.health.v1 service.
STATE_STORE_CHECK = ManagerHealth.STATE_STORE
#: The row of a standby's /healthz: that it is one, and the leader it names.
STANDBY_CHECK = "standby"

_SERVICES = {Probe.LIVENESS: LIVENESS, Probe.READINESS: READINESS, Probe.OVERALL: OVERALL}
_NOT_SERVING = {
    Probe.LIVENESS: "not serving: the manager has not started serving yet",
    Probe.READINESS: "not serving: the manager is starting, or stopping",
    Probe.OVERALL: "not serving: the manager is starting, or stopping",
}


def manager_answer(
    statuses: dict[str, int], store_message: str, probe: Probe, *, verbose: bool
) -> ProbeAnswer:
    """The answer of ``probe`` from the manager's grpc.health.v1
    ``statuses`` (by service name) and its state store's failure (empty
    while it takes writes)."""
    passed, serving = _serving(statuses, probe)

    def rows() -> Iterator[ProbeRow]:
        yield serving
        if probe is Probe.OVERALL:
            store_ok = statuses.get(STATE_STORE_CHECK) == SERVING
            yield ProbeRow(STATE_STORE_CHECK, store_ok, store_message or "its writes fail")

    return render(probe, passed, rows(), verbose=verbose)


def standby_answer(
    statuses: dict[str, int], leader: str, probe: Probe, *, verbose: bool
) -> ProbeAnswer:
    """The answer of ``probe`` of a standby from its grpc.health.v1
    ``statuses`` and the leader it names ("" while none is elected): the
    same verdicts as its gRPC probes give, ``/healthz`` listing that it is a
    standby and of which leader (a row that passes: a standby is no fault)."""
    passed, serving = _serving(statuses, probe)

    def rows() -> Iterator[ProbeRow]:
        yield serving
        if probe is Probe.OVERALL:
            following = f"the leader is at {leader}" if leader else "no leader is elected yet"
            yield ProbeRow(f"{STANDBY_CHECK} ({following})", True)

    return render(probe, passed, rows(), verbose=verbose)


def _serving(statuses: dict[str, int], probe: Probe) -> tuple[bool, ProbeRow]:
    """The verdict of ``probe`` (grpc.health.v1's status of its service) and
    the manager's row saying so."""
    passed = statuses.get(_SERVICES[probe]) == SERVING
    return passed, ProbeRow(MANAGER_CHECK, passed, _NOT_SERVING[probe])


def routes(manager: Manager) -> list[web.RouteDef]:
    """The probe routes of ``manager`` (a RouteSource of _http), read at
    each request (the face is made before the manager's health is)."""

    def answer_of(probe: Probe, verbose: bool) -> ProbeAnswer:
        health = manager.health
        statuses = health.servicer.list_statuses() if health is not None else {}
        return manager_answer(statuses, manager.store_writer.health.message, probe, verbose=verbose)

    return probe_routes(answer_of)


def standby_routes(standby: Standby) -> list[web.RouteDef]:
    """The probe routes of a standby (a source of its HTTP face, _standbyface)."""

    def answer_of(probe: Probe, verbose: bool) -> ProbeAnswer:
        statuses = standby.health.servicer.list_statuses()
        return standby_answer(statuses, standby.current_leader(), probe, verbose=verbose)

    return probe_routes(answer_of)
