"""The README's OpenTelemetry export section, as typed: its sh block in bash
(the sync example exporting traces, logs and metrics over OTLP/gRPC), against
a real OTLP receiver (opentelemetry-proto's collector services) on the
collector's address the README gives, moved to an ephemeral port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import grpc
import pytest
from otlp_receiver import OtlpReceiver

from pycontainer.v1 import management_pb2, management_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
_SECTION = "\n## OpenTelemetry export\n"


def _script() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.partition(_SECTION)[2].partition("\n## ")[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section has one sh block"
    return str(blocks[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read(file: IO[str]) -> str:
    file.seek(0)
    return file.read()


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


def test_readme_otel_section_exports_logs_with_span_ids_and_the_counter(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    script = _script()
    assert "http://127.0.0.1:4317" in script
    assert "127.0.0.1:50051" in script
    script = script.replace("http://127.0.0.1:4317", receiver.grpc_endpoint)
    address = f"127.0.0.1:{_free_port()}"
    script = script.replace("127.0.0.1:50051", address)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    with (tmp_path / "stderr").open("w+") as err:
        proc = subprocess.Popen(
            ["bash", "-e", "-c", script],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # bash and the app, signalled as one group
        )
        try:

            def started_logged() -> bool:
                return any(
                    r.item.body.string_value == "started 2 workers" for r in receiver.log_records()
                )

            def jobs_counted() -> bool:
                return any(p.item.as_int >= 1 for p in receiver.data_points("jobs.processed"))

            receiver.wait_for(
                lambda: started_logged() or proc.poll() is not None, 30, "'started 2 workers'"
            )
            receiver.wait_for(
                lambda: jobs_counted() or proc.poll() is not None, 30, "jobs.processed"
            )
            assert proc.poll() is None, _read(err)
            snapshot = _calls_and_snapshot(address)

            def figures_exported() -> bool:
                return any(
                    a.get("grpc.method") == _GET_INFO and p.item.count >= 3
                    for p in receiver.data_points("grpc.server.call.duration")
                    for a in [_attributes(p)]
                ) and any(True for _ in receiver.data_points("process.cpu.time"))

            receiver.wait_for(
                lambda: figures_exported() or proc.poll() is not None,
                30,
                "grpc.server.call.duration and process.cpu.time",
            )
            assert proc.poll() is None, _read(err)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)  # the app stops gracefully, flushing its spans
            proc.wait(30)
        stderr = _read(err)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr

    # The log record carries the ids of the span it was logged in: the
    # on_start hook's, which reached the receiver too when the app ended.
    record = next(
        r for r in receiver.log_records() if r.item.body.string_value == "started 2 workers"
    )
    assert record.transport == "grpc"
    assert record.resource["service.name"] == "sync-worker"
    assert str(record.resource["container.id"]).startswith("sync-worker-")
    assert record.item.severity_text == "INFO"
    assert len(record.item.trace_id) == 16
    assert any(record.item.trace_id)
    spans = {bytes(s.item.span_id): s.item for s in receiver.spans()}
    span = spans.get(bytes(record.item.span_id))
    assert span is not None, f"no span {record.item.span_id.hex()} among {len(spans)}"
    assert span.name == "pycontainer.hook on_start"
    assert span.trace_id == record.item.trace_id

    # The app's counter, with its attributes, from the same container.
    point = next(iter(receiver.data_points("jobs.processed")))
    assert point.resource["container.id"] == record.resource["container.id"]
    assert {a.key for a in point.item.attributes} == {"kind"}

    # The container's own figures, exported beside the app's metrics (the
    # names of OpenTelemetry's process conventions and of gRPC's A66), from
    # the same resource; the three GetInfo calls made above among them.
    durations = [
        p
        for p in receiver.data_points("grpc.server.call.duration")
        if _attributes(p).get("grpc.method") == _GET_INFO
    ]
    assert durations
    assert durations[-1].resource["container.id"] == record.resource["container.id"]
    assert _attributes(durations[-1]) == {
        "grpc.method": _GET_INFO,
        "grpc.status": "OK",
        "container.id": record.resource["container.id"],
    }
    assert durations[-1].item.count >= 3
    started = [
        p
        for p in receiver.data_points("grpc.server.call.started")
        if _attributes(p).get("grpc.method") == _GET_INFO
    ]
    assert started
    assert started[-1].item.as_int >= 3
    # (The instrumentation names the CPU mode "type".)
    modes = {_attributes(p).get("type") for p in receiver.data_points("process.cpu.time")}
    assert {"user", "system"} <= modes
    assert any(p.item.as_int > 0 for p in receiver.data_points("process.memory.usage"))
    # Exported only: the snapshot has them in its own fields, not as app metrics.
    names = {m.name for m in snapshot.metrics}
    assert "jobs.processed" in names
    assert not any(n.startswith(("process.", "grpc.server.")) for n in names), names


_GET_INFO = "pycontainer.v1.Management/GetInfo"


def _attributes(point: object) -> dict[str, object]:
    from otlp_receiver import attributes

    return attributes(point.item.attributes)  # type: ignore[attr-defined]


def _calls_and_snapshot(address: str) -> object:
    """Three GetInfo calls to the container, then its metrics snapshot."""
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = management_pb2_grpc.ManagementStub(channel)
        for _ in range(3):
            stub.GetInfo(management_pb2.GetInfoRequest(), timeout=10)
        watch = stub.WatchMetrics(management_pb2.WatchMetricsRequest(), timeout=10)
        first = next(iter(watch))
        watch.cancel()
        return first.snapshot
