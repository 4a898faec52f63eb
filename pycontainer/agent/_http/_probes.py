"""/livez, /readyz and /healthz: the verdicts of grpc.health.v1 as HTTP
status codes, with the checks behind them listed as Kubernetes' apiserver
lists its own (``[+]name ok``, ``[-]name failed: reason``).

:func:`render` is the one renderer, of a verdict and its rows, whoever's
they are (a container's here; the manager's own, manager/_healthprobes).
For a container (:func:`answer`), both come from one
``HealthState.report()``, the GetHealth response: the verdict is its
liveness, readiness or overall status, the very status grpc.health.v1
publishes for ``"liveness"``, ``"readiness"`` and ``""``, so an HTTP probe
and a gRPC probe never disagree.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ...v1 import health_pb2, management_pb2
from .._state import State

__all__ = ["LIFECYCLE_CHECK", "Probe", "ProbeAnswer", "ProbeRow", "answer", "render"]

SERVING = health_pb2.HEALTH_STATUS_SERVING

#: The row that stands for the lifecycle state (it is no check of the app's).
LIFECYCLE_CHECK = "lifecycle"


class Probe(enum.Enum):
    """Which verdict an endpoint gives, by its path."""

    LIVENESS = "livez"
    READINESS = "readyz"
    OVERALL = "healthz"


@dataclass(frozen=True)
class ProbeAnswer:
    """An HTTP probe's answer: 200 or 503, and a short text body."""

    status: int
    body: str


@dataclass(frozen=True)
class ProbeRow:
    """One check behind a verdict: its name, whether it passes, and why not."""

    name: str
    ok: bool
    reason: str = ""


def render(probe: Probe, passed: bool, rows: Iterable[ProbeRow], *, verbose: bool) -> ProbeAnswer:
    """The answer of ``probe`` whose verdict is ``passed``: 200 or 503. The
    body is ``ok``; with ``verbose``, or on failure, each row has a line
    (reasons only with ``verbose``, as the apiserver withholds them
    otherwise). ``rows`` is read only then: a generator costs nothing on
    the ``ok`` path a prober takes every few seconds."""
    if passed and not verbose:
        return ProbeAnswer(200, "ok\n")
    lines = []
    for row in rows:
        if row.ok:
            lines.append(f"[+]{row.name} ok")
        else:
            lines.append(f"[-]{row.name} failed: {row.reason if verbose else 'reason withheld'}")
    lines.append(f"{probe.value} check {'passed' if passed else 'failed'}")
    return ProbeAnswer(200 if passed else 503, "\n".join(lines) + "\n")


def _lifecycle_row(probe: Probe, state: State) -> tuple[bool, str]:
    # The same rules as HealthState.statuses(): a graceful stop is no reason
    # to restart (liveness), and only a running container takes traffic.
    if probe is Probe.LIVENESS:
        return state not in (State.FAILED, State.STOPPED), state.name
    return state == State.RUNNING, state.name


def answer(report: management_pb2.GetHealthResponse, probe: Probe, *, verbose: bool) -> ProbeAnswer:
    """A container's answer of ``probe`` from ``report`` (the GetHealth
    response of every check): its lifecycle state, then the checks of the
    probe's kind (every check for /healthz)."""
    verdict = {
        Probe.LIVENESS: report.liveness,
        Probe.READINESS: report.readiness,
        Probe.OVERALL: report.status,
    }[probe]
    return render(probe, verdict == SERVING, _container_rows(report, probe), verbose=verbose)


def _container_rows(report: management_pb2.GetHealthResponse, probe: Probe) -> Iterator[ProbeRow]:
    state = State(report.state) if report.state else State.CREATED
    ok, detail = _lifecycle_row(probe, state)
    yield ProbeRow(LIFECYCLE_CHECK, ok, f"state {detail}")
    for check in report.checks:
        kind_counts = probe is Probe.OVERALL or (
            (check.kind == health_pb2.CHECK_KIND_LIVENESS) == (probe is Probe.LIVENESS)
        )
        if kind_counts:
            yield ProbeRow(check.name, check.status == SERVING, check.message)
