"""A research agent with subagents, embedded on SQLite: ``python examples/research_agent.py``.

The lead agent splits a question into sub-questions and delegates each to a ``scout`` subagent
(a child run: same tenant, same region, drawing on the lead's budget). Each scout searches a
small knowledge base and reads what it found, in a loop, until it can answer. Every iteration of
every loop is a durable element of its step, so the timeline printed at the end shows them one
by one, with the tools each called and what it cost. The model is the deterministic simulated
provider, scripted here to behave like a tool-calling model.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from pydantic import BaseModel

import tenantflow as tf
from tenantflow.adapters.clock import SystemClock
from tenantflow.adapters.providers import SimulatedProvider

KNOWLEDGE = {
    "tides": "Tides are driven mainly by the Moon's gravity; the Sun adds spring and neap cycles.",
    "currents": "Ocean currents are driven by wind, the Earth's rotation and density differences.",
    "waves": "Wind waves grow with wind speed, duration and fetch.",
}


class Search(BaseModel):
    query: str


class Read(BaseModel):
    doc: str


def scripted_model(request: tf.ModelRequest) -> tf.ModelResponse:
    """What a tool-calling model would do, deterministically: the lead delegates one scout per
    sub-question, a scout searches, reads the best hit, then answers."""
    offered = {t["function"]["name"] for t in request.tools}
    task = next(str(m["content"]) for m in request.messages if m.get("role") == "user")
    results = [str(m["content"]) for m in request.messages if m.get("role") == "tool"]

    def calls(*items: tuple[str, dict[str, str]]) -> tf.ModelResponse:
        return tf.ModelResponse(
            text="",
            tokens_in=40,
            tokens_out=20,
            model=request.model,
            finish_reason="tool_calls",
            tool_calls=tuple(
                tf.ToolCall(f"call-{len(results)}-{i}", n, a) for i, (n, a) in enumerate(items)
            ),
        )

    def answer(text: str) -> tf.ModelResponse:
        return tf.ModelResponse(text=text, tokens_in=60, tokens_out=40, model=request.model)

    if "delegate_scout" in offered:  # the lead
        if not results:
            topics = [t for t in KNOWLEDGE if t in task]
            return calls(*(("delegate_scout", {"task": f"explain {t}"}) for t in topics))
        return answer("Summary: " + " ".join(results))
    if not results:  # a scout: search first
        return calls(("search", {"query": task.removeprefix("explain ")}))
    if len(results) == 1:
        hits = json.loads(results[0])
        return calls(("read", {"doc": hits[0]})) if hits else answer("nothing found")
    return answer(results[-1])


def build_engine(db: Path) -> tf.Engine:
    engine = tf.Engine.open(f"sqlite:///{db}", slots=4, seed=11)

    @engine.tools.register(input=Search, cost_usd=0.001, description="Search the knowledge base.")
    async def search(query: str) -> list[str]:
        await asyncio.sleep(0.01)
        return [doc for doc in KNOWLEDGE if doc in query or query in doc]

    @engine.tools.register(input=Read, cost_usd=0.002, description="Read one document.")
    async def read(doc: str) -> str:
        await asyncio.sleep(0.01)
        return KNOWLEDGE.get(doc, "no such document")

    engine.models.add(
        tf.Endpoint(
            name="sim-large",
            provider="sim",
            model="sim-large",
            region="us-east-1",
            tier="large",
            price_in_per_1k_micros=2_000,
            price_out_per_1k_micros=8_000,
            max_context=100_000,
        ),
        SimulatedProvider(clock=SystemClock(), latency_ms=(20.0, 60.0), respond=scripted_model),
    )

    scout = tf.Workflow("scout", input=str)

    @scout.agent(tf.Agent(tools=("search", "read"), max_iterations=4))
    async def investigate(ctx: tf.StepContext, input: str) -> str:
        return input

    lead = tf.Workflow("research", input=str)

    @lead.agent(
        tf.Agent(
            system="You are a lead researcher. Delegate sub-questions, then summarise.",
            subagents={"scout": "scout"},
            max_iterations=3,
        )
    )
    async def research(ctx: tf.StepContext, input: str) -> str:
        return input

    engine.register(scout)
    engine.register(lead)
    return engine


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = build_engine(Path(tmp) / "research.db")
        async with engine:
            await engine.tenants.create("oceanlab", tier="enterprise", budget={"run_micros": "$1"})
            handle = await engine.submit(
                "research", tenant="oceanlab", input="How do tides and currents work?"
            )
            result: tf.AgentResult = await handle.result()
            print(f"status={result.status} iterations={result.iterations}")
            print(f"answer: {result.answer}")
            runs = [handle.id] + [
                r.id for r in await engine.list_runs("oceanlab") if r.parent_run_id == handle.id
            ]
            for run_id in runs:
                record = await engine.get_run("oceanlab", run_id)
                label = "lead " if record.parent_run_id is None else "scout"
                print(f"\n{label} {run_id} ({record.status.value})")
                for event in await engine.timeline("oceanlab", run_id):
                    if event.kind == "agent.iteration":
                        d = event.data
                        tools = ", ".join(d["tools"]) or "-"
                        print(
                            f"  {event.step:<16} tools: {tools:<32} tokens"
                            f" {d['tokens_in']}+{d['tokens_out']}  next: {d['next']}"
                        )
            ledger = next(
                row
                for row in await engine.budget("oceanlab")
                if row["scope"] == f"run:{handle.id}" and row["unit"] == "micros"
            )
            print(f"\nspent by the lead and its scouts: ${int(ledger['spent']) / 1e6:.4f} of $1")


if __name__ == "__main__":
    asyncio.run(main())
