"""Prometheus metric families from the Management API's MetricsSnapshot: the
one conversion a container's HTTP face (``/metrics``) and the manager's
scrape-through of its containers both serve, the OpenTelemetry
specification's Prometheus naming rules (_names), and prometheus-client's
Collector over them (_collector)."""

from ._collector import FamiliesCollector, registry_of
from ._families import COUNTER, GAUGE, HISTOGRAM, Families, cumulative_buckets, snapshot_families
from ._names import label_name, metric_name, split_method, unit_suffix

__all__ = [
    "COUNTER",
    "GAUGE",
    "HISTOGRAM",
    "Families",
    "FamiliesCollector",
    "cumulative_buckets",
    "label_name",
    "metric_name",
    "registry_of",
    "snapshot_families",
    "split_method",
    "unit_suffix",
]
