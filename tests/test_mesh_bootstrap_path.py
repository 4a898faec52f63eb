"""A container's xDS bootstrap is found wherever it runs: a manager given a
relative state directory (`make run`'s ./state) still hands its containers
an absolute $GRPC_XDS_BOOTSTRAP, so that a process with a working directory
of its own reads it, and a runc container's bind mount of it has an absolute
destination (runc refused a relative one: "mount destination not absolute",
and the demo's OCI container failed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
from support import free_address, wait_container

from pycontainer.v1 import container_pb2, manager_pb2, manager_pb2_grpc, mesh_pb2, spec_pb2

ROOT = Path(__file__).resolve().parent.parent
# Exit 0 when $GRPC_XDS_BOOTSTRAP is an absolute path to a file it can read.
CHECK = (
    "import json, os, sys; path = os.environ['GRPC_XDS_BOOTSTRAP']; "
    "sys.exit(0 if os.path.isabs(path) and json.load(open(path))['xds_servers'] else 3)"
)


def test_a_relative_state_dir_still_gives_an_absolute_bootstrap(tmp_path: Path) -> None:
    address = free_address()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    manager = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests/apps/run_manager.py"),
            "--listen",
            address,
            "--state-dir",
            "state",  # relative to the manager's working directory
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert manager.stdout is not None
        assert manager.stdout.readline().startswith("serving "), "the manager did not start"
        with grpc.insecure_channel(address) as channel:
            stub = manager_pb2_grpc.ManagerStub(channel)
            spec = spec_pb2.ContainerSpec(
                name="reader",
                runtime=spec_pb2.RUNTIME_KIND_PROCESS,
                command=[sys.executable, "-c", CHECK],
                working_dir=str(elsewhere),  # not the manager's
                service=mesh_pb2.MeshService(name="svc"),
            )
            stub.RunContainer(manager_pb2.RunContainerRequest(spec=spec), timeout=30)
            ended = wait_container(
                stub, "reader", lambda c: c.HasField("exit_code"), "the reader to exit", 60
            )
        assert ended.exit_code == 0, container_pb2.LifecycleState.Name(ended.state)
        [bootstrap] = (tmp_path / "state" / "mesh").glob("*/*.json")
        assert bootstrap.is_file()
    finally:
        manager.terminate()
        manager.wait(20)
        if manager.stdout is not None:
            manager.stdout.close()
