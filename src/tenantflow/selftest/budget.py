"""Budget race: many steps reserve against one small budget at the same instant.

For each repeat a fresh tenant gets a period budget of $1.00 and enough caps and slots for all
its steps to run at once; it submits ``budget_steps`` one-step runs. Every step waits at a
barrier until all of them are executing, then calls a priced tool ($0.03 a call) — so the
reservations race — and a seeded share of the calls fail after reserving (their hold must be
released). A call the budget refuses takes the tenant's degradation ladder, which for a required
step is a pause: its run is counted refused once every step has finished, then cancelled.
From the tenant's ledgers and usage afterwards: spent never exceeds the limit
(overspend exactly $0), nothing stays reserved (no leaked hold), the money spent is exactly the
price of the calls that succeeded, and the budget was really contended (some calls refused).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import tenantflow as tf
from tenantflow.domain.policy import Budget
from tenantflow.observability.events import Observer, StepFinished
from tenantflow.selftest.core import Context, Row

__all__ = ["run_budget_race"]

LIMIT_MICROS = 1_000_000
PRICE_USD = 0.03
PRICE_MICROS = 30_000
FAILING = 0.1  # share of tool calls that fail after their reservation


class _Barrier:
    """Releases everyone once ``n`` have arrived (or after a timeout, counted)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.arrived = 0
        self.open = asyncio.Event()

    async def wait(self) -> bool:
        self.arrived += 1
        if self.arrived >= self.n:
            self.open.set()
        try:
            await asyncio.wait_for(self.open.wait(), 10.0)
        except TimeoutError:
            return False
        return True


class _StepsDone(Observer):
    """Sets a tenant's event once ``n`` of its step attempts have ended (paid, failed, paused)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.ended: Counter[str] = Counter()
        self.done: dict[str, asyncio.Event] = {}

    def on_step_finished(self, event: StepFinished) -> None:
        self.ended[event.tenant_id] += 1
        if self.ended[event.tenant_id] >= self.n and event.tenant_id in self.done:
            self.done[event.tenant_id].set()


class ToolFailed(Exception):
    """The priced tool failed after its call was reserved (injected)."""


def run_budget_race(ctx: Context, row: Row, directory: Path) -> None:
    """The scenario (see the module docstring)."""
    asyncio.run(_race(ctx, row, directory))


async def _race(ctx: Context, row: Row, directory: Path) -> None:
    profile = ctx.profile
    n = profile.budget_steps
    rng = ctx.rng("budget")
    barriers: dict[str, _Barrier] = {}
    late_runs: set[str] = set()
    finished = _StepsDone(n)
    url = f"sqlite:///{directory / 'budget.db'}?synchronous=normal"
    async with tf.Engine.open(url, slots=max(64, n), seed=ctx.seed) as engine:

        @engine.tools.register(name="paid", cost_usd=PRICE_USD)
        async def paid(fail: bool) -> str:
            await asyncio.sleep(0.001)
            if fail:
                raise ToolFailed("the tool failed after the call was reserved")
            return "ok"

        wf = tf.Workflow("spend", input=bool)

        @wf.step(retry=tf.Retry(max_attempts=1))
        async def spend(ctx: tf.StepContext, input: bool) -> str:
            if not await barriers[ctx.tenant_id].wait():
                late_runs.add(ctx.run_id)
            try:
                await ctx.tool("paid", fail=input)  # refused: the run pauses (the ladder)
            except ToolFailed:
                return "failed"
            return "paid"

        engine.register(wf)
        engine.observers.append(finished)
        outcomes: dict[str, int] = {}
        late = 0
        for repeat in range(profile.budget_repeats):
            tenant = f"race-{repeat}"
            await engine.tenants.create(
                tenant,
                tier="enterprise",
                budget=Budget(period_micros=LIMIT_MICROS, run_micros=None),
                max_active_runs=n,
                max_running_steps=n,
                guaranteed_slots=0,
                burst_slots=0,
            )
            barriers[tenant] = _Barrier(n)
            finished.done[tenant] = asyncio.Event()
            handles = [
                await engine.submit("spend", tenant=tenant, input=rng.random() < FAILING)
                for _ in range(n)
            ]
            await asyncio.wait_for(finished.done[tenant].wait(), 60.0)
            results = [await _outcome(engine, tenant, h, late_runs) for h in handles]
            counts = {r: results.count(r) for r in set(results)}
            late += counts.get("refused-late", 0)
            for k, v in counts.items():
                outcomes[k] = outcomes.get(k, 0) + v
            await _check(engine, row, tenant, counts, repeat)
        row.runs = profile.budget_repeats * n
        row.fault("tool failures", outcomes.get("failed", 0))
        row.check(late == 0, f"{late} steps did not reach the barrier together: no race")
        row.check(outcomes.get("refused", 0) > 0, "no reservation was refused: no contention")
        row.note(
            f"{profile.budget_repeats} × {n} steps at once against $1.00, $0.03 a call,"
            f" {FAILING:.0%} failing after reserving: {outcomes.get('paid', 0)} paid,"
            f" {outcomes.get('failed', 0)} failed, {outcomes.get('refused', 0)} refused"
        )


async def _outcome(
    engine: tf.Engine, tenant: str, handle: tf.RunHandle, late_runs: set[str]
) -> str:
    """``paid`` or ``failed`` (the step's result), or ``refused`` for a run the budget paused
    (``refused-late`` if its step missed the barrier), which is then cancelled."""
    if await handle.status() == tf.RunStatus.PAUSED:
        await engine.cancel(tenant, handle.id)
        return "refused-late" if handle.id in late_runs else "refused"
    result: str = await handle.result()
    return result


async def _check(
    engine: tf.Engine, row: Row, tenant: str, counts: dict[str, int], repeat: int
) -> None:
    ledgers = await engine.budget(tenant)
    period = [x for x in ledgers if x["scope"] == "period" and x["unit"] == "micros"]
    spent = sum(int(x["spent"]) for x in period)
    reserved = sum(int(x["reserved"]) for x in ledgers if x["unit"] == "micros")
    overspend = max(0, spent - LIMIT_MICROS)
    row.overspend_micros = (row.overspend_micros or 0) + overspend
    usage = await engine.usage(tenant)
    charged = sum(int(u["value"]) for u in usage if u["metric"] == "cost_micros")
    paid = counts.get("paid", 0)
    where = f"repeat {repeat + 1}"
    row.check(reserved == 0, f"{where}: {reserved} micro-dollars still reserved (a leaked hold)")
    row.check(
        spent == paid * PRICE_MICROS == charged,
        f"{where}: spent {spent}, {paid} calls paid at {PRICE_MICROS}, usage says {charged}",
    )
    row.check(
        paid <= LIMIT_MICROS // PRICE_MICROS,
        f"{where}: {paid} calls paid, more than $1.00 covers",
    )
