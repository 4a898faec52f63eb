"""The frontend of the mesh example (examples/mesh.yaml): it calls the greeter
service through the mesh, ``xds:///greeter``, in a loop and logs which
replica answered each call.

It does not embed pycontainer (its spec runs it under the sidecar): grpcio's
own xDS client resolves ``xds:///greeter`` through the manager's xDS server,
named by the bootstrap file in $GRPC_XDS_BOOTSTRAP, which the manager writes
for the containers it launches. Without one it says so and ends, unless
--target names a backend to call directly:

    python examples/mesh_frontend.py --target 127.0.0.1:PORT --count 3

SIGTERM or Ctrl-C ends the loop after the call under way.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import logging
import os
import signal
import sys
import threading

import grpc
from mesh_backend import SAY_HELLO  # the method the backend serves (beside this file)

from pycontainer.units import duration_arg, format_duration

log = logging.getLogger("examples.mesh_frontend")
# Where grpcio's xDS client reads its bootstrap: a file, or the JSON itself.
BOOTSTRAP_VARIABLES = ("GRPC_XDS_BOOTSTRAP", "GRPC_XDS_BOOTSTRAP_CONFIG")


def target_of(args: argparse.Namespace) -> str:
    """xds:///SERVICE when grpcio can find the xDS server, else --target."""
    if args.target:
        return str(args.target)
    if any(os.environ.get(name) for name in BOOTSTRAP_VARIABLES):
        return f"xds:///{args.service}"
    print(
        f"error: xds:///{args.service} needs an xDS bootstrap, and $GRPC_XDS_BOOTSTRAP is "
        "not set: the manager writes one for the containers it launches (apply "
        "examples/mesh.yaml), or give --target HOST:PORT to call one greeter directly",
        file=sys.stderr,
    )
    raise SystemExit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", default="greeter", help="mesh service to call")
    parser.add_argument("--target", help="HOST:PORT to call instead of xds:///SERVICE")
    parser.add_argument("--name", default="frontend", help="who says hello")
    parser.add_argument("--interval", type=duration_arg, default=datetime.timedelta(seconds=1))
    parser.add_argument("--timeout", type=duration_arg, default=datetime.timedelta(seconds=5))
    parser.add_argument("--count", type=int, default=0, help="calls to make; 0: until stopped")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stdout,
    )
    target = target_of(args)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    answers: collections.Counter[str] = collections.Counter()
    failures = 0
    with grpc.insecure_channel(target) as channel:
        say_hello = channel.unary_unary(
            SAY_HELLO,
            request_serializer=str.encode,
            response_deserializer=lambda data: data.decode("utf-8", "replace"),
        )
        log.info("calling %s every %s", target, format_duration(args.interval))
        calls = 0
        while not stop.is_set() and (args.count == 0 or calls < args.count):
            calls += 1
            try:
                # Waits for a ready endpoint (up to the timeout) rather than
                # failing while the mesh has none yet.
                answer = say_hello(
                    args.name, timeout=args.timeout.total_seconds(), wait_for_ready=True
                )
            except grpc.RpcError as exc:
                failures += 1
                log.warning("call %d failed: %s %s", calls, exc.code().name, exc.details())
            else:
                answers[answer.rsplit(" from ", 1)[-1]] += 1
                log.info("call %d: %s", calls, answer)
            if calls % 10 == 0 or calls == args.count:
                spread = ", ".join(f"{who} {n}" for who, n in sorted(answers.items()))
                log.info("%d calls, %d failed; answers by replica: %s", calls, failures, spread)
            if calls != args.count:
                stop.wait(args.interval.total_seconds())
    # A counted run fails if a call did; a stopped loop has done its job.
    raise SystemExit(1 if failures and args.count else 0)


if __name__ == "__main__":
    main()
