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
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import IN_CI, free_address

from pycontainer.agent._health import LIVENESS, READINESS
from pycontainer.agent._settings import HEALTH_LISTEN_ENV
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
    assert {p.name for p in MANIFESTS} == {"manager.yaml", "example-app.yaml"}


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
