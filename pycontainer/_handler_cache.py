"""The wrapped method handlers a server interceptor keeps, one per method.

grpcio asks every server interceptor for each call's handler; one that wraps
the handler would build a new wrapper per call. The handler grpcio finds for a
method is the same object call after call, so the wrapper made for it the
first time serves every later call (a different handler, say one registered
anew, gets a new wrapper).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .limits import MAX_INTERCEPTED_METHODS

__all__ = ["HandlerCache"]

_Handler = Any  # grpc.RpcMethodHandler of any types (generic only in grpc-stubs)


class HandlerCache:
    """Per method: the handler seen and what the interceptor made of it.

    Safe from several threads without a lock: a race wraps a handler twice,
    and both wrappers do the same.
    """

    def __init__(self, wrap: Callable[[str, _Handler], _Handler]) -> None:
        self._wrap = wrap
        # method -> (the handler seen, its wrapper). Interceptors read it
        # directly on the serving path (a call saved per RPC), and call get()
        # when it has nothing for the handler at hand.
        self.kept: dict[str, tuple[_Handler, _Handler]] = {}

    def get(self, method: str, handler: _Handler) -> _Handler:
        """``wrap(method, handler)``, made once per method and handler."""
        kept = self.kept.get(method)
        if kept is not None and kept[0] is handler:
            return kept[1]
        wrapped = self._wrap(method, handler)
        if kept is not None or len(self.kept) < MAX_INTERCEPTED_METHODS:
            self.kept[method] = (handler, wrapped)
        return wrapped
