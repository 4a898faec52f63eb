"""A spec's mesh settings (service, proxy, envoy): read from spec files with
every mistake at its line, checked by the manager for any client by the same
rules (INVALID_ARGUMENT naming the field), shown by describe, compared by
apply (a traffic weight changed in place, anything else replacing the
replicas), and the mesh example's spec and programs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from support import free_address, running_and_connected, wait_container, wait_until
from test_apply import Factory, cli, live, running, write

from pycontainer._meshrules import RETRY_ON
from pycontainer.limits import (
    MAX_MESH_ENDPOINT_WEIGHT,
    MAX_MESH_RETRY_ATTEMPTS,
    MAX_MESH_TRAFFIC_WEIGHT,
    MAX_MESH_UPSTREAMS,
)
from pycontainer.manager import InProcessRuntime
from pycontainer.manager._specdiff import spec_differences, spec_hash, traffic_weight_change
from pycontainer.spec import SpecError, load_specs, parse_specs, spec_to_dict
from pycontainer.testing import ManagerHost, manager_host
from pycontainer.units import duration_field
from pycontainer.v1 import container_pb2, manager_pb2, mesh_pb2, spec_pb2

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "mesh.yaml"

FULL = """
containers:
  - name: orders-v2
    command: [python, orders.py]
    replicas: 2
    service:
      name: orders
      endpoint: api
      subset: v2
      weight: 3
      zone: zone-b
      loadBalancing: RingHash
      hashHeader: x-user
      timeout: 1500ms
      retry:
        retryOn: [unavailable, resource-exhausted]
        maxAttempts: 5
        initialBackoff: 10ms
        maxBackoff: 1s
      outlierDetection:
        interval: 5s
        baseEjectionTime: 1m
        maxEjectionPercent: 50
        failurePercentageThreshold: 70
        requestVolume: 20
      trafficWeight: 10
  - name: legacy
    command: [./legacy-server, --port, "8080"]
    sidecar: true
    service: legacy
    proxy: envoy
    healthListen: 127.0.0.1:8081
    envoy:
      inboundListen: 127.0.0.1:9000
      upstreams:
        - {service: orders, listen: 127.0.0.1:9001}
        - {service: payments, listen: "[::1]:9002"}
  - name: caller
    command: [python, caller.py]
    sidecar: true
    proxy: none
    service: {name: caller, retry: {retryOn: "unavailable, cancelled"}}
"""


# -- spec files ----------------------------------------------------------------------------
def test_every_mesh_key_maps_onto_the_spec() -> None:
    orders, legacy, caller = parse_specs(FULL, source="mesh.yaml")
    service = orders.service
    assert (service.name, service.endpoint, service.subset, service.zone) == (
        "orders",
        "api",
        "v2",
        "zone-b",
    )
    assert service.weight == 3
    assert service.load_balancing == mesh_pb2.LOAD_BALANCING_POLICY_RING_HASH
    assert service.hash_header == "x-user"
    assert duration_field(service, "timeout") is not None
    assert service.timeout.ToMilliseconds() == 1500
    assert list(service.retry.retry_on) == ["unavailable", "resource-exhausted"]
    assert service.retry.max_attempts == 5
    assert service.retry.initial_backoff.ToMilliseconds() == 10
    assert service.retry.max_backoff.ToSeconds() == 1
    detection = service.outlier_detection
    assert (detection.interval.ToSeconds(), detection.base_ejection_time.ToSeconds()) == (5, 60)
    assert (detection.max_ejection_percent, detection.failure_percentage_threshold) == (50, 70)
    assert detection.request_volume == 20
    assert service.traffic_weight == 10
    assert orders.proxy == mesh_pb2.MESH_PROXY_UNSPECIFIED
    assert not orders.HasField("envoy")

    # service: NAME is the name alone.
    assert legacy.service == mesh_pb2.MeshService(name="legacy")
    assert legacy.proxy == mesh_pb2.MESH_PROXY_ENVOY
    assert legacy.envoy.inbound_listen == "127.0.0.1:9000"
    assert [(u.service, u.listen) for u in legacy.envoy.upstreams] == [
        ("orders", "127.0.0.1:9001"),
        ("payments", "[::1]:9002"),
    ]
    # retryOn as Envoy and Istio write it: one text, comma-separated.
    assert list(caller.service.retry.retry_on) == ["unavailable", "cancelled"]
    assert caller.proxy == mesh_pb2.MESH_PROXY_NONE
    assert not caller.service.HasField("outlier_detection")


def test_mesh_settings_read_back_from_spec_to_dict() -> None:
    specs = parse_specs(FULL)
    text = yaml.safe_dump({"containers": [spec_to_dict(s) for s in specs]}, sort_keys=False)
    assert parse_specs(text) == specs
    orders = spec_to_dict(specs[0])["service"]
    assert orders["loadBalancing"] == "RingHash"
    assert orders["timeout"] == "1.5s"
    assert orders["retry"]["retryOn"] == ["unavailable", "resource-exhausted"]
    assert spec_to_dict(specs[1])["proxy"] == "envoy"
    # Empty messages stay (retry: {} is "retry with the defaults", not "no retry").
    [bare] = parse_specs("name: a\ncommand: [x]\nservice: {name: a, retry: {}}\n")
    assert bare.service.HasField("retry")
    assert parse_specs(yaml.safe_dump(spec_to_dict(bare))) == [bare]


def test_values_at_the_mesh_bounds_pass() -> None:
    [spec] = parse_specs(
        "name: a\ncommand: [x]\n"
        f"service: {{name: {'a' * 63}, weight: {MAX_MESH_ENDPOINT_WEIGHT}, "
        f"trafficWeight: {MAX_MESH_TRAFFIC_WEIGHT}, "
        f"retry: {{maxAttempts: {MAX_MESH_RETRY_ATTEMPTS}, retryOn: [{', '.join(RETRY_ON)}]}}, "
        "outlierDetection: {maxEjectionPercent: 100, failurePercentageThreshold: 100}}\n"
    )
    assert spec.service.weight == MAX_MESH_ENDPOINT_WEIGHT
    assert spec.service.traffic_weight == MAX_MESH_TRAFFIC_WEIGHT
    # A traffic weight of 0 is a share of nothing (a canary kept dark).
    [dark] = parse_specs("name: a\ncommand: [x]\nservice: {name: a, trafficWeight: 0}\n")
    assert dark.service.traffic_weight == 0
    # A fixed upstream port serves several replicas: their Envoys all forward
    # it to the same service. Envoy's inbound port may be any free one each.
    [spread] = parse_specs(
        "name: a\ncommand: [x]\nreplicas: 3\nsidecar: true\nservice: a\nproxy: envoy\n"
        "envoy: {inboundListen: 127.0.0.1:0, upstreams: [{service: b, listen: 127.0.0.1:9001}]}\n"
    )
    assert spread.envoy.upstreams[0].listen == "127.0.0.1:9001"


BROKEN = """\
containers:
  - name: orders
    command: [python, orders.py]
    replicas: 2
    service:
      name: Orders
      weight: 0
      loadBalancing: roundrobin
      hashHeader: x-user
      timeout: 0s
      retry: {retryOn: [UNAVAILABLE], maxAttempts: 9, initialBackoff: 1s, maxBackoff: 10ms}
      outlierDetection: {maxEjectionPercent: 0, failurePercentageThreshold: 150}
      trafficWeight: 5000
      port: 8080
    proxy: envoy
    envoy:
      inboundListen: 127.0.0.1:9000
      upstreams:
        - {service: payments, listen: 127.0.0.1:9001}
        - {service: payments, listen: 127.0.0.1:9000}
        - {service: Bad_Name, listen: "9003"}
        - {service: stock, listen: 127.0.0.1:0}
        - stock
  - name: caller
    command: [python, caller.py]
    envoy: {}
"""


def test_every_mesh_mistake_is_reported_at_once_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(BROKEN)
    with pytest.raises(SpecError) as info:
        load_specs(path)
    src, at = str(path), "containers[0]"
    expected = [
        f'{src}:6: {at}.service.name: "Orders" is not a valid service name (a DNS label',
        f"{src}:7: {at}.service.weight: must be 1 or more, got 0 (an endpoint's weight; a "
        "subset's share of the service's traffic is trafficWeight)",
        f'{src}:8: {at}.service.loadBalancing: "roundrobin" is not one of RoundRobin, RingHash, '
        "LeastRequest (did you mean RoundRobin?)",
        f'{src}:10: {at}.service.timeout: "0s" is too short: must be more than 0s',
        f'{src}:11: {at}.service.retry.retryOn[0]: "UNAVAILABLE" is not one of cancelled, '
        "deadline-exceeded, internal, resource-exhausted, unavailable (did you mean unavailable?)",
        f"{src}:11: {at}.service.retry.maxAttempts: must be at most 5, got 9 (attempts in all, "
        "the first included: grpcio makes at most 5)",
        f"{src}:11: {at}.service.retry.maxBackoff: 10ms is shorter than "
        "service.retry.initialBackoff, 1s",
        f"{src}:12: {at}.service.outlierDetection.maxEjectionPercent: must be 1 or more, got 0 "
        "(leave it out for the default, 10)",
        f"{src}:12: {at}.service.outlierDetection.failurePercentageThreshold: must be at most "
        "100, got 150",
        f"{src}:13: {at}.service.trafficWeight: must be at most 1000, got 5000",
        f"{src}:14: {at}.service.port: unknown key (a service is served on one of the "
        "container's endpoints: give endpoint",
        f"{src}:15: {at}.proxy: Envoy runs beside the program under the pycontainer sidecar: "
        "add sidecar: true",
        f"{src}:17: {at}.envoy.inboundListen: a fixed port serves one replica per machine, not 2",
        f'{src}:20: {at}.envoy.upstreams[1].service: "payments" has a listener already, at '
        "envoy.upstreams[0]",
        f"{src}:20: {at}.envoy.upstreams[1].listen: port 9000 is also taken by envoy.inboundListen",
        f'{src}:21: {at}.envoy.upstreams[2].service: "Bad_Name" is not a valid service name',
        f"{src}:21: {at}.envoy.upstreams[2].listen: '9003' has no host: write 127.0.0.1:9003",
        f'{src}:22: {at}.envoy.upstreams[3].listen: "127.0.0.1:0": the program dials this '
        "address, so it needs a fixed port",
        f'{src}:23: {at}.envoy.upstreams[4]: must be a mapping, got string "stock"',
        f"{src}:26: containers[1].envoy: settings of an Envoy proxy, which this spec does not "
        "have: add proxy: envoy (and sidecar: true), or leave it out",
    ]
    errors = info.value.errors
    for want in expected:
        assert any(line.startswith(want) for line in errors), (want, errors)
    # The hash header is not reported: loadBalancing, which it depends on, is
    # wrong already (and so is each field once, not again by the shared rules).
    assert len(errors) == len(expected), errors
    lines = [int(e.split(":")[1]) for e in errors]
    assert lines == sorted(lines)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("service: 8080", "service: must be a mapping, got integer 8080"),
        ("service: {endpoint: grpc}", "service.name: is required: the service's name"),
        ("service: {name: ''}", "service.name: must not be empty"),
        ("service: {name: a, nmae: b}", 'service.nmae: unknown key (did you mean "name"?)'),
        ("service: {name: a, retries: {}}", 'service.retries: unknown key (did you mean "retry"'),
        (
            "service: {name: a, retry: {attempts: 3}}",
            'retry.attempts: unknown key (did you mean "maxAttempts"',
        ),
        (
            "service: {name: a, retry: {perTryTimeout: 1s}}",
            "retry.perTryTimeout: unknown key (there is no per-attempt timeout",
        ),
        ("service: {name: a, retry: {maxAttempts: 0}}", "maxAttempts: must be 1 or more, got 0"),
        ("service: {name: a, retry: {retryOn: []}}", "retryOn: must not be empty"),
        ("service: {name: a, retry: {retryOn: 'unavailable,'}}", "an empty name between"),
        (
            "service: {name: a, retry: {retryOn: [unavailable, unavailable]}}",
            'retryOn[1]: "unavailable" is listed twice',
        ),
        (
            "service: {name: a, retry: {retryOn: [resource_exhausted]}}",
            "(did you mean resource-exhausted?)",
        ),
        ("service: {name: a, retry: {maxBackoff: 10ms}}", "than the default first backoff, 25ms"),
        ("service: {name: a, timeout: 30}", 'service.timeout: 30 has no unit: write "30s"'),
        ("service: {name: a, weight: 129}", "service.weight: must be at most 128, got 129"),
        ("service: {name: a, weight: -1}", "service.weight: must be 1 or more, got -1"),
        ("service: {name: a, trafficWeight: 1.5}", "must be a whole number, got number 1.5"),
        ("service: {name: a, zone: US-East}", '"US-East" is not a valid zone name'),
        ("service: {name: a, subset: v1.2}", '"v1.2" is not a valid subset name'),
        (
            "service: {name: a, hashHeader: x-user}",
            "service.hashHeader: only a ring hash hashes a header: add "
            "service.loadBalancing: RingHash, or leave it out",
        ),
        (
            "service: {name: a, loadBalancing: RingHash, hashHeader: X-User}",
            "\"X-User\" is not a gRPC metadata key (lower-case letters, digits, '-', '_' and "
            "'.') (write \"x-user\")",
        ),
        (
            "service: {name: a, loadBalancing: RingHash, hashHeader: x-id-bin}",
            "binary (-bin) and grpc- headers are never hashed",
        ),
        (
            "service: {name: a, outlierDetection: {consecutiveErrors: 5}}",
            "consecutiveErrors: unknown key (endpoints are ejected by their failure percentage",
        ),
        (
            "service: {name: a, outlierDetection: {requestVolume: 0}}",
            "requestVolume: must be 1 or more, got 0 (leave it out for the default, 50)",
        ),
        ("service: {name: a, outlierDetection: {interval: 0s}}", 'interval: "0s" is too short'),
        ("proxy: Envoy", 'proxy: "Envoy" is not one of none, envoy (did you mean envoy?)'),
        ("proxy: true", "proxy: true is not one of none, envoy"),
        ("sidecarProxy: envoy", 'sidecarProxy: unknown key (did you mean "proxy"'),
        ("mesh: {service: a}", "mesh: unknown key (the mesh settings are service"),
        ("proxy: envoy", "proxy: Envoy runs beside the program under the pycontainer sidecar"),
        (
            "sidecar: true\nproxy: none\nenvoy: {}",
            "envoy: settings of an Envoy proxy, which this spec does not have: add proxy: envoy, "
            "or leave it out",
        ),
        ("sidecar: true\nproxy: envoy\nenvoy: []", "envoy: must be a mapping, got a list"),
        (
            "sidecar: true\nproxy: envoy\nenvoy: {listen: 127.0.0.1:1}",
            'envoy.listen: unknown key (did you mean "inboundListen"?)',
        ),
        (
            "sidecar: true\nproxy: envoy\nenvoy: {admin: 127.0.0.1:1}",
            "envoy.admin: unknown key (Envoy's admin listens on 127.0.0.1 only",
        ),
        (
            "sidecar: true\nproxy: envoy\nenvoy: {inboundListen: 127.0.0.1:1}",
            "envoy.inboundListen: takes the service's inbound traffic, and this spec has no "
            "service",
        ),
        (
            "sidecar: true\nproxy: envoy\nservice: a\nenvoy: {inboundListen: 'http://x:1'}",
            "envoy.inboundListen: 'http://x:1' has a scheme (http://)",
        ),
        (
            "sidecar: true\nproxy: envoy\nenvoy: {upstreams: {orders: 127.0.0.1:1}}",
            "envoy.upstreams: must be a list, such as [{service: orders, listen: 127.0.0.1:9001}]",
        ),
        (
            "sidecar: true\nproxy: envoy\nenvoy: {upstreams: [{service: b}]}",
            "envoy.upstreams[0].listen: is required: the HOST:PORT the program dials",
        ),
        (
            "sidecar: true\nproxy: envoy\nenvoy: {upstreams: [{listen: 127.0.0.1:1}]}",
            "envoy.upstreams[0].service: is required: the service the program calls",
        ),
        (
            "sidecar: true\nproxy: envoy\nenvoy: {upstreams: [{name: b, listen: 127.0.0.1:1}]}",
            'envoy.upstreams[0].name: unknown key (did you mean "service"?)',
        ),
        (
            "sidecar: true\nproxy: envoy\nenvoy: {upstreams: [{service: b, port: 9001}]}",
            "upstreams[0].port: unknown key (write listen: 127.0.0.1:PORT",
        ),
        (
            "sidecar: true\nproxy: envoy\nhealthListen: 127.0.0.1:8081\n"
            "envoy: {upstreams: [{service: b, listen: '0.0.0.0:8081'}]}",
            "envoy.upstreams[0].listen: port 8081 is also taken by healthListen",
        ),
        (
            "sidecar: true\nproxy: envoy\nservice: {name: a, endpoint: mesh}",
            'service.endpoint: "mesh" is Envoy\'s own inbound listener',
        ),
    ],
)
def test_each_mesh_mistake_says_what_to_write(text: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_specs(f"name: a\ncommand: [x]\n{text}\n", source="s.yaml")
    assert any(message in line for line in info.value.errors), info.value.errors
    assert all(re.match(r"s\.yaml:\d+: ", line) for line in info.value.errors)


def test_too_many_upstreams_are_one_mistake() -> None:
    upstreams = ", ".join(
        f"{{service: s{i}, listen: 127.0.0.1:{9000 + i}}}" for i in range(MAX_MESH_UPSTREAMS + 1)
    )
    with pytest.raises(SpecError) as info:
        parse_specs(
            "name: a\ncommand: [x]\nsidecar: true\nproxy: envoy\n"
            f"envoy: {{upstreams: [{upstreams}]}}\n"
        )
    [error] = info.value.errors
    assert f"{MAX_MESH_UPSTREAMS + 1} upstreams, over the limit of {MAX_MESH_UPSTREAMS}" in error


# -- the manager's checks, for any client ------------------------------------------------------
@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ManagerHost]:
    factory = Factory()
    runtimes = {spec_pb2.RUNTIME_KIND_IN_PROCESS: InProcessRuntime(factory)}
    try:
        with manager_host(tmp_path / "state", runtimes=runtimes) as host:
            yield host
    finally:
        factory.stop_all()


def _spec(**fields: object) -> spec_pb2.ContainerSpec:
    return spec_pb2.ContainerSpec(name="a", runtime=spec_pb2.RUNTIME_KIND_IN_PROCESS, **fields)  # type: ignore[arg-type]


def _bad_specs() -> list[tuple[spec_pb2.ContainerSpec, str, str]]:
    """(spec, field, what the message says) for mistakes a stub can send."""
    retry = _spec(service=mesh_pb2.MeshService(name="a"))
    retry.service.retry.max_attempts = 6
    backoff = _spec(service=mesh_pb2.MeshService(name="a"))
    backoff.service.retry.initial_backoff.FromMilliseconds(100)
    backoff.service.retry.max_backoff.FromMilliseconds(50)
    negative = _spec(service=mesh_pb2.MeshService(name="a"))
    negative.service.timeout.FromSeconds(-1)
    ports = _spec(sidecar=True, proxy=mesh_pb2.MESH_PROXY_ENVOY)
    ports.envoy.upstreams.add(service="b", listen="127.0.0.1:9001")
    ports.envoy.upstreams.add(service="c", listen="127.0.0.1:9001")
    return [
        (
            _spec(service=mesh_pb2.MeshService(name="Orders")),
            "service.name",
            "'Orders' is not a valid service name (a DNS label",
        ),
        (_spec(service=mesh_pb2.MeshService()), "service.name", "is required"),
        (retry, "service.retry.max_attempts", "must be at most 5, got 6"),
        (backoff, "service.retry.max_backoff", "50ms is shorter than "),
        (negative, "service.timeout", "'-1s' is too short: must be more than 0s"),
        (
            _spec(service=mesh_pb2.MeshService(name="a", weight=1000)),
            "service.weight",
            "must be at most 128, got 1000",
        ),
        (
            _spec(
                service=mesh_pb2.MeshService(
                    name="a", load_balancing=mesh_pb2.LoadBalancingPolicy.ValueType(7)
                )
            ),
            "service.load_balancing",
            "unknown LoadBalancingPolicy 7",
        ),
        (
            _spec(service=mesh_pb2.MeshService(name="a", hash_header="x-user")),
            "service.hash_header",
            "add specs[0].service.load_balancing = LOAD_BALANCING_POLICY_RING_HASH",
        ),
        (
            _spec(proxy=mesh_pb2.MESH_PROXY_ENVOY),
            "proxy",
            "Envoy runs beside the program under the pycontainer sidecar: add "
            "specs[0].sidecar = true",
        ),
        (
            _spec(envoy=mesh_pb2.EnvoySettings()),
            "envoy",
            "add specs[0].proxy = MESH_PROXY_ENVOY (and specs[0].sidecar = true)",
        ),
        (
            ports,
            "envoy.upstreams[1].listen",
            "port 9001 is also taken by specs[0].envoy.upstreams[0].listen",
        ),
    ]


def test_apply_specs_and_run_container_refuse_bad_mesh_settings(manager: ManagerHost) -> None:
    for spec, field, message in _bad_specs():
        for dry_run in (False, True):
            with pytest.raises(grpc.RpcError) as info:
                manager.stub.ApplySpecs(
                    manager_pb2.ApplySpecsRequest(specs=[spec], dry_run=dry_run), timeout=10
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = info.value.details() or ""
            assert details.startswith(f"specs[0].{field}: "), details
            assert message in details, details
        with pytest.raises(grpc.RpcError) as info:
            manager.stub.RunContainer(manager_pb2.RunContainerRequest(spec=spec), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (info.value.details() or "").startswith(f"spec.{field}: "), info.value.details()
    # Nothing was launched.
    assert manager.stub.ListContainers(manager_pb2.ListContainersRequest()).containers == []
    # And a good one goes through both.
    good = _spec(service=mesh_pb2.MeshService(name="a", endpoint="grpc", weight=2))
    [change] = manager.stub.ApplySpecs(
        manager_pb2.ApplySpecsRequest(specs=[good], dry_run=True), timeout=10
    ).changes
    assert change.action == manager_pb2.APPLY_ACTION_CREATED


def test_apply_dry_run_accepts_the_mesh_example(
    manager: ManagerHost, capsys: pytest.CaptureFixture[str]
) -> None:
    for mode in ("--dry-run", "--dry-run=client"):
        run = cli(capsys, manager.address, "apply", mode, "-f", str(EXAMPLE))
        assert run.code == 0, run.err
        assert [line.split(":")[0] for line in run.lines] == ["greeter", "frontend"], run.out
    assert manager.stub.ListContainers(manager_pb2.ListContainersRequest()).containers == []


# -- apply and describe --------------------------------------------------------------------
def test_what_apply_takes_for_a_change_of_the_mesh_settings() -> None:
    [old] = parse_specs(
        "name: a\ncommand: [x]\nservice: {name: orders, subset: v1, trafficWeight: 90}\n"
    )

    def changed(line: str) -> spec_pb2.ContainerSpec:
        [spec] = parse_specs(f"name: a\ncommand: [x]\nsidecar: true\n{line}\n")
        return spec

    [reweighted] = parse_specs(
        "name: a\ncommand: [x]\nservice: {name: orders, subset: v1, trafficWeight: 10}\n"
    )
    # A traffic weight alone: the same spec to run (nothing restarts).
    assert spec_hash(reweighted) == spec_hash(old)
    assert spec_differences(old, reweighted) == []
    assert traffic_weight_change(old, reweighted) == "service.trafficWeight: 90 -> 10"
    assert traffic_weight_change(old, old) is None
    # Anything else of the mesh: another spec (its replicas are replaced).
    [moved] = parse_specs("name: a\ncommand: [x]\nservice: {name: orders, subset: v2}\n")
    assert spec_hash(moved) != spec_hash(old)
    assert spec_differences(old, moved) == ['service.subset: "v1" -> "v2"']
    proxied = changed("service: {name: orders, subset: v1}\nproxy: envoy")
    assert "+proxy: MESH_PROXY_ENVOY" in spec_differences(old, proxied)
    listener = changed("proxy: envoy\nenvoy: {upstreams: [{service: b, listen: 127.0.0.1:1}]}")
    other = changed("proxy: envoy\nenvoy: {upstreams: [{service: b, listen: 127.0.0.1:2}]}")
    assert spec_hash(listener) != spec_hash(other)
    assert spec_differences(listener, other) == [
        'envoy.upstreams: [{listen: "127.0.0.1:1", service: "b"}] -> '
        '[{listen: "127.0.0.1:2", service: "b"}]'
    ]


MESH_KV = (
    "name: kv\nruntime: in-process\nreplicas: 2\n"
    "service: {{name: kv, endpoint: management, subset: {subset}, trafficWeight: {weight}}}\n"
)


def test_apply_gives_a_new_traffic_weight_in_place_and_replaces_for_the_rest(
    manager: ManagerHost, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "kv.yaml"
    spec = write(path, MESH_KV.format(subset="v1", weight=90))
    assert cli(capsys, manager.address, "apply", "-f", spec, "--wait").code == 0
    before = [c.identity.id for c in running(manager, "kv")]
    assert len(before) == 2

    write(path, MESH_KV.format(subset="v1", weight=10))
    run = cli(capsys, manager.address, "apply", "-f", spec, "--wait")
    assert run.code == 0, run.err
    assert run.lines[0] == (
        "kv: unchanged (2 replicas; service.trafficWeight: 90 -> 10 for 2 replicas "
        "(in place, not restarted))"
    )
    after = live(manager, "kv")
    assert [c.identity.id for c in after] == before  # not restarted
    assert [c.spec.service.traffic_weight for c in after] == [10, 10]
    again = cli(capsys, manager.address, "apply", "-f", spec)
    assert again.lines == ["kv: unchanged (2 replicas)"]

    # Another subset is another spec: the replicas are replaced.
    write(path, MESH_KV.format(subset="v2", weight=10))
    run = cli(capsys, manager.address, "apply", "-f", spec, "--wait", "--timeout", "30s")
    assert run.code == 0, run.err
    assert run.lines[0] == 'kv: replaced (service.subset: "v1" -> "v2")'
    wait_until(lambda: len(running(manager, "kv")) == 2, what="two new replicas")
    replaced = live(manager, "kv")
    assert not {c.identity.id for c in replaced} & set(before)
    assert {c.spec.service.subset for c in replaced} == {"v2"}


def test_describe_shows_the_mesh_service(
    manager: ManagerHost, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = write(
        tmp_path / "kv.yaml",
        "name: kv\nruntime: in-process\nservice: {name: store, endpoint: management}\n"
        "---\nname: plain\nruntime: in-process\n",
    )
    assert cli(capsys, manager.address, "apply", "-f", spec, "--wait").code == 0
    run = cli(capsys, manager.address, "describe", "kv")
    assert run.code == 0, run.err
    assert "Mesh service:     store (endpoint management, subset kv)" in run.lines, run.out
    # The spec shown reads back (the mesh keys in the file's spelling).
    assert "  service:" in run.lines
    assert "    name: store" in run.lines
    plain = cli(capsys, manager.address, "describe", "plain")
    assert plain.code == 0
    assert not any(line.startswith("Mesh service:") for line in plain.lines)
    as_json = json.loads(cli(capsys, manager.address, "describe", "kv", "-o", "json").out)
    service = as_json["spec"]["service"]
    assert (service["name"], service["endpoint"]) == ("store", "management")


# -- the mesh example ----------------------------------------------------------------------
def test_the_mesh_example_spec() -> None:
    greeter, frontend = load_specs(EXAMPLE)
    assert greeter.replicas == 3
    assert (greeter.service.name, greeter.service.endpoint) == ("greeter", "grpc")
    assert greeter.command[:2] == ["python", "examples/mesh_backend.py"]
    assert frontend.sidecar
    assert not frontend.HasField("service")
    assert frontend.command[:2] == ["python", "examples/mesh_frontend.py"]
    command = list(frontend.command)
    assert command[command.index("--service") + 1] == greeter.service.name


def _start_backend() -> tuple[subprocess.Popen[str], str]:
    backend = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "mesh_backend.py"), "--grace", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert backend.stdout is not None
    line = backend.stdout.readline()
    match = re.search(r"greeter on (\S+)", line)
    assert match, (line, backend.stderr.read() if backend.stderr else "")
    return backend, match.group(1)


def _frontend(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "mesh_frontend.py"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_the_mesh_example_frontend_calls_the_greeter(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GRPC_XDS_BOOTSTRAP", "PYCONTAINER_MANAGER")
    }
    # Without a bootstrap, xds:/// cannot resolve: it says what is missing.
    missing = _frontend(env=env)
    assert missing.returncode == 2
    assert missing.stderr.startswith(
        "error: xds:///greeter needs an xDS bootstrap, and $GRPC_XDS_BOOTSTRAP is not set"
    )

    backend, address = _start_backend()
    try:
        direct = _frontend("--target", address, "--count", "3", "--interval", "10ms", env=env)
        assert direct.returncode == 0, direct.stdout + direct.stderr
        answers = re.findall(r"call \d: hello, frontend, from (greeter-\w+)", direct.stdout)
        assert len(answers) == 3, direct.stdout
        assert len(set(answers)) == 1, direct.stdout
        assert f"3 calls, 0 failed; answers by replica: {answers[0]} 3" in direct.stdout
    finally:
        backend.terminate()
        out, _ = backend.communicate(timeout=20)
    assert backend.returncode == 0
    assert out.rstrip().endswith("stopped")

    # With one, it dials xds:///greeter (here an xDS server that is not there:
    # the call fails after its timeout and the frontend says so).
    bootstrap = tmp_path / "bootstrap.json"
    bootstrap.write_text(
        json.dumps(
            {
                "xds_servers": [
                    {
                        "server_uri": free_address(),
                        "channel_creds": [{"type": "insecure"}],
                        "server_features": ["xds_v3"],
                    }
                ],
                "node": {"id": "frontend-test", "locality": {}},
            }
        )
    )
    through_xds = _frontend(
        "--count", "1", "--timeout", "1s", env={**env, "GRPC_XDS_BOOTSTRAP": str(bootstrap)}
    )
    assert through_xds.returncode == 1, through_xds.stdout + through_xds.stderr
    assert "calling xds:///greeter every 1s" in through_xds.stdout
    assert "call 1 failed: " in through_xds.stdout


def test_the_mesh_example_backend_advertises_its_grpc_endpoint_under_a_manager(
    tmp_path: Path,
) -> None:
    """The example's greeter spec as a manager runs it (one replica, this
    interpreter): it registers the "grpc" endpoint its service names, answers
    through it, and stops when the manager stops it."""
    [greeter, _] = load_specs(EXAMPLE)
    greeter.replicas = 1
    greeter.command[0] = sys.executable
    greeter.working_dir = str(ROOT)
    with manager_host(tmp_path / "state") as manager:
        [launched] = manager.stub.RunContainer(
            manager_pb2.RunContainerRequest(spec=greeter), timeout=30
        ).containers
        seen = wait_container(manager.stub, launched.identity.id, running_and_connected, "running")
        endpoints = {e.name: e for e in seen.identity.endpoints}
        assert endpoints[greeter.service.endpoint].kind == container_pb2.ENDPOINT_KIND_GRPC
        assert seen.spec.service == greeter.service
        env = {k: v for k, v in os.environ.items() if k != "GRPC_XDS_BOOTSTRAP"}
        address = endpoints["grpc"].address
        called = _frontend("--target", address, "--count", "2", "--interval", "10ms", env=env)
        assert called.returncode == 0, called.stdout + called.stderr
        assert f"from {launched.identity.id}" in called.stdout
        request = manager_pb2.StopContainerRequest(container=launched.identity.id)
        request.grace_period.FromSeconds(10)
        stopped = manager.stub.StopContainer(request, timeout=30)
        assert stopped.container.state == container_pb2.LIFECYCLE_STATE_STOPPED
