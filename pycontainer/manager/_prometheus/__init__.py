"""The manager's Prometheus face: ``/metrics`` (the fleet), and each
container's own metrics scraped through the manager with a ``container``
label (``/metrics/containers``, ``/containers/{name_or_id}/metrics``), in
the exposition formats prometheus-client writes. Served by the manager's
HTTP face (_http, ``--http-listen``); a standby's gives ``/metrics``
alone, saying it does not lead."""

from ._routes import routes, standby_routes

__all__ = ["routes", "standby_routes"]
