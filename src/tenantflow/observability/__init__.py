"""Observability: the engine's observer seam, Prometheus metrics and OpenTelemetry traces.

:mod:`~tenantflow.observability.events` is the seam (``engine.observers``); it imports only the
standard library. The two observers built on it load their libraries only when imported:
:mod:`~tenantflow.observability.metrics` (``prometheus-client``) and
:mod:`~tenantflow.observability.tracing` (``opentelemetry-api``; the SDK and exporters come
with the ``server`` extra). See ``docs/observability.md``.
"""

from tenantflow.observability.events import (
    AgentRunFinished,
    Degraded,
    ModelCallFinished,
    Observer,
    Observers,
    RateLimitWait,
    ReviewSlaBreached,
    RunAdmitted,
    RunFinished,
    RunSubmitted,
    RunSuspended,
    StepFinished,
    StepStarted,
    ToolCallFinished,
)

__all__ = [
    "AgentRunFinished",
    "Degraded",
    "ModelCallFinished",
    "Observer",
    "Observers",
    "RateLimitWait",
    "ReviewSlaBreached",
    "RunAdmitted",
    "RunFinished",
    "RunSubmitted",
    "RunSuspended",
    "StepFinished",
    "StepStarted",
    "ToolCallFinished",
]
