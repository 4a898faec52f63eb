"""The Resource every signal of a process is exported with."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.sdk.resources import SERVICE_NAME, Resource

__all__ = ["service_resource"]


def service_resource(
    service_name: str | None, attributes: Mapping[str, str] | None = None
) -> Resource:
    """The SDK's resource (OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME and its
    own detectors) with ``attributes`` added, and ``service_name`` as
    service.name unless either variable names one."""
    detected = Resource.create()
    extra = dict(attributes or {})
    if service_name and str(detected.attributes.get(SERVICE_NAME, "")).startswith(
        "unknown_service"
    ):
        extra[SERVICE_NAME] = service_name
    return detected.merge(Resource(extra))
