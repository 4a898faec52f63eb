"""A sync (thread-based) gRPC app that embeds pycontainer.

It runs a small pool of worker threads that "process jobs", logs through
plain `logging`, records metrics through the OpenTelemetry API, guards shared
state with a TrackedLock, and hosts the Management API, grpc.health.v1 and
reflection on its own grpc.Server with one call.

    python examples/sync_app.py --listen 127.0.0.1:50051

SIGTERM or Ctrl-C stops it gracefully: health turns NOT_SERVING, the workers
finish their current job (on_stop), then the server shuts down.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import random
import signal
import threading
import time
from concurrent import futures

import grpc
from opentelemetry import metrics

import pycontainer
from pycontainer.agent import EXCLUSIVE_PORT, ListenError, listen_on, tls_dir
from pycontainer.telemetry import TelemetryConfigError, configure_tracing

log = logging.getLogger("examples.sync_app")


class Workers:
    """Threads that take jobs, with app metrics and a contended lock."""

    def __init__(self, config: pycontainer.Config) -> None:
        self.interval = config.get_duration(
            "worker.interval", datetime.timedelta(milliseconds=200)
        ).total_seconds()
        self.count = config.get_int("worker.threads", 2)
        self.stop_event = threading.Event()
        self.inventory = pycontainer.TrackedLock("inventory")
        self.threads: list[threading.Thread] = []
        self.done = 0  # jobs processed: the state a checkpoint keeps
        meter = metrics.get_meter("examples.sync_app")
        self.jobs = meter.create_counter("jobs.processed", unit="1", description="Jobs done")
        self.duration = meter.create_histogram(
            "jobs.duration", unit="ms", description="Time per job"
        )
        self.in_progress = meter.create_up_down_counter(
            "jobs.in_progress", unit="1", description="Jobs being worked on"
        )

    def start(self) -> None:
        for i in range(self.count):
            t = threading.Thread(target=self._run, name=f"worker-{i}", daemon=True)
            t.start()
            self.threads.append(t)
        log.info("started %d workers", self.count)

    def _run(self) -> None:
        rng = random.Random()
        while not self.stop_event.wait(self.interval):
            kind = rng.choice(["resize", "encode", "upload"])
            started = time.perf_counter()
            self.in_progress.add(1)
            with self.inventory:  # shared state: contention shows in GetProfile
                time.sleep(rng.uniform(0.001, 0.01))
            elapsed_ms = (time.perf_counter() - started) * 1000
            self.in_progress.add(-1)
            self.jobs.add(1, {"kind": kind})
            with self.inventory:
                self.done += 1
            self.duration.record(elapsed_ms, {"kind": kind})
            if elapsed_ms > 9:
                log.warning("slow %s job took %.1f ms", kind, elapsed_ms)
            else:
                log.info("%s job done", kind, extra={"job.kind": kind})

    def checkpoint(self) -> bytes:
        """The state to keep: how many jobs were done."""
        with self.inventory:
            return json.dumps({"done": self.done}).encode()

    def restore(self, state: bytes) -> None:
        with self.inventory:
            self.done = int(json.loads(state or b"{}").get("done", 0))
        log.info("restored: %d jobs done before", self.done)

    def stop(self, reason: str, deadline: float) -> None:
        log.info("stopping workers (%s), %.1fs left", reason, deadline - time.monotonic())
        self.stop_event.set()
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        log.info("workers stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT to serve on")
    parser.add_argument("--name", default="sync-worker", help="container name")
    parser.add_argument("--grace", type=float, default=10.0, help="grace period, seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        tracer_provider = configure_tracing(args.name)  # OTEL_TRACES_EXPORTER etc.
    except TelemetryConfigError as exc:  # a bad OTEL_* value: one line saying which
        raise SystemExit(f"error: {exc}") from None

    config = pycontainer.Config(
        defaults={
            "worker": {"threads": 2, "interval": "200ms"},
            "db": {"url": "postgres://db:5432/jobs", "password": "example-only"},
        },
        env_prefix="SYNC_APP_",
        flags={"listen": args.listen},
    )
    workers = Workers(config)
    container = pycontainer.Container(
        pycontainer.ContainerSettings(
            name=args.name,
            version="1.0.0",
            labels={"example": "sync"},
            grace_period=datetime.timedelta(seconds=args.grace),
        ),
        hooks=pycontainer.Hooks(
            on_start=workers.start,
            on_stop=workers.stop,
            on_checkpoint=workers.checkpoint,
            on_restore=workers.restore,
        ),
        config=config,
    )
    container.add_check("workers", lambda: (not workers.stop_event.is_set(), "workers running"))

    # EXCLUSIVE_PORT: grpc-core shares ports by default, so a second copy on
    # this port would start "fine" and get half the connections.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        # Authorization first: with the certificate a manager gave, its
        # Management API answers the manager and the roles it binds.
        interceptors=[container.authorization_interceptor(), container.server_interceptor()],
        options=[EXCLUSIVE_PORT],
    )
    # Mutual TLS when launched by a manager that serves it ($PYCONTAINER_TLS_DIR),
    # plaintext when run by hand.
    tls = tls_dir()
    try:
        # With $PYCONTAINER_HEALTH_LISTEN, this serves the plaintext health port too;
        # with $PYCONTAINER_HTTP_LISTEN, the HTTP face (/readyz, /metrics, ...).
        container.add_to_server(server)
        port = listen_on(server, args.listen, tls_dir=tls)  # a port in use: one clear line
    except ListenError as exc:
        raise SystemExit(f"error: {exc.strerror}") from None
    except TelemetryConfigError as exc:  # OTEL_LOGS_EXPORTER, OTEL_METRICS_EXPORTER...
        raise SystemExit(f"error: {exc}") from None
    host = args.listen.rsplit(":", 1)[0]
    container.add_endpoint("management", f"{host}:{port}", kind="management", tls=bool(tls))
    server.start()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # Stopped through the manager (or failed): the process ends.
    container.add_state_listener(lambda _old, new, *_: new.terminal and stop.set())
    manager = os.environ.get("PYCONTAINER_MANAGER")
    if manager:  # launched by a manager: it starts us once admitted
        container.connect(manager)
    else:
        container.start()
    print(f"serving on {host}:{port}", flush=True)
    while not stop.wait(0.5):
        pass
    if not container.state.terminal:
        container.stop(reason="signal")
    server.stop(grace=5).wait()
    container.close()
    if tracer_provider is not None:
        tracer_provider.shutdown()  # flush the spans still batched
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
