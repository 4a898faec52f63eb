"""Application metrics: what the app records through the OpenTelemetry
metrics API, read by an in-memory reader pycontainer registers."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence

from opentelemetry import metrics as otel_metrics
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricReader,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData
from opentelemetry.sdk.metrics.export import Metric as SdkMetric
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import Resource

from pycontainer.v1 import metrics_pb2

from ._exported import EXPORTED_SCOPES

__all__ = ["AppMetrics"]

_log = logging.getLogger(__name__)


def _cumulative_reader() -> InMemoryMetricReader:
    # Cumulative, so that any number of watches can collect concurrently
    # without stealing each other's deltas.
    cumulative = AggregationTemporality.CUMULATIVE
    return InMemoryMetricReader(
        preferred_temporality={
            Counter: cumulative,
            UpDownCounter: cumulative,
            Histogram: cumulative,
            ObservableCounter: cumulative,
            ObservableUpDownCounter: cumulative,
            ObservableGauge: cumulative,
        }
    )


# The provider and reader pycontainer installed globally, shared by every
# container of the process.
_INSTALLED: tuple[MeterProvider, InMemoryMetricReader] | None = None


class AppMetrics:
    """The application's OpenTelemetry metrics, read through an in-memory reader.

    The application records as usual (``metrics.get_meter("app")
    .create_counter(...)``); the metrics appear here once :attr:`reader` is
    registered with the MeterProvider the application's meters come from:

    * :meth:`install_global` makes an SDK MeterProvider with the reader and
      sets it as OpenTelemetry's global provider, if none is set yet;
    * an application that sets its own SDK MeterProvider must include the
      reader itself: ``MeterProvider(metric_readers=[app_metrics.reader, ...])``
      (older SDKs cannot add a reader to a provider once made;
      :meth:`install_global` adds it where the SDK can, and warns otherwise).
      Such an application should set its provider before the container calls
      :meth:`install_global`: the global provider can be set only once.

    Pass ``reader`` to use a reader made elsewhere; it should be cumulative.
    Exponential histograms are not reported (the snapshot has no place for them).
    """

    def __init__(self, reader: InMemoryMetricReader | None = None) -> None:
        self.reader: InMemoryMetricReader = reader if reader is not None else _cumulative_reader()
        self.provider: MeterProvider | None = None
        """The MeterProvider :meth:`install_global` made, if it made one."""
        # The application's own provider install_global added the reader to.
        self._added_to: MeterProvider | None = None

    def install_global(
        self,
        *,
        resource: Resource | None = None,
        views: Sequence[View] = (),
        exporting: Callable[[], Sequence[MetricReader]] | None = None,
    ) -> bool:
        """Feed :attr:`reader` from OpenTelemetry's global MeterProvider.

        Sets a new SDK MeterProvider (with ``resource`` and ``views``, and the
        readers ``exporting`` makes beside :attr:`reader`) as the global one
        if none is set yet; otherwise adds the reader to the global SDK
        provider where the SDK allows it (an app's own provider exports as the
        app set it up). Returns whether the reader is now registered; logs a
        warning when it is not.
        """
        global _INSTALLED
        with _INSTALL_LOCK:
            if _is_registered(self.reader):
                return True
            current = otel_metrics.get_meter_provider()
            if _INSTALLED is not None and current is _INSTALLED[0]:
                # Another container of this process installed it: the metrics
                # are process-wide, so share its reader (works on every SDK).
                self.provider, self.reader = _INSTALLED
                return True
            if _is_unset(current):
                # Made only now: each exporting reader starts a thread.
                extra = list(exporting()) if exporting is not None else []
                provider = MeterProvider(
                    metric_readers=[self.reader, *extra], resource=resource, views=list(views)
                )
                otel_metrics.set_meter_provider(provider)
                current = otel_metrics.get_meter_provider()
                if current is provider:
                    self.provider = provider
                    _INSTALLED = (provider, self.reader)
                    return True
                # The application set one at the same moment: it wins, and
                # the reader is now spoken for by the provider made here.
                return self._warn_not_registered(current)
            add_reader = getattr(current, "add_metric_reader", None)
            if isinstance(current, MeterProvider) and add_reader is not None:
                add_reader(self.reader)
                self._added_to = current
                return True
            return self._warn_not_registered(current)

    def uninstall(self) -> None:
        """Undo what :meth:`install_global` can undo: take the reader back out
        of the application's own provider. A global provider it set stays
        (OpenTelemetry sets the global provider once per process); it keeps
        serving the containers of this process that install later."""
        with _INSTALL_LOCK:
            provider, self._added_to = self._added_to, None
        if provider is not None:
            remove_reader = getattr(provider, "remove_metric_reader", None)
            if remove_reader is not None:
                remove_reader(self.reader)

    @staticmethod
    def _warn_not_registered(current: otel_metrics.MeterProvider) -> bool:
        _log.warning(
            "the global OpenTelemetry MeterProvider (%s) was set by the application and "
            "cannot take pycontainer's reader, so application metrics will not be "
            "reported; pass app_metrics.reader in MeterProvider(metric_readers=[...])",
            type(current).__name__,
        )
        return False

    def collect(self, include: Callable[[str], bool] | None = None) -> list[metrics_pb2.Metric]:
        """The current (cumulative) application metrics, optionally filtered by name."""
        if not _is_registered(self.reader):
            # The SDK would log a warning on every collect.
            return []
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        out = []
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                scope = scope_metrics.scope.name
                if scope in EXPORTED_SCOPES:  # the snapshot's own fields hold them
                    continue
                for metric in scope_metrics.metrics:
                    if include is not None and not include(metric.name):
                        continue
                    converted = _convert_metric(metric, scope)
                    if converted is not None:
                        out.append(converted)
        out.sort(key=lambda m: (m.name, m.scope))
        return out


_INSTALL_LOCK = threading.Lock()


def _is_registered(reader: InMemoryMetricReader) -> bool:
    # The SDK sets the collect callback when a MeterProvider takes the reader;
    # there is no public way to ask.
    return getattr(reader, "_collect", True) is not None


def _is_unset(provider: otel_metrics.MeterProvider) -> bool:
    # Until a provider is set, the API hands out its proxy provider (private).
    return type(provider).__name__ == "_ProxyMeterProvider"


def _convert_metric(metric: SdkMetric, scope: str) -> metrics_pb2.Metric | None:
    """One SDK metric as a message; None for kinds the snapshot cannot carry."""
    data = metric.data
    if isinstance(data, Sum):
        kind = (
            metrics_pb2.METRIC_KIND_COUNTER
            if data.is_monotonic
            else metrics_pb2.METRIC_KIND_UP_DOWN_COUNTER
        )
    elif isinstance(data, Gauge):
        kind = metrics_pb2.METRIC_KIND_GAUGE
    elif isinstance(data, HistogramData):
        kind = metrics_pb2.METRIC_KIND_HISTOGRAM
    else:
        return None  # exponential histograms: no field for them
    points = []
    for point in data.data_points:
        if isinstance(point, NumberDataPoint):
            pb = metrics_pb2.MetricPoint()
            if isinstance(point.value, int):
                pb.as_int = point.value
            else:
                pb.as_double = point.value
        elif isinstance(point, HistogramDataPoint):
            empty = point.count == 0
            pb = metrics_pb2.MetricPoint(
                histogram=metrics_pb2.Histogram(
                    count=point.count,
                    sum=point.sum,
                    explicit_bounds=point.explicit_bounds,
                    bucket_counts=point.bucket_counts,
                    min=0.0 if empty else point.min,
                    max=0.0 if empty else point.max,
                )
            )
        else:
            continue
        for key, value in (point.attributes or {}).items():
            pb.attributes[key] = _attribute_text(value)
        if point.start_time_unix_nano:
            pb.start_time.FromNanoseconds(point.start_time_unix_nano)
        pb.time.FromNanoseconds(point.time_unix_nano)
        points.append(pb)
    return metrics_pb2.Metric(
        name=metric.name,
        description=metric.description or "",
        unit=metric.unit or "",
        kind=kind,
        scope=scope,
        points=points,
    )


def _attribute_text(value: object) -> str:
    """An attribute value as text: strings as is, the rest as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)
