"""RpcTracing: the TracerProvider's recording of app RPCs, shared by the
client and server interceptors of one app."""

from __future__ import annotations

import datetime
import functools
import random
import threading
from collections.abc import Callable
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from .. import __version__, limits
from ._recorder import Recorder
from ._sampling import Sampling
from ._w3c import RANDOM_TRACE_ID

__all__ = ["Recording", "RpcTracing"]

SCOPE = "pycontainer.rpc"


class Recording:
    """What the call path needs of an SDK TracerProvider: its sampler, ids,
    and the recorder that exports to its span processors."""

    def __init__(self, provider: SdkTracerProvider, recorder: Recorder) -> None:
        self.recorder = recorder
        self.sampling = Sampling(provider.sampler)
        generator = provider.id_generator
        self.new_trace_id: Callable[[], int]
        self.new_span_id: Callable[[], int]
        if type(generator) is RandomIdGenerator:
            # The same ids, without a Python call through the generator
            # (callers take ``or 1``: all zeros, once in 2**64, is invalid).
            self.new_trace_id = functools.partial(random.getrandbits, 128)
            self.new_span_id = functools.partial(random.getrandbits, 64)
        else:
            self.new_trace_id = generator.generate_trace_id
            self.new_span_id = generator.generate_span_id
        # Trace Context level 2's flag for a trace id this process made.
        self.root_flags = RANDOM_TRACE_ID if generator.is_trace_id_random() else 0


class RpcTracing:
    """Client and server spans of an app's RPCs, for the OpenTelemetry SDK
    TracerProvider ``tracer_provider`` (default: the global one, looked up
    until one is set).

    The call path records ids and timestamps only and carries W3C trace
    context (``traceparent``, ``tracestate``) in the call's metadata; the spans
    are built and handed to the provider's span processors on a background
    thread, at most ``export_delay`` later (sooner once ``batch_size`` calls
    are waiting). At most ``max_queue_size`` calls wait; past that a call's
    span is dropped and counted in ``dropped``. With a provider that is not
    the SDK's (none set, or OTEL_SDK_DISABLED), nothing is recorded and trace
    context still passes from a server's request to the calls it makes.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        max_queue_size: int = limits.MAX_RPC_TRACE_QUEUE,
        batch_size: int = 512,
        export_delay: datetime.timedelta = datetime.timedelta(milliseconds=200),
    ) -> None:
        if max_queue_size < 1 or batch_size < 1:
            raise ValueError("max_queue_size and batch_size must be at least 1")
        if export_delay <= datetime.timedelta(0):
            raise ValueError(f"export_delay must be positive, not {export_delay}")
        self._provider = tracer_provider
        self._max_queue_size = max_queue_size
        self._batch_size = batch_size
        self._delay = export_delay.total_seconds()
        self._lock = threading.Lock()
        # None until resolved to an SDK provider; False: never will be.
        self._recording: Recording | None = None
        self._final = False
        self._stopped: Recorder | None = None  # after shutdown(), for ``dropped``

    def recording(self) -> Recording | None:
        # (the call paths read _recording first and call this only when None)
        """The recording of calls, or None when calls are not recorded."""
        recording = self._recording
        if recording is not None or self._final:
            return recording
        return self._resolve()

    def _resolve(self) -> Recording | None:
        provider = self._provider or trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider):
            return None  # the global one is not set yet: ask again next call
        with self._lock:
            if self._recording is not None or self._final:
                return self._recording
            tracer = provider.get_tracer(SCOPE, __version__)
            processor = getattr(tracer, "span_processor", None)
            resource = getattr(tracer, "resource", None)
            enabled = getattr(tracer, "_is_enabled", lambda: True)()
            if (
                not isinstance(provider, SdkTracerProvider)
                or processor is None
                or resource is None
                or not enabled
            ):
                self._final = True  # a no-op or foreign provider records nothing
                return None
            recorder = Recorder(
                processor,
                resource,
                InstrumentationScope(SCOPE, __version__),
                max_queue_size=self._max_queue_size,
                batch_size=self._batch_size,
                delay=self._delay,
            )
            self._recording = Recording(provider, recorder)
            return self._recording

    @property
    def enabled(self) -> bool:
        """Whether calls are recorded (the provider is the SDK's, and on)."""
        return self.recording() is not None

    @property
    def dropped(self) -> int:
        """Spans dropped because the queue was full (or after shutdown)."""
        recording = self._recording
        if recording is not None:
            return recording.recorder.dropped
        return self._stopped.dropped if self._stopped is not None else 0

    def force_flush(self) -> None:
        """Hand every call recorded so far to the span processors (the
        provider's ``force_flush`` then exports them)."""
        recording = self._recording
        if recording is not None:
            recording.recorder.flush()

    def shutdown(self) -> None:
        """Flush and stop the exporting thread (done at interpreter exit too);
        calls after it are not recorded (their context still passes on)."""
        with self._lock:
            recording, self._recording, self._final = self._recording, None, True
        if recording is not None:
            self._stopped = recording.recorder
            recording.recorder.shutdown()

    # -- the interceptors ----------------------------------------------------------------
    def server_interceptor(self) -> grpc.ServerInterceptor[Any, Any]:
        """For grpc.server(interceptors=[...]): a SERVER span per unary call of
        the app's services (pycontainer's own services are traced apart)."""
        from ._server import ServerInterceptor

        return ServerInterceptor(self)

    def aio_server_interceptor(self) -> grpc.aio.ServerInterceptor[Any, Any]:
        """server_interceptor() for grpc.aio.server(interceptors=[...])."""
        from ._server import AioServerInterceptor

        return AioServerInterceptor(self)

    def client_interceptor(
        self, target: str | None = None
    ) -> grpc.UnaryUnaryClientInterceptor[Any, Any]:
        """For grpc.intercept_channel(channel, ...): a CLIENT span per unary
        call, its context sent as ``traceparent``; ``target`` (the channel's
        address) gives the spans ``server.address`` and ``server.port``."""
        from ._client import ClientInterceptor

        return ClientInterceptor(self, target)

    def intercept_channel(self, channel: grpc.Channel, target: str | None = None) -> grpc.Channel:
        """``channel`` with its unary calls traced as client_interceptor()
        would, at a third of its cost (no grpc interceptor machinery):
        ``grpc.insecure_channel(target)`` -> ``intercept_channel(it, target)``."""
        from ._channel import TracedChannel

        return TracedChannel(channel, self, target)

    def aio_client_interceptor(
        self, target: str | None = None
    ) -> grpc.aio.UnaryUnaryClientInterceptor[Any, Any]:
        """client_interceptor() for grpc.aio channels (``interceptors=[...]``)."""
        from ._client import AioClientInterceptor

        return AioClientInterceptor(self, target)
