"""A backend of the mesh tests: a pycontainer app serving one gRPC method.

    python tests/apps/mesh_backend.py          (launched by a manager)

It serves ``/pycontainer.test.Echo/Who`` (raw bytes both ways: the answer is
the container's id, after ``--delay`` seconds of "work") on an app port of
its own (on --listen's address, 127.0.0.1 by default), advertised as its
"grpc" endpoint, beside the Management API. Once
told to stop it takes no new calls (UNAVAILABLE "stopping"), as a server
that must finish its work within its grace period does, and on_stop waits
until the calls in flight have answered: a call that reaches it after the
stop began fails, which is what the mesh's drain is there to prevent. It refuses calls
likewise (UNAVAILABLE "not running") until it is RUNNING, so that a mesh
sending traffic to a replica before it is RUNNING shows as failed calls. With
``--ready-file`` it is ready only while that file exists (a pushed readiness
check, so that a test flips it), and refuses calls (UNAVAILABLE "not ready")
while it is not.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

import pycontainer
from pycontainer.agent import EXCLUSIVE_PORT, listen_on, tls_dir

METHOD = "/pycontainer.test.Echo/Who"


class Backend:
    def __init__(
        self, container_id: str, delay: float, running: Callable[[], bool] = lambda: True
    ) -> None:
        self.container_id = container_id.encode()
        self.running = running
        self.ready: Callable[[], bool] = lambda: True
        self.delay = delay
        self.in_flight = 0
        self.served = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.stopping = False
        self.refused = 0

    async def who(self, request: bytes, context: Any) -> bytes:
        if self.stopping:
            self.refused += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "stopping: not taking new calls")
        if not self.running():
            self.refused += 1
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "not RUNNING (not yet, or its stop began): not taking calls",
            )
        if not self.ready():
            self.refused += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not ready: not taking calls")
        self.in_flight += 1
        self.idle.clear()
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            self.served += 1
            return self.container_id
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()


async def main_async(args: argparse.Namespace) -> None:
    settings = pycontainer.ContainerSettings(
        name=os.environ.get("PYCONTAINER_NAME", "mesh-backend"),
        grace_period=datetime.timedelta(seconds=10),
    )
    backend_box: dict[str, Backend] = {}

    async def on_stop(reason: str, deadline: float) -> None:
        backend = backend_box["backend"]
        backend.stopping = True
        # In-flight calls answer; new ones should not come (the mesh drained us).
        await backend.idle.wait()
        print(f"on_stop: served {backend.served}, refused {backend.refused}", flush=True)

    container = pycontainer.Container(settings, hooks=pycontainer.Hooks(on_stop=on_stop))
    backend = backend_box["backend"] = Backend(
        container.settings.id,
        args.delay,
        running=lambda: container.state == pycontainer.State.RUNNING,
    )
    if args.ready_file:
        ready_file = Path(args.ready_file)
        backend.ready = ready_file.exists
        container.add_check(
            "ready-file",
            lambda: ready_file.exists(),
            period=datetime.timedelta(milliseconds=100),
        )
    app = grpc.aio.server(options=[EXCLUSIVE_PORT])
    app.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "pycontainer.test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(backend.who)}
            ),
        )
    )
    # --tls: mutual TLS with the container's own certificate (the mesh's
    # clusters then ask their clients for theirs).
    own = tls_dir() if args.tls else None
    if args.tls and own is None:
        raise SystemExit("--tls: no $PYCONTAINER_TLS_DIR (launch it with a manager that has TLS)")
    port = listen_on(app, f"{args.listen}:0", tls_dir=own)
    await app.start()
    container.add_endpoint("grpc", f"{args.listen}:{port}", kind="grpc", tls=own is not None)
    try:
        await pycontainer.serve(container, "127.0.0.1:0")
    finally:
        await app.stop(grace=5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each call takes")
    parser.add_argument("--ready-file", default="", help="ready only while this file exists")
    parser.add_argument("--tls", action="store_true", help="serve mutual TLS (its certificate)")
    parser.add_argument(
        "--listen",
        default="127.0.0.1",
        help="the host address its app port listens on and advertises (another host's "
        "clients reach it there)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
