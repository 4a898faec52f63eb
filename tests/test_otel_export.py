"""OpenTelemetry export from the OTEL_* variables (pycontainer.telemetry),
against a real OTLP receiver (tests/otlp_receiver.py): OTLP/HTTP when the
protocol asks for it, the manager's own logs, and bad values refused with one
line naming the variable. (The README's section runs a container exporting
over OTLP/gRPC: tests/test_readme_otel.py.)"""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from otlp_receiver import OtlpReceiver, Received, attributes

import pycontainer
from pycontainer import cli
from pycontainer._otel import metric_export_interval, sdk_disabled, signal_export
from pycontainer.telemetry import (
    TelemetryConfigError,
    logger_provider_from_environ,
    metric_export_from_environ,
    service_resource,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return {**env, **extra}


def test_http_protobuf_exports_a_containers_logs_and_metrics(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf: the SDK's HTTP exporters
    (they read the endpoint themselves); the container's captured records go
    to the LoggerProvider it is given, with the ids of their span."""
    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(key)
    # Read by the SDK's exporters.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    # Read by pycontainer (given here: the process's MeterProvider exports nothing).
    environ = {**os.environ, "OTEL_LOGS_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "otlp"}
    resource = service_resource("http-export", {"container.id": "http-export-1"})
    logger_provider = logger_provider_from_environ(resource, environ)
    metric_export = metric_export_from_environ(environ)
    assert logger_provider is not None
    assert metric_export is not None
    container = pycontainer.Container(
        pycontainer.ContainerSettings(name="http-export", install_meter_provider=False),
        logger_provider=logger_provider,
    )
    tracer = TracerProvider().get_tracer("test")
    container.start()
    try:
        with tracer.start_as_current_span("work") as span:
            logging.getLogger("tests.otel").warning("inside the span")
    finally:
        container.close()
    logger_provider.shutdown()  # the app's provider: the app flushes it
    meter_provider = MeterProvider(metric_readers=metric_export.readers(), resource=resource)
    meter_provider.get_meter("tests.otel").create_counter("http.hits").add(5, {"route": "/"})
    meter_provider.shutdown()  # collects and exports once more

    records = [r for r in receiver.log_records() if r.item.body.string_value == "inside the span"]
    assert [r.transport for r in records] == ["http"]
    record = records[0]
    assert record.resource["service.name"] == "http-export"
    assert record.item.severity_text in ("WARN", "WARNING")
    context = span.get_span_context()
    assert record.item.trace_id == context.trace_id.to_bytes(16, "big")
    assert record.item.span_id == context.span_id.to_bytes(8, "big")
    points = list(receiver.data_points("http.hits"))
    assert [(p.transport, p.item.as_int) for p in points] == [("http", 5)]
    assert points[0].resource["container.id"] == "http-export-1"


def test_the_manager_exports_its_logs(receiver: OtlpReceiver, tmp_path: Path) -> None:
    env = _clean_env(
        OTEL_LOGS_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=receiver.grpc_endpoint,
        OTEL_EXPORTER_OTLP_INSECURE="true",
    )
    argv = [sys.executable, "-m", "pycontainer.cli", "manager", "--listen", "127.0.0.1:0"]
    with (tmp_path / "stderr").open("w+") as err:
        proc = subprocess.Popen(
            [*argv, "--state-dir", str(tmp_path / "state")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:

            def serving() -> list[object]:
                return [
                    r
                    for r in receiver.log_records()
                    if r.item.body.string_value.startswith("manager serving on")
                    and r.resource.get("service.name") == "pycontainer-manager"
                ]

            receiver.wait_for(
                lambda: bool(serving()) or proc.poll() is not None, 60, "manager's log record"
            )
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        err.seek(0)
        stderr = err.read()
    assert serving(), stderr
    assert "Traceback" not in stderr, stderr


def test_service_name_is_the_containers_unless_the_variables_give_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(key)
    attrs = {"container.id": "orders-1"}
    assert service_resource("orders", attrs).attributes["service.name"] == "orders"
    assert service_resource("orders", attrs).attributes["container.id"] == "orders-1"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes,team=a")
    resource = service_resource("orders", attrs)
    assert resource.attributes["service.name"] == "from-attributes"
    assert resource.attributes["team"] == "a"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "billing")
    assert service_resource("orders", attrs).attributes["service.name"] == "billing"


def test_a_sidecar_exports_its_programs_output(receiver: OtlpReceiver, tmp_path: Path) -> None:
    """A program run by the sidecar: its output lines, as the container's logs
    hold them (logger stdout/stderr, the severity its rules give), exported."""
    env = _clean_env(
        OTEL_LOGS_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.grpc_endpoint,
        OTEL_EXPORTER_OTLP_INSECURE="true",
    )
    program = "echo hello from the program; echo 'ERROR: it broke' >&2; exec sleep 30"
    argv = [sys.executable, "-m", "pycontainer.sidecar", "--name", "wrapped"]
    with (tmp_path / "stderr").open("w+") as err:
        proc = subprocess.Popen(
            [*argv, "--", "sh", "-c", program], env=env, stdout=subprocess.DEVNULL, stderr=err
        )
        try:

            def lines() -> dict[str, Received]:
                return {
                    r.item.body.string_value: r
                    for r in receiver.log_records()
                    if r.resource.get("service.name") == "wrapped"
                }

            receiver.wait_for(
                lambda: "ERROR: it broke" in lines() or proc.poll() is not None,
                30,
                "program's output lines",
            )
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)  # the sidecar stops its program, then itself
            proc.wait(30)
        err.seek(0)
        stderr = err.read()
    got = lines()
    assert "hello from the program" in got, (sorted(got), stderr)
    out, broke = got["hello from the program"], got["ERROR: it broke"]
    assert out.item.severity_text == "INFO"
    assert broke.item.severity_text == "ERROR"
    assert attributes(broke.item.attributes)["log.iostream"] == "stderr"
    assert out.item.time_unix_nano > 0
    assert "Traceback" not in stderr, stderr


# A bad value -> what the error says (the variable, what it takes).
BAD_VALUES = [
    (
        {"OTEL_LOGS_EXPORTER": "otel"},
        "OTEL_LOGS_EXPORTER='otel': unknown exporter 'otel'; use otlp, console, none",
    ),
    (
        {"OTEL_METRICS_EXPORTER": "otlp,prometheus"},
        "OTEL_METRICS_EXPORTER='otlp,prometheus': unknown exporter 'prometheus'",
    ),
    (
        {"OTEL_LOGS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
        "OTEL_EXPORTER_OTLP_PROTOCOL='http/json': use grpc or http/protobuf",
    ),
    (
        {
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "udp",
        },
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL='udp': use grpc or http/protobuf",
    ),
    (
        {"OTEL_METRICS_EXPORTER": "console", "OTEL_METRIC_EXPORT_INTERVAL": "5s"},
        "OTEL_METRIC_EXPORT_INTERVAL='5s': use a whole number of milliseconds",
    ),
    ({"OTEL_SDK_DISABLED": "yes"}, "OTEL_SDK_DISABLED='yes': use true or false"),
]


@pytest.mark.parametrize(("environ", "message"), BAD_VALUES)
def test_bad_values_name_the_variable_and_what_it_takes(
    environ: dict[str, str], message: str
) -> None:
    def read_both() -> None:
        metric_export_from_environ(environ)
        logger_provider_from_environ(service_resource("x"), environ)

    with pytest.raises(TelemetryConfigError) as raised:
        read_both()
    assert message in str(raised.value)


def test_what_the_variables_select() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    assert signal_export({}, "logs").exporters == ()
    assert signal_export(endpoint, "logs").exporters == ("otlp",)  # unset: otlp with an endpoint
    assert signal_export({**endpoint, "OTEL_LOGS_EXPORTER": "none"}, "logs").exporters == ()
    metrics_only = {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://collector:4317"}
    assert signal_export(metrics_only, "metrics").exporters == ("otlp",)
    assert signal_export(metrics_only, "logs").exporters == ()
    both = signal_export({"OTEL_METRICS_EXPORTER": " OTLP, console "}, "metrics")
    assert both.exporters == ("otlp", "console")
    assert both.protocol == "grpc"
    per_signal = {
        "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "http/protobuf",
    }
    assert signal_export(per_signal, "logs").protocol == "http/protobuf"
    assert metric_export_interval({"OTEL_METRIC_EXPORT_INTERVAL": "250"}).total_seconds() == 0.25  # type: ignore[union-attr]
    disabled = {**endpoint, "OTEL_SDK_DISABLED": "TRUE"}
    assert sdk_disabled(disabled)
    assert metric_export_from_environ(disabled) is None
    assert logger_provider_from_environ(service_resource("x"), disabled) is None


def test_a_missing_otlp_exporter_names_the_extra() -> None:
    """The OTLP exporters not installed (hidden in a fresh interpreter): the
    error names the variable, the protocol and what to install."""
    code = (
        "import sys\n"
        "for name in ('grpc', 'http'):\n"
        "    sys.modules['opentelemetry.exporter.otlp.proto.' + name] = None\n"
        "from pycontainer.telemetry import TelemetryConfigError, logger_provider_from_environ,"
        " metric_export_from_environ, service_resource\n"
        "for call, env in (\n"
        "    (metric_export_from_environ, {'OTEL_METRICS_EXPORTER': 'otlp',"
        " 'OTEL_EXPORTER_OTLP_PROTOCOL': 'http/protobuf'}),\n"
        "    (lambda env: logger_provider_from_environ(service_resource('x'), env),"
        " {'OTEL_LOGS_EXPORTER': 'otlp'}),\n"
        "):\n"
        "    try:\n"
        "        call(env)\n"
        "    except TelemetryConfigError as exc:\n"
        "        print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert out == [
        "OTEL_METRICS_EXPORTER=otlp (http/protobuf) needs the OTLP exporter: "
        "pip install 'pycontainer-grpc[otlp]' (or opentelemetry-exporter-otlp-proto-http)",
        "OTEL_LOGS_EXPORTER=otlp (grpc) needs the OTLP exporter: "
        "pip install 'pycontainer-grpc[otlp]' (or opentelemetry-exporter-otlp-proto-grpc)",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        [str(ROOT / "examples" / "sync_app.py"), "--listen", "127.0.0.1:0"],
        ["-m", "pycontainer.sidecar", "--name", "sidecar", "--", "sleep", "30"],
    ],
    ids=["example-app", "sidecar"],
)
def test_a_bad_value_stops_a_container_program_with_one_line(argv: list[str]) -> None:
    """Logs asked of an exporter that does not exist: exit 1 and one line
    saying so, no traceback (a container reads OTEL_LOGS_EXPORTER when it is
    put to use; the program has not started)."""
    proc = subprocess.run(
        [sys.executable, *argv],
        env=_clean_env(OTEL_LOGS_EXPORTER="otel"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "OTEL_LOGS_EXPORTER='otel': unknown exporter 'otel'; "
            "use otlp, console, none (comma-separated)"
        )
    ), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_bad_value_stops_the_manager_command_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger")
    out, err = io.StringIO(), io.StringIO()
    argv = ["manager", "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path)]
    code = cli.main(argv, stdout=out, stderr=err)
    assert code != 0
    assert err.getvalue() == (
        "error: OTEL_TRACES_EXPORTER='jaeger': unknown exporter 'jaeger'; "
        "use otlp, console, none (comma-separated)\n"
    )
