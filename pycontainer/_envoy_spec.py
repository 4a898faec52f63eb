"""The checks of a spec's Envoy settings (spec.envoy, for proxy: envoy), in
one home: the manager refuses a spec failing them (INVALID_ARGUMENT) and the
sidecar refuses to start with them, each saying what to fix. Pure: no
import beyond the generated messages (the manager does not load the sidecar)."""

from __future__ import annotations

from .v1 import mesh_pb2

__all__ = ["check_envoy", "host_port"]


def host_port(address: str, what: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT or [V6]:PORT; ValueError naming ``what``."""
    host, sep, port = address.removeprefix("dns:///").rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what} {address!r} is not HOST:PORT (such as 127.0.0.1:9001)")
    return host, int(port)


def check_envoy(envoy: mesh_pb2.EnvoySettings) -> None:
    """ValueError saying what to fix in ``envoy``, before anything starts."""
    services = [u.service for u in envoy.upstreams]
    doubled = sorted({s for s in services if services.count(s) > 1})
    if doubled:
        raise ValueError(f"envoy.upstreams names {', '.join(doubled)} more than once")
    for upstream in envoy.upstreams:
        if not upstream.service:
            raise ValueError("envoy.upstreams: each needs the service it reaches")
        _, port = host_port(upstream.listen, f"envoy upstream {upstream.service}'s listen")
        if port == 0:
            raise ValueError(
                f"envoy upstream {upstream.service}'s listen {upstream.listen!r} needs a "
                "fixed port: the program dials it"
            )
    if not envoy.program_address:
        if envoy.inbound_listen:
            raise ValueError(
                "envoy.inbound_listen needs envoy.program_address: where the program "
                "serves, which Envoy forwards the inbound traffic to"
            )
        return
    _, program_port = host_port(envoy.program_address, "envoy.program_address")
    if program_port == 0:
        raise ValueError("envoy.program_address needs the program's port, not 0")
    host_port(envoy.inbound_listen or "127.0.0.1:0", "envoy.inbound_listen")
