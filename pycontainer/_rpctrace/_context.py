"""The current span, read and set as OpenTelemetry's API does, minus its layers.

``trace.set_span_in_context`` + ``context.attach`` + ``context.detach`` and
``trace.get_current_span`` are five Python calls deep each; with the API's
default runtime context (a ContextVar, unless OTEL_PYTHON_CONTEXT names
another) they come down to that ContextVar's get, set and reset of the same
Context mapping, which is what this module does then. With any other runtime
context it goes through the API.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.trace import INVALID_SPAN_CONTEXT, Span, SpanContext
from opentelemetry.trace.propagation import _SPAN_KEY

__all__ = ["attach_span", "current_span_context", "detach"]

_log = logging.getLogger("pycontainer.tracing")


def _runtime_var() -> ContextVar[Context] | None:
    runtime: Any = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    if type(runtime) is not ContextVarsRuntimeContext:
        return None
    var = getattr(runtime, "_current_context", None)
    return var if isinstance(var, ContextVar) else None


def _fast() -> tuple[
    Callable[[Span], Token[Context]], Callable[[Token[Context]], None], Callable[[], SpanContext]
]:
    var = _runtime_var()
    if var is None:
        return _api_attach_span, otel_context.detach, _api_current_span_context
    get, set_, reset = var.get, var.set, var.reset

    def attach_span(span: Span) -> Token[Context]:
        # set_value's copy of the current context with the span in it
        return set_(Context({**get(), _SPAN_KEY: span}))

    def detach(token: Token[Context]) -> None:
        try:
            reset(token)
        except Exception:  # the API logs a failed detach and goes on
            _log.exception("Failed to detach context")

    def current_span_context() -> SpanContext:
        span = get().get(_SPAN_KEY)
        if span is None or not isinstance(span, Span):
            return INVALID_SPAN_CONTEXT
        context: SpanContext = span.get_span_context()
        return context

    return attach_span, detach, current_span_context


def _api_attach_span(span: Span) -> Token[Context]:
    return otel_context.attach(trace.set_span_in_context(span))


def _api_current_span_context() -> SpanContext:
    return trace.get_current_span().get_span_context()


#: Make ``span`` current; the token detach() takes to undo it.
attach_span: Callable[[Span], Token[Context]]
#: Undo an attach_span().
detach: Callable[[Token[Context]], None]
#: The current span's context (invalid when there is none).
current_span_context: Callable[[], SpanContext]
attach_span, detach, current_span_context = _fast()
