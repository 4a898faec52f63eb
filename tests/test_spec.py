"""Spec files: YAML streams, containers: lists and TOML read into
ContainerSpec; every mistake reported at once with its place; back again."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import yaml

from pycontainer.spec import (
    MAX_GRACE_PERIOD,
    MAX_REPLICAS,
    MIN_RESTART_BACKOFF,
    SpecError,
    decode_spec,
    encode_spec,
    load_specs,
    parse_specs,
    spec_to_dict,
)
from pycontainer.units import duration_field, format_duration
from pycontainer.v1 import spec_pb2

REPO = Path(__file__).resolve().parent.parent

FULL = """
containers:
  - name: web
    labels: {app: web, example.com/tier: front}
    runtime: process
    command: [python, app.py, --port, "8080"]
    env: {LOG_LEVEL: debug}
    workingDir: /srv
    priority: 10
    resources: {cpu: 500m, memory: 256Mi}
    gracePeriod: 1m30s
    restartPolicy: OnFailure
    restartBackoff: 500ms
    checkpointPolicy: OnStop
    replicas: 3
    startTimeout: 45s
    livenessProbe:
      http: {port: 8080, path: /healthz}
      period: 5s
      timeout: 1s
      failureThreshold: 2
      initialDelay: 10s
    readinessProbe:
      grpc: {port: 8081, service: readiness}
  - name: box
    runtime: runc
    oci: {rootfs: /var/lib/box, hostname: box}
    command: [sh, -c, "sleep 1000"]
    sidecar: true
    healthListen: 0.0.0.0:8081
    livenessProbe: {exec: {command: [test, -f, /tmp/ok]}}
    readinessProbe: {tcp: {port: 9000}}
    hooks:
      preStop: [sh, -c, "echo bye"]
      checkpoint: [cat, /state]
      restore: [tee, /state]
"""


def test_every_field_maps_onto_the_spec() -> None:
    web, box = parse_specs(FULL, source="full.yaml")
    assert web.name == "web"
    assert dict(web.labels) == {"app": "web", "example.com/tier": "front"}
    assert web.runtime == spec_pb2.RUNTIME_KIND_PROCESS
    assert list(web.command) == ["python", "app.py", "--port", "8080"]
    assert dict(web.env) == {"LOG_LEVEL": "debug"}
    assert web.working_dir == "/srv"
    assert web.priority == 10
    assert web.resources.cpu_millis == 500
    assert web.resources.memory_bytes == 256 << 20
    assert web.grace_period.ToSeconds() == 90
    assert web.restart_policy == spec_pb2.RESTART_POLICY_ON_FAILURE
    assert web.restart_backoff.ToMilliseconds() == 500
    assert web.checkpoint_policy == spec_pb2.CHECKPOINT_POLICY_ON_STOP
    assert web.replicas == 3
    assert duration_field(web, "start_timeout") == datetime.timedelta(seconds=45)
    assert not box.HasField("start_timeout")  # unset: the manager's default
    probe = web.liveness_probe
    assert probe.WhichOneof("handler") == "http"
    assert (probe.http.port, probe.http.path) == (8080, "/healthz")
    assert probe.period.ToSeconds() == 5
    assert probe.timeout.ToSeconds() == 1
    assert probe.failure_threshold == 2
    assert probe.initial_delay.ToSeconds() == 10
    assert web.readiness_probe.grpc.port == 8081
    assert web.readiness_probe.grpc.service == "readiness"
    assert not web.sidecar

    assert box.runtime == spec_pb2.RUNTIME_KIND_RUNC
    assert (box.oci.rootfs, box.oci.hostname) == ("/var/lib/box", "box")
    assert box.sidecar
    assert box.health_listen == "0.0.0.0:8081"
    assert not web.health_listen
    assert list(box.liveness_probe.exec.command) == ["test", "-f", "/tmp/ok"]
    assert box.readiness_probe.tcp.port == 9000
    assert list(box.hooks.pre_stop) == ["sh", "-c", "echo bye"]
    assert list(box.hooks.checkpoint) == ["cat", "/state"]
    assert list(box.hooks.restore) == ["tee", "/state"]


def test_a_yaml_stream_of_documents_and_toml_read_alike(tmp_path: Path) -> None:
    stream = tmp_path / "stream.yml"
    stream.write_text(
        "name: a\ncommand: [python, a.py]\n---\nname: b\ncommand: [python, b.py]\npriority: 2\n"
        "---\n"  # a trailing empty document is nothing
    )
    toml = tmp_path / "specs.toml"
    toml.write_text(
        '[[containers]]\nname = "a"\ncommand = ["python", "a.py"]\n\n'
        '[[containers]]\nname = "b"\ncommand = ["python", "b.py"]\npriority = 2\n'
    )
    assert load_specs(stream) == load_specs(toml)
    assert [s.name for s in load_specs(str(stream))] == ["a", "b"]


def test_the_demo_spec_is_valid() -> None:
    specs = load_specs(REPO / "examples" / "demo.yaml")
    assert [s.name for s in specs] == ["sync-worker", "async-pipeline", "ticker", "oci-worker"]
    priorities = [s.priority for s in specs]
    assert len(set(priorities)) == 4
    assert specs[0].command[:2] == ["python", "examples/sync_app.py"]
    assert specs[2].sidecar


BROKEN = """\
containers:
  - name: web
    command: [python, app.py]
  - name: worker
    command: [python, worker.py]
    resources: {cpu: lots, memory: 256m}
    replica: 2
    gracePeriod: 30
  - command: "python other.py --fast"
    restartPolicy: always
    env: {PORT: 8080}
    replicas: -1
  - name: web
    command: [python, again.py]
    livenessProbe: {period: 5s}
    priority: high
  - name: Bad_Name
"""


def test_every_mistake_is_reported_at_once_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text(BROKEN)
    with pytest.raises(SpecError) as info:
        load_specs(path)
    errors = info.value.errors
    src = str(path)
    expected = [
        f'{src}:6: containers[1].resources.cpu: "lots" is not a CPU quantity (use 500m or 2)',
        f"{src}:6: containers[1].resources.memory: ",
        f'{src}:7: containers[1].replica: unknown key (did you mean "replicas"?)',
        f'{src}:8: containers[1].gracePeriod: 30 has no unit: write "30s"',
        f'{src}:9: containers[2]: missing "name"',
        f"{src}:9: containers[2].command: must be a list, such as [python, app.py, --port, "
        f'\'8080\'] (did you mean ["python", "other.py", "--fast"]?)',
        f'{src}:10: containers[2].restartPolicy: "always" is not one of Always, OnFailure, '
        "Never (did you mean Always?)",
        f'{src}:11: containers[2].env.PORT: must be a string, got integer 8080 (quote it: "8080")',
        f"{src}:12: containers[2].replicas: must be 1 or more, got -1",
        f'{src}:13: containers[3].name: duplicate name "web" (also at containers[0])',
        f"{src}:15: containers[3].livenessProbe: needs one of exec, http, tcp or grpc",
        f'{src}:16: containers[3].priority: must be a whole number, got string "high"',
        f'{src}:17: containers[4].name: "Bad_Name" is not a valid name',
        f'{src}:17: containers[4]: missing "command"',
    ]
    for want in expected:
        assert any(line.startswith(want) for line in errors), (want, errors)
    assert len(errors) == len(expected), errors
    assert "'m' means thousandths" in next(e for e in errors if ".memory:" in e)
    # One line each, top of the file first.
    lines = [int(e.split(":")[1]) for e in errors]
    assert lines == sorted(lines)
    assert str(info.value).splitlines() == errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "name: a\ncommand: [x]\nworking_dir: /srv\n",
            'working_dir: unknown key (did you mean "workingDir"?)',
        ),
        ("name: a\ncommand: [x]\nimage: nginx\n", "image: unknown key (pycontainer runs programs"),
        (
            "name: a\ncommand: [x]\nresources: {requests: {cpu: 1}}\n",
            "resources.requests: unknown key (write cpu and memory directly under resources)",
        ),
        ("name: a\ncommand: [x]\nsidecar: yes please\n", "sidecar: must be true or false"),
        ("name: a\ncommand: [x]\nlabels: {version: 1.10}\n", "labels.version: must be a string"),
        (
            "name: a\ncommand: [x]\nlabels: {'bad key': x}\n",
            'labels["bad key"]: not a valid label key',
        ),
        ("name: a\ncommand: [x]\ngracePeriod: soon\n", "gracePeriod: 'soon' is not a duration"),
        ("name: a\ncommand: [x]\ngracePeriod: -5s\n", "gracePeriod: '-5s' is negative"),
        ("name: a\ncommand: []\n", "command: must not be empty"),
        (
            "name: a\ncommand: [x]\nreadinessProbe: {tcp: {port: 99999}, exec: {command: [x]}}\n",
            "readinessProbe: has exec and tcp: give only one",
        ),
        (
            "name: a\ncommand: [x]\nreadinessProbe: {http: {path: /}}\n",
            'readinessProbe.http: missing "port"',
        ),
        ("- name: a\n", "expected a container (a mapping) or containers: [...], got a list"),
        ("containers: {name: a}\n", "containers: must be a list of containers, got a mapping"),
        ("containers: []\nreplicas: 2\n", "replicas: unknown key beside containers"),
        ("", "no containers"),
        ("name: a\ncommand: [x]\nname: b\n", "name: duplicate key"),
        (
            "name: a\ncommand: [x]\nhealthListen: '8081'\n",
            "healthListen: '8081' has no host: write 127.0.0.1:8081",
        ),
        ("name: a\ncommand: [x]\nhealthListen: 8081\n", "healthListen: must be a string"),
        (
            "name: a\ncommand: [x]\nreplicas: 2\nhealthListen: 0.0.0.0:8081\n",
            "healthListen: a fixed port serves one replica per machine, not 2",
        ),
        ("name: a\n  command: [x]\n", "invalid YAML"),
    ],
)
def test_each_kind_of_mistake_says_what_to_write(text: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_specs(text, source="s.yaml")
    assert any(message in line for line in info.value.errors), info.value.errors
    assert all(line.startswith("s.yaml") for line in info.value.errors)


def test_several_documents_are_numbered() -> None:
    with pytest.raises(SpecError) as info:
        parse_specs(
            "name: a\ncommand: [x]\n---\nname: b\ncommand: [x]\npriority: 1.5\n", source="s"
        )
    assert info.value.errors == [
        "s:6: documents[1].priority: must be a whole number, got number 1.5"
    ]


def test_toml_mistakes_and_unreadable_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[containers]]\nname = "a"\ncommand = "python a.py"\n')
    with pytest.raises(SpecError) as info:
        load_specs(bad)
    assert info.value.errors[0].startswith(f"{bad}: containers[0].command: must be a list")
    bad.write_text("[[containers]\n")
    with pytest.raises(SpecError, match="invalid TOML"):
        load_specs(bad)
    with pytest.raises(SpecError, match="cannot read it"):
        load_specs(tmp_path / "missing.yaml")


def test_spec_to_dict_reads_back_to_the_same_spec() -> None:
    specs = parse_specs(FULL)
    text = yaml.safe_dump({"containers": [spec_to_dict(s) for s in specs]}, sort_keys=False)
    assert parse_specs(text) == specs
    web = spec_to_dict(specs[0])
    assert web["resources"] == {"cpu": "500m", "memory": "256Mi"}
    assert web["gracePeriod"] == "1m30s"
    assert web["restartPolicy"] == "OnFailure"
    odd = spec_pb2.ContainerSpec(name="odd", command=["x"])
    odd.resources.memory_bytes = 1500  # no binary unit: bytes
    assert parse_specs(yaml.safe_dump(spec_to_dict(odd))) == [odd]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("replicas: 100000", "replicas: must be at most 1000, got 100000"),
        ("gracePeriod: 1000000h", 'gracePeriod: "1000000h" is too long: must be at most 1h'),
        ("restartBackoff: 0s", 'restartBackoff: "0s" is too short: must be at least 100ms'),
        ("restartBackoff: 99ms", "must be at least 100ms"),
        ("restartBackoff: 6m", 'restartBackoff: "6m" is too long: must be at most 5m'),
        ("startTimeout: 500ms", 'startTimeout: "500ms" is too short: must be at least 1s'),
        ("startTimeout: 2h", 'startTimeout: "2h" is too long: must be at most 1h'),
        ("livenessProbe: {tcp: {port: 1}, period: 0s}", 'period: "0s" is too short'),
        ("readinessProbe: {tcp: {port: 1}, timeout: 0}", "timeout: 0 is too short"),
        ("readinessProbe: {tcp: {port: 1}, initialDelay: 2h}", 'initialDelay: "2h" is too long'),
    ],
)
def test_bounds_are_stated_in_the_message(line: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_specs(f"name: a\ncommand: [x]\n{line}\n", source="s.yaml")
    [error] = info.value.errors
    assert error.startswith("s.yaml:3: "), error
    assert message in error, error


def test_values_at_the_bounds_pass() -> None:
    [spec] = parse_specs(
        f"name: a\ncommand: [x]\nreplicas: {MAX_REPLICAS}\n"
        f"gracePeriod: {format_duration(MAX_GRACE_PERIOD)}\n"
        f"restartBackoff: {format_duration(MIN_RESTART_BACKOFF)}\n"
        "readinessProbe: {tcp: {port: 1}, initialDelay: 0s}\n"
    )
    assert spec.replicas == MAX_REPLICAS
    assert duration_field(spec, "grace_period") == MAX_GRACE_PERIOD
    assert duration_field(spec, "restart_backoff") == MIN_RESTART_BACKOFF
    # Replicas of a health port each take a free port (advertised in GetInfo).
    [spread] = parse_specs("name: a\ncommand: [x]\nreplicas: 3\nhealthListen: 0.0.0.0:0\n")
    assert spread.health_listen == "0.0.0.0:0"
    # gracePeriod 0 is no grace at all, not "unset".
    [zero] = parse_specs("name: a\ncommand: [x]\ngracePeriod: 0\n")
    assert duration_field(zero, "grace_period") == datetime.timedelta(0)


def test_a_spec_travels_in_the_environment_as_its_wire_form() -> None:
    specs = parse_specs(FULL)
    for spec in specs:
        text = encode_spec(spec)
        assert text.isascii()
        assert "\n" not in text
        assert decode_spec(text) == spec
    with pytest.raises(ValueError, match="PYCONTAINER_SPEC is not base64"):
        decode_spec("not base64!")
    with pytest.raises(ValueError, match="does not hold a ContainerSpec"):
        decode_spec("//79/A==")
