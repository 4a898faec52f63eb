"""The TracerProvider's sampler, asked on the call path without the SDK's
per-call objects: the SDK's own samplers (always on/off, trace id ratio, and
parent-based over those, the default) become a few comparisons; any other
sampler is asked through its ``should_sample``, as the SDK would ask it."""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind

from ._w3c import SAMPLED

__all__ = ["Sampling"]

_SAMPLED_DECISIONS = frozenset({Decision.RECORD_AND_SAMPLE})
# (trace id) -> sampled, for a span without a parent.
_RootRule = Callable[[int], bool]


def _constant(sampler: Sampler) -> bool | None:
    """The fixed decision of the SDK's always-on/always-off samplers."""
    if isinstance(sampler, StaticSampler):
        description = sampler.get_description()
        if description == "AlwaysOnSampler":
            return True
        if description == "AlwaysOffSampler":
            return False
    return None


def _root_rule(sampler: Sampler) -> _RootRule | None:
    constant = _constant(sampler)
    if constant is not None:
        return (lambda _trace_id: True) if constant else (lambda _trace_id: False)
    if isinstance(sampler, TraceIdRatioBased):
        limit, bound = TraceIdRatioBased.TRACE_ID_LIMIT, sampler.bound
        return lambda trace_id: trace_id & limit < bound
    return None


class Sampling:
    """Whether a new span of an RPC is sampled, as ``sampler`` decides."""

    def __init__(self, sampler: Sampler) -> None:
        self._sampler = sampler
        self._root: _RootRule | None = None
        # Decisions for a parent: (remote, parent sampled) -> sampled.
        self._with_parent: dict[tuple[bool, bool], bool] | None = None
        #: The decision for every span, when it is one (always on, always
        #: off, and parent-based over the same): no question to ask per call.
        self.always: bool | None = None
        if isinstance(sampler, ParentBased):
            delegates = {
                (True, True): getattr(sampler, "_remote_parent_sampled", None),
                (True, False): getattr(sampler, "_remote_parent_not_sampled", None),
                (False, True): getattr(sampler, "_local_parent_sampled", None),
                (False, False): getattr(sampler, "_local_parent_not_sampled", None),
            }
            constants = {
                key: _constant(delegate) if isinstance(delegate, Sampler) else None
                for key, delegate in delegates.items()
            }
            root = getattr(sampler, "_root", None)
            root_rule = _root_rule(root) if isinstance(root, Sampler) else None
            root_constant = _constant(root) if isinstance(root, Sampler) else None
            if root_rule is not None and all(v is not None for v in constants.values()):
                self._root = root_rule
                self._with_parent = {k: bool(v) for k, v in constants.items()}
                if root_constant is not None and set(constants.values()) == {root_constant}:
                    self.always = root_constant
        else:  # these samplers ignore the parent
            self._root = _root_rule(sampler)
            self.always = _constant(sampler)
        self._ignores_parent = self._with_parent is None and self._root is not None
        #: For a remote parent, by its sampled flag (0, 1): the decision, when
        #: it depends on that flag alone (parent-based over fixed samplers).
        self.remote_parent: tuple[bool, bool] | None = (
            (self._with_parent[True, False], self._with_parent[True, True])
            if self._with_parent is not None
            else None
        )

    def sampled(
        self,
        trace_id: int,
        parent: tuple[int, int, int] | None,
        remote: bool,
        name: str,
        kind: SpanKind,
    ) -> bool:
        """The decision for a span of ``trace_id`` under ``parent`` (trace id,
        span id, flags; ``remote`` when it came in a request), else a root."""
        if parent is None or self._ignores_parent:
            if self._root is not None:
                return self._root(trace_id)
        elif self._with_parent is not None:
            return self._with_parent[remote, bool(parent[2] & SAMPLED)]
        context = None
        if parent is not None:
            span_context = trace.SpanContext(
                parent[0], parent[1], is_remote=remote, trace_flags=trace.TraceFlags(parent[2])
            )
            context = trace.set_span_in_context(trace.NonRecordingSpan(span_context))
        result = self._sampler.should_sample(context, trace_id, name, kind)
        return result.decision in _SAMPLED_DECISIONS
