"""One trace from the operator's call to the container's hook, across two
processes: client span -> manager server span -> hook span in the container
(W3C trace context carried inside the Lifecycle command)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from opentelemetry import propagate
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from support import ManagerHost, wait_until

from pycontainer.v1 import container_pb2, manager_pb2

ROOT = Path(__file__).resolve().parent.parent


def _spans(text: str) -> list[dict[str, object]]:
    """Spans printed by ConsoleSpanExporter (pretty JSON objects, one per span)."""
    decoder = json.JSONDecoder()
    spans, i = [], 0
    while (i := text.find("{", i)) != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        if isinstance(obj, dict) and "context" in obj:
            spans.append(obj)
        i = end
    return spans


def test_trace_crosses_manager_and_container_process(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    manager = ManagerHost(str(tmp_path / "state"), tracer_provider=provider)
    env = {
        **os.environ,
        "PYCONTAINER_MANAGER": manager.address,
        "OTEL_TRACES_EXPORTER": "console",
    }
    app = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "apps" / "traced_app.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def running() -> bool:
            listed = manager.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=5)
            return any(c.state == container_pb2.LIFECYCLE_STATE_RUNNING for c in listed.containers)

        wait_until(running, 20, "the container process to register and start")
        with provider.get_tracer("operator").start_as_current_span(
            "pycontainer stop traced", kind=SpanKind.CLIENT
        ) as operator:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            manager.stub.StopContainer(
                manager_pb2.StopContainerRequest(container="traced"),
                metadata=tuple(carrier.items()),
                timeout=20,
            )
        out, err = app.communicate(timeout=20)
    finally:
        if app.poll() is None:
            app.kill()
            app.communicate()
        manager.stop()
    assert app.returncode == 0, err
    trace_id = operator.get_span_context().trace_id
    local = {s.name: s for s in exporter.get_finished_spans()}
    server = next(s for s in local.values() if s.name.endswith("StopContainer"))
    assert server.kind == SpanKind.SERVER
    assert server.context.trace_id == trace_id
    assert server.parent is not None
    assert server.parent.span_id == operator.get_span_context().span_id

    remote = [s for s in _spans(out) if s["name"] == "pycontainer.hook on_stop"]
    assert len(remote) == 1, out
    hook = remote[0]
    context = hook["context"]
    assert isinstance(context, dict)
    assert context["trace_id"] == f"0x{trace_id:032x}"
    assert hook["parent_id"] == f"0x{server.context.span_id:016x}"
    attributes = hook["attributes"]
    assert isinstance(attributes, dict)
    assert attributes["pycontainer.command"] == "stop"
