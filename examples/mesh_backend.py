"""The backend of the mesh example (examples/mesh.yaml): a greeter that embeds
pycontainer and serves one method, example.Greeter/SayHello, on a "grpc"
endpoint, the one its spec's ``service: {name: greeter, endpoint: grpc}``
names: the manager's xDS server makes every ready replica an endpoint of the
greeter service, and callers dial ``xds:///greeter``.

    python examples/mesh_backend.py --listen 127.0.0.1:0 --serve 127.0.0.1:0

The Management API (mutual TLS under a manager that serves it) and the
greeter (plaintext, the mesh's traffic) are on two servers. A stop lets the
calls under way finish: by then the mesh has drained this replica, so no new
ones come.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import signal
import threading
from concurrent import futures

import grpc

import pycontainer
from pycontainer.agent import EXCLUSIVE_PORT, ListenError, listen_on, tls_dir

#: The method the frontend calls. Requests and answers are UTF-8 text (no
#: .proto to compile, to keep the example small).
SAY_HELLO = "/example.Greeter/SayHello"

log = logging.getLogger("examples.mesh_backend")


def greeter_handler(replica: str) -> grpc.GenericRpcHandler:
    """example.Greeter, whose answer names the replica that gave it."""

    def say_hello(name: str, context: grpc.ServicerContext) -> str:
        return f"hello, {name or 'stranger'}, from {replica}"

    return grpc.method_handlers_generic_handler(
        "example.Greeter",
        {
            "SayHello": grpc.unary_unary_rpc_method_handler(
                say_hello,
                request_deserializer=lambda data: data.decode("utf-8", "replace"),
                response_serializer=str.encode,
            )
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT of the Management API")
    parser.add_argument("--serve", default="127.0.0.1:0", help="HOST:PORT of the greeter")
    parser.add_argument("--name", default="greeter", help="container name")
    parser.add_argument("--grace", type=float, default=10.0, help="grace period, seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    container = pycontainer.Container(
        pycontainer.ContainerSettings(
            name=args.name,
            version="1.0.0",
            labels={"example": "mesh"},
            grace_period=datetime.timedelta(seconds=args.grace),
        )
    )
    management = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[container.authorization_interceptor(), container.server_interceptor()],
        options=[EXCLUSIVE_PORT],
    )
    greeter = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[EXCLUSIVE_PORT])
    greeter.add_generic_rpc_handlers((greeter_handler(container.id),))
    tls = tls_dir()
    try:
        container.add_to_server(management)
        management_port = listen_on(management, args.listen, tls_dir=tls)
        greeter_port = listen_on(greeter, args.serve)
    except ListenError as exc:
        raise SystemExit(f"error: {exc.strerror}") from None
    management_host = args.listen.rsplit(":", 1)[0]
    greeter_address = f"{args.serve.rsplit(':', 1)[0]}:{greeter_port}"
    container.add_endpoint(
        "management", f"{management_host}:{management_port}", kind="management", tls=bool(tls)
    )
    # The endpoint the spec's service names: what the mesh routes to.
    container.add_endpoint("grpc", greeter_address, kind="grpc")
    management.start()
    greeter.start()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    container.add_state_listener(lambda _old, new, *_: new.terminal and stop.set())
    manager = os.environ.get("PYCONTAINER_MANAGER")
    if manager:  # launched by a manager: it starts us once admitted
        container.connect(manager)
    else:
        container.start()
    print(
        f"serving on {management_host}:{management_port}; greeter on {greeter_address}",
        flush=True,
    )
    log.info("greeter %s serving on %s", container.id, greeter_address)
    while not stop.wait(0.5):
        pass
    if not container.state.terminal:
        container.stop(reason="signal")
    # The calls under way finish; a mesh drained this replica before the stop.
    greeter.stop(grace=args.grace / 2).wait()
    management.stop(grace=1).wait()
    container.close()
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
