"""Standalone mode: pycontainer runs the server for apps that have none."""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import make_container

import pycontainer
from pycontainer.agent._serve import ListenError
from pycontainer.v1 import container_pb2, management_pb2, management_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def test_serve_runs_the_lifecycle_until_stopped() -> None:
    stopped_with: list[str] = []
    container = make_container(
        "standalone",
        hooks=pycontainer.Hooks(on_stop=lambda reason, deadline: stopped_with.append(reason)),
    )
    ready = threading.Event()
    ports: list[int] = []
    box: dict[str, object] = {}

    def main() -> None:
        async def amain() -> None:
            box["loop"] = asyncio.get_running_loop()
            box["stop"] = stop = asyncio.Event()
            await pycontainer.serve(
                container,
                "127.0.0.1:0",
                on_ready=lambda port: (ports.append(port), ready.set()),
                stop=stop,
                handle_signals=False,  # not the main thread
            )

        asyncio.run(amain())

    thread = threading.Thread(target=main)
    thread.start()
    assert ready.wait(10)
    target = f"127.0.0.1:{ports[0]}"
    with grpc.insecure_channel(target) as channel:
        info = management_pb2_grpc.ManagementStub(channel).GetInfo(
            management_pb2.GetInfoRequest(), timeout=5
        )
        assert info.state == container_pb2.LIFECYCLE_STATE_RUNNING
        endpoints = [(e.kind, e.address) for e in info.identity.endpoints]
        assert endpoints == [(container_pb2.ENDPOINT_KIND_MANAGEMENT, target)]
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    loop = box["loop"]
    assert isinstance(loop, asyncio.AbstractEventLoop)
    loop.call_soon_threadsafe(box["stop"].set)  # type: ignore[attr-defined]
    thread.join(15)
    assert not thread.is_alive()
    assert container.state == pycontainer.State.STOPPED
    assert stopped_with == ["signal"]


def test_serve_in_background_for_a_sync_app() -> None:
    container = make_container("background")
    server = pycontainer.serve_in_background(container, "127.0.0.1:0")
    try:
        container.start()
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = management_pb2_grpc.ManagementStub(channel)
            info = stub.GetInfo(management_pb2.GetInfoRequest(), timeout=5)
            assert info.state == container_pb2.LIFECYCLE_STATE_RUNNING
            container.stop(grace_period=datetime.timedelta(seconds=1))
            info = stub.GetInfo(management_pb2.GetInfoRequest(), timeout=5)
            assert info.state == container_pb2.LIFECYCLE_STATE_STOPPED
    finally:
        server.stop()
        container.close()


# -- one server per port --------------------------------------------------------------


def test_a_second_server_on_a_port_in_use_is_refused() -> None:
    """grpc-core shares ports (SO_REUSEPORT) by default; pycontainer's servers
    bind exclusively, and a port in use is one error naming the address."""
    first = make_container("first")
    second = make_container("second")
    background = pycontainer.serve_in_background(first)
    try:
        address = f"127.0.0.1:{background.port}"
        with pytest.raises(ListenError) as info:
            pycontainer.serve_in_background(second, address)
        assert info.value.strerror == (
            f"cannot listen on {address}: the address is in use "
            "(is another server already running there?)"
        )
        # Nor can an app's own server (grpc's default options) share it.
        app_server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        with pytest.raises(RuntimeError):
            app_server.add_insecure_port(address)
    finally:
        background.stop()
        first.close()
        second.close()


def test_an_app_server_on_the_port_is_refused_too() -> None:
    """The first server is the app's own, with grpc's defaults (port sharing on)."""
    app_server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = app_server.add_insecure_port("127.0.0.1:0")
    app_server.start()
    container = make_container("late")
    try:
        with pytest.raises(ListenError, match=rf"cannot listen on 127\.0\.0\.1:{port}: .* in use"):
            pycontainer.serve_in_background(container, f"127.0.0.1:{port}")
    finally:
        app_server.stop(None)
        container.close()


@pytest.mark.parametrize("listen", ["127.0.0.1:99999", "127.0.0.1", "127.0.0.1:http"])
def test_a_port_out_of_range_is_refused(listen: str) -> None:
    container = make_container("bad-port")
    try:
        with pytest.raises(ListenError, match="write HOST:PORT with a port from 0 to 65535"):
            pycontainer.serve_in_background(container, listen)
    finally:
        container.close()


def test_run_on_a_port_in_use_says_so_in_one_line() -> None:
    """run() is a standalone app's main: one line and exit status 1, no traceback."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import pycontainer; "
                f"pycontainer.run(pycontainer.Container('busy'), '127.0.0.1:{port}')",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        holder.close()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: the address is in use "
        "(is another server already running there?)"
    ]


@pytest.mark.parametrize("example", [None, "sync_app.py", "async_app.py"])
def test_a_tls_directory_without_its_files_is_one_line_naming_it(
    tmp_path: Path, example: str | None
) -> None:
    """$PYCONTAINER_TLS_DIR set to a directory with no certificate (a typo, a
    container run by hand with a launched one's environment): one line
    naming the directory and the files, exit 1, no traceback; for run() and
    for the examples' own servers, which bind through listen_on."""
    empty = tmp_path / "tls"
    empty.mkdir()
    argv = (
        [
            sys.executable,
            "-c",
            "import pycontainer; pycontainer.run(pycontainer.Container('t'), '127.0.0.1:0')",
        ]
        if example is None
        else [sys.executable, str(ROOT / "examples" / example), "--listen", "127.0.0.1:0"]
    )
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYCONTAINER_TLS_DIR": str(empty)},
        cwd=ROOT,
    )
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot serve mutual TLS on 127.0.0.1:0: "), line
    assert f"the TLS directory {empty}" in line
    assert "tls.pem and ca.pem" in line
