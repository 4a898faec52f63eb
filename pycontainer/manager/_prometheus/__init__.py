"""The manager's Prometheus face: ``/metrics`` (the fleet), and each
container's own metrics scraped through the manager with a ``container``
label (``/metrics/containers``, ``/containers/{name_or_id}/metrics``), in
the exposition formats prometheus-client writes. Served by the manager's
HTTP face (_http, ``--http-listen``)."""

from ._routes import routes

__all__ = ["routes"]
