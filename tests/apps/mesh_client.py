"""A load generator of the mesh tests: a plain grpcio client through the mesh.

    GRPC_XDS_BOOTSTRAP=bootstrap.json python tests/apps/mesh_client.py \
        xds:///orders --calls 2000 --concurrency 8

It dials TARGET (``xds:///NAME``, or an Envoy's local listener), waits for
the channel to be ready, prints "ready", then makes --calls calls of
``/pycontainer.test.Echo/Who`` (--concurrency at a time; with --until-file,
until that file exists instead) and prints one JSON line: the calls made,
the failures by status code with a sample message, and the answers by
backend id. On SIGUSR1 it prints such a line for the calls made since the
last one (a phase of the run) and goes on calling; the last line counts the
calls since the last phase line.
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import sys
import threading
import time
from pathlib import Path

import grpc
import grpc.experimental

METHOD = "/pycontainer.test.Echo/Who"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--until-file", default="", help="call until this file exists")
    parser.add_argument("--deadline", type=float, default=10.0, help="per call, seconds")
    parser.add_argument("--ready-timeout", type=float, default=30.0)
    parser.add_argument(
        "--warm-backends",
        type=int,
        default=0,
        help="first call (uncounted) until this many backends answered: round robin "
        "spreads calls over the connections that are ready, and they connect one by one",
    )
    parser.add_argument(
        "--credentials",
        choices=("insecure", "xds"),
        default="insecure",
        help="xds: the xDS credentials (the mesh's mutual TLS, with the bootstrap's "
        "certificate provider; plaintext where a cluster asks for none)",
    )
    parser.add_argument("--result-file", default="", help="also write the JSON line here")
    args = parser.parse_args()
    if args.credentials == "xds":
        credentials = grpc.xds_channel_credentials(grpc.experimental.insecure_channel_credentials())
        channel = grpc.secure_channel(args.target, credentials)
    else:
        channel = grpc.insecure_channel(args.target)
    try:
        grpc.channel_ready_future(channel).result(timeout=args.ready_timeout)
    except grpc.FutureTimeoutError:
        result = json.dumps({"error": f"not ready within {args.ready_timeout}s"})
        print(result, flush=True)
        if args.result_file:
            Path(args.result_file).write_text(result + "\n")
        return 1
    call = channel.unary_unary(METHOD)
    seen: set[bytes] = set()
    warm_until = time.monotonic() + args.ready_timeout
    while len(seen) < args.warm_backends and time.monotonic() < warm_until:
        try:
            seen.add(call(b"", timeout=args.deadline))
        except grpc.RpcError:
            time.sleep(0.05)
    if len(seen) < args.warm_backends:
        print(json.dumps({"error": f"only {len(seen)} backends answered"}), flush=True)
        return 1
    print("ready", flush=True)
    lock = threading.Lock()
    answers: collections.Counter[str] = collections.Counter()
    failures: collections.Counter[str] = collections.Counter()
    samples: dict[str, str] = {}
    made = [0]
    until = Path(args.until_file) if args.until_file else None

    def worker() -> None:
        while True:
            with lock:
                if until is None and made[0] >= args.calls:
                    return
                made[0] += 1
            if until is not None and until.exists():
                return
            try:
                answer = call(b"", timeout=args.deadline, wait_for_ready=False)
                with lock:
                    answers[answer.decode()] += 1
            except grpc.RpcError as exc:
                code = exc.code().name
                with lock:
                    failures[code] += 1
                    samples.setdefault(code, exc.details() or "")

    started = [time.monotonic()]

    def summary() -> str:
        """Print the counts since the last summary, and start counting anew."""
        with lock:
            line = json.dumps(
                {
                    "calls": sum(answers.values()) + sum(failures.values()),
                    "failed": sum(failures.values()),
                    "failures": dict(failures),
                    "samples": dict(samples),
                    "answers": dict(answers),
                    "seconds": round(time.monotonic() - started[0], 3),
                }
            )
            answers.clear()
            failures.clear()
            samples.clear()
            started[0] = time.monotonic()
        print(line, flush=True)
        return line

    signal.signal(signal.SIGUSR1, lambda signum, frame: summary())
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        # A timed join: the main thread runs the SIGUSR1 handler between waits.
        while t.is_alive():
            t.join(0.05)
    result = summary()
    if args.result_file:
        Path(args.result_file).write_text(result + "\n")
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
