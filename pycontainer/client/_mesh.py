"""Proxyless clients of the mesh: gRPC's xDS bootstrap, and channels to ``xds:///NAME``.

A grpcio app reaches a mesh service by dialling ``xds:///NAME``; its xDS
client reads the bootstrap file ``$GRPC_XDS_BOOTSTRAP`` names to find the
control plane (the manager's ADS) and to say who it is (the node). The
manager writes one for every container it launches; ``pycontainer mesh
bootstrap`` prints one for any other program. This module is the one home of
that file's content (:func:`bootstrap`):

- ``xds_servers``: the manager, dialled in plaintext (an ``--insecure``
  manager) or with mutual TLS (gRFC A65's ``tls`` channel credentials: the
  peer's certificate and the CA, reread when renewed);
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


def bootstrap(
    manager: str,
    *,
    node_id: str,
    cluster: str = "",
    zone: str = "",
    tls_dir: str | os.PathLike[str] | None = None,
    refresh: datetime.timedelta = CERTIFICATE_REFRESH,
) -> dict[str, Any]:
    """The xDS bootstrap of a proxyless client (as JSON-ready data).

    ``manager`` is the manager's HOST:PORT; ``node_id`` who the client is (a
    launched container's id: the manager's mesh status lists clients by it);
    ``cluster`` and ``zone`` the node's cluster and locality. With
    ``tls_dir`` (a directory with ``tls.pem`` and ``ca.pem`` of a certificate
    the manager's CA issued) the manager is dialled with mutual TLS and the
    mesh's clusters get that certificate for mutual TLS to their endpoints;
    without it, plaintext (an ``--insecure`` manager)."""
    if not node_id:
        raise ValueError("the bootstrap needs a node id (who the client is)")
    server: dict[str, Any] = {
        "server_uri": manager,
        "channel_creds": [{"type": "insecure"}],
        "server_features": ["xds_v3"],
    }
    node: dict[str, Any] = {"id": node_id}
    if cluster:
        node["cluster"] = cluster
    if zone:
        node["locality"] = {"zone": zone}
    out: dict[str, Any] = {"xds_servers": [server], "node": node}
    if tls_dir is not None:
        files = _tls_files(tls_dir, refresh)
        # gRFC A65: the manager's server certificate is checked against the
        # CA and the server_uri's host (the manager's certificate names its
        # listen host and 127.0.0.1).
        server["channel_creds"] = [{"type": "tls", "config": files}]
        out["certificate_providers"] = {
            CERTIFICATE_PROVIDER: {"plugin_name": "file_watcher", "config": files}
        }
    return out


def bootstrap_json(manager: str, **options: Any) -> str:
    """:func:`bootstrap` as the file's text."""
    return json.dumps(bootstrap(manager, **options), indent=2) + "\n"


def write_bootstrap(path: str | os.PathLike[str], manager: str, **options: Any) -> Path:
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
