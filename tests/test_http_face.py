"""The HTTP face of a container (ContainerSettings.http_listen, spec
httpListen, ``pycontainer run --http-listen``): Kubernetes-style httpGet
probe semantics, /metrics read by prometheus-client's own parsers, and the
JSON reads parsed back into the Management API's messages.

Real servers, sockets and processes throughout: an in-process container on
its sync gRPC server, a manager launching an asyncio app as a process, the
sidecar running a plain program; urllib as the HTTP client."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families
from support import free_address, wait_until

import pycontainer
from pycontainer.agent import ListenError
from pycontainer.agent._settings import HEALTH_LISTEN_ENV, HTTP_LISTEN_ENV
from pycontainer.client import CallError
from pycontainer.testing import ContainerHost, ManagerHost, manager_host
from pycontainer.v1 import container_pb2, management_pb2, manager_pb2, spec_pb2

ROOT = Path(__file__).resolve().parent.parent
RUNNING = container_pb2.LIFECYCLE_STATE_RUNNING
STOPPING = container_pb2.LIFECYCLE_STATE_STOPPING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: str) -> None:
        self.status, self.headers, self.body = status, headers, body


def _get(address: str, path: str, *, method: str = "GET", accept: str = "") -> Reply:
    request = urllib.request.Request(
        f"http://{address}{path}", method=method, headers={"Accept": accept} if accept else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Reply(response.status, dict(response.headers), response.read().decode())
    except urllib.error.HTTPError as error:
        return Reply(error.code, dict(error.headers), error.read().decode())


def _status(address: str, path: str) -> int | None:
    try:
        return _get(address, path).status
    except OSError:
        return None  # not listening (yet, or any more)


def _grpc_readiness(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="readiness"), timeout=5
        )
    return int(reply.status)


@pytest.fixture(autouse=True)
def _no_inherited_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HTTP_LISTEN_ENV, raising=False)
    monkeypatch.delenv(HEALTH_LISTEN_ENV, raising=False)


class Face:
    """An in-process container with its HTTP face, a pushed readiness check,
    a secret in its config and an app counter of its own meter provider."""

    def __init__(self) -> None:
        reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[reader])
        self.counter = self.provider.get_meter("shop").create_counter(
            "orders.placed", unit="1", description="Orders placed"
        )
        self.latency = self.provider.get_meter("shop").create_histogram(
            "checkout.latency", unit="ms", description="Time to check out"
        )
        config = pycontainer.Config(defaults={"db": {"url": "postgres://db/x", "password": "s3"}})
        container = pycontainer.Container(
            pycontainer.ContainerSettings(name="shop", version="2.0.0", http_listen="127.0.0.1:0"),
            config=config,
            metric_reader=reader,
        )
        container.add_check("db")
        container.set_check("db", True, "db reachable")
        self.host = ContainerHost(container)
        self.container = container
        assert container.http_port is not None
        self.address = f"127.0.0.1:{container.http_port}"

    def close(self) -> None:
        self.host.close()
        self.provider.shutdown()


@pytest.fixture(scope="module")
def face() -> Iterator[Face]:
    made = Face()
    try:
        yield made
    finally:
        made.close()


def test_readyz_is_200_only_while_running_and_every_readiness_check_serves(face: Face) -> None:
    """As kubelet reads an httpGet probe: 200 ready, 503 not, the same verdict
    as grpc.health.v1's "readiness" on the Management endpoint."""
    assert face.container.state.name == "CREATED"
    before = _get(face.address, "/readyz")
    assert before.status == 503
    assert "[-]lifecycle failed" in before.body
    assert _get(face.address, "/livez").status == 200  # not started is no reason to restart
    face.container.start()
    ready = _get(face.address, "/readyz")
    assert (ready.status, ready.body) == (200, "ok\n")
    assert _grpc_readiness(face.host.address) == SERVING

    face.container.set_check("db", False, "connection refused")
    try:
        failing = _get(face.address, "/readyz?verbose")
        assert failing.status == 503
        assert failing.body.splitlines() == [
            "[+]lifecycle ok",
            "[-]db failed: connection refused",
            "readyz check failed",
        ]
        assert _grpc_readiness(face.host.address) == NOT_SERVING
        # Without ?verbose the reason is withheld, as the apiserver does.
        assert "reason withheld" in _get(face.address, "/readyz").body
        assert _get(face.address, "/healthz").status == 503
        # A readiness check is no liveness check: nobody restarts it for this.
        assert _get(face.address, "/livez").status == 200
    finally:
        face.container.set_check("db", True, "db reachable")
    assert _get(face.address, "/healthz?verbose").body.endswith("healthz check passed\n")


def test_metrics_are_read_by_prometheus_clients_own_parsers(face: Face) -> None:
    if face.container.state.name == "CREATED":
        face.container.start()

    def families(accept: str = "") -> dict[str, object]:
        reply = _get(face.address, "/metrics", accept=accept)
        assert reply.status == 200, reply.body
        parse = openmetrics_parser.text_string_to_metric_families if accept else None
        return {f.name: f for f in (parse or text_string_to_metric_families)(reply.body)}

    def orders(found: dict[str, object]) -> float:
        family = found["orders_placed"]
        [sample] = [s for s in family.samples if s.name == "orders_placed_total"]  # type: ignore[attr-defined]
        assert sample.labels == {"otel_scope_name": "shop", "channel": "web"}
        return float(sample.value)

    face.counter.add(2, {"channel": "web"})
    first = families()
    assert first["orders_placed"].type == "counter"  # type: ignore[attr-defined]
    face.counter.add(5, {"channel": "web"})
    face.host.management.get_info()
    second = families()
    assert orders(second) == orders(first) + 5
    # A histogram: cumulative buckets up to +Inf, the unit as a suffix.
    face.latency.record(12.5, {"channel": "web"})
    latency = families()["checkout_latency_milliseconds"]
    assert latency.type == "histogram"  # type: ignore[attr-defined]
    samples = {
        (s.name, s.labels.get("le")): s.value
        for s in latency.samples  # type: ignore[attr-defined]
    }
    assert samples[("checkout_latency_milliseconds_count", None)] == 1
    assert samples[("checkout_latency_milliseconds_bucket", "+Inf")] == 1
    assert samples[("checkout_latency_milliseconds_sum", None)] == 12.5
    # The process and the per-RPC figures, with their labels.
    [rss] = second["process_resident_memory_bytes"].samples  # type: ignore[attr-defined]
    assert rss.value > 0
    started = {
        s.labels["grpc_method"]: s.value
        for s in second["grpc_server_started"].samples  # type: ignore[attr-defined]
        if s.labels["grpc_service"] == "pycontainer.v1.Management"
    }
    assert started["GetInfo"] >= 1
    # An info metric: named with _info in the text format, without in OpenMetrics.
    [info] = second["pycontainer_container_info"].samples  # type: ignore[attr-defined]
    assert info.labels["name"] == "shop"
    assert info.labels["state"] == "RUNNING"
    # OpenMetrics when the scraper asks for it (Prometheus does).
    reply = _get(face.address, "/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
    assert orders(families("application/openmetrics-text; version=1.0.0")) == orders(second)


def test_the_json_reads_parse_back_into_the_management_messages(face: Face) -> None:
    client = face.host.management
    info = json_format.Parse(_get(face.address, "/v1/info").body, management_pb2.GetInfoResponse())
    assert info.identity == client.get_info().identity
    assert [e.name for e in info.identity.endpoints] == ["http", "management"]
    [http] = [e for e in info.identity.endpoints if e.name == "http"]
    assert http.kind == container_pb2.ENDPOINT_KIND_HTTP
    assert http.address == face.address

    health = json_format.Parse(
        _get(face.address, "/v1/health?check=db").body, management_pb2.GetHealthResponse()
    )
    assert [c.name for c in health.checks] == ["db"]
    assert health.readiness == client.get_health().readiness

    reply = _get(face.address, "/v1/config?prefix=db.")
    assert reply.headers["Content-Type"].startswith("application/json")
    config = json_format.Parse(reply.body, management_pb2.GetConfigResponse())
    # Redacted as the gRPC call redacts.
    assert config == client.get_config(management_pb2.GetConfigRequest(prefix="db."))
    entries = {e.key: e for e in config.entries}
    assert entries["db.password"].redacted
    assert "s3" not in reply.body


def test_the_face_is_read_only_and_says_what_is_wrong(face: Face) -> None:
    posted = _get(face.address, "/readyz", method="POST")
    assert posted.status == 405
    assert set(posted.headers["Allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}
    assert _get(face.address, "/v1/config", method="DELETE").status == 405
    assert _get(face.address, "/admin").status == 404

    unknown = _get(face.address, "/readyz?verbos")
    assert unknown.status == 400
    assert unknown.body == "/readyz does not take the query parameter 'verbos'; it takes verbose\n"
    flag = _get(face.address, "/livez?verbose=maybe")
    assert (flag.status, flag.body) == (
        400,
        "/livez: verbose='maybe' is not a flag; write ?verbose (or verbose=false)\n",
    )
    twice = _get(face.address, "/v1/config?prefix=a&prefix=b")
    assert twice.status == 400
    assert "prefix is given 2 times" in twice.body
    missing = _get(face.address, "/v1/health?check=nope")
    assert missing.status == 404
    assert "no health check named 'nope'; known: db" in missing.body

    taken = pycontainer.Container(
        pycontainer.ContainerSettings(name="late", http_listen=face.address)
    )
    with pytest.raises(ListenError) as refused:
        ContainerHost(taken)
    assert refused.value.strerror.startswith(
        f"the HTTP face: cannot listen on {face.address}: the address is in use"
    )
    taken.close()


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagerHost]:
    with manager_host(tmp_path_factory.mktemp("manager")) as host:
        yield host


def test_readyz_turns_503_the_moment_a_stop_begins(manager: ManagerHost) -> None:
    """A manager-launched asyncio app with the spec's httpListen: /readyz is
    503 while its on_stop still runs (STOPPING), and /livez stays 200 until
    it has stopped (a graceful stop is no reason to restart)."""
    address = free_address()
    spec = spec_pb2.ContainerSpec(
        name="probed",
        command=[
            *[sys.executable, str(ROOT / "tests/apps/connected_app.py")],
            *["--name", "probed", "--stop-seconds", "2"],
        ],
        runtime=spec_pb2.RUNTIME_KIND_PROCESS,
        http_listen=address,
        env={"PYTHONPATH": str(ROOT)},
    )
    [launched] = manager.client.run_container(manager_pb2.RunContainerRequest(spec=spec)).containers
    wait_until(lambda: _status(address, "/readyz") == 200, 30, "the launched app ready over HTTP")
    assert _get(address, "/livez").status == 200

    stop = manager_pb2.StopContainerRequest(container=launched.identity.id)
    stop.grace_period.FromSeconds(20)
    stopped: dict[str, object] = {}
    stopper = threading.Thread(
        target=lambda: stopped.update(reply=manager.client.stop_container(stop))
    )
    stopper.start()
    try:
        wait_until(lambda: _status(address, "/readyz") == 503, 10, "/readyz 503 once stopping")
        state = json_format.Parse(
            _get(address, "/v1/info").body, management_pb2.GetInfoResponse()
        ).state
        assert state == STOPPING  # on_stop still runs: the stop has only begun
        assert _get(address, "/livez").status == 200
    finally:
        stopper.join(30)
    assert "reply" in stopped


def test_the_api_refuses_an_http_listen_it_cannot_serve(manager: ManagerHost) -> None:
    spec = spec_pb2.ContainerSpec(name="bad", command=["sleep", "1"], http_listen="8080")
    with pytest.raises(CallError) as refused:
        manager.client.run_container(manager_pb2.RunContainerRequest(spec=spec))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "http_listen" in refused.value.details
    assert "'8080' has no host: write 127.0.0.1:8080" in refused.value.details


def test_the_sidecar_serves_the_face_for_a_plain_program(tmp_path: Path) -> None:
    address = free_address()
    env = {k: v for k, v in os.environ.items() if k not in (HTTP_LISTEN_ENV, HEALTH_LISTEN_ENV)}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [
            *[sys.executable, "-m", "pycontainer.cli", "run", "--name", "sleeper"],
            *["--http-listen", address, "--", "sleep", "60"],
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        wait_until(lambda: _status(address, "/readyz") == 200, 30, "the sidecar ready over HTTP")
        info = json_format.Parse(_get(address, "/v1/info").body, management_pb2.GetInfoResponse())
        assert info.identity.name == "sleeper"
        assert info.state == RUNNING
        found = {f.name for f in text_string_to_metric_families(_get(address, "/metrics").body)}
        # The sidecar's own process, and the program's figures (its app
        # metrics; "By" became the _bytes suffix).
        assert {
            "process_cpu_seconds",
            "pycontainer_container_info",
            "process_child_memory_rss_bytes",
        } <= found, found
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err
    assert f"HTTP face on port {address.rsplit(':', 1)[1]}" in err


def test_a_spec_takes_http_listen_as_it_takes_health_listen() -> None:
    from pycontainer.spec import parse_specs, spec_to_dict

    [spec] = parse_specs("name: a\ncommand: [x]\nhttpListen: 0.0.0.0:8080\n")
    assert spec.http_listen == "0.0.0.0:8080"
    assert spec_to_dict(spec)["httpListen"] == "0.0.0.0:8080"
    with pytest.raises(ValueError, match="httpListen: a fixed port serves one replica"):
        parse_specs("name: a\ncommand: [x]\nreplicas: 2\nhttpListen: 0.0.0.0:8080\n")


def test_a_relayed_snapshot_takes_a_container_label_on_every_sample(face: Face) -> None:
    """The face's families are pycontainer._prometheus' over the container's
    snapshot (as a manager relaying it makes them, with ``container`` on
    every sample), beside the face's own info and health families."""
    from pycontainer._prometheus import snapshot_families

    face.counter.add(1, {"channel": "web"})
    snapshot = face.container.metrics_watch(management_pb2.WatchMetricsRequest()).snapshot()
    labelled = snapshot_families(snapshot.snapshot, {"container": face.container.id})
    assert all(s.labels["container"] == face.container.id for f in labelled for s in f.samples)
    parsed = {f.name for f in text_string_to_metric_families(_get(face.address, "/metrics").body)}
    own = {
        "pycontainer_container_info",
        "pycontainer_health_serving",
        "pycontainer_health_check_serving",
    }
    assert {f.name for f in labelled} == parsed - own
