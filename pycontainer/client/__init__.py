"""Typed clients of pycontainer's APIs, blocking and asyncio.

- :class:`ManagerClient` / :class:`AsyncManagerClient`: the manager's Manager
  API (list, get, run, stop, pause, resume, checkpoint, restore, evict, scale,
  events, logs and metrics of every container);
- :class:`ManagementClient` / :class:`AsyncManagementClient`: one container's
  Management API (info, health, metrics, logs, profile, config);
- :func:`mesh_channel` / :func:`mesh_aio_channel`: a channel to a mesh
  service (``xds:///NAME``), and :func:`bootstrap` / :func:`write_bootstrap`:
  the gRPC xDS bootstrap that finds the manager's control plane.

Methods take the request message of ``pycontainer.v1`` and return its response
message; a failed call raises :class:`CallError` (``code``, ``details``,
``reached``, and ``request_id`` for a mutating call). Every mutating call
carries a request_id (AIP-155; a new UUID unless the request has one): a
retry with the same id is the same call, and ``get_operation`` tells its
outcome even when its answer was lost. The manager is dialled with mutual TLS, with the client
certificate ``--cert-dir``/``$PYCONTAINER_TLS_DIR``/``state/admin`` holds
(:func:`manager_transport`), or plaintext with ``transport=PLAINTEXT``
(``$PYCONTAINER_INSECURE=1``) for a manager started with ``--insecure``.
Deadlines are ``timedelta`` (``timeout=None``: none). Addresses
are checked before a channel is made: ``127.0.0.1`` or ``http://...`` raise
:class:`TargetError` saying what to write::

    from pycontainer.client import ManagerClient
    from pycontainer.v1 import manager_pb2

    with ManagerClient("127.0.0.1:50050") as manager:
        for c in manager.list_containers().containers:
            print(c.identity.name, c.state)

Importing this package is cheap: grpc is imported with the first client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._mesh import (
    XDS_BOOTSTRAP_ENV,
    bootstrap,
    bootstrap_json,
    mesh_aio_channel,
    mesh_channel,
    mesh_target,
    write_bootstrap,
)
from ._request_ids import MUTATING_METHODS, new_request_id
from ._target import (
    DEFAULT_MANAGER,
    MANAGER_ENV,
    TargetError,
    listen_arg,
    manager_target,
    manager_targets,
    manager_targets_arg,
    parse_listen,
    parse_target,
    target_arg,
)
from ._timeouts import DEFAULT, DEFAULT_TIMEOUT, Timeout
from ._transport import (
    DEFAULT_CERT_DIR,
    PLAINTEXT,
    Transport,
    TransportError,
    manager_transport,
)

if TYPE_CHECKING:
    from ._aio import AsyncManagementClient, AsyncManagerClient, open_aio_channel
    from ._errors import CallError
    from ._sync import ManagementClient, ManagerClient, open_channel

__all__ = [
    "DEFAULT",
    "DEFAULT_CERT_DIR",
    "DEFAULT_MANAGER",
    "DEFAULT_TIMEOUT",
    "MANAGER_ENV",
    "MUTATING_METHODS",
    "PLAINTEXT",
    "XDS_BOOTSTRAP_ENV",
    "AsyncManagementClient",
    "AsyncManagerClient",
    "CallError",
    "ManagementClient",
    "ManagerClient",
    "TargetError",
    "Timeout",
    "Transport",
    "TransportError",
    "bootstrap",
    "bootstrap_json",
    "listen_arg",
    "manager_target",
    "manager_targets",
    "manager_targets_arg",
    "manager_transport",
    "mesh_aio_channel",
    "mesh_channel",
    "mesh_target",
    "new_request_id",
    "open_aio_channel",
    "open_channel",
    "parse_listen",
    "parse_target",
    "target_arg",
    "write_bootstrap",
]

# What needs grpc, imported when first used (the CLI's --help must not pay for it).
_LAZY = {
    "AsyncManagementClient": "._aio",
    "AsyncManagerClient": "._aio",
    "open_aio_channel": "._aio",
    "CallError": "._errors",
    "ManagementClient": "._sync",
    "ManagerClient": "._sync",
    "open_channel": "._sync",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
