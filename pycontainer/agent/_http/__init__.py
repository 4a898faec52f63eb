"""A container's HTTP face (``ContainerSettings.http_listen``,
$PYCONTAINER_HTTP_LISTEN): the paper's adapter pattern, the container's
health, metrics, info and config in the forms the outside world probes and
scrapes over HTTP (Kubernetes httpGet probes, Docker's HEALTHCHECK,
Prometheus), from the same parts and messages as its Management API."""

from ._face import FaceParts, build_app, probe_routes
from ._probes import LIFECYCLE_CHECK, Probe, ProbeAnswer, ProbeRow, answer, render
from ._serve import HttpFace, start_http_face

__all__ = [
    "LIFECYCLE_CHECK",
    "FaceParts",
    "HttpFace",
    "Probe",
    "ProbeAnswer",
    "ProbeRow",
    "answer",
    "build_app",
    "probe_routes",
    "render",
    "start_http_face",
]
