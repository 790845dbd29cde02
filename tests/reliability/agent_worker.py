"""A worker process for the agent kill test (``test_agent_kill.py``); run it as a script.

    python agent_worker.py --db DB --exec-log LOG

It opens ``sqlite:///DB``, submits three agent runs (idempotency keys make resubmission after a
kill safe), and waits until they have ended. The agent's model asks for ``PER_TURN`` lookups a
turn until it has seen ``LOOKUPS`` results, then answers. Every lookup appends ``S <pid> <query>``
to the executions log when it starts and ``E <pid> <query>`` when done, flushed at once, so a
SIGKILL loses nothing already written.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import timedelta
from typing import IO

from pydantic import BaseModel

import tenantflow as tf
from tenantflow.adapters.clock import SystemClock
from tenantflow.adapters.providers import SimulatedProvider
from tenantflow.domain.routing import Endpoint

LOOKUPS = 12
PER_TURN = 3
RUNS = ("alpha", "beta", "gamma")
AGENT = tf.Agent(tools=("lookup",), max_iterations=LOOKUPS // PER_TURN + 2)


class Lookup(BaseModel):
    query: str


def respond(request: tf.ModelRequest) -> tf.ModelResponse:
    seen = sum(1 for m in request.messages if m.get("role") == "tool")
    task = next(str(m["content"]) for m in request.messages if m.get("role") == "user")
    if seen < LOOKUPS:  # PER_TURN lookups a turn, so kills also land between recorded calls
        calls = tuple(
            tf.ToolCall(f"c{i}", "lookup", {"query": f"{task}-{i}"})
            for i in range(seen, seen + PER_TURN)
        )
        return tf.ModelResponse(
            text="", tokens_in=5, tokens_out=5, model=request.model, tool_calls=calls
        )
    return tf.ModelResponse(text=f"{task}: done", tokens_in=5, tokens_out=5, model=request.model)


def workflow() -> tf.Workflow:
    wf = tf.Workflow("digger", input=str)

    @wf.agent(AGENT)
    async def dig(ctx: tf.StepContext, input: str) -> str:
        return input

    return wf


async def main(db: str, log_path: str) -> int:
    log: IO[str] = open(log_path, "a", encoding="utf-8")  # noqa: SIM115, ASYNC230 - lives with the process
    pid = os.getpid()

    def line(text: str) -> None:
        log.write(f"{text}\n")
        log.flush()

    engine = tf.Engine.open(
        f"sqlite:///{db}", slots=4, seed=1, auto_tenant="enterprise", lease=timedelta(seconds=1)
    )

    @engine.tools.register(input=Lookup)
    async def lookup(query: str) -> str:
        line(f"S {pid} {query}")
        await asyncio.sleep(0.05)
        line(f"E {pid} {query}")
        return f"result:{query}"

    sim = SimulatedProvider(clock=SystemClock(), latency_ms=(5.0, 20.0), respond=respond)
    engine.models.add(
        Endpoint(
            name="sim",
            provider="sim",
            model="sim",
            region="us-east-1",
            tier="large",
            price_in_per_1k_micros=0,
            price_out_per_1k_micros=1000,
            max_context=100_000,
        ),
        sim,
    )
    engine.register(workflow())  # before start: recovery resumes unfinished runs at once
    async with engine:
        handles = [
            await engine.submit("digger", tenant="acme", input=name, idempotency_key=name)
            for name in RUNS
        ]
        line(f"R {pid} ready")
        records = [await h.wait() for h in handles]
    return 0 if all(r.status == tf.RunStatus.COMPLETED for r in records) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--exec-log", required=True)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.db, args.exec_log)))
