"""The examples as a user runs them (separate processes, real sockets), and
every grpcurl command of the README run against them."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpcurl
import pytest
from google.protobuf import duration_pb2

from pycontainer.v1 import container_pb2, management_pb2, management_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


class Example:
    def __init__(self, script: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "examples" / script),
                "--listen",
                "127.0.0.1:0",
                "--grace",
                "5",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        # Spans printed by a console exporter may come before the ready line.
        self.early = ""
        while True:
            line = self.proc.stdout.readline()
            match = re.match(r"serving on (\S+)", line)
            if match or not line:
                break
            self.early += line
        assert match, f"no ready line; stdout: {self.early!r}; stderr: {self._stderr()}"
        self.address = match.group(1)
        self.channel = grpc.insecure_channel(self.address)
        self.stub = management_pb2_grpc.ManagementStub(self.channel)

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def terminate(self) -> tuple[int, str, str]:
        self.channel.close()
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)


@pytest.fixture(params=["sync_app.py", "async_app.py"])
def example(request: pytest.FixtureRequest) -> Iterator[Example]:
    ex = Example(request.param)
    yield ex
    ex.kill()


def _wait_for(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_example_serves_logs_metrics_and_stops_gracefully(example: Example) -> None:
    info = example.stub.GetInfo(management_pb2.GetInfoRequest(), timeout=10)
    assert info.state == container_pb2.LIFECYCLE_STATE_RUNNING
    assert info.pid == example.proc.pid
    assert [
        e.address
        for e in info.identity.endpoints
        if e.kind == container_pb2.ENDPOINT_KIND_MANAGEMENT
    ] == [example.address]

    def app_logged() -> bool:
        batches = example.stub.StreamLogs(
            management_pb2.StreamLogsRequest(logger="examples", tail=5), timeout=10
        )
        return any(b.entries for b in batches)

    _wait_for(app_logged)
    stream = example.stub.WatchMetrics(
        management_pb2.WatchMetricsRequest(interval=duration_pb2.Duration(nanos=300_000_000)),
        timeout=30,
    )
    names: set[str] = set()
    for response in stream:
        names |= {m.name for m in response.snapshot.metrics}
        if {"jobs.processed", "pipeline.items"} & names:
            break
    stream.cancel()
    assert {"jobs.processed", "pipeline.items"} & names

    code, out, err = example.terminate()
    assert code == 0, err
    assert out.strip().endswith("stopped")
    assert "stopped" in err  # the on_stop hook logged that it drained its work
    assert "STOPPING" in err or "stopping" in err


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        commands += [line for line in block.splitlines() if line.startswith("grpcurl ")]
    return commands


def test_readme_grpcurl_commands_work() -> None:
    commands = _readme_commands()
    assert len(commands) >= 10
    ex = Example("sync_app.py")
    try:
        # Let the workers produce a slow job (for the follow filter) and logs.
        for command in commands:
            out = io.StringIO()
            line = command.replace("localhost:50051", ex.address)
            assert grpcurl.run_line(line, out) == 0, command
            output = out.getvalue()
            assert output.strip(), command
            if " list" in command and "describe" not in command:
                assert "pycontainer.v1.Management" in output.split()
                assert "grpc.reflection.v1.ServerReflection" in output.split()
            if "describe" in command:
                assert "rpc StreamLogs" in output
            if "GetInfo" in command:
                assert json.loads(output)["state"] == "LIFECYCLE_STATE_RUNNING"
            if "Health/Check" in command:
                assert json.loads(output)["status"] == "SERVING"
        health = subprocess.run(
            [
                str(ROOT / ".venv" / "bin" / "pycontainer"),
                "health",
                ex.address,
                "--service",
                "readiness",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert health.returncode == 0, health.stderr
        assert ".venv/bin/pycontainer health localhost:50051" in (ROOT / "README.md").read_text()
    finally:
        code, _, err = ex.terminate()
    assert code == 0, err


def test_example_exports_spans_from_otel_environment() -> None:
    """OTEL_TRACES_EXPORTER=console: the Management call's server span, child
    of the caller's traceparent, and the on_stop hook's span are printed."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "traced-example"}
    ex = Example("sync_app.py", env=env)
    try:
        ex.stub.GetInfo(
            management_pb2.GetInfoRequest(),
            metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),),
            timeout=10,
        )
    finally:
        code, out, err = ex.terminate()
    assert code == 0, err
    out = ex.early + out
    assert '"name": "pycontainer.v1.Management/GetInfo"' in out
    assert f'"trace_id": "0x{trace_id}"' in out
    assert '"parent_id": "0x00f067aa0ba902b7"' in out
    assert '"name": "pycontainer.hook on_stop"' in out
    assert '"service.name": "traced-example"' in out
