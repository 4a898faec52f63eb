"""Tracing of an app's own RPCs (client and server, sync and grpc.aio) at a
cost the app can keep on: ids and timestamps on the call path, the
OpenTelemetry spans built and exported off it. Public as
:class:`pycontainer.telemetry.RpcTracing`."""

from ._tracing import RpcTracing

__all__ = ["RpcTracing"]
