"""An asyncio gRPC app that embeds pycontainer.

Async worker tasks process jobs, log through plain `logging`, and record
metrics through the OpenTelemetry API; the app's grpc.aio.Server hosts the
Management API, grpc.health.v1 and reflection with one call. Hooks are async.

    python examples/async_app.py --listen 127.0.0.1:50052

SIGTERM or Ctrl-C stops it gracefully through the container's lifecycle.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import random
import signal
import time

import grpc
from opentelemetry import metrics

import pycontainer
from pycontainer.agent import EXCLUSIVE_PORT, ListenError, listen_on, tls_dir
from pycontainer.telemetry import TelemetryConfigError, configure_tracing

log = logging.getLogger("examples.async_app")


class Pipeline:
    """Async tasks that consume a queue of jobs."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.queue: asyncio.Queue[int] = asyncio.Queue(maxsize=100)
        self.tasks: list[asyncio.Task[None]] = []
        meter = metrics.get_meter("examples.async_app")
        self.processed = meter.create_counter(
            "pipeline.items", unit="1", description="Items processed"
        )
        self.latency = meter.create_histogram(
            "pipeline.latency", unit="ms", description="Time per item"
        )
        meter.create_observable_gauge(
            "pipeline.queue_depth",
            [lambda _opts: [metrics.Observation(self.queue.qsize())]],
            unit="1",
            description="Items waiting",
        )

    async def on_start(self) -> None:
        self.tasks.append(asyncio.create_task(self._produce(), name="producer"))
        for i in range(self.workers):
            self.tasks.append(asyncio.create_task(self._consume(i), name=f"consumer-{i}"))
        log.info("pipeline started with %d consumers", self.workers)

    async def _produce(self) -> None:
        n = 0
        while True:
            await self.queue.put(n)
            n += 1
            await asyncio.sleep(0.05)

    async def _consume(self, index: int) -> None:
        while True:
            item = await self.queue.get()
            started = time.perf_counter()
            await asyncio.sleep(random.uniform(0.001, 0.02))
            ms = (time.perf_counter() - started) * 1000
            self.processed.add(1, {"consumer": str(index)})
            self.latency.record(ms)
            log.info("item %d processed in %.1f ms", item, ms, extra={"consumer": index})

    async def on_stop(self, reason: str, deadline: float) -> None:
        log.info("draining pipeline (%s)", reason)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        log.info("pipeline stopped")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:50052", help="HOST:PORT to serve on")
    parser.add_argument("--name", default="async-pipeline", help="container name")
    parser.add_argument("--grace", type=float, default=10.0, help="grace period, seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        tracer_provider = configure_tracing(args.name)  # OTEL_TRACES_EXPORTER etc.
    except TelemetryConfigError as exc:  # a bad OTEL_* value: one line saying which
        raise SystemExit(f"error: {exc}") from None

    pipeline = Pipeline(workers=3)
    container = pycontainer.Container(
        pycontainer.ContainerSettings(
            name=args.name,
            version="1.0.0",
            labels={"example": "async"},
            grace_period=datetime.timedelta(seconds=args.grace),
        ),
        hooks=pycontainer.Hooks(on_start=pipeline.on_start, on_stop=pipeline.on_stop),
        config=pycontainer.Config(
            defaults={"pipeline": {"workers": 3}},
            env_prefix="ASYNC_APP_",
            flags={"listen": args.listen},
        ),
    )
    # EXCLUSIVE_PORT: grpc-core shares ports by default, so a second copy on
    # this port would start "fine" and get half the connections.
    server = grpc.aio.server(
        interceptors=[
            container.aio_authorization_interceptor(),
            container.aio_server_interceptor(),
        ],
        options=[EXCLUSIVE_PORT],
    )
    # Mutual TLS when launched by a manager that serves it, plaintext by hand.
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
    await server.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Stopped through the manager (or failed): the process ends.
    container.add_state_listener(
        lambda _old, new, *_: new.terminal and loop.call_soon_threadsafe(stop.set)
    )
    manager = os.environ.get("PYCONTAINER_MANAGER")
    if manager:  # launched by a manager: it starts us once admitted
        container.use_event_loop(loop)
        container.connect(manager)
    else:
        await container.astart()
    print(f"serving on {host}:{port}", flush=True)
    await stop.wait()
    if not container.state.terminal:
        await container.astop(reason="signal")
    await server.stop(grace=5)
    container.close()
    if tracer_provider is not None:
        tracer_provider.shutdown()  # flush the spans still batched
    print("stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
