"""An SDK agent's run in a step is an ``invoke_agent`` span beside its ``chat`` and
``execute_tool`` spans, under the step's span, carrying identifiers and never the prompt."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tenantflow as tf
from tenantflow.adapters.providers.testserver import OpenAITestServer
from tenantflow.observability.tracing import install_tracing

from .common import open_engine

agents = pytest.importorskip("agents")
pydantic_ai = pytest.importorskip("pydantic_ai")

SECRET = "SECRET-QUESTION-5e1f"


@pytest.fixture
def server() -> Iterator[OpenAITestServer]:
    with OpenAITestServer() as s:
        yield s


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


@pytest.fixture
async def engine(
    tmp_path: Path, server: OpenAITestServer, exporter: InMemorySpanExporter
) -> AsyncIterator[tf.Engine]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with open_engine(str(tmp_path / "spans.db"), server.base_url) as eng:
        install_tracing(eng, provider)
        await eng.tenants.create("acme", tier="enterprise")
        yield eng
    provider.shutdown()


async def lookup_impl(topic: str) -> str:
    return f"facts about {topic}"


def sdk_step() -> Any:
    from tenantflow.integrations.openai_agents import run_agent

    lookup = agents.function_tool(lookup_impl, name_override="lookup")
    agent = agents.Agent(name="researcher", instructions="Research.", tools=[lookup])

    async def step(ctx: tf.StepContext, input: str) -> str:
        return str(await run_agent(ctx, agent, input))

    return step


def pydantic_ai_step() -> Any:
    from tenantflow.integrations.pydantic_ai import (
        TenantflowDurability,
        TenantflowModel,
        run_agent,
    )

    agent = pydantic_ai.Agent(
        TenantflowModel(), name="researcher", capabilities=[TenantflowDurability()]
    )
    agent.tool_plain(lookup_impl, name="lookup")

    async def step(ctx: tf.StepContext, input: str) -> str:
        return str(await run_agent(ctx, agent, input))

    return step


@pytest.mark.parametrize(
    ("framework", "make"), [("openai-agents", sdk_step), ("pydantic-ai", pydantic_ai_step)]
)
async def test_an_agent_run_is_an_invoke_agent_span_under_its_step(
    engine: tf.Engine,
    server: OpenAITestServer,
    exporter: InMemorySpanExporter,
    framework: str,
    make: Any,
) -> None:
    wf = tf.Workflow("ask", input=str)
    wf.step(name="ask")(make())
    engine.register(wf)
    server.queue(tool_calls=[("lookup", {"topic": "tides"})])
    server.queue(text="Tides follow the moon.")
    run = await (await engine.submit("ask", tenant="acme", input=SECRET)).wait()
    assert run.status == tf.RunStatus.COMPLETED, run.error
    spans = exporter.get_finished_spans()
    names = [s.name for s in spans]
    [agent] = [s for s in spans if s.name == "invoke_agent researcher"]
    [step] = [s for s in spans if s.name == "step ask"]
    attributes = dict(agent.attributes or {})
    assert attributes["gen_ai.operation.name"] == "invoke_agent"
    assert attributes["gen_ai.agent.name"] == "researcher"
    assert attributes["tenantflow.agent.framework"] == framework
    assert attributes["tenantflow.tenant_id"] == "acme"
    assert attributes["gen_ai.conversation.id"] == run.id
    assert agent.parent is not None and agent.parent.span_id == step.context.span_id
    assert names.count("chat test-model") == 2 and names.count("execute_tool lookup") == 1
    for span in spans:
        assert SECRET not in str(span.attributes) and SECRET not in span.name
