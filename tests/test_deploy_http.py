"""deploy/example-app-http.yaml: the example app probed over HTTP (kubelet's
httpGet on the HTTP face's /livez and /readyz) and scraped by Prometheus
(/metrics). The schemas are checked with the other manifests
(tests/test_deploy.py); here, what the variant says and its command run and
probed as kubelet probes (an HTTP GET, success on 200-399), then stopped with
SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from support import free_address, wait_until
from test_deploy import _container, _documents, _flag, _listen_port, _named_port, _start

from pycontainer.agent._settings import HTTP_LISTEN_ENV

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
VARIANT = DEPLOY / "example-app-http.yaml"


def _variant(kind: str) -> dict[str, Any]:
    [doc] = [d for d in _documents(VARIANT) if d["kind"] == kind]
    return doc


def _http_get(address: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""  # not listening yet


def _probe_passes(address: str, probe: dict[str, Any]) -> bool:
    status, _ = _http_get(address, probe["httpGet"]["path"])
    return 200 <= status < 400  # kubelet's httpGet success


def test_the_http_variant_probes_the_http_face_and_is_the_grpc_one_otherwise() -> None:
    deployment = _variant("Deployment")
    container = _container(deployment)
    env = {e["name"]: e for e in container["env"]}
    http_listen = env[HTTP_LISTEN_ENV]["value"]
    assert http_listen.startswith("0.0.0.0:")  # kubelet dials the pod's IP
    http_port = int(http_listen.rsplit(":", 1)[1])
    assert http_port != _listen_port(container)
    assert _named_port(container, "http") == http_port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(http_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    service = _variant("Service")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "grpc": "grpc",
        "http": "http",
    }
    # Everything else as deploy/example-app.yaml: the same command and stop.
    [grpc_variant] = [
        d for d in _documents(DEPLOY / "example-app.yaml") if d["kind"] == "Deployment"
    ]
    original = _container(grpc_variant)
    assert container["command"] == original["command"]
    assert container["lifecycle"] == original["lifecycle"]
    assert yaml.safe_dump(deployment["spec"]["template"]["spec"]["securityContext"]) == (
        yaml.safe_dump(grpc_variant["spec"]["template"]["spec"]["securityContext"])
    )


def test_the_http_variants_command_answers_httpget_probes_and_metrics() -> None:
    container = _container(_variant("Deployment"))
    env = {k: v for k, v in os.environ.items() if k != "PYCONTAINER_INSECURE"}
    for item in container["env"]:
        env[item["name"]] = item.get("value", "")
    del env["PYCONTAINER_MANAGER"]  # no manager here: the app starts itself
    address = free_address()  # the manifest's port, on this machine's loopback
    env[HTTP_LISTEN_ENV] = address
    command = list(container["command"])
    command[0] = sys.executable
    command[command.index("--listen") + 1] = "127.0.0.1:0"
    app, _ = _start(command, env, "serving on")
    try:
        readiness, liveness = container["readinessProbe"], container["livenessProbe"]
        wait_until(lambda: _probe_passes(address, readiness), 15, "kubelet's readiness probe")
        assert _probe_passes(address, liveness)

        def jobs_counted() -> bool:
            status, body = _http_get(address, "/metrics")
            if status != 200:
                return False
            return any(
                sample.name == "jobs_processed_total" and sample.value > 0
                for family in text_string_to_metric_families(body)
                for sample in family.samples
            )

        wait_until(jobs_counted, 15, "the app's jobs.processed counter on /metrics")
        app.send_signal(signal.SIGTERM)
        grace = float(_flag(command, "--grace"))
        out, _ = app.communicate(timeout=grace + 15)
    finally:
        if app.poll() is None:
            app.kill()
            app.communicate(timeout=10)
    assert app.returncode == 0
    assert out.rstrip().endswith("stopped")
