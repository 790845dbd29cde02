"""OpenTelemetry spans: names, the run → step → call tree, attributes, errors, no payloads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

import tenantflow as tf
from tenantflow.adapters.providers import SimulatedProvider
from tenantflow.domain.routing import Endpoint
from tenantflow.observability.tracing import (
    configure_tracing,
    install_tracing,
    run_root_span_id,
    run_trace_id,
)
from tenantflow.testing import FakeClock, MemoryStore

T = TypeVar("T")
SECRET = "SECRET-PAYLOAD-91c2"


class Application(BaseModel):
    applicant: str


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracer_provider
    tracer_provider.shutdown()


@pytest.fixture
async def engine(clock: FakeClock, provider: TracerProvider) -> AsyncIterator[tf.Engine]:
    async with tf.Engine(
        clock.watch(MemoryStore()),
        tf.EngineConfig(slots=8, seed=7, auto_tenant="enterprise"),
        clock=clock,
    ) as eng:
        install_tracing(eng, provider)
        yield eng


def by_name(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = by_name(spans, name)
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def texts(span: ReadableSpan) -> Iterator[str]:
    """Every string a span exports: its name, attribute values and event attributes."""
    yield span.name
    yield from (str(v) for v in (span.attributes or {}).values())
    for event in span.events:
        yield event.name
        yield from (str(v) for v in (event.attributes or {}).values())
    if span.status.description:
        yield span.status.description


def assert_no_payload(spans: Sequence[ReadableSpan], *secrets: str) -> None:
    for span in spans:
        for text in texts(span):
            for secret in secrets:
                assert secret not in text, (span.name, text)


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_run_step_and_call_spans_form_one_tree_with_genai_attributes(
    engine: tf.Engine, clock: FakeClock, exporter: InMemorySpanExporter
) -> None:
    sim = SimulatedProvider(clock=clock, latency_ms=(5.0, 10.0), out_tokens=(30, 30))
    engine.models.add(
        Endpoint(
            name="sim-large",
            provider="sim",
            model="sim-model",
            region="us-east-1",
            tier="large",
            price_in_per_1k_micros=1_000,
            price_out_per_1k_micros=2_000,
            max_context=100_000,
        ),
        sim,
    )

    @engine.tools.register(name="bureau")
    async def bureau(applicant: str) -> int:
        return 700

    wf = tf.Workflow("loan", input=Application)

    @wf.step
    async def check(ctx: tf.StepContext, input: Application) -> int:
        score = int(await ctx.tool("bureau", applicant=input.applicant))
        reply = await ctx.model(f"assess {input.applicant} with score {score}", max_tokens=64)
        return reply.tokens_in

    @wf.step
    async def decide(ctx: tf.StepContext, check: int) -> bool:
        return check > 0

    engine.register(wf)
    run = await engine.submit("loan", tenant="bank-a", input={"applicant": SECRET})
    assert await clock.drive(run.result()) is True
    tokens_in = sim.prompt_tokens(
        _request(f"assess {SECRET} with score 700")  # what the step sent
    )
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == sorted(
        ["run loan", "step check", "step decide", "execute_tool bureau", "chat sim-model"]
    )
    root = one(spans, "run loan")
    check_span, decide_span = one(spans, "step check"), one(spans, "step decide")
    tool_span, model_span = one(spans, "execute_tool bureau"), one(spans, "chat sim-model")

    # One trace, derived from the run id; steps under the run, calls under their step.
    assert {s.context.trace_id for s in spans} == {run_trace_id(run.id)}
    assert parent_id(root) == run_root_span_id(run.id)
    assert root.parent is not None and root.parent.is_remote
    assert parent_id(check_span) == parent_id(decide_span) == root.context.span_id
    assert parent_id(tool_span) == parent_id(model_span) == check_span.context.span_id

    assert root.attributes is not None
    assert root.attributes["tenantflow.tenant_id"] == "bank-a"
    assert root.attributes["tenantflow.run_id"] == run.id
    assert root.attributes["tenantflow.run.status"] == "completed"
    assert root.attributes["tenantflow.state_version"] == 2
    assert root.status.status_code == StatusCode.UNSET

    assert check_span.attributes is not None and decide_span.attributes is not None
    assert check_span.attributes["tenantflow.step"] == "check"
    assert check_span.attributes["tenantflow.attempt"] == 1
    assert check_span.attributes["tenantflow.state_version"] == 1  # the version it produced
    assert check_span.attributes["tenantflow.step.outcome"] == "succeeded"
    assert decide_span.attributes["tenantflow.state_version"] == 2
    assert check_span.start_time is not None and decide_span.start_time is not None
    assert check_span.start_time <= decide_span.start_time
    assert root.end_time is not None and decide_span.end_time is not None
    assert root.end_time >= decide_span.end_time  # the run span ends after its last step

    attrs = model_span.attributes
    assert attrs is not None
    assert model_span.kind == SpanKind.CLIENT
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "sim"
    assert attrs["gen_ai.request.model"] == "sim-model"
    assert attrs["gen_ai.request.max_tokens"] == 64
    assert attrs["gen_ai.usage.input_tokens"] == tokens_in
    assert attrs["gen_ai.usage.output_tokens"] == 30
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["tenantflow.cost_micros"] == tokens_in * 1 + 30 * 2
    assert attrs["tenantflow.state_version"] == 0  # what the step read
    assert attrs["tenantflow.tenant_id"] == "bank-a" and attrs["tenantflow.attempt"] == 1
    assert model_span.end_time is not None and model_span.start_time is not None
    assert model_span.end_time - model_span.start_time >= 5_000_000  # the provider's 5 ms+

    tool_attrs = tool_span.attributes
    assert tool_attrs is not None
    assert tool_attrs["gen_ai.operation.name"] == "execute_tool"
    assert tool_attrs["gen_ai.tool.name"] == "bureau"
    assert tool_attrs["tenantflow.run_id"] == run.id

    assert_no_payload(spans, SECRET)


def _request(prompt: str) -> Any:
    from tenantflow.domain.models import ModelRequest

    return ModelRequest(model="sim-model", messages=({"role": "user", "content": prompt},))


async def test_a_failing_step_sets_error_status_with_the_exception_type_only(
    engine: tf.Engine, clock: FakeClock, exporter: InMemorySpanExporter
) -> None:
    wf = tf.Workflow("doomed", input=Application)

    @wf.step(retry=tf.Retry(max_attempts=2, initial=timedelta(seconds=1), jitter=0.0))
    async def boom(ctx: tf.StepContext, input: Application) -> str:
        raise ValueError(f"cannot handle {input.applicant}")

    engine.register(wf)
    run = await engine.submit("doomed", tenant="bank-b", input={"applicant": SECRET})
    assert (await clock.drive(run.wait())).status == tf.RunStatus.FAILED
    spans = exporter.get_finished_spans()
    attempts = sorted(by_name(spans, "step boom"), key=lambda s: s.start_time or 0)
    assert [(s.attributes or {}).get("tenantflow.attempt") for s in attempts] == [1, 2]
    for span in attempts:
        assert span.status.status_code == StatusCode.ERROR
        assert span.status.description == "ValueError"
        assert (span.attributes or {})["error.type"] == "ValueError"
        assert (span.attributes or {})["tenantflow.step.outcome"] == "failed"
        [event] = [e for e in span.events if e.name == "exception"]
        assert dict(event.attributes or {}) == {"exception.type": "ValueError"}
    root = one(spans, "run doomed")
    assert root.status.status_code == StatusCode.ERROR
    assert (root.attributes or {})["tenantflow.run.status"] == "failed"
    assert_no_payload(spans, SECRET, "cannot handle")


async def test_every_segment_of_a_run_lands_in_the_same_trace_across_a_restart(
    tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # A restart needs a store that outlives the engine: a SQLite file, on the system clock.
    url = f"sqlite:///{tmp_path / 'restart.db'}"
    gate, waiting = asyncio.Event(), asyncio.Event()

    def workflow() -> tf.Workflow:
        wf = tf.Workflow("long")

        @wf.step
        async def first(ctx: tf.StepContext) -> int:
            return 1

        @wf.step
        async def second(ctx: tf.StepContext, first: int) -> int:
            waiting.set()
            await gate.wait()
            return first + 1

        return wf

    engine = tf.Engine.open(url, auto_tenant="enterprise")
    await engine.start()
    install_tracing(engine, provider)
    engine.register(workflow())
    run = await engine.submit("long", tenant="t", input=None)
    await asyncio.wait_for(waiting.wait(), 10)
    await engine.close()  # mid-step: the segment ends, suspended
    first_segment = exporter.get_finished_spans()
    assert {s.name for s in first_segment} == {"run long", "step first", "step second"}
    suspended = one(first_segment, "run long")
    assert (suspended.attributes or {})["tenantflow.run.suspended"] is True
    interrupted = one(first_segment, "step second").attributes or {}
    assert interrupted["tenantflow.step.outcome"] == "interrupted"

    exporter.clear()
    gate.set()
    async with tf.Engine.open(url, auto_tenant="enterprise") as again:
        install_tracing(again, provider)
        again.register(workflow())
        assert await again.run("t", run.id).result(timedelta(seconds=10)) == 2
    second_segment = exporter.get_finished_spans()
    assert {s.name for s in second_segment} == {"run long", "step second"}
    resumed = one(second_segment, "run long")
    assert (resumed.attributes or {})["tenantflow.run.status"] == "completed"
    assert (one(second_segment, "step second").attributes or {})["tenantflow.attempt"] == 2
    trace_ids = {s.context.trace_id for s in [*first_segment, *second_segment]}
    assert trace_ids == {run_trace_id(run.id)}
    assert parent_id(suspended) == parent_id(resumed) == run_root_span_id(run.id)


def test_trace_ids_are_derived_from_the_run_id() -> None:
    assert run_trace_id("run_a") == run_trace_id("run_a") != run_trace_id("run_b")
    assert 0 < run_trace_id("run_a") < 2**128
    assert 0 < run_root_span_id("run_a") < 2**64


def test_configure_tracing_installs_a_batching_sdk_provider() -> None:
    assert configure_tracing("none") is None
    with pytest.raises(tf.ConfigurationError, match="unknown trace exporter"):
        configure_tracing("jaeger")
    with pytest.raises(tf.ConfigurationError, match="sample_ratio"):
        configure_tracing("console", sample_ratio=2.0)
    for exporter in ("console", "otlp"):
        provider = configure_tracing(exporter, sample_ratio=0.5, set_global=False)
        assert isinstance(provider, TracerProvider)
        assert provider.resource.attributes["service.name"] == "tenantflow"
        processors = provider._active_span_processor._span_processors
        assert [type(p).__name__ for p in processors] == ["BatchSpanProcessor"]
        assert "0.5" in provider.sampler.get_description()
        provider.shutdown()
