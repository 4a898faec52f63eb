"""The container's own figures as OpenTelemetry instruments, so that an
OTLP export (OTEL_METRICS_EXPORTER) carries them beside the app's metrics,
as ``/metrics`` does:

- its process figures through the ecosystem's own instrumentation
  (``opentelemetry-instrumentation-system-metrics``: ``process.cpu.time``,
  ``process.memory.usage`` and the rest of OpenTelemetry's process semantic
  conventions, with the attributes it gives: ``type`` for the CPU mode),
  once per process;
- its gRPC server's per-method figures under the names of gRPC's own
  OpenTelemetry metrics (gRFC A66), so that dashboards made for grpc's
  plugin read them: ``grpc.server.call.started`` (a counter read from
  :class:`RpcStats` at each export) and ``grpc.server.call.duration`` (a
  histogram in seconds over :data:`LATENCY_BOUNDS`, recorded as each call
  ends), with ``grpc.method`` (no leading ``/``) and ``grpc.status``, and
  ``container.id`` to keep apart several containers of one process.

grpc's plugin itself (grpcio-observability) pins grpcio to its exact
version, so it is not used. Neither goes to the container's in-memory reader
(:data:`EXPORTED_SCOPES`): the snapshot has these figures in its own fields.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from ... import __version__
from ..._errors import status_code
from ._rpc_stats import LATENCY_BOUNDS, RpcStats

__all__ = ["EXPORTED_SCOPES", "export_container_figures"]

#: The meter the gRPC figures come from.
GRPC_SCOPE = "pycontainer.grpc"
#: The scopes of what is exported only (never a snapshot's app metrics).
EXPORTED_SCOPES = frozenset({GRPC_SCOPE, "opentelemetry.instrumentation.system_metrics"})

# The process figures asked of the instrumentation: OpenTelemetry's process
# semantic conventions (not its deprecated process.runtime.* names, and not
# disk I/O, which needs privileges in many containers).
_PROCESS_FIGURES: dict[str, list[str] | None] = {
    "process.cpu.time": ["user", "system"],
    "process.memory.usage": None,
    "process.memory.virtual": None,
    "process.thread.count": None,
    "process.open_file_descriptor.count": None,
    "process.context_switches": ["involuntary", "voluntary"],
}

_log = logging.getLogger("pycontainer")
_LOCK = threading.Lock()
# Per MeterProvider, the RpcStats of each exporting container by its id.
_SOURCES: dict[int, dict[str, RpcStats]] = {}


def export_container_figures(
    provider: MeterProvider, container_id: str, stats: RpcStats
) -> Callable[[], None]:
    """Export the process's figures and ``stats`` (the container
    ``container_id``'s) through ``provider``'s readers, from now on; the
    function that ends the export of ``stats`` (the container closing)."""
    with _LOCK:
        first = id(provider) not in _SOURCES
        sources = _SOURCES.setdefault(id(provider), {})
        sources[container_id] = stats
        if first:
            _instrument_process(provider)
            _register_grpc(provider, sources)
    duration = provider.get_meter(GRPC_SCOPE, __version__).create_histogram(
        "grpc.server.call.duration",
        unit="s",
        description="The time from a call's start to its end on the server (gRFC A66).",
        explicit_bucket_boundaries_advisory=list(LATENCY_BOUNDS),
    )

    def record(method: str, code: int, seconds: float) -> None:
        attributes = {
            "grpc.method": method.lstrip("/"),
            "grpc.status": status_code(code).name,
            "container.id": container_id,
        }
        duration.record(seconds, attributes)

    stats.on_call_end = record

    def end() -> None:
        stats.on_call_end = None
        with _LOCK:
            if sources.get(container_id) is stats:
                del sources[container_id]

    return end


def _instrument_process(provider: MeterProvider) -> None:
    try:
        # Imported only by a container that exports; the otlp extra's.
        from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor
    except ImportError:
        _log.warning(
            "the metrics export carries no process figures: install pycontainer-grpc[otlp] "
            "(opentelemetry-instrumentation-system-metrics)"
        )
        return
    instrumentor = SystemMetricsInstrumentor(config=_PROCESS_FIGURES)
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(meter_provider=provider)


def _register_grpc(provider: MeterProvider, sources: dict[str, RpcStats]) -> None:
    def started(options: CallbackOptions) -> Iterable[Observation]:
        with _LOCK:
            held = list(sources.items())
        for container_id, stats in held:
            for method, count in stats.started_counts():
                yield Observation(
                    count, {"grpc.method": method.lstrip("/"), "container.id": container_id}
                )

    provider.get_meter(GRPC_SCOPE, __version__).create_observable_counter(
        "grpc.server.call.started",
        callbacks=[started],
        unit="{call}",
        description="The calls started on the server (gRFC A66).",
    )
