"""The gRPC xDS bootstrap file of every container the manager launches.

Each launched program gets ``$GRPC_XDS_BOOTSTRAP`` naming a file of its own
(``STATE_DIR/mesh/ID/bootstrap.json``): the manager's address (every
manager's, in high availability: its own first), the node (the
container's id, its service or spec name as the cluster, the spec's zone),
and, when the manager serves mutual TLS, the container's own certificate for
the manager and for the mesh's services (pycontainer.client.bootstrap). So a
grpcio program dials ``xds:///NAME`` with nothing else to set. The file's
directory is the container's alone: a runtime with a mount namespace (runc)
binds it read-only at the same path.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from ...client._mesh import write_bootstrap
from ...security import SecurityError, container
from ...v1 import spec_pb2

#: The bootstrap's file name in the container's directory.
BOOTSTRAP_FILE = "bootstrap.json"


class Bootstraps:
    """Writes and removes the containers' bootstrap files under ``directory``."""

    def __init__(self, directory: Path, manager_address: Callable[[], str]) -> None:
        self._directory = directory
        self._manager_address = manager_address

    def _dir(self, container_id: str) -> Path:
        container(container_id)  # one path segment, never "..": raises otherwise
        return self._directory / container_id

    def write(self, container_id: str, spec: spec_pb2.ContainerSpec, tls_dir: str) -> str:
        """The bootstrap file of a container about to launch (written anew
        each launch: the manager's address may have changed); its path."""
        try:
            directory = self._dir(container_id)
        except SecurityError as exc:
            raise ValueError(f"cannot write its xDS bootstrap: {exc}") from None
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = write_bootstrap(
            directory / BOOTSTRAP_FILE,
            self._manager_address(),
            node_id=container_id,
            cluster=spec.service.name or spec.name,
            zone=spec.service.zone,
            tls_dir=tls_dir or None,
        )
        return str(path)

    def forget(self, container_id: str) -> None:
        """A purged container's bootstrap goes with it."""
        try:
            directory = self._dir(container_id)
        except SecurityError:
            return
        shutil.rmtree(directory, ignore_errors=True)


__all__ = ["BOOTSTRAP_FILE", "Bootstraps"]
