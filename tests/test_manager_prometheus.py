"""The manager's Prometheus face over its real HTTP socket, read by
prometheus-client's own parsers: the fleet's /metrics (containers by state
right after a stop, a command's latency), a container's app counter read
through the manager with its container label (examples/sync_app.py in a
process of its own, its jobs counter moving between two scrapes), the same
families from that container's own HTTP face as through the manager, a
container that hangs skipped and counted without stalling the scrape, and
an unknown container's 404."""

from __future__ import annotations

import gzip
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_support import Samples, get, scrape, total, value
from support import (
    free_address,
    make_container,
    running_and_connected,
    wait_container,
    wait_until,
)

from pycontainer.testing import ManagerHost
from pycontainer.v1 import manager_pb2, spec_pb2

ROOT = Path(__file__).resolve().parent.parent


class HangingWatch(grpc.ServerInterceptor):  # type: ignore[misc]
    """Makes the container's Management.WatchMetrics hang (never answering)
    while ``hang`` is set: a container too slow for a scrape."""

    def __init__(self) -> None:
        self.hang = threading.Event()

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if not details.method.endswith("/WatchMetrics") or not self.hang.is_set():
            return handler

        def silent(request: Any, context: Any) -> Iterator[Any]:
            while context.is_active():  # until the manager's deadline cancels it
                time.sleep(0.02)
            yield from ()

        return grpc.unary_stream_rpc_method_handler(
            silent,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class Fleet:
    """One manager with an HTTP face, a process container running
    examples/sync_app.py ("jobs", with its own HTTP face on ``jobs_http``),
    and in-process containers: "idle" and "slow" (whose metrics can be made
    to hang)."""

    def __init__(self, state_dir: Path) -> None:
        self.manager = ManagerHost(state_dir, http_listen="127.0.0.1:0")
        assert self.manager.manager.http is not None
        self.url = self.manager.manager.http.url.rstrip("/")
        self.servers: list[grpc.Server] = []
        self.containers: list[Any] = []
        self.slow = HangingWatch()
        self.jobs_http = free_address()
        self.idle_id = self._connect("idle", [])
        self.slow_id = self._connect("slow", [self.slow])
        [jobs] = self.manager.stub.RunContainer(
            manager_pb2.RunContainerRequest(
                spec=spec_pb2.ContainerSpec(
                    name="jobs",
                    runtime=spec_pb2.RUNTIME_KIND_PROCESS,
                    command=[
                        *("python", "examples/sync_app.py"),
                        *("--listen", "127.0.0.1:0", "--name", "jobs"),
                    ],
                    working_dir=str(ROOT),
                    http_listen=self.jobs_http,  # its $PYCONTAINER_HTTP_LISTEN
                )
            ),
            timeout=30,
        ).containers
        self.jobs_id = jobs.identity.id
        for name in ("idle", "slow", "jobs"):
            wait_container(self.manager.stub, name, running_and_connected, "running")

    def _connect(self, name: str, interceptors: list[Any]) -> str:
        from concurrent import futures

        container = make_container(name)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8),
            interceptors=[*interceptors, container.server_interceptor()],
        )
        container.add_to_server(server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        container.add_endpoint("management", f"127.0.0.1:{port}", kind="management")
        container.connect(self.manager.address)
        self.servers.append(server)
        self.containers.append(container)
        return container.id

    def get(self, path: str, accept: str = "") -> tuple[int, str, str]:
        """(status, Content-Type, body) of GET ``path`` on the HTTP face."""
        return get(self.url + path, accept)

    def scrape(self, path: str, headers: dict[str, str] | None = None) -> Samples:
        """Every sample of GET ``path``, as prometheus-client's parser reads them."""
        return scrape(self.url + path, headers)

    def close(self) -> None:
        self.manager.close(graceful=True)
        for server in self.servers:
            server.stop(None)
        for container in self.containers:
            container.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    made = Fleet(tmp_path_factory.mktemp("prometheus") / "state")
    try:
        yield made
    finally:
        made.close()


def test_the_fleet_by_state_follows_a_stop_and_its_latency_is_observed(fleet: Fleet) -> None:
    before = fleet.scrape("/metrics")
    running = value(before, "pycontainer_manager_containers", state="running")
    stopped = value(before, "pycontainer_manager_containers", state="stopped")
    assert running >= 3
    assert value(before, "pycontainer_manager_sessions") >= 3
    assert value(before, "pycontainer_manager_spec_containers", spec="jobs", state="running") == 1
    stops = total(before, "pycontainer_manager_command_duration_seconds_count", command="stop")

    request = manager_pb2.StopContainerRequest(
        container="idle", grace_period=duration_pb2.Duration(seconds=5)
    )
    fleet.manager.stub.StopContainer(request, timeout=30)

    after = fleet.scrape("/metrics")  # right after: no waiting for anything
    assert value(after, "pycontainer_manager_containers", state="running") == running - 1
    assert value(after, "pycontainer_manager_containers", state="stopped") == stopped + 1
    labels = {"command": "stop", "outcome": "OK"}
    assert value(after, "pycontainer_manager_command_duration_seconds_count", **labels) == (
        stops + 1
    )
    seconds = value(after, "pycontainer_manager_command_duration_seconds_sum", **labels)
    assert 0 < seconds < 30
    # Cumulative buckets: the +Inf one holds every stop.
    assert value(
        after, "pycontainer_manager_command_duration_seconds_bucket", le="+Inf", **labels
    ) == (stops + 1)
    assert value(after, "pycontainer_manager_state_store_healthy") == 1
    # A stopped container has nothing to scrape: 503, saying so.
    status, _, body = fleet.get("/containers/idle/metrics")
    assert status == 503, body
    assert f"container {fleet.idle_id} is STOPPED" in body, body
    assert value(after, "pycontainer_manager_xds_clients", kind="grpc") == 0

    # OpenMetrics when asked for, read by its own parser; GET only.
    status, content_type, body = fleet.get("/metrics", accept="application/openmetrics-text")
    assert status == 200, body
    assert content_type.startswith("application/openmetrics-text"), content_type
    names = {family.name for family in openmetrics_families(body)}
    assert {"pycontainer_manager_containers", "pycontainer_manager_events"} <= names
    # Compressed when the scraper accepts gzip, as Prometheus does.
    zipped = urllib.request.Request(fleet.url + "/metrics", headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(zipped, timeout=30) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        text = gzip.decompress(response.read()).decode()
    assert "pycontainer_manager_containers" in {
        f.name for f in text_string_to_metric_families(text)
    }
    post = urllib.request.Request(fleet.url + "/metrics", data=b"", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post, timeout=10)
    assert refused.value.code == 405
    refused.value.close()


def test_a_containers_app_counter_is_read_through_the_manager(fleet: Fleet) -> None:
    def jobs_done(samples: Samples) -> float:
        # examples/sync_app.py counts jobs.processed (unit "1") by kind.
        return total(samples, "jobs_processed_total", container=fleet.jobs_id, name="jobs")

    box: dict[str, Samples] = {}

    def some_done(path: str, than: float) -> bool:
        box[path] = fleet.scrape(path)
        return jobs_done(box[path]) > than

    # Its workers do a job every 200 ms: the next scrapes see more.
    wait_until(lambda: some_done("/containers/jobs/metrics", 0), 15, "a first job")
    first = box["/containers/jobs/metrics"]
    assert all(dict(labels)["container"] == fleet.jobs_id for _, labels in first)
    assert value(first, "process_resident_memory_bytes") > 0
    assert {
        dict(labels).get("otel_scope_name") for (n, labels) in first if n.startswith("jobs_")
    } == {"examples.sync_app"}
    done = jobs_done(first)
    wait_until(lambda: some_done("/metrics/containers", done), 10, "more jobs, scraped again")
    everyone = box["/metrics/containers"]
    # Every running container, each under its own container label.
    for cid, name in ((fleet.jobs_id, "jobs"), (fleet.slow_id, "slow")):
        assert value(everyone, "pycontainer_container_up", container=cid, name=name) == 1
    assert value(everyone, "process_open_fds", container=fleet.jobs_id) > 0
    # The counter is the jobs process's alone.
    assert jobs_done(everyone) == total(everyone, "jobs_processed_total")


def test_a_container_gives_the_same_families_itself_as_through_the_manager(
    fleet: Fleet,
) -> None:
    """One conversion (pycontainer._prometheus): the jobs container's own
    /metrics and the manager's scrape-through of it have the same families
    and, but for the manager's container and name labels, the same series."""
    # The face's own families, of the container's GetInfo and GetHealth
    # (which the manager's scrape, one WatchMetrics, does not read).
    own = {
        "pycontainer_container_info",
        "pycontainer_health_serving",
        "pycontainer_health_check_serving",
    }
    manager_labels = {"container": fleet.jobs_id, "name": "jobs"}

    def series(samples: Samples, drop: dict[str, str]) -> set[tuple[str, frozenset[Any]]]:
        out = set()
        for name, labels in samples:
            if not any(name.startswith(family) for family in own):
                found = dict(labels)
                assert found.items() >= drop.items(), (name, labels)
                out.add((name, frozenset(found.items() - drop.items())))
        return out

    box: dict[str, set[tuple[str, frozenset[Any]]]] = {}

    def alike() -> bool:
        # Series come as the app meets new job kinds and the manager's
        # WatchMetrics calls are counted: the next scrapes see them both.
        box["through"] = series(fleet.scrape("/containers/jobs/metrics"), manager_labels)
        box["direct"] = series(scrape(f"http://{fleet.jobs_http}/metrics"), {})
        return box["through"] == box["direct"]

    wait_until(alike, 20, "the same series directly as through the manager")
    names = {name for name, _ in box["direct"]}
    assert {"process_cpu_seconds_total", "jobs_processed_total", "grpc_server_started_total"} <= (
        names
    )
    assert "jobs_duration_milliseconds_bucket" in names, names
    # And family by family (a histogram's or a counter's, not only its samples).
    through = fleet.get("/containers/jobs/metrics")[2]
    itself = get(f"http://{fleet.jobs_http}/metrics")[2]
    assert {(f.name, f.type) for f in text_string_to_metric_families(through)} == {
        (f.name, f.type) for f in text_string_to_metric_families(itself) if f.name not in own
    }


def test_a_container_that_does_not_answer_is_skipped_and_counted(fleet: Fleet) -> None:
    errors = "pycontainer_manager_scrape_errors_total"
    before = total(fleet.scrape("/metrics"), errors, container=fleet.slow_id)
    fleet.slow.hang.set()
    try:
        started = time.monotonic()
        # Bounded by the scraper's own timeout, as Prometheus sends it.
        timeout = {"X-Prometheus-Scrape-Timeout-Seconds": "1.5"}
        samples = fleet.scrape("/metrics/containers", timeout)
        took = time.monotonic() - started
        one = fleet.get("/containers/slow/metrics?timeout=500ms")
    finally:
        fleet.slow.hang.clear()
    assert took < 5, took  # the scrape's own bound, not the slow container's
    assert value(samples, "pycontainer_container_up", container=fleet.slow_id) == 0
    assert value(samples, "pycontainer_container_up", container=fleet.jobs_id) == 1
    assert not total(samples, "process_threads", container=fleet.slow_id)
    assert one[0] == 504, one
    assert "did not give its metrics (no answer within" in one[2], one
    fleet_after = fleet.scrape("/metrics")
    assert value(fleet_after, errors, container=fleet.slow_id, name="slow") == before + 2


def test_an_unknown_container_is_404_saying_what_to_fix(fleet: Fleet) -> None:
    status, _, body = fleet.get("/containers/no-such-thing/metrics")
    assert status == 404
    assert "no container with id or name 'no-such-thing'" in body
    assert "pycontainer ps lists them" in body
    status, _, body = fleet.get("/metrics/containers?timeout=soon")
    assert status == 400, body
    assert "timeout:" in body, body
    assert "timeout=2s" in body, body
    status, _, body = fleet.get("/metrics/containers?selector=app%20in")
    assert status == 400, body
    assert body.startswith("selector: "), body


def test_a_container_serving_mutual_tls_is_scraped_over_the_managers_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With TLS on (the default), the container the manager launched serves
    its Management API on mutual TLS only: the scrape goes over the
    certificate the manager's relays use, and checks the container's."""
    from pycontainer._tls_env import INSECURE_ENV, TLS_DIR_ENV

    monkeypatch.delenv(INSECURE_ENV, raising=False)
    monkeypatch.delenv(TLS_DIR_ENV, raising=False)
    host = ManagerHost(tmp_path / "state", http_listen="127.0.0.1:0", insecure=False)
    try:
        host.stub.RunContainer(
            manager_pb2.RunContainerRequest(
                spec=spec_pb2.ContainerSpec(
                    name="tls-jobs",
                    runtime=spec_pb2.RUNTIME_KIND_PROCESS,
                    command=["python", "examples/sync_app.py", "--listen", "127.0.0.1:0"],
                    working_dir=str(ROOT),
                )
            ),
            timeout=30,
        )
        got = wait_container(host.stub, "tls-jobs", running_and_connected, "running")
        assert [e.tls for e in got.identity.endpoints] == [True]
        assert host.manager.http is not None
        samples = scrape(host.manager.http.url + "containers/tls-jobs/metrics")
        assert value(samples, "process_threads", container=got.identity.id) > 0
    finally:
        host.close(graceful=True)


def test_a_leader_on_etcd_says_its_epoch(tmp_path: Path) -> None:
    """On etcd, the leading manager's /metrics says it leads, and in which
    term (a standby has no HTTP face: only the leader has a Manager)."""
    from etcd_support import etcd_cluster
    from ha_support import ManagerCluster
    from support import free_address

    http = free_address()
    with etcd_cluster(tmp_path / "etcd", size=1) as etcd:
        managers = ManagerCluster(tmp_path / "m", etcd.url, size=1)
        managers.extra_args = ["--http-listen", http]
        try:
            managers.start_all()
            managers.leader()

            def serving() -> bool:
                try:
                    return get(f"http://{http}/metrics")[0] == 200
                except urllib.error.URLError:  # not bound yet
                    return False

            wait_until(serving, 30, "its /metrics")
            samples = scrape(f"http://{http}/metrics")
        finally:
            managers.stop()
    assert value(samples, "pycontainer_manager_leader") == 1
    assert value(samples, "pycontainer_manager_leader_epoch") > 0
