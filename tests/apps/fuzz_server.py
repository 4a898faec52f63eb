"""A server for the fuzz test, in a process of its own so that the test can
read its RSS and see it crash.

    python tests/apps/fuzz_server.py sync|aio|manager [--state-dir DIR]

- ``sync``: a started container embedded in a sync grpc.server (as a Flask-era
  app would host it: the container's interceptor, an 8-worker pool);
- ``aio``: a started container embedded in a grpc.aio server;
- ``manager``: a manager (pycontainer.testing.ManagerHost) whose runtimes
  launch nothing (a fuzzed RunContainer must not run programs on the test
  machine), with one real connected container, ``fuzz-target``, so that
  requests naming it reach a live session.

Prints ``serving HOST:PORT`` once it answers, then serves until stdin closes
(the test ending, however it ends) or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from typing import Any

import grpc

import pycontainer

TARGET = "fuzz-target"


def _container(name: str) -> pycontainer.Container:
    container = pycontainer.Container(
        pycontainer.ContainerSettings(name=name, version="1.0.0", labels={"app": name})
    )
    container.add_check("db", lambda: (True, "connected"))
    container.config.set("db.url", "postgres://fuzz@localhost/db")
    return container


def _end() -> threading.Event:
    """Set when stdin closes or SIGTERM arrives (call on the main thread)."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    return done


def serve_sync() -> None:
    container = _container("fuzz-sync")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        interceptors=[container.server_interceptor()],
    )
    container.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    container.start()
    print(f"serving 127.0.0.1:{port}", flush=True)
    _end().wait()
    server.stop(None)
    container.close()


def serve_aio() -> None:
    end = _end()

    async def main() -> None:
        container = _container("fuzz-aio")
        server = grpc.aio.server(interceptors=[container.aio_server_interceptor()])
        container.add_to_server(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await container.astart()
        print(f"serving 127.0.0.1:{port}", flush=True)
        await asyncio.to_thread(end.wait)
        await server.stop(None)
        container.close()

    asyncio.run(main())


class InertRuntime:
    """A runtime that records launches and runs nothing."""

    reports_exits = False

    def __init__(self) -> None:
        self.launched: set[str] = set()

    def add_exit_listener(self, listener: Any) -> None:
        """Nothing ever exits."""

    async def launch(self, launch: Any) -> int:
        self.launched.add(launch.container_id)
        return 0

    async def kill(self, container_id: str) -> None:
        self.launched.discard(container_id)

    async def close(self) -> None:
        self.launched.clear()


def serve_manager(state_dir: str) -> None:
    from pycontainer.testing import ContainerHost, ManagerHost
    from pycontainer.v1 import spec_pb2

    inert = InertRuntime()
    runtimes = {kind: inert for kind in spec_pb2.RuntimeKind.values()}
    manager = ManagerHost(state_dir, runtimes=runtimes)
    target = ContainerHost(_container(TARGET), manager_address=manager.address)
    deadline = 15.0
    while target.container.state is not pycontainer.State.RUNNING:
        deadline -= 0.05
        if deadline < 0:
            raise SystemExit(f"{TARGET} was not started by the manager")
        threading.Event().wait(0.05)
    print(f"serving {manager.address}", flush=True)
    _end().wait()
    target.close()
    manager.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["sync", "aio", "manager"])
    parser.add_argument("--state-dir", default="")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.kind == "sync":
        serve_sync()
    elif args.kind == "aio":
        serve_aio()
    else:
        serve_manager(args.state_dir or os.path.join(os.getcwd(), "fuzz-state"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
