"""What step code can reach from its context, and where the platform's ledgers live.

On the in-memory store with a fake clock: the outcome of each attempt is awaited through the
engine's observers, never by sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.domain.memory import PutMemory
from tenantflow.domain.records import NewEvent, Transition
from tenantflow.domain.tenancy import AcquireRate, AuditEntry, ReleaseHolds, Settle
from tenantflow.observability.events import Observer, StepFinished
from tenantflow.testing import FakeClock, MemoryStore


class Finished(Observer):
    """An observer: the outcome of every attempt, and an event once ``n`` attempts ended."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.outcomes: list[tuple[str, str]] = []
        self.done = asyncio.Event()

    def on_step_finished(self, event: StepFinished) -> None:
        self.outcomes.append((event.tenant_id, event.outcome))
        if len(self.outcomes) >= self.n:
            self.done.set()


# -- the context exposes nothing that writes ---------------------------------------------------

PUBLIC = {
    "attempt",
    "budget_scope",
    "call_identity",
    "circuit",
    "delegate",
    "idempotency_key",
    "log",
    "memory",
    "model",
    "now",
    "policy",
    "run_id",
    "step",
    "tenant_id",
    "tool",
    "wait_for_signal",  # writes only its own run's records, through the attempt's scope
    "workflow",
}


def forged(victim: str, run_id: str) -> list[tuple[str, Callable[[Any], Any]]]:
    """Ops naming another tenant (or another run of the same tenant), one per kind."""
    return [
        ("transition", lambda now: Transition(victim, "run_x", now, events=[NewEvent("x")])),
        ("audit", lambda now: Transition(victim, "", now, audit=[AuditEntry("a", "b", "c")])),
        ("memory", lambda now: PutMemory(victim, "default", "k", "1", now, None)),
        ("rate", lambda now: AcquireRate(victim, "tool:x", now, 1.0, 1)),
        ("settle", lambda now: Settle(victim, "k", {}, now, [])),
        ("holds", lambda now: ReleaseHolds(victim, "", now)),
        ("other run", lambda now: Transition("mallory", "run_other", now)),
    ]


async def test_step_code_cannot_write_for_another_tenant_through_its_context() -> None:
    clock = FakeClock()
    refused: dict[str, str] = {}
    reached: list[str] = []
    async with tf.Engine(MemoryStore(), clock=clock) as engine:
        await engine.tenants.create("mallory", tier="standard")
        await engine.tenants.create("victim", tier="standard")
        wf = tf.Workflow("forge")

        @wf.step
        async def forge(ctx: tf.StepContext) -> list[str]:
            public = {n for n in dir(ctx) if not n.startswith("_")}
            assert public == PUBLIC, public ^ PUBLIC
            for name in ("write", "runtime", "store", "writer", "notes", "scope"):
                if hasattr(ctx, name):
                    reached.append(name)
            await ctx.memory.put("mine", 1)  # the run's own tenant: allowed
            # The engine-side seam is private; even through it, a forged op fails closed.
            scope = ctx._StepContext__scope  # type: ignore[attr-defined]
            writers = {"scope": scope.write, "memory": ctx.memory._binding.write}
            for via, write in writers.items():
                for kind, make in forged("victim", ctx.run_id):
                    try:
                        await write(make(clock.now()))
                    except tf.NotAllowedError as exc:
                        refused[f"{via}:{kind}"] = exc.code
            return sorted(public)

        engine.register(wf)
        run = await engine.submit("forge", tenant="mallory", input=None)
        assert (await run.wait()).status == tf.RunStatus.COMPLETED
        assert reached == []
        kinds = [k for k, _ in forged("victim", "")]
        assert set(refused) == {f"{via}:{k}" for via in ("scope", "memory") for k in kinds}
        store = engine.store
        assert await store.list_runs("victim") == []
        assert [r.action for r in await store.audit_log("victim")] == ["tenant.created"]
        assert await store.ledgers("victim") == []
        with pytest.raises(tf.NotFoundError):
            await engine.memory.get("victim", "k")
        assert (await engine.memory.get("mallory", "mine")) is not None
        assert not [e for e in await store.events("mallory", run.id) if e.kind == "x"]


# -- the platform's rate buckets live in one store ---------------------------------------------


@pytest.mark.parametrize("regions", [False, True])
async def test_a_platform_limit_holds_across_region_stores(regions: bool) -> None:
    """Two calls per hour for the whole platform: with a tenant in each of two region stores,
    still two calls in all (each region's store kept a bucket of its own before)."""
    clock = FakeClock()
    eu = MemoryStore()
    finished = Finished(4)
    engine = tf.Engine(
        MemoryStore(),
        tf.EngineConfig(
            region="us-east-1", platform_limits={"tool:bureau": {"rate": "2/hour", "burst": 2}}
        ),
        clock=clock,
        regions={"eu-west-1": eu} if regions else None,
    )
    engine.observers.append(finished)
    async with engine:

        @engine.tools.register(name="bureau")
        async def bureau() -> int:
            return 1

        wf = tf.Workflow("pull")

        @wf.step
        async def pull(ctx: tf.StepContext) -> int:
            return int(await ctx.tool("bureau"))

        engine.register(wf)
        await engine.tenants.create("us-bank", tier="standard")
        eu_region = "eu-west-1" if regions else "us-east-1"
        await engine.tenants.create("eu-bank", tier="standard", region=eu_region)
        runs = [
            (tenant, await engine.submit("pull", tenant=tenant, input=None))
            for tenant in ("us-bank", "eu-bank", "us-bank", "eu-bank")
        ]
        await asyncio.wait_for(finished.done.wait(), timeout=30)
        outcomes = sorted(o for _, o in finished.outcomes)
        assert outcomes == ["rate_limited", "rate_limited", "succeeded", "succeeded"]
        for tenant, run in runs:
            if await run.status() != tf.RunStatus.COMPLETED:
                await engine.cancel(tenant, run.id)
