"""A container's logs and app metrics exported as the OTEL_* variables ask:
the records its log capture takes, handed to an SDK LoggerProvider (with
their trace and span ids), and exporting readers on the MeterProvider the
app's metrics come from. Resource: service.name from OTEL_SERVICE_NAME or
the container's name, its id as container.id."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.resources import Resource

from .._otel import (
    MetricExport,
    export_handler,
    logger_provider_from_environ,
    metric_export_from_environ,
    service_resource,
)
from ._settings import ContainerSettings

__all__ = ["TelemetryExport"]


class TelemetryExport:
    """What one container exports; made (and the variables checked, raising
    TelemetryConfigError) when the container is put to use."""

    def __init__(
        self,
        settings: ContainerSettings,
        logger_provider: LoggerProvider | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.resource: Resource = service_resource(
            settings.name, {"service.version": settings.version, "container.id": settings.id}
        )
        self.metrics: MetricExport | None = metric_export_from_environ(environ)
        # An app's own provider is the app's to shut down; one made here is ours.
        self._owned = logger_provider is None
        self.logger_provider = logger_provider
        if logger_provider is None and settings.log_level is not None:  # else nothing to send
            self.logger_provider = logger_provider_from_environ(self.resource, environ)
        self.log_handler: logging.Handler | None = (
            export_handler(self.logger_provider) if self.logger_provider is not None else None
        )

    def close(self) -> None:
        """Flush and end the log export made here (an app's provider stays)."""
        if self._owned and self.logger_provider is not None:
            self.logger_provider.shutdown()
