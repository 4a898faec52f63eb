"""Metrics of the container: gRPC server figures (:mod:`._rpc_stats`),
OpenTelemetry app metrics (:mod:`._otel`), and the WatchMetrics stream that
puts them together with process figures (:mod:`._watch`)."""

from ._exported import EXPORTED_SCOPES, export_container_figures
from ._otel import AppMetrics
from ._rpc_stats import LATENCY_BOUNDS, MethodStats, RpcStats
from ._watch import MAX_INTERVAL, MIN_INTERVAL, MetricFilter, MetricsWatch, process_metrics

__all__ = [
    "EXPORTED_SCOPES",
    "LATENCY_BOUNDS",
    "MAX_INTERVAL",
    "MIN_INTERVAL",
    "AppMetrics",
    "MethodStats",
    "MetricFilter",
    "MetricsWatch",
    "RpcStats",
    "export_container_figures",
    "process_metrics",
]
