"""pycontainer on the hosts of tests/netns_support.py: a `pycontainer manager`
serving mutual TLS on a host's address (the test's admin client to it), an
etcd member on a host, and tests/apps/connected_app.py joining from a host
with a bootstrap token."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from etcd_support import START_TIMEOUT
from netns_support import Host
from support import require_tool, wait_until

from pycontainer._tls_env import BOOTSTRAP_TOKEN_ENV, CA_PIN_ENV, JOIN_ENV, TLS_DIR_ENV
from pycontainer.client import PLAINTEXT, ManagerClient, Transport
from pycontainer.manager._etcd import EtcdStore
from pycontainer.manager._trust import ADMIN_DIR
from pycontainer.security import MANAGER
from pycontainer.units import duration_to_proto
from pycontainer.v1 import manager_pb2, manager_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
CONNECTED_APP = str(ROOT / "tests/apps/connected_app.py")


def environment(**extra: str) -> dict[str, str]:
    """A shell's environment: none of the suite's PYCONTAINER_* settings
    (its --insecure default above all), our sources importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYCONTAINER_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@dataclass
class HostManager:
    """`pycontainer manager` running on ``host``; ``client`` and ``stub`` are
    the test's, with the admin certificate it issued in its state directory."""

    host: Host
    process: subprocess.Popen[str]
    address: str
    state_dir: Path
    client: ManagerClient
    stub: manager_pb2_grpc.ManagerStub

    def close(self) -> None:
        """Close the client (the process dies with its host's network)."""
        self.client.close()


def start_manager(host: Host, state_dir: Path, *flags: str) -> HostManager:
    """`pycontainer manager --listen HOST_ADDRESS:0 --state-dir STATE_DIR FLAGS`
    on ``host``, mutual TLS unless ``flags`` say --insecure; once it serves."""
    process = host.popen(
        [
            *(sys.executable, "-m", "pycontainer.cli", "manager"),
            *("--listen", f"{host.address}:0", "--state-dir", str(state_dir), *flags),
        ],
        env=environment(),
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # "manager serving on HOST:PORT"
    if not line.startswith("manager serving on "):
        process.kill()
        raise AssertionError(f"the manager on {host} did not serve: {process.communicate()}")
    address = line.split()[-1]
    if "--state" in flags:
        # On etcd a manager is first a standby (reads forwarded, writes
        # refused): it serves as the manager once it leads ("leading (epoch N)").
        led = process.stdout.readline()
        if not led.startswith("leading "):
            process.kill()
            raise AssertionError(f"the manager on {host} did not lead: {led!r}")
    insecure = "--insecure" in flags
    transport = PLAINTEXT if insecure else Transport(state_dir / ADMIN_DIR, MANAGER)
    client = ManagerClient(address, transport=transport)
    return HostManager(
        host, process, address, state_dir, client, manager_pb2_grpc.ManagerStub(client.channel)
    )


def start_etcd(host: Host, data_dir: Path) -> str:
    """A one-member etcd serving on ``host``'s address (its own namespace: the
    usual ports are free there); its ``etcd://`` URL once it answers."""
    binary = require_tool("etcd")
    client = f"http://{host.address}:2379"
    peer = "http://127.0.0.1:2380"
    host.popen(
        [
            *(binary, "--name=e", f"--data-dir={data_dir}"),
            *(f"--listen-client-urls={client}", f"--advertise-client-urls={client}"),
            *(f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}"),
            *(f"--initial-cluster=e={peer}", "--logger=zap", "--log-level=warn"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"etcd://{host.address}:2379"
    stores: list[EtcdStore] = []

    def answers() -> bool:
        try:
            stores.append(EtcdStore(url))
        except Exception:  # StoreError until it serves
            return False
        return True

    wait_until(answers, START_TIMEOUT, f"etcd on {host}")
    stores[0].close()
    return url


def join_from(
    host: Host, manager: HostManager, name: str, workdir: Path, *flags: str
) -> subprocess.Popen[str]:
    """tests/apps/connected_app.py on ``host`` as container ``name``, joining
    ``manager`` with a single-use token; its hooks' counts in
    ``workdir/NAME.json``, its log in ``workdir/NAME.log``."""
    made = manager.client.create_bootstrap_token(
        manager_pb2.CreateBootstrapTokenRequest(
            container_id=name, uses=1, ttl=duration_to_proto(datetime.timedelta(minutes=10))
        )
    )
    env = environment(
        **{
            BOOTSTRAP_TOKEN_ENV: made.token,
            JOIN_ENV: made.join_address,
            CA_PIN_ENV: made.ca_pin,
            TLS_DIR_ENV: str(workdir / f"{name}-tls"),
            "PYCONTAINER_MANAGER": made.manager_address,
            "PYCONTAINER_CONTAINER_ID": name,
        }
    )
    argv = [sys.executable, CONNECTED_APP, "--name", name]
    argv += ["--state-file", str(workdir / f"{name}.json"), *flags]
    with (workdir / f"{name}.log").open("w") as log:  # the child keeps its own descriptor
        return host.popen(argv, env=env, stdout=log, stderr=log)
