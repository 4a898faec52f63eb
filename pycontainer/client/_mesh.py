"""Proxyless clients of the mesh: gRPC's xDS bootstrap, and channels to ``xds:///NAME``.

A grpcio app reaches a mesh service by dialling ``xds:///NAME``; its xDS
client reads the bootstrap file ``$GRPC_XDS_BOOTSTRAP`` names to find the
control plane (the manager's ADS) and to say who it is (the node). The
manager writes one for every container it launches; ``pycontainer mesh
bootstrap`` prints one for any other program. This module is the one home of
that file's content (:func:`bootstrap`):

- ``xds_servers``: the manager, dialled in plaintext (an ``--insecure``
  manager) or with mutual TLS (gRFC A65's ``tls`` channel credentials: the
  peer's certificate and the CA, reread when renewed). Managers in high
  availability are named all in one ``server_uri`` (``ipv4:A,B,C``): the xDS
  channel's pick_first moves to the next one that answers when its manager
  dies, and a standby forwards the ADS stream to the leader. (gRPC's fallback
  across several ``xds_servers``, gRFC A71, moves only while resources are
  not cached yet: a client that has them would stay on a dead manager.)
  Addresses that cannot share a URI (host names, IPv4 and IPv6 mixed) are
  listed one per server, in order, and so are they all under mutual TLS:
  gRPC checks the manager's certificate against the URI's authority, which
  for several addresses names no host (give a DNS name that resolves to
  every manager, and that their certificates name, for the first behaviour);
- ``node``: its id (a launched container's id), cluster and locality;
- ``certificate_providers``: the instance ``pycontainer`` (gRFC A29's
  ``file_watcher``) that the manager's clusters name for mutual TLS between
  services: the client's own certificate, and the CA the servers' are checked
  against.

:func:`mesh_channel` / :func:`mesh_aio_channel` dial a service with xDS
credentials when the program has a certificate ($PYCONTAINER_TLS_DIR: the
mesh is mutual TLS), so that the clusters' TLS settings apply, and in
plaintext otherwise::

    from pycontainer.client import mesh_channel

    with mesh_channel("orders") as channel:
        stub = OrdersStub(channel)

Importing this module costs no grpc: it is imported by a channel's first dial.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._tls_env import TLS_DIR_ENV

if TYPE_CHECKING:
    import grpc
    import grpc.aio

__all__ = [
    "CERTIFICATE_PROVIDER",
    "CERTIFICATE_REFRESH",
    "XDS_BOOTSTRAP_ENV",
    "bootstrap",
    "bootstrap_json",
    "mesh_aio_channel",
    "mesh_channel",
    "mesh_target",
    "server_uris",
    "write_bootstrap",
]

#: The environment variable grpcio's xDS client reads the bootstrap file's path from.
XDS_BOOTSTRAP_ENV = "GRPC_XDS_BOOTSTRAP"
#: The certificate provider instance the manager's clusters name for mutual
#: TLS to their endpoints (CommonTlsContext's certificate provider instance).
CERTIFICATE_PROVIDER = "pycontainer"
#: How often grpcio rereads the certificate files: a renewed certificate
#: (the manager renews at two thirds of its lifetime) is taken within it.
CERTIFICATE_REFRESH = datetime.timedelta(minutes=1)

# The peer's TLS files, by their names in its TLS directory (pycontainer.security's
# LEAF_FILE and TRUST_FILE; not imported: that would import cryptography). The
# key and the certificate share one file: grpcio reads the key and the chain
# from it each (a PEM reader skips the other's blocks).
_LEAF = "tls.pem"
_TRUST = "ca.pem"


def _duration_json(value: datetime.timedelta) -> str:
    """A google.protobuf.Duration in its JSON form ("60s", "0.500s")."""
    seconds = value.total_seconds()
    return f"{seconds:.0f}s" if seconds == int(seconds) else f"{seconds:.3f}s"


def _tls_files(tls_dir: str | os.PathLike[str], refresh: datetime.timedelta) -> dict[str, str]:
    directory = Path(tls_dir).absolute()
    return {
        "certificate_file": str(directory / _LEAF),
        "private_key_file": str(directory / _LEAF),
        "ca_certificate_file": str(directory / _TRUST),
        "refresh_interval": _duration_json(refresh),
    }


def server_uris(managers: str | Sequence[str], *, separate: bool = False) -> list[str]:
    """The ``server_uri`` of each xDS server the bootstrap names for
    ``managers`` (HOST:PORT each, or one string of them comma-separated):
    one ``ipv4:A,B,C`` (or ``ipv6:``) URI when they are all such literals, so
    that one xDS channel reaches whichever of them answers; otherwise, or
    when ``separate`` (mutual TLS: the server's name is checked against the
    URI's authority), each address its own."""
    given = managers.split(",") if isinstance(managers, str) else list(managers)
    addresses = [a.strip() for a in given if a.strip()]
    if not addresses:
        raise ValueError("the bootstrap needs the manager's address (HOST:PORT)")
    if len(addresses) == 1 or separate:
        return addresses
    for scheme, literal in (("ipv4", _ipv4_literal), ("ipv6", _ipv6_literal)):
        if all(literal(a) for a in addresses):
            return [f"{scheme}:{','.join(addresses)}"]
    return addresses


def _host_port(address: str) -> tuple[str, str] | None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host, port


def _ipv4_literal(address: str) -> bool:
    import ipaddress

    split = _host_port(address)
    if split is None:
        return False
    try:
        ipaddress.IPv4Address(split[0])
    except ValueError:
        return False
    return True


def _ipv6_literal(address: str) -> bool:
    import ipaddress

    split = _host_port(address)
    if split is None or not (split[0].startswith("[") and split[0].endswith("]")):
        return False
    try:
        ipaddress.IPv6Address(split[0][1:-1])
    except ValueError:
        return False
    return True


def bootstrap(
    manager: str | Sequence[str],
    *,
    node_id: str,
    cluster: str = "",
    zone: str = "",
    tls_dir: str | os.PathLike[str] | None = None,
    refresh: datetime.timedelta = CERTIFICATE_REFRESH,
) -> dict[str, Any]:
    """The xDS bootstrap of a proxyless client (as JSON-ready data).

    ``manager`` is the manager's HOST:PORT (managers in high availability:
    every one's, comma-separated or a sequence; :func:`server_uris`);
    ``node_id`` who the client is (a
    launched container's id: the manager's mesh status lists clients by it);
    ``cluster`` and ``zone`` the node's cluster and locality. With
    ``tls_dir`` (a directory with ``tls.pem`` and ``ca.pem`` of a certificate
    the manager's CA issued) the manager is dialled with mutual TLS and the
    mesh's clusters get that certificate for mutual TLS to their endpoints;
    without it, plaintext (an ``--insecure`` manager)."""
    if not node_id:
        raise ValueError("the bootstrap needs a node id (who the client is)")
    servers: list[dict[str, Any]] = [
        {
            "server_uri": uri,
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }
        for uri in server_uris(manager, separate=tls_dir is not None)
    ]
    node: dict[str, Any] = {"id": node_id}
    if cluster:
        node["cluster"] = cluster
    if zone:
        node["locality"] = {"zone": zone}
    out: dict[str, Any] = {"xds_servers": servers, "node": node}
    if tls_dir is not None:
        files = _tls_files(tls_dir, refresh)
        # gRFC A65: the manager's server certificate is checked against the
        # CA and the server_uri's host (the manager's certificate names its
        # listen host and 127.0.0.1).
        for server in servers:
            server["channel_creds"] = [{"type": "tls", "config": files}]
        out["certificate_providers"] = {
            CERTIFICATE_PROVIDER: {"plugin_name": "file_watcher", "config": files}
        }
    return out


def bootstrap_json(manager: str | Sequence[str], **options: Any) -> str:
    """:func:`bootstrap` as the file's text."""
    return json.dumps(bootstrap(manager, **options), indent=2) + "\n"


def write_bootstrap(
    path: str | os.PathLike[str], manager: str | Sequence[str], **options: Any
) -> Path:
    """Write :func:`bootstrap` to ``path`` (replaced atomically: a client
    starting meanwhile reads the old file or the new one); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text(bootstrap_json(manager, **options))
    os.replace(temporary, target)
    return target


def mesh_target(service: str) -> str:
    """The target that reaches mesh service ``service`` (``xds:///NAME``)."""
    if not service or "/" in service or ":" in service:
        raise ValueError(
            f"mesh service name {service[:64]!r}: give the name alone, such as orders "
            "(it is dialled as xds:///orders)"
        )
    return f"xds:///{service}"


def _mutual_tls(tls: bool | None) -> bool:
    return bool(os.environ.get(TLS_DIR_ENV)) if tls is None else tls


def _xds_credentials() -> grpc.ChannelCredentials:
    import grpc
    import grpc.experimental

    # The fallback is used where a cluster asks for no TLS (a plaintext endpoint).
    fallback = grpc.experimental.insecure_channel_credentials()  # type: ignore[no-untyped-call]
    return grpc.xds_channel_credentials(fallback)


def mesh_channel(
    service: str, *, tls: bool | None = None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A channel to mesh service ``service`` (``xds:///NAME``), through the
    bootstrap in $GRPC_XDS_BOOTSTRAP. ``tls``: xDS credentials, so that the
    mesh's mutual TLS applies (default: when $PYCONTAINER_TLS_DIR is set, as
    for a container a secure manager launched); else plaintext."""
    import grpc

    target = mesh_target(service)
    if _mutual_tls(tls):
        return grpc.secure_channel(target, _xds_credentials(), options=list(options))
    return grpc.insecure_channel(target, options=list(options))


def mesh_aio_channel(
    service: str, *, tls: bool | None = None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """:func:`mesh_channel` for asyncio."""
    import grpc.aio

    target = mesh_target(service)
    if _mutual_tls(tls):
        return grpc.aio.secure_channel(target, _xds_credentials(), options=list(options))
    return grpc.aio.insecure_channel(target, options=list(options))
