"""A plain grpcio server for the Envoy tests: it knows nothing of pycontainer.

    python tests/apps/plain_echo.py --port 50051 --name web

It serves ``/pycontainer.test.Echo/Who`` (raw bytes both ways), answering
``NAME:PID``, in plaintext on 127.0.0.1:PORT, until SIGTERM, when it stops
taking new calls and lets those in flight finish (a few seconds at most).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from concurrent import futures
from typing import Any

import grpc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="plain")
    args = parser.parse_args()
    answer = f"{args.name}:{os.getpid()}".encode()

    def who(request: bytes, context: Any) -> bytes:
        return answer

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "pycontainer.test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"serving on 127.0.0.1:{args.port}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    stopped.wait()
    server.stop(grace=3).wait()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
