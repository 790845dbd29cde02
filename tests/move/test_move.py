"""A busy tenant moved live from the shared pool (PostgreSQL) to a cell (SQLite) and back:
no run lost, none completed twice, the audit chain verifiable after each move, the move in the
timeline and the audit log, the other tenants of the source untouched."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest

import tenantflow as tf
from tenantflow.adapters.tenant_transfer import tenant_rows
from tenantflow.errors import ConfigurationError, ConflictError, NotFoundError, TenantMovedError
from tenantflow.placement.move import move_tenant, moved_to

pytestmark = pytest.mark.timeout(120)

BUSY = 200  # runs in flight when each move starts
CAP = 8  # the busy tenant's running-step cap: the rest of its runs wait in the queue
WAIT = timedelta(seconds=60)


class Steps:
    """A three-step workflow whose middle step, for the busy tenant, waits at a gate the test
    opens; every entry and every completion of a step is counted per run."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.entered: Counter[str] = Counter()
        self.done: Counter[str] = Counter()

    def workflow(self) -> tf.Workflow:
        wf = tf.Workflow("three", input=int)

        @wf.step
        async def first(ctx: tf.StepContext, input: int) -> int:
            await ctx.tool("charge", amount=input)  # priced: the tenant's ledgers move with it
            self.done[f"{ctx.run_id}:first"] += 1
            return input + 1

        @wf.step
        async def second(ctx: tf.StepContext, first: int) -> int:
            self.entered[f"{ctx.run_id}:second"] += 1
            if ctx.tenant_id == "busy":
                await self.gate.wait()
            self.done[f"{ctx.run_id}:second"] += 1
            return first * 2

        @wf.step
        async def third(ctx: tf.StepContext, second: int) -> int:
            self.done[f"{ctx.run_id}:third"] += 1
            return second + 1

        return wf

    def waiting(self) -> int:
        """Attempts of ``second`` inside the gate now."""
        return sum(self.entered.values()) - sum(
            n for k, n in self.done.items() if k.endswith(":second")
        )


PRICE_MICROS = 10_000  # a cent a call


def _add_tool(engine: tf.Engine) -> None:
    @engine.tools.register(cost_usd=PRICE_MICROS / 1_000_000)
    async def charge(amount: int) -> int:
        return amount


async def until(predicate: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def engines(
    postgres_url: str, tmp_path: Path
) -> AsyncIterator[tuple[tf.Engine, tf.Engine, Steps]]:
    steps = Steps()
    shared = tf.Engine.open(postgres_url, slots=16)
    cell = tf.Engine.open(f"sqlite:///{tmp_path / 'cell-busy.db'}", slots=16)
    for engine in (shared, cell):
        engine.register(steps.workflow())
        _add_tool(engine)
    async with shared, cell:
        yield shared, cell, steps


async def _submit_busy(engine: tf.Engine, steps: Steps) -> list[str]:
    """BUSY runs of the busy tenant, caught in flight: CAP of them inside the gate, the others
    queued behind the cap with ``first`` done or not yet run."""
    ids = [(await engine.submit("three", tenant="busy", input=i)).id for i in range(BUSY)]
    await until(lambda: steps.waiting() == CAP)
    return ids


async def _check_landed(engine: tf.Engine, ids: list[str], steps: Steps) -> None:
    for run_id in ids:
        record = await engine.wait("busy", run_id, WAIT)
        assert record.status == tf.RunStatus.COMPLETED, record
        assert engine.decode_result(record) == (int(record.input_json) + 1) * 2 + 1
    # No step of any run completed twice (nor was lost).
    for run_id in ids:
        for step in ("first", "second", "third"):
            assert steps.done[f"{run_id}:{step}"] == 1, (run_id, step)


@pytest.mark.postgres
async def test_a_busy_tenant_moves_to_a_cell_and_back_without_losing_or_repeating_a_run(
    engines: tuple[tf.Engine, tf.Engine, Steps],
) -> None:
    shared, cell, steps = engines
    await shared.tenants.create("busy", tier="enterprise", max_active_runs=BUSY + 50)
    await shared.tenants.update("busy", max_running_steps=CAP, guaranteed_slots=0, burst_slots=0)
    await shared.tenants.create("quiet", tier="standard")
    quiet = [(await shared.submit("three", tenant="quiet", input=i)).id for i in range(5)]
    first_leg = await _submit_busy(shared, steps)

    # -- to the cell: the attempts inside the gate finish at the source ----------------------
    move = asyncio.create_task(
        move_tenant(shared, cell, "busy", location="cell:busy", actor="admin:test")
    )
    await until(lambda: moved_to(shared, "busy") is not None)
    with pytest.raises(TenantMovedError) as refused:
        await shared.submit("three", tenant="busy", input=0)
    assert refused.value.fields["state"] == "moving" and refused.value.location == "cell:busy"
    steps.gate.set()  # the CAP attempts in the gate complete at the source; none starts there
    report = await move
    assert report.in_flight == BUSY and report.runs == BUSY
    assert report.drained and report.stopped == 0
    assert set(report.left.values()) == {0}
    assert report.rows["runs"] == BUSY and report.rows["state_versions"] > BUSY
    await _check_landed(cell, first_leg, steps)
    assert sum(steps.entered[f"{r}:second"] for r in first_leg) == BUSY  # none re-executed

    # The source keeps nothing of the tenant and sends its callers to the cell.
    assert set((await tenant_rows(shared.store, "busy")).values()) == {0}
    with pytest.raises(TenantMovedError) as gone:
        await shared.submit("three", tenant="busy", input=0)
    assert gone.value.fields["state"] == "moved" and gone.value.location == "cell:busy"
    with pytest.raises(NotFoundError):
        await shared.tenants.get("busy")
    # The other tenant of the pool is untouched and done.
    for run_id in quiet:
        assert (await shared.wait("quiet", run_id, WAIT)).status == tf.RunStatus.COMPLETED
    assert len(await shared.store.list_runs("quiet", limit=100)) == len(quiet)

    # The audit chain came along, verifies, and records the move; the timeline shows it.
    verified = await cell.audit_verify("busy")
    assert verified.ok, verified
    actions = [r.action for r in await cell.audit_log("busy")]
    assert actions[0] == "tenant.created" and actions[-2:] == ["tenant.moving", "tenant.moved"]
    kinds = [e.kind for e in await cell.timeline("busy", first_leg[-1])]
    assert "run.moved" in kinds and kinds[-1] == "run.completed"
    assert (await cell.tenants.get("busy")).policy.max_running_steps == CAP  # policy moved

    # -- and back to the pool, this time stopping the attempts inside the gate ----------------
    steps.gate.clear()
    second_leg = await _submit_busy(cell, steps)
    report = await move_tenant(cell, shared, "busy", location="shared", drain_timeout=timedelta(0))
    assert report.in_flight == BUSY and report.runs == 2 * BUSY
    assert not report.drained and report.stopped == CAP  # stopped, not completed, at the cell
    assert set(report.left.values()) == {0}
    steps.gate.set()
    await _check_landed(shared, second_leg, steps)
    await _check_landed(shared, first_leg, steps)  # finished runs moved back, unchanged
    # The stopped attempts ran again at the source (step code is at-least-once), completed once.
    again = [r for r in second_leg if steps.entered[f"{r}:second"] == 2]
    assert len(again) == CAP
    assert set((await tenant_rows(cell.store, "busy")).values()) == {0}
    with pytest.raises(TenantMovedError):
        await cell.submit("three", tenant="busy", input=0)
    verified = await shared.audit_verify("busy")
    assert verified.ok, verified
    actions = [r.action for r in await shared.audit_log("busy")]
    assert actions.count("tenant.moving") == 2 and actions[-1] == "tenant.moved"
    # The budget ledgers came along both ways: every run's one priced call is counted once, in
    # its run's ledger and in the tenant's period ledger.
    ledgers = {row["scope"]: row for row in await shared.budget("busy")}
    assert ledgers["period"]["spent"] == 2 * BUSY * PRICE_MICROS
    assert ledgers["period"]["reserved"] == 0
    runs = [row for scope, row in ledgers.items() if scope.startswith("run:")]
    assert len(runs) == 2 * BUSY and {row["spent"] for row in runs} == {PRICE_MICROS}
    # The pool takes the tenant's new runs again.
    again_run = await shared.submit("three", tenant="busy", input=5)
    assert await again_run.result(WAIT) == 13


async def test_bad_moves_are_refused_and_write_nothing(tmp_path: Path) -> None:
    steps = Steps()
    steps.gate.set()
    a = tf.Engine.open(f"sqlite:///{tmp_path / 'a.db'}")
    b = tf.Engine.open(f"sqlite:///{tmp_path / 'b.db'}")
    for engine in (a, b):
        engine.register(steps.workflow())
        _add_tool(engine)
    async with a, b:
        await a.tenants.create("acme", tier="standard")
        await b.tenants.create("both", tier="standard")
        await a.tenants.create("both", tier="standard")
        before = {
            (name, t): await tenant_rows(e.store, t)
            for name, e in (("a", a), ("b", b))
            for t in ("acme", "both", "ghost")
        }
        with pytest.raises(NotFoundError):
            await move_tenant(a, b, "ghost")
        with pytest.raises(ConfigurationError, match="same store"):
            await move_tenant(a, a, "acme")
        with pytest.raises(ConflictError, match="already at the target"):
            await move_tenant(a, b, "both")
        with pytest.raises(ConfigurationError):
            await move_tenant(a, b, "not a tenant id!")
        after = {
            (name, t): await tenant_rows(e.store, t)
            for name, e in (("a", a), ("b", b))
            for t in ("acme", "both", "ghost")
        }
        assert after == before
        assert moved_to(a, "acme") is None and moved_to(a, "both") is None
        run = await a.submit("three", tenant="acme", input=1)  # still served at the source
        assert await run.result(WAIT) == 5


async def test_a_move_whose_source_changed_during_the_copy_is_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tenantflow.placement.move as move_module

    steps = Steps()
    a = tf.Engine.open(f"sqlite:///{tmp_path / 'a.db'}")
    b = tf.Engine.open(f"sqlite:///{tmp_path / 'b.db'}")
    for engine in (a, b):
        engine.register(steps.workflow())
        _add_tool(engine)
    real_purge = move_module.purge_tenant

    async def purge_after_a_write(store: object, tenant: str, *, expect: str) -> object:
        # Something writes the tenant's rows at the source after the copy was taken.
        await a.memory.put(tenant, "late", {"written": "after the copy"})
        return await real_purge(store, tenant, expect=expect)  # type: ignore[arg-type]

    monkeypatch.setattr(move_module, "purge_tenant", purge_after_a_write)
    async with a, b:
        await a.tenants.create("busy", tier="standard")
        ids = [(await a.submit("three", tenant="busy", input=i)).id for i in range(10)]
        await until(lambda: steps.waiting() > 0)
        with pytest.raises(ConflictError, match="changed in the source store"):
            await move_tenant(a, b, "busy", drain_timeout=timedelta(0))
        # Undone: nothing at the target, the source serves the tenant and its runs again.
        assert set((await tenant_rows(b.store, "busy")).values()) == {0}
        assert b.tenants.cached("busy") is None and moved_to(a, "busy") is None
        steps.gate.set()
        for run_id in ids:
            assert (await a.wait("busy", run_id, WAIT)).status == tf.RunStatus.COMPLETED
        assert all(steps.done[f"{r}:third"] == 1 for r in ids)
        actions = [r.action for r in await a.audit_log("busy")]
        assert actions[-2:] == ["tenant.moving", "tenant.move_aborted"]
        assert (await a.audit_verify("busy")).ok


def review_workflow() -> tf.Workflow:
    wf = tf.Workflow("approve", input=str)

    @wf.review(pool="credit", sla=timedelta(hours=1))
    async def check(ctx: tf.StepContext, input: str) -> dict[str, str]:
        await ctx.memory.put(f"asked:{input}", {"applicant": input})
        return {"applicant": input}

    @wf.step
    async def decide(ctx: tf.StepContext, check: tf.ReviewDecision) -> str:
        return "approved" if check.approved else "rejected"

    return wf


async def test_runs_waiting_for_a_review_move_and_are_decided_at_the_target(
    tmp_path: Path,
) -> None:
    a = tf.Engine.open(f"sqlite:///{tmp_path / 'a.db'}")
    b = tf.Engine.open(f"sqlite:///{tmp_path / 'b.db'}")
    for engine in (a, b):
        engine.register(review_workflow())
    async with a, b:
        await a.tenants.create("bank", tier="standard")
        key, secret = await a.keys.create("bank", name="ops")
        runs = [await a.submit("approve", tenant="bank", input=f"app-{i}") for i in range(3)]

        async def pending() -> int:
            return len(await a.reviews.list("bank"))

        for _ in range(500):
            if await pending() == len(runs):
                break
            await asyncio.sleep(0.01)
        assert await pending() == len(runs)
        report = await move_tenant(a, b, "bank")
        # A step waiting for a person holds no attempt: nothing to wait for, nothing stopped.
        assert report.drained and report.stopped == 0 and report.in_flight == len(runs)
        assert report.rows["reviews"] == len(runs) and report.rows["memory_entries"] == len(runs)
        assert report.api_keys == [key.id]  # the key moved with the tenant
        assert [k.id for k in await b.keys.list("bank")] == [key.id]
        assert (await b.keys.authenticate(secret)).tenant_id == "bank"  # it works there
        reviews = await b.reviews.list("bank")
        assert len(reviews) == len(runs)
        for n, review in enumerate(sorted(reviews, key=lambda r: r.run_id)):
            await b.reviews.decide("bank", review.id, reviewer="ann", approve=n % 2 == 0)
        results = sorted([await b.run("bank", r.id).result(WAIT) for r in runs])
        assert results == ["approved", "approved", "rejected"]
        entry = await b.memory.get("bank", "asked:app-0")
        assert entry.value == {"applicant": "app-0"}


async def test_the_move_in_four_calls_with_the_copy_on_its_own_store_handles(
    tmp_path: Path,
) -> None:
    # As a plane would wire it when the engines are processes of their own: the source
    # releases, a third party copies between the two stores (opened beside the engines that
    # execute from them), the source finishes and the target adopts.
    from tenantflow.adapters import open_store
    from tenantflow.placement.move import adopt_tenant, copy_tenant, finish_release, release_tenant

    steps = Steps()
    urls = f"sqlite:///{tmp_path / 'pool.db'}", f"sqlite:///{tmp_path / 'cell.db'}"
    a, b = tf.Engine.open(urls[0]), tf.Engine.open(urls[1])
    for engine in (a, b):
        engine.register(steps.workflow())
        _add_tool(engine)
    async with a, b:
        await a.tenants.create("busy", tier="standard")
        ids = [(await a.submit("three", tenant="busy", input=i)).id for i in range(20)]
        await until(lambda: steps.waiting() > 0)
        steps.gate.set()
        released = await release_tenant(a, "busy", location="cell:busy")
        assert released.drained
        source, target = open_store(urls[0]), open_store(urls[1])
        await source.open(execute=False)
        await target.open(execute=False)
        try:
            copied = await copy_tenant(
                source,
                target,
                "busy",
                actor="plane",
                location="cell:busy",
                source_now=1.0,
                target_now=2.0,
            )
        finally:
            await source.close()
            await target.close()
        await finish_release(a, "busy")
        await adopt_tenant(b, "busy")
        report = copied.report(released)
        assert report.runs == 20 and set(report.left.values()) == {0}
        for run_id in ids:
            assert (await b.wait("busy", run_id, WAIT)).status == tf.RunStatus.COMPLETED
            assert steps.done[f"{run_id}:third"] == 1 and steps.done[f"{run_id}:second"] == 1
        assert (await b.audit_verify("busy")).ok
        assert moved_to(a, "busy") is not None and moved_to(b, "busy") is None
        with pytest.raises(NotFoundError):
            await adopt_tenant(a, "busy")  # nothing of it left there to adopt
        assert moved_to(a, "busy") is not None  # and the marker stays
