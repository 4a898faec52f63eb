"""Who may restore a checkpoint, through a real manager: checkpoint ids are
public (GetContainer shows them), so a container restores only from its own
checkpoints or those of its name (the replicas it replaces)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support import ManagerHost, connected_container, wait_until

import pycontainer
from pycontainer.v1 import manager_pb2


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ManagerHost]:
    host = ManagerHost(str(tmp_path / "state"))
    try:
        yield host
    finally:
        host.stop()


def _running(container: pycontainer.Container) -> None:
    wait_until(lambda: container.state == pycontainer.State.RUNNING, 15, "running")


def _restore(manager: ManagerHost, container: str, checkpoint_id: str) -> None:
    manager.stub.RestoreContainer(
        manager_pb2.RestoreContainerRequest(container=container, checkpoint_id=checkpoint_id),
        timeout=10,
    )


def test_another_names_checkpoint_is_permission_denied_and_its_bytes_stay(
    manager: ManagerHost,
) -> None:
    secret = b"alpha's state"
    got_by_beta: list[bytes] = []
    got_by_twin: list[bytes] = []
    got_by_alpha: list[bytes] = []
    alpha, alpha_host = connected_container(
        manager,
        "alpha",
        hooks=pycontainer.Hooks(on_checkpoint=lambda: secret, on_restore=got_by_alpha.append),
    )
    beta, beta_host = connected_container(
        manager, "beta", hooks=pycontainer.Hooks(on_restore=got_by_beta.append)
    )
    # A second container of alpha's name: a replica, or a replacement.
    twin, twin_host = connected_container(
        manager, "alpha", hooks=pycontainer.Hooks(on_restore=got_by_twin.append)
    )
    try:
        for c in (alpha, beta, twin):
            _running(c)
        taken = manager.stub.CheckpointContainer(
            manager_pb2.CheckpointContainerRequest(container=alpha.id), timeout=10
        )
        # The id is public: anyone who can list containers sees it.
        shown = manager.stub.GetContainer(
            manager_pb2.GetContainerRequest(container=alpha.id), timeout=5
        ).container
        assert shown.last_checkpoint_id == taken.checkpoint_id

        with pytest.raises(grpc.RpcError) as caught:
            _restore(manager, beta.id, taken.checkpoint_id)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        details = caught.value.details() or ""
        assert "'alpha'" in details
        assert "same name" in details
        assert got_by_beta == []

        _restore(manager, twin.id, taken.checkpoint_id)
        assert got_by_twin == [secret]
        # And its own, by id (the rule is not only "the newest of the name").
        _restore(manager, alpha.id, taken.checkpoint_id)
        assert got_by_alpha == [secret]
    finally:
        for host in (alpha_host, beta_host, twin_host):
            host.stop()
        for c in (alpha, beta, twin):
            c.close()
