"""Secrets never show: a spec's secret env values stay out of every reply
(ListContainers, GetContainer, WatchEvents, ApplySpecs), the CLI's output
(ps, ps -o yaml/json, describe, events, apply, diff), errors, the manager's
log and the state directory's bytes (sealed with AES-GCM), while the program
still gets them, the yaml round trip changes nothing, and a restarted manager
launches with the right values."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import stat
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import yaml
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import wait_until

from pycontainer._secrets import REDACTED, keep_stored_secrets, redact_spec
from pycontainer.cli import main
from pycontainer.manager import StartRefused
from pycontainer.manager._sealing import KEY_FILE, Sealer, SealError
from pycontainer.manager._specdiff import SPEC_HASH_LABEL, spec_hash
from pycontainer.manager._store import AppliedSpec, ContainerRecord, SQLiteStore
from pycontainer.spec import SpecError, parse_specs, spec_to_dict
from pycontainer.testing import ManagerHost
from pycontainer.v1 import container_pb2, manager_pb2, spec_pb2

S = container_pb2

SECRETS = {
    "PASSWORD": "hunter2-pw-7f3a",
    "DB_TOKEN": "tok-9c1e-db",
    "API_KEY": "ak-55d0-live",
    "SIGNING_MATERIAL": "declared-b81f",  # secret only because secretEnv says so
}
DSN_PASSWORD = "dsn-pw-a4e2"
DSN = f"postgres://app:{DSN_PASSWORD}@db.internal:5432/app"
# Every string that must never show (the DSN's password stands for the DSN).
NEVER = [*SECRETS.values(), DSN_PASSWORD]

# Writes name=sha256(value) of the variables it was given, then stays up.
PROGRAM = """
import hashlib, os, sys, time
names = sys.argv[1].split(",")
lines = [f"{n}={hashlib.sha256(os.environ[n].encode()).hexdigest()}" for n in names]
tmp = os.environ["OUT"] + ".tmp"
with open(tmp, "w") as f:
    f.write("\\n".join(lines) + "\\n")
os.replace(tmp, os.environ["OUT"])
while True:
    time.sleep(1)
"""


def spec_text(out: Path, password: str = SECRETS["PASSWORD"]) -> str:
    env = {**SECRETS, "PASSWORD": password, "DATABASE_URL": DSN, "OUT": str(out)}
    document = {
        "name": "vault",
        "command": [sys.executable, "-c", PROGRAM, ",".join([*SECRETS, "DATABASE_URL"])],
        "sidecar": True,
        "env": env,
        "secretEnv": ["SIGNING_MATERIAL"],
        "gracePeriod": "5s",
    }
    return yaml.safe_dump(document, sort_keys=False)


def expected_hashes(password: str = SECRETS["PASSWORD"]) -> set[str]:
    values = {**SECRETS, "PASSWORD": password, "DATABASE_URL": DSN}
    return {f"{n}={hashlib.sha256(v.encode()).hexdigest()}" for n, v in values.items()}


@dataclass
class Run:
    code: int
    out: str
    err: str


def cli(capsys: pytest.CaptureFixture[str], address: str, *argv: str) -> Run:
    capsys.readouterr()
    code = main([*argv, "--manager", address])
    out, err = capsys.readouterr()
    return Run(code, out, err)


def assert_hidden(text: str, where: str) -> None:
    for secret in NEVER:
        assert secret not in text, f"{secret!r} shows in {where}:\n{text}"


def state_bytes(state: Path) -> bytes:
    """Every byte the manager keeps in its state directory (the SQLite file,
    its journal, the log store), the key aside."""
    return b"".join(
        p.read_bytes()
        for p in sorted(state.rglob("*"))
        if p.is_file() and p.name != KEY_FILE and not p.name.endswith(".sock")
    )


def program_hashes(out: Path) -> set[str]:
    return set(out.read_text().split()) if out.exists() else set()


@pytest.fixture
def manager_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="pycontainer")
    return caplog


def test_secret_env_never_shows_and_the_program_gets_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], manager_log: pytest.LogCaptureFixture
) -> None:
    state, out = tmp_path / "state", tmp_path / "hashes"
    spec = tmp_path / "vault.yaml"
    spec.write_text(spec_text(out))
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    manager = ManagerHost(state, reconnect_window=timedelta(seconds=1), tracer_provider=provider)
    try:
        checked = cli(capsys, manager.address, "apply", "-f", str(spec), "--dry-run", "-o", "yaml")
        assert checked.code == 0, checked.err
        assert_hidden(checked.out, "apply --dry-run -o yaml")
        applied = cli(capsys, manager.address, "apply", "-f", str(spec), "--wait")
        assert applied.code == 0, applied.err
        assert_hidden(applied.out + applied.err, "apply's output")
        wait_until(lambda: program_hashes(out) == expected_hashes(), 20, "the program's hashes")

        # Replies: ListContainers, GetContainer, WatchEvents.
        listed = manager.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=5)
        [vault] = [c for c in listed.containers if c.identity.name == "vault"]
        assert_hidden(str(listed), "ListContainers")
        got = manager.stub.GetContainer(
            manager_pb2.GetContainerRequest(container="vault"), timeout=5
        ).container
        assert_hidden(str(got), "GetContainer")
        assert {k: got.spec.env[k] for k in SECRETS} == dict.fromkeys(SECRETS, REDACTED)
        assert got.spec.env["DATABASE_URL"] == f"postgres://app:{REDACTED}@db.internal:5432/app"
        assert got.spec.env["OUT"] == str(out)  # not a secret: shown as it is
        # The public spec-hash label is keyed: no guessing a secret against it.
        entry = manager.manager.registry.get(got.identity.id)
        assert entry is not None
        assert entry.spec is not None
        keyed = spec_hash(entry.spec, manager.manager.registry.sealer.mac)
        assert got.identity.labels[SPEC_HASH_LABEL] == keyed != spec_hash(entry.spec)
        history = manager_pb2.WatchEventsRequest(include_history=True, history_only=True)
        assert_hidden(str(list(manager.stub.WatchEvents(history, timeout=10))), "WatchEvents")

        # The CLI: every view of the container.
        for argv in (
            ("ps",),
            ("ps", "-o", "wide"),
            ("ps", "-o", "json"),
            ("describe", "vault"),
            ("describe", "vault", "-o", "yaml"),
            ("describe", "vault", "-o", "json"),
            ("events",),
            ("logs", "vault"),
        ):
            run = cli(capsys, manager.address, *argv)
            assert run.code == 0, (argv, run.err)
            assert_hidden(run.out + run.err, " ".join(argv))

        # The round trip: what ps prints applies again unchanged.
        printed = cli(capsys, manager.address, "ps", "-o", "yaml")
        assert printed.code == 0, printed.err
        assert_hidden(printed.out, "ps -o yaml")
        assert yaml.safe_load(printed.out)["env"]["PASSWORD"] == REDACTED
        again = tmp_path / "printed.yaml"
        again.write_text(printed.out)
        run = cli(capsys, manager.address, "apply", "-f", str(again))
        assert (run.code, run.out.splitlines()) == (0, ["vault: unchanged (1 replica)"]), run.err
        run = cli(capsys, manager.address, "diff", "-f", str(again))
        assert run.code == 0, run.out + run.err

        # A changed secret is a change, told without either value.
        changed = tmp_path / "changed.yaml"
        changed.write_text(spec_text(out, password="new-pw-0d9b"))
        run = cli(capsys, manager.address, "diff", "-f", str(changed))
        assert run.code == 1, run.err
        assert f'env.PASSWORD: "{REDACTED}" (changed)' in run.out
        assert "new-pw-0d9b" not in run.out + run.err
        assert_hidden(run.out + run.err, "diff")

        # The marker for a name the manager has no value for: INVALID_ARGUMENT saying what to do.
        stranger = spec_pb2.ContainerSpec(
            name="stranger", command=["true"], env={"PASSWORD": REDACTED}
        )
        with pytest.raises(grpc.RpcError) as refused:
            manager.stub.RunContainer(manager_pb2.RunContainerRequest(spec=stranger), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "write the value itself" in (refused.value.details() or "")
        assert "env['PASSWORD']" in (refused.value.details() or "")
        strange_file = tmp_path / "stranger.yaml"
        strange_file.write_text(printed.out.replace("name: vault", "name: stranger"))
        run = cli(capsys, manager.address, "apply", "-f", str(strange_file))
        assert run.code != 0
        assert "write the value itself" in run.err, run.err
        # A marker inside the DSN that no stored value is shown as: refused too.
        moved = printed.out.replace("db.internal", "elsewhere")
        strange_file.write_text(moved)
        run = cli(capsys, manager.address, "apply", "-f", str(strange_file))
        assert run.code != 0
        assert "DATABASE_URL" in run.err, run.err

        # At rest: nothing of them in the state directory's bytes; the key is private.
        at_rest = state_bytes(state)
        assert b"vault" in at_rest  # the records are there...
        for secret in NEVER:
            assert secret.encode() not in at_rest, f"{secret!r} is stored in plain text"
        assert stat.S_IMODE((state / KEY_FILE).stat().st_mode) == 0o600

        # A restarted manager (the program gone meanwhile) launches it with the real values.
        # The manager goes (its containers keep running), then its program dies.
        manager.stop()
        os.killpg(vault.pid, signal.SIGKILL)
        out.unlink()
        manager = ManagerHost(state, reconnect_window=timedelta(seconds=1))
        wait_until(lambda: out.exists(), 30, "the relaunched program's hashes")
        assert program_hashes(out) == expected_hashes()
        assert vault.identity.id not in {
            c.identity.id
            for c in manager.stub.ListContainers(
                manager_pb2.ListContainersRequest(
                    states=[S.LIFECYCLE_STATE_RUNNING, S.LIFECYCLE_STATE_STARTING]
                ),
                timeout=5,
            ).containers
        }  # a new replica, launched from the applied spec
        for secret in NEVER:
            assert secret.encode() not in state_bytes(state)
    finally:
        manager.kill_launched()
        manager.close()
    # The manager's (and the sidecar's, relayed) log of all of it, and its traces.
    assert_hidden(manager_log.text, "the manager's log")
    finished = spans.get_finished_spans()
    assert any(s.name.endswith("RunContainer") for s in finished), [s.name for s in finished]
    traced = [
        (s.name, dict(s.attributes or {}), [dict(e.attributes or {}) for e in s.events])
        for s in finished
    ]
    assert_hidden(repr(traced) + repr([s.status.description for s in finished]), "traces")


def test_a_store_written_before_sealing_still_loads(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    plain = spec_pb2.ContainerSpec(
        name="old", command=["true"], env={"PASSWORD": "plain-old-pw", "MODE": "x"}
    )
    store = SQLiteStore(state / "manager.db")
    store.put_container(
        ContainerRecord(
            id="old-00000001",
            name="old",
            spec=plain.SerializeToString(),
            labels={},
            priority=0,
            cpu_millis=0,
            memory_bytes=0,
            state=S.LIFECYCLE_STATE_STOPPED,
            create_time=time.time(),
            desired=False,
        )
    )
    store.put_applied_spec(
        AppliedSpec(
            name="old",
            owner="default",
            spec=plain.SerializeToString(),
            spec_hash="0",
            applied_time=time.time(),
        )
    )
    store.close()
    manager = ManagerHost(state)
    try:
        entry = manager.manager.registry.get("old-00000001")
        assert entry is not None
        assert entry.spec == plain
        got = manager.stub.GetContainer(
            manager_pb2.GetContainerRequest(container="old-00000001"), timeout=5
        ).container
        assert got.spec.env["PASSWORD"] == REDACTED
        assert got.spec.env["MODE"] == "x"
        [applied] = manager.manager.store.list_applied_specs()
        assert manager.manager.registry.sealer.open_spec(applied.spec) == plain
    finally:
        manager.close()


def test_sealed_values_open_only_with_their_key_and_their_place(tmp_path: Path) -> None:
    sealer = Sealer.in_directory(tmp_path)
    assert (
        Sealer.in_directory(tmp_path)
        .open_spec(sealer.seal_spec(spec_pb2.ContainerSpec(name="a", env={"K": "v"})))
        .env["K"]
        == "v"
    )  # the key file is made once and read again
    spec = spec_pb2.ContainerSpec(name="a", env={"PASSWORD": "pw-1", "OTHER": "o"})
    blob = sealer.seal_spec(spec)
    assert b"pw-1" not in blob
    assert sealer.open_spec(blob) == spec
    many = spec_pb2.ContainerSpec(name="a", env={f"V{i}": f"value {i}" for i in range(64)})
    assert sealer.open_spec(sealer.seal_spec(many)) == many  # every one, none skipped
    # Another key: SealError naming the variable.
    other = Sealer(os.urandom(32))
    with pytest.raises(SealError, match=r"PASSWORD|OTHER"):
        other.open_spec(blob)
    # A sealed value moved to another variable (or another spec) does not open.
    swapped = spec_pb2.ContainerSpec.FromString(blob)
    swapped.env["OTHER"], swapped.env["PASSWORD"] = swapped.env["PASSWORD"], swapped.env["OTHER"]
    with pytest.raises(SealError):
        sealer.open_spec(swapped.SerializeToString())
    renamed = spec_pb2.ContainerSpec.FromString(blob)
    renamed.name = "b"
    with pytest.raises(SealError):
        sealer.open_spec(renamed.SerializeToString())
    # A key others can read is refused at start, in one line.
    (tmp_path / KEY_FILE).chmod(0o644)
    with pytest.raises(StartRefused, match="chmod 600"):
        Sealer.in_directory(tmp_path)


def test_a_key_for_another_store_leaves_the_records_in_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The wrong key: the manager starts, says which record it cannot open,
    and leaves it in the store for the right key to bring back."""
    state = tmp_path / "state"
    manager = ManagerHost(state)
    try:
        manager.stub.RunContainer(
            manager_pb2.RunContainerRequest(
                spec=spec_pb2.ContainerSpec(
                    name="kv", runtime=spec_pb2.RUNTIME_KIND_IN_PROCESS, env={"TOKEN": "t-1"}
                )
            ),
            timeout=10,
        )
    finally:
        manager.close()
    key = (state / KEY_FILE).read_bytes()
    (state / KEY_FILE).unlink()
    caplog.set_level(logging.WARNING)
    manager = ManagerHost(state)
    try:
        assert (
            manager.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=5).containers
            == []
        )
        assert "sealed with another key" in caplog.text
        assert len(manager.manager.store.list_containers()) == 1  # kept
    finally:
        manager.close()
    (state / KEY_FILE).unlink()
    (state / KEY_FILE).write_bytes(key)
    (state / KEY_FILE).chmod(0o600)
    manager = ManagerHost(state)
    try:
        [kv] = manager.manager.registry
        assert kv.spec is not None
        assert kv.spec.env["TOKEN"] == "t-1"
    finally:
        manager.close()


# -- the spec file and the shared classifier ---------------------------------------------------
def test_spec_files_declare_secret_env_and_keep_it_out_of_their_errors() -> None:
    [spec] = parse_specs(
        "name: a\ncommand: [x]\nenv: {DSN: 'pg://u:p@h', MODE: x}\nsecretEnv: [DSN]\n"
    )
    assert list(spec.secret_env) == ["DSN"]
    assert parse_specs(yaml.safe_dump(spec_to_dict(spec))) == [spec]
    assert redact_spec(spec).env["DSN"] == REDACTED
    with pytest.raises(SpecError) as wrong:
        parse_specs("name: a\ncommand: [x]\nenv: {API_KEY: 80801234, A: b}\nsecretEnv: [Z]\n")
    text = str(wrong.value)
    assert "80801234" not in text
    assert "env.API_KEY: must be a string" in text
    assert 'secretEnv[0]: "Z" is not a key of env' in text


def test_the_marker_keeps_only_a_value_shown_that_way() -> None:
    stored = spec_pb2.ContainerSpec(name="a", env={"TOKEN": "t", "URL": "h://u:p@x/"})
    sent = redact_spec(stored)
    assert keep_stored_secrets(sent, [stored], "spec") == stored
    sent.env["URL"] = f"h://u:{REDACTED}@y/"  # another host: the stored password is not for it
    with pytest.raises(Exception, match="URL"):
        keep_stored_secrets(sent, [stored], "spec")
    # Never mind the marker's name: a value without it is taken as given.
    plain = spec_pb2.ContainerSpec(name="a", env={"TOKEN": "new"})
    assert keep_stored_secrets(plain, [], "spec") == plain
    assert json.dumps(spec_to_dict(redact_spec(stored))).count(REDACTED) == 2
