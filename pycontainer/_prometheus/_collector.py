"""prometheus-client's side of the families: a Collector reading them fresh
on every scrape, and a registry of it alone."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["FamiliesCollector", "registry_of"]


class FamiliesCollector(Collector):
    """A Collector whose families are ``make()``'s, called at each scrape
    (a snapshot read then, or families made off the event loop)."""

    def __init__(self, make: Callable[[], Iterable[Metric]]) -> None:
        self._make = make

    def collect(self) -> Iterable[Metric]:
        return self._make()

    def describe(self) -> list[Metric]:
        # Nothing up front: registering must not collect (read a process's
        # and an app's metrics, or scrape a fleet).
        return []


def registry_of(collector: Collector) -> CollectorRegistry:
    """A registry of ``collector`` alone (none of prometheus-client's default
    collectors: a snapshot has the process figures)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
