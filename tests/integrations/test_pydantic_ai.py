"""A PydanticAI agent as a step through its public durability capability: model requests through
the tenant's gateway (priced, recorded, replayed), tool calls through the gateway's tool path
(allow list, price), recorded by tool-call id."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.adapters.providers.testserver import OpenAITestServer

pydantic_ai = pytest.importorskip("pydantic_ai")

from tenantflow.integrations.pydantic_ai import (  # noqa: E402
    TenantflowDurability,
    TenantflowModel,
    register_tools,
    run_agent,
)

from .common import open_engine  # noqa: E402

EFFECTS: Counter[str] = Counter()


def support_agent() -> Any:
    agent = pydantic_ai.Agent(
        TenantflowModel(),
        name="support",
        instructions="Help the customer.",
        capabilities=[TenantflowDurability()],
    )

    @agent.tool_plain
    async def order_status(order: str) -> str:
        """The status of an order."""
        EFFECTS[f"status:{order}"] += 1
        return f"order {order} shipped"

    return agent


@pytest.fixture
def server() -> Iterator[OpenAITestServer]:
    EFFECTS.clear()
    with OpenAITestServer() as s:
        yield s


@pytest.fixture
async def engine(tmp_path: Path, server: OpenAITestServer) -> AsyncIterator[tf.Engine]:
    async with open_engine(str(tmp_path / "pai.db"), server.base_url) as eng:
        yield eng


def support_workflow(agent: Any, *, crash_once: bool = False) -> tf.Workflow:
    wf = tf.Workflow("support", input=str)
    crashed: list[bool] = []

    @wf.step(retry=tf.Retry(max_attempts=2, jitter=0.0))
    async def answer(ctx: tf.StepContext, input: str) -> str:
        output = str(await run_agent(ctx, agent, input))
        if crash_once and not crashed:
            crashed.append(True)
            raise RuntimeError("the attempt dies after the agent finished")
        return output

    return wf


async def test_model_and_parallel_tools_are_governed_and_replayed(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    await engine.tenants.create("acme", tier="enterprise")
    register_tools(engine.tools, ["order_status"], cost_usd=0.25)
    server.queue(tool_calls=[("order_status", {"order": "A1"}), ("order_status", {"order": "B2"})])
    server.queue(text="Both orders shipped.")
    engine.register(support_workflow(support_agent(), crash_once=True))
    run = await (await engine.submit("support", tenant="acme", input="my orders?")).wait()
    assert run.status == tf.RunStatus.COMPLETED, run.error
    assert json.loads(run.result_json or b"") == "Both orders shipped."
    assert len(server.requests) == 2  # the second attempt replayed every call
    assert EFFECTS == {"status:A1": 1, "status:B2": 1}
    first, second = (r.body for r in server.requests)
    assert first["messages"][0] == {"role": "system", "content": "Help the customer."}
    assert [t["function"]["name"] for t in first["tools"]] == ["order_status"]
    tool_msgs = [m for m in second["messages"] if m["role"] == "tool"]
    assert sorted(m["content"] for m in tool_msgs) == ["order A1 shipped", "order B2 shipped"]
    usage = {(r["metric"], r["dim"]): r["value"] for r in await engine.usage("acme")}
    assert usage[("model_calls", "local")] == 2
    assert usage[("tool_calls", "order_status")] == 2
    assert usage[("cost_micros", "tool:order_status")] == 500_000
    assert (await engine.audit_verify("acme")).ok


async def test_a_denied_tool_is_refused_audited_and_the_model_told(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    await engine.tenants.create("acme", tier="enterprise", denied_tools=["order_status"])
    server.queue(tool_calls=[("order_status", {"order": "A1"})])
    server.queue(text="I cannot check orders.")
    engine.register(support_workflow(support_agent()))
    run = await (await engine.submit("support", tenant="acme", input="my order?")).wait()
    assert run.status == tf.RunStatus.COMPLETED, run.error
    assert EFFECTS == {}
    retry = [m for m in server.requests[1].body["messages"] if m["role"] == "tool"]
    assert "not allowed" in retry[0]["content"]
    audit = await engine.audit_log("acme")
    assert [a.subject for a in audit if a.action == "tool.denied"] == ["tool:order_status"]


async def test_outside_a_step_the_model_refuses() -> None:
    with pytest.raises(tf.ConfigurationError, match="inside a step"):
        await support_agent().run("hello")


async def test_a_rate_limited_tool_parks_the_step_and_nothing_is_repeated(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    await engine.tenants.create(
        "acme",
        tier="enterprise",
        rate_limits={"tool:order_status": {"rate": "5/second", "burst": 1}},
    )
    server.queue(tool_calls=[("order_status", {"order": "A1"}), ("order_status", {"order": "B2"})])
    server.queue(text="Both orders shipped.")
    engine.register(support_workflow(support_agent()))
    run = await (await engine.submit("support", tenant="acme", input="my orders?")).wait()
    assert run.status == tf.RunStatus.COMPLETED, run.error
    assert EFFECTS == {"status:A1": 1, "status:B2": 1}
    assert len(server.requests) == 2
    events = await engine.timeline("acme", run.id)
    deferred = [e.data["reason"] for e in events if e.kind == "step.deferred"]
    assert deferred and deferred[0].startswith("rate limit tool:order_status")
    assert "step.retrying" not in [e.kind for e in events]
