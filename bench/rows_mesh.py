"""Rows of the mesh (issue 10's "Done means"): the drain before a stop
(bench/mesh_drain.py) and the control plane at scale (bench/mesh_fleet.py),
each against bare grpcio in the same run."""

from __future__ import annotations

import contextlib
import statistics
from concurrent import futures
from typing import Any

from . import mesh_drain, mesh_fleet
from .harness import Context, Row, Sample, percentile

_TARGET = "I10"

# One measurement serves the rows that share it (as rows_manager's P4 rows).
_drain_runs: dict[tuple[int, int, int], tuple[Any, Any, Any]] = {}
_fleet_runs: dict[tuple[int, int, float], list[dict[str, Any]]] = {}


def _drain(ctx: Context) -> tuple[int, Any, Any, Any]:
    clients = 3 if ctx.quick else 5
    per_round = 1 if ctx.quick else 2
    key = (clients, ctx.rounds, per_round)
    if key not in _drain_runs:
        with mesh_drain.bare_pusher(clients) as push:
            bare = [[push() for _ in range(per_round + 2)] for _ in range(ctx.rounds)]
        # One manager after the other: both are ManagerHosts of this process,
        # and one's loop would take the GIL from the other's drain.
        drained = mesh_drain.stops_under_load(True, clients, ctx.rounds, per_round)
        plain = mesh_drain.stops_under_load(False, clients, ctx.rounds, per_round)
        # The quick run rolls out to one replica (a rollout of 3 is about 10 s a
        # round and side); the full run to 3, as the issue says.
        replicas = 1 if ctx.quick else 3
        drained["rollout"] = mesh_drain.rollouts_under_load(True, clients, ctx.rounds, replicas)
        plain["rollout"] = mesh_drain.rollouts_under_load(False, clients, ctx.rounds, replicas)
        _drain_runs[key] = (bare, drained, plain)
    bare, drained, plain = _drain_runs[key]
    return clients, bare, drained, plain


def drain_ack(ctx: Context) -> list[Sample]:
    clients, bare, by_scenario, _ = _drain(ctx)
    # A round's drains: of every scenario.
    drained = [
        [t for scenario in by_scenario for t in by_scenario[scenario][r].drain_ack]
        for r in range(ctx.rounds)
    ]
    # From the operator's call: not the rollout's (its call waits for each new
    # replica to be ready before a drain).
    calls = [
        t
        for scenario in mesh_drain.SCENARIOS
        for run in by_scenario[scenario]
        for t in run.call_ack
    ]
    out = []
    for pushes, ours in zip(bare, drained, strict=True):
        theirs = [inside for inside, _ in pushes]
        out.append(
            Sample(
                statistics.median(ours),
                statistics.median(theirs),
                ours_latencies=ours,
                bare_latencies=theirs,
                note=f"{clients} grpcio xds:/// clients under load, {len(ours)} drains a round "
                "(stops, a scale-down, an eviction, a rollout's); "
                "from the operator's call (stops, scale-downs, evictions): "
                f"p50 {percentile(calls, 0.5) * 1e3:.1f} ms, "
                f"p99 {percentile(calls, 0.99) * 1e3:.1f} ms (bare "
                f"{percentile([t for p in bare for _, t in p], 0.5) * 1e3:.1f} / "
                f"{percentile([t for p in bare for _, t in p], 0.99) * 1e3:.1f} ms)",
            )
        )
    return out


def _codes(runs: list[Any]) -> str:
    """ " (CODE n, ...: a sample message)" of the failures of ``runs``, or ""."""
    codes: dict[str, int] = {}
    samples: dict[str, str] = {}
    for run in runs:
        for code, n in (run.counts.failures or {}).items():
            codes[code] = codes.get(code, 0) + n
        samples.update(run.counts.samples or {})
    if not codes:
        return ""
    listed = ", ".join(f"{c} {n}" for c, n in sorted(codes.items()))
    return f" ({listed}: {next(iter(samples.values()), '')[:80]})"


def _failures(ctx: Context, scenario: str) -> list[Sample]:
    clients, _, by_scenario, by_scenario_plain = _drain(ctx)
    drained, plain = by_scenario[scenario], by_scenario_plain[scenario]
    failed = sum(run.counts.failed for run in drained)
    bare_failed = sum(run.counts.failed for run in plain)
    # One ratio for the run (failures over every round): a round of a plain
    # stop may see none, and 0 / 0 says nothing.
    ratio = failed / bare_failed if bare_failed else float("nan")
    note = (
        f"{clients} grpcio xds:/// clients, {plain[0].stops} stop(s) a round"
        + (" (the rollout's)" if scenario == "rollout" else "")
        + f"; over all rounds: with the drain {failed} of "
        f"{sum(r.counts.calls for r in drained):,} calls failed{_codes(drained)}, plain "
        f"{bare_failed} of {sum(r.counts.calls for r in plain):,}{_codes(plain)}; ratio of "
        "the totals"
    )
    return [
        Sample(float(ours.counts.failed), float(theirs.counts.failed), note=note, ratio=ratio)
        for ours, theirs in zip(drained, plain, strict=True)
    ]


def _fleet(ctx: Context) -> list[dict[str, Any]]:
    pushes = 5 if ctx.quick else 20
    window = 1.0 if ctx.quick else 3.0
    key = (ctx.rounds, pushes, window)
    if key not in _fleet_runs:
        rounds = []
        # Both held at once, their windows alternating: the same noise for both
        # (set up at once: most of it is the fleet registering).
        with contextlib.ExitStack() as stack, futures.ThreadPoolExecutor(2) as pool:
            sides = [
                pool.submit(stack.enter_context, mesh_fleet.held(bare, 100, 10, 50, window))
                for bare in (True, False)
            ]
            bare, ours = (side.result() for side in sides)
            for _ in range(ctx.rounds):
                figures: dict[str, Any] = {}
                for side, fleet in (("bare", bare), ("ours", ours)):
                    figures[side] = {
                        "rss": fleet.rss(),
                        "rss_unsubscribed": fleet.rss_unsubscribed,
                        "subscribe_s": fleet.subscribe_s,
                        "idle": fleet.cpu(window / 2, 0),
                        "unsubscribed": fleet.cpu_unsubscribed,
                        "churn": fleet.cpu(window, mesh_fleet.CHURN_RATE),
                        "fan_out": [fleet.fan_out() for _ in range(pushes)],
                    }
                rounds.append(figures)
        _fleet_runs[key] = rounds
    return _fleet_runs[key]


def fleet_rss(ctx: Context) -> list[Sample]:
    rounds = _fleet(ctx)
    first = rounds[0]
    note = (
        f"before the clients subscribed: {first['ours']['rss_unsubscribed']:.0f} MiB (bare "
        f"{first['bare']['rss_unsubscribed']:.0f}); the 50 clients had every resource in "
        f"{first['ours']['subscribe_s']:.2f} s (bare {first['bare']['subscribe_s']:.2f} s)"
    )
    return [Sample(r["ours"]["rss"], r["bare"]["rss"], note=note) for r in rounds]


def fleet_cpu(ctx: Context) -> list[Sample]:
    rounds = _fleet(ctx)
    note = (
        f"{mesh_fleet.CHURN_RATE:g} endpoint changes/s (sessions lost and back), each pushed "
        f"to the 50 clients; the same churn before the clients subscribed (no push): "
        f"{rounds[0]['ours']['unsubscribed']:.1f} % "
        f"(bare {rounds[0]['bare']['unsubscribed']:.1f} %); "
        f"idle: {statistics.median(r['ours']['idle'] for r in rounds):.2f} % "
        f"(bare {statistics.median(r['bare']['idle'] for r in rounds):.2f} %)"
    )
    return [Sample(r["ours"]["churn"], r["bare"]["churn"], note=note) for r in rounds]


def fleet_fan_out(ctx: Context) -> list[Sample]:
    return [
        Sample(
            statistics.median(r["ours"]["fan_out"]),
            statistics.median(r["bare"]["fan_out"]),
            ours_latencies=r["ours"]["fan_out"],
            bare_latencies=r["bare"]["fan_out"],
            note=f"{len(r['ours']['fan_out'])} changes a round; headline: the median",
        )
        for r in _fleet(ctx)
    ]


_FLEET = "1,000 endpoints in 100 services, 50 subscribed ADS clients"

ROWS = [
    Row(
        "mesh-drain-ack",
        _TARGET,
        "p50 / p99 (report)",
        "a stop's drain: from the manager taking the stop to every subscribed client's ACK "
        "of the assignment marking the replica DRAINING",
        "a bare grpc.aio ADS server pushing one assignment (the same builders' bytes) to the "
        "same grpcio clients, from the push's call to the last ACK",
        "ms",
        False,
        drain_ack,
        latency=True,
        scale=1e3,
    ),
    Row(
        "mesh-stop-failed",
        _TARGET,
        "0",
        "failed calls through xds:/// while replicas are stopped (StopContainer), with the drain",
        "the same stops without the drain (mesh_drain_timeout 0: a plain stop, as Kubernetes does)",
        "calls",
        False,
        lambda ctx: _failures(ctx, "stop"),
    ),
    Row(
        "mesh-scale-failed",
        _TARGET,
        "0",
        "failed calls through xds:/// while the service is scaled down by one "
        "(ScaleContainer), with the drain",
        "the same scale-down without the drain",
        "calls",
        False,
        lambda ctx: _failures(ctx, "scale-down"),
    ),
    Row(
        "mesh-evict-failed",
        _TARGET,
        "0",
        "failed calls through xds:/// while a replica is evicted (EvictContainer), with the drain",
        "the same eviction without the drain",
        "calls",
        False,
        lambda ctx: _failures(ctx, "evict"),
    ),
    Row(
        "mesh-rollout-failed",
        _TARGET,
        "0",
        "failed calls through xds:/// while a changed spec is rolled out (ApplySpecs: a new "
        "replica ready, then an old one drained and stopped; 3 replicas, the quick run 1), "
        "with the drain",
        "the same rollout without the drain",
        "calls",
        False,
        lambda ctx: _failures(ctx, "rollout"),
    ),
    Row(
        "mesh-rss",
        _TARGET,
        "context",
        f"RSS of the manager, {_FLEET}",
        "a bare grpc.aio server holding the same 1,000 Lifecycle and 50 ADS streams, serving "
        "the same bytes",
        "MiB",
        False,
        fleet_rss,
    ),
    Row(
        "mesh-cpu",
        _TARGET,
        "context",
        f"manager CPU (% of a core), {_FLEET}, endpoints changing",
        "the bare server pushing the same bytes to the 50 streams on the same changes",
        "%",
        False,
        fleet_cpu,
    ),
    Row(
        "mesh-fan-out",
        _TARGET,
        "context",
        f"a push's fan-out: one endpoint change (a session lost or back) until the last of "
        f"the 50 clients has its assignment, {_FLEET}",
        "the bare server pushing the same assignment's bytes on the same change",
        "ms",
        False,
        fleet_fan_out,
        latency=True,
        scale=1e3,
    ),
]
