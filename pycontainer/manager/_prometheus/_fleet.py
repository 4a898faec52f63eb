"""The manager's own metrics: a prometheus-client Collector that reads the
manager's live state when scraped (on the manager's loop: the registry,
the sessions, the mesh and the event bus are the loop's).

Nothing is counted for it on the way: the figures are those the manager
keeps anyway (its registry, its event bus's counts by type, the xDS
server's ACK/NACK counts, the state store writer's health) and the command
latencies Sessions.command records (_commandstats). A scrape walks the
registry once: some milliseconds for 10,000 containers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ... import limits
from ..._prometheus import Families, cumulative_buckets
from ...v1 import container_pb2, manager_pb2
from .._commandstats import COMMAND_LATENCY_BOUNDS
from .._registry import state_word
from ._scrape import Scraper

if TYPE_CHECKING:
    from .._manager import Manager

__all__ = ["FleetCollector", "StandbyCollector", "leader_family"]

_STATES = [
    number
    for number in container_pb2.LifecycleState.values()
    if number != container_pb2.LIFECYCLE_STATE_UNSPECIFIED
]
_P = "pycontainer_manager_"


def leader_family(leading: bool) -> GaugeMetricFamily:
    """``pycontainer_manager_leader``: 1 on the leader, 0 on a standby (the
    one definition both faces give)."""
    return GaugeMetricFamily(
        _P + "leader",
        "1 while this manager is the leader of its etcd election, 0 while it is a standby.",
        value=1 if leading else 0,
    )


def _state(number: int) -> str:
    return state_word(number).lower()


def _event_type(number: int) -> str:
    known = manager_pb2.EventType.DESCRIPTOR.values_by_number.get(number)
    return known.name.removeprefix("EVENT_TYPE_").lower() if known is not None else "unknown"


def _xds_type(key: str) -> str:
    # type.googleapis.com/envoy.config.listener.v3.Listener -> Listener
    return key.rsplit(".", 1)[-1]


class FleetCollector:
    """Collects the fleet's figures from ``manager`` at scrape time."""

    def __init__(self, manager: Manager, scraper: Scraper) -> None:
        self._manager = manager
        self._scraper = scraper

    def collect(self) -> Iterable[Metric]:
        m = self._manager
        yield from self._containers()
        yield from self._events(m.events.published)
        yield self._commands()
        yield from self._xds()
        yield from self._store()
        if m.sessions.epoch:  # on etcd: this manager leads, in that term
            yield leader_family(leading=True)
            yield GaugeMetricFamily(
                _P + "leader_epoch",
                "The leader's term (its epoch): every command it sends carries it.",
                value=m.sessions.epoch,
            )
        yield self._scrape_errors()
        # The manager's own gRPC server (the Manager and Lifecycle APIs).
        own = Families()
        own.add_rpc_methods(m.rpc_stats.figures(), {})
        yield from own.metrics()

    def _containers(self) -> Iterable[Metric]:
        by_state = dict.fromkeys(_STATES, 0)
        by_spec: dict[tuple[str, int], int] = {}
        specs: set[str] = set()
        sessions = pending = ready = 0
        for entry in self._manager.registry.entries.values():
            by_state[entry.state] = by_state.get(entry.state, 0) + 1
            if entry.session is not None:
                sessions += 1
            if entry.pending:
                pending += len(entry.pending)
            if entry.serving:
                ready += 1
            if entry.spec is not None:
                name = entry.spec.name
                if name not in specs and len(specs) >= limits.MAX_METRICS_SPECS:
                    name = ""
                else:
                    specs.add(name)
                key = (name, entry.state)
                by_spec[key] = by_spec.get(key, 0) + 1
        states = GaugeMetricFamily(
            _P + "containers",
            "Containers the manager knows, by lifecycle state.",
            labels=["state"],
        )
        for number, count in sorted(by_state.items()):
            states.add_metric([_state(number)], count)
        yield states
        replicas = GaugeMetricFamily(
            _P + "spec_containers",
            "Containers the manager launched from specs, by spec name and lifecycle state "
            f'(past {limits.MAX_METRICS_SPECS} names, the rest under spec="").',
            labels=["spec", "state"],
        )
        for (spec, state), count in sorted(by_spec.items()):
            replicas.add_metric([spec, _state(state)], count)
        yield replicas
        yield GaugeMetricFamily(
            _P + "sessions",
            "Lifecycle sessions connected (containers dialled in).",
            value=sessions,
        )
        yield GaugeMetricFamily(
            _P + "containers_serving",
            "Containers running and ready: those the mesh sends traffic to.",
            value=ready,
        )
        yield GaugeMetricFamily(
            _P + "commands_pending",
            "Commands sent down sessions and not yet answered.",
            value=pending,
        )

    def _events(self, published: dict[int, int]) -> Iterable[Metric]:
        E = manager_pb2
        for name, kind, help_text in (
            ("container_restarts", E.EVENT_TYPE_RESTARTED, "Containers restarted (a new run)."),
            (
                "container_evictions",
                E.EVENT_TYPE_EVICTED,
                "Containers evicted for higher priorities.",
            ),
            ("sessions_lost", E.EVENT_TYPE_LOST, "Lifecycle sessions lost (not closed by a stop)."),
        ):
            yield CounterMetricFamily(
                _P + name, help_text + " Since this manager started.", value=published.get(kind, 0)
            )
        events = CounterMetricFamily(
            _P + "events",
            "Events the manager published (WatchEvents), by type, since it started.",
            labels=["type"],
        )
        for number in manager_pb2.EventType.values():
            if number != manager_pb2.EVENT_TYPE_UNSPECIFIED:
                events.add_metric([_event_type(number)], published.get(number, 0))
        yield events

    def _commands(self) -> Metric:
        latency = HistogramMetricFamily(
            _P + "command_duration_seconds",
            "Time from sending a command down a Lifecycle session to its result, by command "
            "and outcome (the result's status code; DEADLINE_EXCEEDED when none came in time, "
            "CANCELLED when the caller gave up).",
            labels=["command", "outcome"],
            unit="seconds",
        )
        latencies = self._manager.sessions.command_stats.latencies
        for (kind, outcome), stats in sorted(latencies.items()):
            latency.add_metric(
                [kind, outcome],
                cumulative_buckets(COMMAND_LATENCY_BOUNDS, stats.bucket_counts),
                stats.sum,
            )
        return latency

    def _xds(self) -> Iterable[Metric]:
        ads = self._manager.mesh.ads
        clients = GaugeMetricFamily(
            _P + "xds_clients",
            "xDS clients connected to the mesh's control plane, by kind (grpc: proxyless "
            "gRPC, envoy).",
            labels=["kind"],
        )
        kinds = {"grpc": 0, "envoy": 0, **ads.clients_by_kind()}
        for kind, count in sorted(kinds.items()):
            clients.add_metric([kind], count)
        yield clients
        yield CounterMetricFamily(
            _P + "xds_streams",
            "xDS (ADS) streams opened since the manager started.",
            value=ads.streams_opened,
        )
        for name, counts, help_text in (
            ("xds_acks", ads.acks, "xDS responses clients accepted (ACK), by resource type."),
            (
                "xds_nacks",
                ads.nacks,
                "xDS responses clients rejected (NACK: they keep their last good config), "
                "by resource type.",
            ),
        ):
            family = CounterMetricFamily(_P + name, help_text, labels=["type"])
            for key, count in sorted(counts.items()):
                family.add_metric([_xds_type(key)], count)
            yield family
        rejecting = GaugeMetricFamily(
            _P + "xds_clients_rejecting",
            "xDS clients whose last answer of a resource type was a NACK, by type.",
            labels=["type"],
        )
        for key, count in sorted(ads.rejecting().items()):
            rejecting.add_metric([_xds_type(key)], count)
        yield rejecting

    def _store(self) -> Iterable[Metric]:
        writer = self._manager.store_writer
        health = writer.health
        yield GaugeMetricFamily(
            _P + "state_store_healthy",
            "1 while the state store takes the manager's writes, 0 while they fail "
            "(the manager's health says why).",
            value=1 if health.ok else 0,
        )
        yield GaugeMetricFamily(
            _P + "state_store_pending_records",
            "Container records waiting to be written to the state store.",
            value=health.pending,
        )
        yield CounterMetricFamily(
            _P + "state_store_write_failures",
            "Writes of container records the state store refused (each retried).",
            value=writer.write_failures,
        )

    def _scrape_errors(self) -> Metric:
        registry = self._manager.registry
        self._scraper.forget_unknown(lambda container_id: registry.get(container_id) is not None)
        errors = CounterMetricFamily(
            _P + "scrape_errors",
            "Scrapes of a container's metrics through the manager that got no answer "
            "(/metrics/containers, /containers/{name}/metrics), by container.",
            labels=["container", "name"],
        )
        for container_id, count in sorted(self._scraper.errors.items()):
            entry = registry.get(container_id)
            errors.add_metric([container_id, entry.name if entry else ""], count)
        return errors


class StandbyCollector:
    """A standby's figures (it has no fleet of its own: the leader's
    /metrics has it): that it does not lead."""

    def collect(self) -> Iterable[Metric]:
        yield leader_family(leading=False)
