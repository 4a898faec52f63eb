"""deploy/: every manifest valid against the Kubernetes schemas (strict), the
probes on pycontainer's health service names and on the ports the commands
listen on, Services and environment pointing at them; and the manifests'
commands run here, probed as kubelet would (plaintext grpc.health.v1 Check)
and stopped with SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from etcd_support import etcd_cluster
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import IN_CI, free_address, require_tool

from pycontainer.agent._health import LIVENESS, READINESS
from pycontainer.agent._settings import HEALTH_LISTEN_ENV
from pycontainer.client import ManagerClient, Transport
from pycontainer.manager._etcd import parse_etcd_url
from pycontainer.security import MANAGER, CertificateAuthority, CredentialFiles
from pycontainer.units import parse_duration
from pycontainer.v1 import manager_pb2, manager_pb2_grpc

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ROOT = DEPLOY.parent
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))
# The oldest Kubernetes still in wide use whose schemas kubernetes-validate
# ships, and the newest it knows.
K8S_VERSIONS = ["1.30.0", "latest"]
DRAIN_SECONDS = 5  # sync_app.py's server.stop(grace=5) after on_stop
SERVING = health_pb2.HealthCheckResponse.SERVING


def _validator() -> Any:
    """kubernetes_validate (the test extra): a skip locally, a failure in CI."""
    try:
        import kubernetes_validate
    except ImportError:
        if IN_CI:
            pytest.fail("kubernetes-validate is required in CI (pip install kubernetes-validate)")
        pytest.skip("kubernetes-validate not installed")
    return kubernetes_validate


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _all() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in _documents(path)]


def _one(kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in _all() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def _listen_port(container: dict[str, Any]) -> int:
    return int(_flag(container["command"], "--listen").rsplit(":", 1)[1])


def _named_port(container: dict[str, Any], name: str) -> int:
    [port] = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


# -- schemas -------------------------------------------------------------------------------
def test_there_are_manifests() -> None:
    assert {p.name for p in MANIFESTS} == {
        "manager.yaml",
        "example-app.yaml",
        "example-app-http.yaml",
        "manager-ha.yaml",
        "etcd.yaml",
    }


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    kubernetes_validate = _validator()
    shipped = kubernetes_validate.utils.all_versions()
    if version == "latest":
        version = kubernetes_validate.latest_version()
    elif version not in shipped:
        pytest.skip(f"this kubernetes-validate has no schemas for {version} ({shipped[0]}+)")
    documents = _documents(path)
    assert documents
    for doc in documents:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']}: {where}: {exc}")


# -- what the manifests say ----------------------------------------------------------------
def test_manager_deployment_probes_and_service() -> None:
    deployment = _one("Deployment", "pycontainer-manager")
    container = _container(deployment)
    command = container["command"]
    assert command == [
        "pycontainer",
        "manager",
        "--listen",
        "0.0.0.0:50050",
        "--state-dir",
        "/var/lib/pycontainer",
        "--insecure",  # its apps join without certificates (no bootstrap tokens yet)
    ]
    port = _listen_port(container)
    assert _named_port(container, "grpc") == port
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == port
        assert container[probe]["grpc"].get("service", "") == ""  # overall: serving
    # The state directory is a volume (the claim), not the image's filesystem.
    pod = deployment["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    state_volume = mounts[_flag(command, "--state-dir")]
    [volume] = [v for v in pod["volumes"] if v["name"] == state_volume]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert _one("PersistentVolumeClaim", claim)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # one SQLite writer

    service = _one("Service", "pycontainer-manager")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [service_port] = service["spec"]["ports"]
    assert service_port["port"] == port
    assert service_port["targetPort"] == "grpc"


def test_example_app_probes_use_our_health_service_names() -> None:
    deployment = _one("Deployment", "sync-worker")
    container = _container(deployment)
    command = container["command"]
    assert command[:2] == ["python", "examples/sync_app.py"]
    assert _flag(command, "--listen") == "0.0.0.0:50051"
    assert (ROOT / command[1]).is_file()
    port = _listen_port(container)
    assert _named_port(container, "grpc") == port
    # kubelet's probes speak plaintext: they ask the plaintext health port,
    # on every interface (kubelet dials the pod's IP).
    env = {e["name"]: e for e in container["env"]}
    health_listen = env[HEALTH_LISTEN_ENV]["value"]
    assert health_listen.startswith("0.0.0.0:")
    health_port = int(health_listen.rsplit(":", 1)[1])
    assert health_port != port
    assert _named_port(container, "health") == health_port
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness["grpc"] == {"port": health_port, "service": READINESS}
    assert liveness["grpc"] == {"port": health_port, "service": LIVENESS}
    assert (READINESS, LIVENESS) == ("readiness", "liveness")

    # It dials the manager's Service, with its pod name as container id.
    manager_service = _one("Service", "pycontainer-manager")
    [manager_port] = manager_service["spec"]["ports"]
    assert env["PYCONTAINER_MANAGER"]["value"] == (
        f"{manager_service['metadata']['name']}:{manager_port['port']}"
    )
    assert env["PYCONTAINER_CONTAINER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.name"
    )

    # Enough time for the preStop hook, the graceful stop and the drain.
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = float(_flag(command, "--grace"))
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + grace + DRAIN_SECONDS

    service = _one("Service", "sync-worker")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    [service_port] = service["spec"]["ports"]
    assert service_port["port"] == port
    assert service_port["targetPort"] == "grpc"


def test_both_run_the_image_the_dockerfile_builds() -> None:
    images = {
        _container(_one("Deployment", n))["image"] for n in ("pycontainer-manager", "sync-worker")
    }
    [image] = images
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"-t {image} " in dockerfile
    assert "COPY examples" in dockerfile


# -- the commands, run and probed as kubelet would -----------------------------------------
def _local(command: list[str], listen: str) -> list[str]:
    """A manifest's command for this machine: our interpreter and scripts,
    an ephemeral loopback port."""
    command = list(command)
    command[command.index("--listen") + 1] = listen
    if command[0] == "python":
        command[0] = sys.executable
    elif command[0] == "pycontainer":
        command[:1] = [sys.executable, "-c", "import sys, pycontainer.cli as c; sys.exit(c.main())"]
    return command


def _start(
    command: list[str], env: dict[str, str], ready: str
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    seen = ""
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            pytest.fail(f"{command} ended before its ready line; stdout: {seen!r}")
        match = re.search(ready + r" (\S+:\d+)", line)
        if match:
            return proc, match.group(1)
        seen += line


def _check(address: str, service: str) -> int:
    """kubelet's gRPC probe: plaintext, one Check."""
    with grpc.insecure_channel(address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
    return int(response.status)


def _wait_check(address: str, service: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while _check(address, service) != SERVING:
        if time.monotonic() > deadline:
            pytest.fail(f"{address} {service!r} not SERVING within {timeout:g}s")
        time.sleep(0.05)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_manifest_commands_serve_their_probes_and_stop_on_sigterm(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    manager_container = _container(_one("Deployment", "pycontainer-manager"))
    command = _local(manager_container["command"], "127.0.0.1:0")
    command[command.index("--state-dir") + 1] = str(tmp_path / "state")
    # As in the cluster: what the manifest says, not the suite's $PYCONTAINER_INSECURE.
    env = {k: v for k, v in os.environ.items() if k != "PYCONTAINER_INSECURE"}
    manager, manager_address = _start(command, env, "manager serving on")
    procs.append(manager)
    for probe in ("readinessProbe", "livenessProbe"):
        assert _check(manager_address, manager_container[probe]["grpc"].get("service", "")) == (
            SERVING
        )

    app_container = _container(_one("Deployment", "sync-worker"))
    env = {k: v for k, v in os.environ.items() if k != "PYCONTAINER_INSECURE"}
    for item in app_container["env"]:
        env[item["name"]] = item.get("value", "")
    env["PYCONTAINER_MANAGER"] = manager_address  # the Service, here
    env["PYCONTAINER_CONTAINER_ID"] = "sync-worker-7d4b9c-x2v5q"  # the downward API's pod name
    health_address = free_address()  # the manifest's port, on this machine's loopback
    env[HEALTH_LISTEN_ENV] = health_address
    app, _ = _start(_local(app_container["command"], "127.0.0.1:0"), env, "serving on")
    procs.append(app)
    # Once the manager has started it, both of kubelet's probes pass, on the health port.
    _wait_check(health_address, app_container["readinessProbe"]["grpc"]["service"])
    _wait_check(health_address, app_container["livenessProbe"]["grpc"]["service"])
    with grpc.insecure_channel(manager_address) as channel:
        listed = manager_pb2_grpc.ManagerStub(channel).ListContainers(
            manager_pb2.ListContainersRequest(), timeout=5
        )
    assert [c.identity.id for c in listed.containers] == ["sync-worker-7d4b9c-x2v5q"]

    # What kubelet does after the preStop hook: SIGTERM, then the graceful stop.
    pod = _one("Deployment", "sync-worker")["spec"]["template"]["spec"]
    app.send_signal(signal.SIGTERM)
    out, _ = app.communicate(timeout=pod["terminationGracePeriodSeconds"])
    assert app.returncode == 0
    assert out.rstrip().endswith("stopped")
    manager.send_signal(signal.SIGTERM)
    manager.communicate(timeout=30)
    assert manager.returncode == 0


# -- the managers in high availability (manager-ha.yaml, etcd.yaml) --------------------------
HA = "pycontainer-managers"
ETCD = "pycontainer-etcd"


def _pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def _env_from(container: dict[str, Any], name: str) -> dict[str, Any]:
    [item] = [e for e in container["env"] if e["name"] == name]
    return dict(item)


def _arg(command: list[str], flag: str) -> str:
    """``--flag value`` or ``--flag=value``."""
    for i, word in enumerate(command):
        if word == flag:
            return command[i + 1]
        if word.startswith(flag + "="):
            return word.partition("=")[2]
    raise AssertionError(f"{flag} not in {command}")


def _headless_service_of(workload: dict[str, Any]) -> dict[str, Any]:
    service = _one("Service", workload["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= _pod_labels(workload).items()
    return service


def _spread_and_budget(workload: dict[str, Any]) -> None:
    """Three replicas on three nodes, a drain keeping two."""
    assert workload["spec"]["replicas"] == 3
    labels = _pod_labels(workload)
    assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod = workload["spec"]["template"]["spec"]
    [term] = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= labels.items()
    budget = _one("PodDisruptionBudget", workload["metadata"]["name"])
    assert budget["spec"]["minAvailable"] == 2
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_ha_managers_are_a_spread_statefulset_on_etcd_serving_mutual_tls() -> None:
    managers = _one("StatefulSet", HA)
    _spread_and_budget(managers)
    service = _headless_service_of(managers)
    container = _container(managers)
    command = container["command"]
    assert command[:2] == ["pycontainer", "manager"]
    assert "--insecure" not in command  # mutual TLS, the default
    port = _listen_port(container)
    assert _named_port(container, "grpc") == port
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"] == port
    join_port = int(_flag(command, "--join-listen").rsplit(":", 1)[1])
    assert _named_port(container, "join") == join_port
    # The state on etcd: --state is the ConfigMap's, and names every member.
    assert _flag(command, "--state") == "$(PYCONTAINER_STATE)"
    ref = _env_from(container, "PYCONTAINER_STATE")["valueFrom"]["configMapKeyRef"]
    state_url = _one("ConfigMap", ref["name"])["data"][ref["key"]]
    etcd = _one("StatefulSet", ETCD)
    members = [
        f"{etcd['metadata']['name']}-{n}.{etcd['spec']['serviceName']}:2379"
        for n in range(etcd["spec"]["replicas"])
    ]
    assert parse_etcd_url(state_url) == members
    # kubelet's probes: plaintext, on the health port (not the mTLS one).
    health_listen = _flag(command, "--health-listen")
    assert health_listen.startswith("0.0.0.0:")
    health_port = int(health_listen.rsplit(":", 1)[1])
    assert health_port != port
    assert _named_port(container, "health") == health_port
    for probe, name in (("readinessProbe", "readiness"), ("livenessProbe", "liveness")):
        assert container[probe]["grpc"]["port"] == health_port
        assert container[probe]["grpc"]["service"] == name
    # The election: its address the pod's IP (a wildcard is advertised as
    # loopback), its lease well within what the liveness probe tolerates,
    # every replica's stable name given to the containers it launches.
    assert _flag(command, "--listen") == f"$(POD_IP):{port}"
    assert _env_from(container, "POD_IP")["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    ttl = parse_duration(_flag(command, "--leader-ttl")).total_seconds()
    liveness = container["livenessProbe"]
    assert 0 < ttl * 3 <= liveness["periodSeconds"] * liveness["failureThreshold"]
    peers = [command[i + 1] for i, word in enumerate(command) if word == "--peer"]
    name, headless = managers["metadata"]["name"], managers["spec"]["serviceName"]
    assert peers == [f"{name}-{n}.{headless}:{port}" for n in range(managers["spec"]["replicas"])]
    assert service["spec"]["publishNotReadyAddresses"] is True  # a new leader dialled at once
    # One CA and one sealing key for all replicas, copied 0600 to the manager's
    # own files by the init container, where the flags and the state dir read them.
    pod = managers["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    script = " ".join(init["command"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    init_mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    keys_here, keys_there = init_mounts["keys"], mounts["keys"]
    for flag, name in (("--ca-cert", "ca.pem"), ("--ca-key", "ca-key.pem")):
        assert _flag(command, flag) == f"{keys_there}/{name}"
        assert f"{keys_here}/{name}" in script
    state_dir = _flag(command, "--state-dir")
    assert mounts["state"] == init_mounts["state"] == state_dir
    assert f"-m 600 -o 10001 -g 10001 {init_mounts['sealing']}/secrets.key" in script
    assert f"{state_dir}/secrets.key" in script
    assert f"-m 600 -o 10001 -g 10001 {init_mounts['ca']}/tls.key" in script
    assert pod["securityContext"]["runAsUser"] == 10001
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"ca": "pycontainer-ca", "sealing": "pycontainer-sealing"}
    [claim] = managers["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "state"
    assert (
        init["image"]
        == container["image"]
        == _container(_one("Deployment", "sync-worker"))["image"]
    )


def test_etcd_members_form_one_cluster_with_compaction_and_a_quorum_budget() -> None:
    etcd = _one("StatefulSet", ETCD)
    _spread_and_budget(etcd)
    service = _headless_service_of(etcd)
    assert service["spec"]["publishNotReadyAddresses"] is True  # peers meet before ready
    assert etcd["spec"]["podManagementPolicy"] == "Parallel"
    container = _container(etcd)
    command = container["command"]
    name, headless = etcd["metadata"]["name"], etcd["spec"]["serviceName"]
    peers = {
        f"{name}-{n}": f"http://{name}-{n}.{headless}:2380" for n in range(etcd["spec"]["replicas"])
    }
    initial = dict(p.split("=", 1) for p in _arg(command, "--initial-cluster").split(","))
    assert initial == peers
    assert _arg(command, "--name") == "$(POD_NAME)"
    assert _env_from(container, "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.name"
    )
    assert _arg(command, "--initial-advertise-peer-urls") == f"http://$(POD_NAME).{headless}:2380"
    assert _arg(command, "--advertise-client-urls") == f"http://$(POD_NAME).{headless}:2379"
    # Old revisions compacted, or the database reaches its quota and turns read-only.
    assert _arg(command, "--auto-compaction-mode") == "periodic"
    assert _arg(command, "--auto-compaction-retention")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"client": 2379, "peer": 2380, "metrics": 2381}
    assert _arg(command, "--listen-metrics-urls") == "http://0.0.0.0:2381"
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/health?serializable=true"
    data_dir = _arg(command, "--data-dir")
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["data"] == data_dir


def test_the_ha_manager_command_serves_on_etcd_with_the_given_ca_and_probes_plaintext(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    """The StatefulSet's command, run here against a 3-member etcd on loopback,
    with the files its init container leaves (the CA, the sealing key)."""
    container = _container(_one("StatefulSet", HA))
    external = CertificateAuthority.open(tmp_path / "external")
    state = tmp_path / "state"
    state.mkdir()
    key = state / "secrets.key"
    sealing_key = os.urandom(32)  # head -c 32 /dev/urandom, as the README says
    key.write_bytes(sealing_key)
    key.chmod(0o600)
    health = free_address()
    command = _local(container["command"], "127.0.0.1:0")
    with etcd_cluster(tmp_path / "etcd") as cluster:
        for flag, value in (
            ("--state-dir", str(state)),
            ("--state", cluster.url),
            ("--ca-cert", str(tmp_path / "external" / "ca.pem")),
            ("--ca-key", str(tmp_path / "external" / "ca-key.pem")),
            ("--join-listen", "127.0.0.1:0"),
            ("--health-listen", health),
        ):
            command[command.index(flag) + 1] = value
        env = {k: v for k, v in os.environ.items() if k != "PYCONTAINER_INSECURE"}
        manager, address = _start(command, env, "manager serving on")
        procs.append(manager)
        # A standby until it leads (on etcd): its health port is the leader's.
        assert manager.stdout is not None
        led = manager.stdout.readline()
        assert led.startswith("leading (epoch "), led
        for probe in ("readinessProbe", "livenessProbe"):
            _wait_check(health, container[probe]["grpc"].get("service", ""))
        # Mutual TLS with certificates of the given CA, and the sealing key kept.
        leaf, _ = CredentialFiles.in_directory(state / "admin").read()
        assert external.issued(leaf.certificate_chain_pem)
        with ManagerClient(address, transport=Transport(state / "admin", MANAGER)) as client:
            assert list(client.list_containers().containers) == []
        assert key.read_bytes() == sealing_key  # the replicas' one key, not a new one
        assert not (state / "ca-key.pem").exists()
        # A second replica, the same command: a standby, whose probes pass too
        # (ready: it forwards reads and names the leader for writes), and
        # whose "leader" service says it is not the leader.
        standby_state = tmp_path / "standby-state"
        standby_state.mkdir()
        (standby_state / "secrets.key").write_bytes(sealing_key)
        (standby_state / "secrets.key").chmod(0o600)
        standby_health = free_address()
        second = list(command)
        second[second.index("--state-dir") + 1] = str(standby_state)
        second[second.index("--health-listen") + 1] = standby_health
        standby, standby_address = _start(second, env, "manager serving on")
        procs.append(standby)
        for probe in ("readinessProbe", "livenessProbe"):
            _wait_check(standby_health, container[probe]["grpc"]["service"])
        assert _check(standby_health, "leader") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert _check(health, "leader") == SERVING
        admin = Transport(standby_state / "admin", MANAGER)
        with ManagerClient(standby_address, transport=admin) as client:
            assert list(client.list_containers().containers) == []  # the leader's answer
        standby.send_signal(signal.SIGTERM)
        standby.communicate(timeout=30)
        manager.send_signal(signal.SIGTERM)
        manager.communicate(timeout=30)
        assert manager.returncode == 0


def test_the_etcd_members_flags_are_etcd_s() -> None:
    """Every flag of the etcd StatefulSet's command is one etcd knows (the
    Debian binary here, 3.4: the image's 3.5 knows them all too)."""
    binary = require_tool("etcd")
    known = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    flags = set(re.findall(r"--[a-z0-9-]+", known.stdout + known.stderr))
    command = _container(_one("StatefulSet", ETCD))["command"]
    assert command[0] == "etcd"
    used = {word.partition("=")[0] for word in command[1:]}
    assert used <= flags, used - flags
