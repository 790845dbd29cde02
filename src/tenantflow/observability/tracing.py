"""OpenTelemetry spans for runs, step attempts, model calls and tool calls.

The library depends only on ``opentelemetry-api``: until an SDK ``TracerProvider`` is set, every
span is a no-op. A server sets one with :func:`configure_tracing` (``tenantflow serve
--traces otlp``) and attaches the observer to its engine with :func:`install_tracing`.

One trace per run, across processes and restarts
------------------------------------------------
A run can last hours, wait days for a reviewer, and be resumed by another process after a
crash, so no process can hold one span open for its whole life. Instead, a run's trace id is
derived from its run id (:func:`run_trace_id`): every process that works on the run puts its
spans in the same trace without passing anything around. Under a virtual root (a span id also
derived from the run id, which no process emits), each process emits one ``run <workflow>``
span per *segment* it drives — from submission or its first step here until the run ends, this
engine stops, or the run is handed to another worker — with the step spans of that segment as
its children, and the model and tool calls of a step as the step's children::

    run loan-approval                    (segment; ends when the run ends or the engine stops)
      step verify      attempt 1
        execute_tool credit_bureau
        chat gpt-4o-mini                 (GenAI semantic conventions)
      step decide      attempt 1
    run loan-approval                    (the next segment, after a restart: same trace)
      step decide      attempt 2

Backends show the segments as the trace's top-level spans (their parent, the virtual root, is
never received). Sampling follows the trace id, so a ratio sampler keeps or drops a whole run
in every process alike (see :func:`configure_tracing`).

No payloads: spans carry ids, names the platform registered (workflow, step, tool, model
endpoint), numbers and error *types* — never a run's input, state, prompt, output or an error
message (which may quote them).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from tenantflow.domain.spec import parse_key
from tenantflow.errors import ConfigurationError
from tenantflow.observability.events import (
    AgentRunFinished,
    Degraded,
    ModelCallFinished,
    Observer,
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

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

    from tenantflow.engine.engine import Engine

__all__ = [
    "EXPORTERS",
    "TracingObserver",
    "configure_tracing",
    "install_tracing",
    "run_root_span_id",
    "run_trace_id",
]

EXPORTERS = ("none", "console", "otlp")

TENANT_ID = "tenantflow.tenant_id"
RUN_ID = "tenantflow.run_id"
WORKFLOW = "tenantflow.workflow"
STEP = "tenantflow.step"
ATTEMPT = "tenantflow.attempt"
STATE_VERSION = "tenantflow.state_version"

# Run spans whose run failed are errors; a cancelled run is not (someone asked for it).
_FAILED_RUNS = frozenset({"failed", "compensated"})


def configure_tracing(
    exporter: str, *, sample_ratio: float = 1.0, set_global: bool = True
) -> SdkTracerProvider | None:
    """Install an SDK tracer provider that exports spans in batches (``--traces``).

    Args:
        exporter: ``"none"`` (install nothing: spans stay no-ops), ``"console"`` (print spans
            as JSON on stdout) or ``"otlp"`` (OTLP over HTTP/protobuf; the exporter reads its
            endpoint, headers, timeout and TLS settings from the standard environment variables
            ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` (default
            ``http://localhost:4318``), ``OTEL_EXPORTER_OTLP_HEADERS`` and so on).
        sample_ratio: the share of runs traced (0..1), decided from the run's trace id so that
            every process keeps or drops the same runs.
        set_global: make it the process's global tracer provider (it can be set once).

    Returns:
        The provider (``shutdown()`` flushes it; it also flushes at exit), or None for
        ``"none"``. ``service.name`` is ``tenantflow`` unless ``OTEL_SERVICE_NAME`` or
        ``OTEL_RESOURCE_ATTRIBUTES`` names one.

    Raises:
        ConfigurationError: an unknown exporter or ratio, or the SDK is not installed.
    """
    if exporter not in EXPORTERS:
        raise ConfigurationError(
            f"unknown trace exporter {exporter!r}: use one of {', '.join(EXPORTERS)}",
            field="traces",
            value=exporter,
        )
    if not 0.0 <= sample_ratio <= 1.0:
        raise ConfigurationError(
            "sample_ratio must be within 0..1", field="sample_ratio", value=sample_ratio
        )
    if exporter == "none":
        return None
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        span_exporter: SpanExporter
        if exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            span_exporter = OTLPSpanExporter()
        else:
            span_exporter = ConsoleSpanExporter()
    except ImportError as exc:
        raise ConfigurationError(
            f"--traces {exporter} needs the OpenTelemetry SDK and exporter:"
            f" pip install 'tenantflow[server]' ({exc})",
            field="traces",
        ) from None
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "tenantflow"}))
    ratio = TraceIdRatioBased(sample_ratio)
    provider = TracerProvider(
        resource=resource, sampler=ParentBased(ratio, remote_parent_sampled=ratio)
    )
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def install_tracing(
    engine: Engine, tracer_provider: trace.TracerProvider | None = None
) -> TracingObserver:
    """Emit the engine's spans (to ``tracer_provider``, else the global one)."""
    observer = TracingObserver(tracer_provider)
    engine.observers.append(observer)
    return observer


def run_trace_id(run_id: str) -> int:
    """The trace id of a run: 128 bits of SHA-256 of its run id (never 0)."""
    return int.from_bytes(_digest(run_id)[:16], "big") or 1


def run_root_span_id(run_id: str) -> int:
    """The span id of a run's virtual root, the parent of its segments (never 0)."""
    return int.from_bytes(_digest(run_id)[16:24], "big") or 1


def _digest(run_id: str) -> bytes:
    return hashlib.sha256(b"tenantflow.run\x00" + run_id.encode()).digest()


def _ns(at_s: float) -> int:
    return int(at_s * 1e9)


@dataclass(slots=True)
class _Open:
    span: Span
    context: Any  # the OpenTelemetry Context holding ``span``, for its children
    state_version: int = 0


class TracingObserver(Observer):
    """Turns engine events into spans (see the module docstring)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        from tenantflow import __version__

        self._tracer = trace.get_tracer("tenantflow", __version__, tracer_provider)
        self._runs: dict[str, _Open] = {}  # run id -> this process's segment span
        self._steps: dict[tuple[str, str], _Open] = {}  # (run id, step key) -> attempt span
        self._ending: dict[str, tuple[Span, float]] = {}  # ended runs whose last step is open

    def _root(self, run_id: str) -> Any:
        parent = SpanContext(
            run_trace_id(run_id),
            run_root_span_id(run_id),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        return trace.set_span_in_context(NonRecordingSpan(parent))

    def _segment(self, tenant_id: str, run_id: str, workflow: str, at_s: float) -> _Open:
        seg = self._runs.get(run_id)
        if seg is None:
            span = self._tracer.start_span(
                f"run {workflow}",
                context=self._root(run_id),
                attributes={TENANT_ID: tenant_id, RUN_ID: run_id, WORKFLOW: workflow},
                start_time=_ns(at_s),
            )
            seg = self._runs[run_id] = _Open(span, trace.set_span_in_context(span))
        return seg

    def _open_steps(self, run_id: str) -> list[tuple[str, str]]:
        return [k for k in self._steps if k[0] == run_id]  # at most one per slot

    def _end_run(self, run_id: str, at_s: float) -> _Open | None:
        """End the run's open step spans (an attempt cut short) and return its segment."""
        for key in self._open_steps(run_id):
            _end(self._steps.pop(key).span, at_s, "interrupted")
        return self._runs.pop(run_id, None)

    def _end_later(self, run_id: str) -> None:
        """End a finished run's segment once the step that finished it has reported."""
        span, end_s = self._ending.pop(run_id)
        self._end_run(run_id, end_s)
        span.end(end_time=_ns(end_s))

    # -- runs ---------------------------------------------------------------------------------

    def on_run_submitted(self, event: RunSubmitted) -> None:
        seg = self._segment(event.tenant_id, event.run_id, event.workflow, event.at_s)
        seg.span.set_attribute("tenantflow.lane", event.lane)
        seg.span.add_event(
            "run.queued" if event.queued else "run.admitted", timestamp=_ns(event.at_s)
        )

    def on_run_admitted(self, event: RunAdmitted) -> None:
        seg = self._segment(event.tenant_id, event.run_id, event.workflow, event.at_s)
        seg.span.add_event("run.admitted", timestamp=_ns(event.at_s))

    def on_run_finished(self, event: RunFinished) -> None:
        span = self._segment(event.tenant_id, event.run_id, event.workflow, event.at_s).span
        span.set_attribute("tenantflow.run.status", event.status)
        span.set_attribute(STATE_VERSION, event.state_version)
        if event.status in _FAILED_RUNS:
            span.set_attribute("error.type", f"run_{event.status}")
            span.set_status(Status(StatusCode.ERROR, f"run {event.status}"))
        # The attempt whose commit finished the run reports its own end right after this, in
        # the same turn of the event loop: end the segment once it has.
        if self._open_steps(event.run_id) and event.run_id not in self._ending:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                self._ending[event.run_id] = (span, event.at_s)
                loop.call_soon(self._end_later, event.run_id)
                return
        self._end_run(event.run_id, event.at_s)
        span.end(end_time=_ns(event.at_s))

    def on_run_suspended(self, event: RunSuspended) -> None:
        seg = self._end_run(event.run_id, event.at_s)
        if seg is not None:
            seg.span.set_attribute("tenantflow.run.suspended", True)
            seg.span.end(end_time=_ns(event.at_s))

    # -- steps --------------------------------------------------------------------------------

    def on_step_started(self, event: StepStarted) -> None:
        seg = self._segment(event.tenant_id, event.run_id, event.workflow, event.at_s)
        span = self._tracer.start_span(
            f"step {parse_key(event.step)[0]}",
            context=seg.context,
            attributes={
                TENANT_ID: event.tenant_id,
                RUN_ID: event.run_id,
                WORKFLOW: event.workflow,
                STEP: event.step,
                ATTEMPT: event.attempt,
                STATE_VERSION: event.state_version,
            },
            start_time=_ns(event.at_s),
        )
        stale = self._steps.pop((event.run_id, event.step), None)
        if stale is not None:  # its finish was never reported (the attempt task died)
            _end(stale.span, event.at_s, "interrupted")
        self._steps[(event.run_id, event.step)] = _Open(
            span, trace.set_span_in_context(span), event.state_version
        )

    def on_step_finished(self, event: StepFinished) -> None:
        step = self._steps.pop((event.run_id, event.step), None)
        if step is None:
            return
        span = step.span
        span.set_attribute("tenantflow.step.outcome", event.outcome)
        span.set_attribute(STATE_VERSION, event.state_version)
        if event.outcome == "failed":
            _error(span, event.error_type or "error", event.at_s)
        elif event.outcome == "lease_lost":
            _error(span, "lease_lost", event.at_s)
        span.end(end_time=_ns(event.at_s))
        ending = self._ending.get(event.run_id)
        if ending is not None and event.at_s > ending[1]:
            self._ending[event.run_id] = (ending[0], event.at_s)

    def on_rate_limit_wait(self, event: RateLimitWait) -> None:
        step = self._steps.get((event.run_id, event.step))
        if step is not None:
            step.span.add_event(
                "rate_limit.wait",
                {"tenantflow.resource": event.resource, "tenantflow.wait_s": event.wait_s},
                timestamp=_ns(event.at_s),
            )

    def on_degraded(self, event: Degraded) -> None:
        step = self._steps.get((event.run_id, event.step))
        if step is not None:
            step.span.add_event(
                "budget.degraded",
                {"tenantflow.degradation": event.action},
                timestamp=_ns(event.at_s),
            )

    def on_review_sla_breached(self, event: ReviewSlaBreached) -> None:
        seg = self._runs.get(event.run_id)
        context = seg.context if seg is not None else self._root(event.run_id)
        span = self._tracer.start_span(
            "review sla_breached",
            context=context,
            attributes={
                TENANT_ID: event.tenant_id,
                RUN_ID: event.run_id,
                STEP: event.step,
                "tenantflow.review_id": event.review_id,
                "tenantflow.review.action": event.action,
                "tenantflow.review.overdue_s": max(0.0, event.at_s - event.due_s),
            },
            start_time=_ns(event.at_s),
        )
        span.end(end_time=_ns(event.at_s))

    # -- calls --------------------------------------------------------------------------------

    def _call_parent(self, run_id: str, step: str) -> tuple[Any, int | None]:
        open_ = self._steps.get((run_id, step)) or self._runs.get(run_id)
        if open_ is None:
            return self._root(run_id), None
        return open_.context, open_.state_version

    def on_model_call_finished(self, event: ModelCallFinished) -> None:
        context, version = self._call_parent(event.run_id, event.step)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": event.provider,
            "gen_ai.request.model": event.model,
            "gen_ai.request.max_tokens": event.max_tokens,
            "gen_ai.request.temperature": event.temperature,
            "gen_ai.usage.input_tokens": event.tokens_in,
            "gen_ai.usage.output_tokens": event.tokens_out,
            TENANT_ID: event.tenant_id,
            RUN_ID: event.run_id,
            STEP: event.step,
            ATTEMPT: event.attempt,
            "tenantflow.endpoint": event.endpoint,
            "tenantflow.region": event.region,
            "tenantflow.cost_micros": event.cost_micros,
        }
        if version is not None:
            attributes[STATE_VERSION] = version
        if event.response_model is not None:
            attributes["gen_ai.response.model"] = event.response_model
        if event.finish_reason is not None:
            attributes["gen_ai.response.finish_reasons"] = (event.finish_reason,)
        span = self._tracer.start_span(
            f"chat {event.model}",
            context=context,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=_ns(event.started_at_s),
        )
        if event.error_type is not None:
            _error(span, event.error_type, event.at_s)
        span.end(end_time=_ns(event.at_s))

    def on_tool_call_finished(self, event: ToolCallFinished) -> None:
        context, version = self._call_parent(event.run_id, event.step)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": event.tool,
            TENANT_ID: event.tenant_id,
            RUN_ID: event.run_id,
            STEP: event.step,
            ATTEMPT: event.attempt,
            "tenantflow.cost_micros": event.cost_micros,
        }
        if version is not None:
            attributes[STATE_VERSION] = version
        span = self._tracer.start_span(
            f"execute_tool {event.tool}",
            context=context,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=_ns(event.started_at_s),
        )
        if event.error_type is not None:
            _error(span, event.error_type, event.at_s)
        span.end(end_time=_ns(event.at_s))

    def on_agent_run_finished(self, event: AgentRunFinished) -> None:
        context, version = self._call_parent(event.run_id, event.step)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": event.agent,
            "gen_ai.conversation.id": event.run_id,
            "tenantflow.agent.framework": event.framework,
            TENANT_ID: event.tenant_id,
            RUN_ID: event.run_id,
            STEP: event.step,
            ATTEMPT: event.attempt,
        }
        if version is not None:
            attributes[STATE_VERSION] = version
        span = self._tracer.start_span(
            f"invoke_agent {event.agent}",
            context=context,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=_ns(event.started_at_s),
        )
        if event.error_type is not None:
            _error(span, event.error_type, event.at_s)
        span.end(end_time=_ns(event.at_s))


def _error(span: Span, error_type: str, at_s: float) -> None:
    """Mark ``span`` failed with the error's type only: a message may quote tenant data."""
    span.set_attribute("error.type", error_type)
    span.add_event("exception", {"exception.type": error_type}, timestamp=_ns(at_s))
    span.set_status(Status(StatusCode.ERROR, error_type))


def _end(span: Span, at_s: float, outcome: str) -> None:
    span.set_attribute("tenantflow.step.outcome", outcome)
    span.end(end_time=_ns(at_s))
