"""A container's logs and app metrics exported as the OTEL_* variables ask:
the records its log capture takes, handed to an SDK LoggerProvider (with
their trace and span ids), and exporting readers on the MeterProvider the
app's metrics come from. Resource: service.name from OTEL_SERVICE_NAME or
the container's name, its id as container.id."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.resources import Resource

from .._otel import (
    MetricExport,
    export_handler,
    logger_provider_from_environ,
    metric_export_from_environ,
    service_resource,
)
from ._logs._buffer import Level
from ._settings import ContainerSettings

__all__ = ["LineExport", "TelemetryExport"]

#: Takes lines that arrived together: logger, messages, their levels, attributes.
LineExport = Callable[[str, Sequence[str], Sequence[Level], Mapping[str, str]], object]


def _python_level(severity: int) -> int:
    """The Python logging level of an OpenTelemetry severity number (each
    band of four is one of ten: INFO=9 -> 20, WARN=13 -> 30, INFO2=10 -> 21)."""
    band, step = divmod(max(severity, 1) - 1, 4)
    return band * 10 + step


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

    def line_export(self) -> LineExport | None:
        """Where lines the container takes other than through logging (a
        sidecar's program output) go to be exported; None when logs are not."""
        handler = self.log_handler
        if handler is None:
            return None

        def export(
            logger: str,
            messages: Sequence[str],
            levels: Sequence[Level],
            attributes: Mapping[str, str],
        ) -> None:
            created = time.time()
            for message, level in zip(messages, levels, strict=True):
                record = logging.LogRecord(
                    logger, _python_level(level.number), "", 0, message, None, None
                )
                record.created = created
                record.levelname = level.text  # the export's severity text
                for key, value in attributes.items():  # as `extra` would
                    record.__dict__.setdefault(key, value)
                try:
                    handler.handle(record)
                except Exception:  # never into the program's output pump
                    handler.handleError(record)

        return export

    def close(self) -> None:
        """Flush and end the log export made here (an app's provider stays)."""
        if self._owned and self.logger_provider is not None:
            self.logger_provider.shutdown()
