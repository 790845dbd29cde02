"""The loan workflow on two drivers: the embedded engine, and the broker-shaped driver on an
in-memory bus (no dispatcher, no run kept in memory between deliveries). Both run the same
executor, decider and gateway, so budgets, rate limits, residency, state versions and audit
must come out the same.

Fake clock and in-memory stores throughout; every wait is on fake time. The stores run their
statements on the event loop's thread (``InlineStore``), so fake time cannot run ahead while a
statement waits for the store's thread: every timing, and so every outcome, is reproducible.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import pytest

import tenantflow as tf
from tenantflow.domain.models import ModelRequest, ModelResponse
from tenantflow.engine.execution.broker import BrokerDriver
from tenantflow.examples.loan_platform.platform import (
    BUREAU_PLATFORM_LIMIT,
    ENDPOINTS,
    register_tools,
)
from tenantflow.examples.loan_platform.workflow import Application, loan
from tenantflow.ports import Store
from tenantflow.testing import FakeClock, LoopbackBus, MemoryStore

T = TypeVar("T")


class InlineStore(MemoryStore):
    """The in-memory store, each statement run on the event loop's thread (a test double)."""

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise tf.StoreUnavailableError("the SQLite store is not open")
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            raise tf.StoreError(f"SQLite error: {exc}") from exc


US, EU = "us-east-1", "eu-west-1"
SEED = 11

TENANTS: dict[str, dict[str, Any]] = {
    "regional-bank": {"tier": "enterprise", "region": US},
    "eu-institution": {"tier": "standard", "region": EU, "reviewer_pool": "eu-reviewers"},
    "fintech-startup": {"tier": "free"},  # $0.10 a run: the fraud screen is skipped
    "limited": {  # one bureau call every two minutes: the second application waits
        "tier": "standard",
        "rate_limits": {"tool:credit_bureau": {"rate": "30/hour", "burst": 1}},
    },
}

APPLICATIONS = [
    ("regional-bank", "ada", 20_000.0),
    ("eu-institution", "grace", 15_000.0),
    ("fintech-startup", "alan", 5_000.0),
    ("limited", "edsger", 10_000.0),
    ("limited", "barbara", 12_000.0),
]


def application(n: int, applicant: str, amount: float) -> Application:
    return Application(
        application_id=f"app-{n}", applicant=applicant, amount=amount, income=60_000.0
    )


class ContentProvider:
    """A model whose reply depends on the request's content only, not on its idempotency key
    (which names the run): runs on two drivers get the same answers, tokens and costs."""

    def __init__(self, name: str, clock: FakeClock, latency_s: float) -> None:
        self.name = name
        self.clock = clock
        self.latency_s = latency_s

    async def complete(self, request: ModelRequest) -> ModelResponse:
        await self.clock.sleep(self.latency_s)
        prompt = " ".join(str(m.get("content") or "") for m in request.messages)
        words = len(prompt.split())
        return ModelResponse(
            text=f"assessed {words} words, no concerns",
            tokens_in=max(1, len(prompt) // 4),
            tokens_out=request.max_tokens * 3 // 5,
            model=request.model,
        )

    async def close(self) -> None:
        return None


def platform(clock: FakeClock, us: Store, eu: Store) -> tf.Engine:
    engine = tf.Engine(
        us,
        tf.EngineConfig(
            region=US,
            slots=4,
            seed=SEED,
            platform_limits={"tool:credit_bureau": BUREAU_PLATFORM_LIMIT},
            lease=timedelta(minutes=10),
        ),
        regions={EU: eu},
        clock=clock,
    )
    engine.register(loan)
    register_tools(engine, clock, SEED)
    for endpoint, (median_ms, _) in ENDPOINTS:
        engine.models.add(endpoint, ContentProvider(endpoint.name, clock, median_ms / 1000))
    return engine


async def create_tenants(engine: tf.Engine) -> None:
    for tenant, policy in TENANTS.items():
        await engine.tenants.create(tenant, **policy)


Submit = Callable[[str, Application], Awaitable[str]]
Wait = Callable[[str, str], Awaitable[tf.RunRecord]]


async def apply_all(clock: FakeClock, submit: Submit, wait: Wait) -> list[tuple[str, str]]:
    """Submit the applications one after another, each waited for before the next."""
    runs = []
    for n, (tenant, applicant, amount) in enumerate(APPLICATIONS):
        run_id = await submit(tenant, application(n, applicant, amount))
        record = await clock.drive(wait(tenant, run_id), step_s=0.25, limit_s=900.0)
        assert record.status == tf.RunStatus.COMPLETED, (tenant, record.error)
        runs.append((tenant, run_id))
    return runs


async def embedded() -> dict[str, Any]:
    clock, us, eu = FakeClock(), InlineStore(), InlineStore()
    async with platform(clock, us, eu) as engine:
        await create_tenants(engine)

        async def submit(tenant: str, app: Application) -> str:
            return (await engine.submit("loan-approval", tenant=tenant, input=app)).id

        async def wait(tenant: str, run_id: str) -> tf.RunRecord:
            return await engine.wait(tenant, run_id)

        runs = await apply_all(clock, submit, wait)
        return await fingerprint({US: us, EU: eu}, runs)


def broker_driver(
    control: tf.Engine, clock: FakeClock, us: Store, eu: Store, bus: LoopbackBus
) -> BrokerDriver:
    """The broker-shaped driver of the loan platform over the two regions' stores."""
    return BrokerDriver(
        {US: us, EU: eu},
        home=US,
        bus=bus,
        clock=clock,
        gateway=control.gateway,
        workflows=[loan.spec],
        seed=SEED,
        lease_s=600.0,
    )


async def brokered() -> tuple[dict[str, Any], LoopbackBus]:
    clock, us, eu = FakeClock(), InlineStore(), InlineStore()
    # The control plane: it records the tenants and owns the stores, and drives nothing here.
    async with platform(clock, us, eu) as control:
        await create_tenants(control)
        bus = LoopbackBus(clock, ack_wait_s=30.0)
        driver = broker_driver(control, clock, us, eu, bus)
        async with driver:

            async def submit(tenant: str, app: Application) -> str:
                return await driver.submit(tenant, "loan-approval", app)

            runs = await apply_all(clock, submit, driver.wait)
        await bus.close()
        assert not control.runtime.active and not control.dispatcher.service_s
        return await fingerprint({US: us, EU: eu}, runs), bus


_RUN_ID = re.compile(r"run_[0-9a-f]{24}")
_HOLD = re.compile(r"hold-[^\"]*")
_MEASURED = {"slot_seconds", "rate_limit_wait_s"}  # fake-time measurements, not budgets


def _norm(text: str) -> str:
    return _HOLD.sub("hold-*", _RUN_ID.sub("run", text))


async def fingerprint(stores: dict[str, Store], runs: list[tuple[str, str]]) -> dict[str, Any]:
    """What must not depend on the driver: per run its outcome, where it lives, its state
    versions, events and model-call regions; per tenant its audit, ledgers and usage."""
    out: dict[str, Any] = {"runs": [], "tenants": {}}
    for tenant, run_id in runs:
        where = []
        for region, store in stores.items():
            try:
                await store.get_run(tenant, run_id)
            except tf.NotFoundError:
                continue
            where.append(region)
        [region] = where
        store = stores[region]
        record = await store.get_run(tenant, run_id)
        events = await store.events(tenant, run_id)
        out["runs"].append(
            {
                "tenant": tenant,
                "region": region,
                "status": record.status.value,
                "result": record.result_json,
                "state_version": record.state_version,
                "steps": sorted(
                    (s.key, s.status.value) for s in await store.get_steps(tenant, run_id)
                ),
                "versions": [
                    (v.version, v.step, _norm(v.delta_json.decode()))
                    for v in await store.state_versions(tenant, run_id)
                ],
                "events": [(e.kind, e.step, e.attempt) for e in events],
                "model_regions": [e.data["region"] for e in events if e.kind == "model.call"],
            }
        )
    for tenant in TENANTS:
        store = next(iter(s for r, s in stores.items() if r == TENANTS[tenant].get("region", US)))
        out["tenants"][tenant] = {
            "audit": [
                (_norm(a.actor), a.action, _norm(a.subject)) for a in await store.audit_log(tenant)
            ],
            "ledgers": sorted(
                (_norm(str(row["scope"])), row["unit"], row["spent"], row["reserved"])
                for row in await store.ledgers(tenant)
            ),
            "usage": sorted(
                (u["metric"], u["dim"], u["value"])
                for u in await store.usage(tenant)
                if u["metric"] not in _MEASURED
            ),
        }
    return out


@pytest.fixture(scope="module")
def both() -> tuple[dict[str, Any], dict[str, Any], LoopbackBus]:
    async def run() -> tuple[dict[str, Any], dict[str, Any], LoopbackBus]:
        first = await embedded()
        second, bus = await brokered()
        return first, second, bus

    return asyncio.run(run())


def test_the_loan_workflow_completes_the_same_on_both_drivers(both: Any) -> None:
    embedded_run, brokered_run, _ = both
    for a, b in zip(embedded_run["runs"], brokered_run["runs"], strict=True):
        assert {k: a[k] for k in ("tenant", "status", "result", "steps")} == {
            k: b[k] for k in ("tenant", "status", "result", "steps")
        }


def test_state_versions_and_execution_logs_are_the_same(both: Any) -> None:
    embedded_run, brokered_run, _ = both
    for a, b in zip(embedded_run["runs"], brokered_run["runs"], strict=True):
        assert a["state_version"] == b["state_version"]
        assert a["versions"] == b["versions"]
        assert a["events"] == b["events"]


def test_budgets_rate_limits_and_audit_are_the_same(both: Any) -> None:
    embedded_run, brokered_run, _ = both
    assert embedded_run["tenants"] == brokered_run["tenants"]
    fintech = embedded_run["tenants"]["fintech-startup"]
    assert ("degradations", "skip_optional", 1) in fintech["usage"]  # the budget ladder ran
    limited = embedded_run["tenants"]["limited"]
    assert ("rate_limit_waits", "tool:credit_bureau", 1) in limited["usage"]


def test_residency_is_the_same(both: Any) -> None:
    for runs in (both[0]["runs"], both[1]["runs"]):
        eu = [r for r in runs if r["tenant"] == "eu-institution"]
        assert eu and all(r["region"] == EU for r in eu)
        assert all(set(r["model_regions"]) == {EU} for r in eu)
        assert all(EU not in r["model_regions"] for r in runs if r["tenant"] != "eu-institution")


def test_the_broker_acked_every_delivery(both: Any) -> None:
    bus = both[2]
    assert bus.delivered >= bus.published > 0
    stats = (bus.published, bus.delivered, bus.acked, bus.naked, bus.redelivered)
    assert bus.acked == bus.delivered and bus.redelivered == 0, stats


def test_both_drivers_ran_every_application_to_a_result(both: Any) -> None:
    for runs in (both[0]["runs"], both[1]["runs"]):
        assert len(runs) == len(APPLICATIONS)
        assert all(r["status"] == "completed" and r["result"] for r in runs)


# -- the bus ----------------------------------------------------------------------------------


async def test_the_loopback_bus_acks_naks_and_redelivers_after_the_ack_timeout() -> None:
    clock = FakeClock()
    bus = LoopbackBus(clock, ack_wait_s=10.0)
    bus.publish({"n": 1})
    bus.publish({"n": 2}, delay_s=5.0)
    first = await bus.next()
    assert first is not None and first.data == {"n": 1} and first.deliveries == 1
    assert bus.pending == 0
    clock.advance(5.0)
    await asyncio.sleep(0)
    second = await bus.next()
    assert second is not None and second.data == {"n": 2}
    second.ack()
    first.in_progress()  # the ack timeout starts again at 5 s
    clock.advance(9.0)
    await asyncio.sleep(0)
    assert bus.pending == 0
    clock.advance(1.0)  # 10 s after in_progress, unsettled: delivered again
    await asyncio.sleep(0)
    again = await bus.next()
    assert again is not None and again.data == {"n": 1} and again.deliveries == 2
    first.ack()  # a late ack of the superseded delivery settles nothing
    assert bus.acked == 1
    again.nak(3.0)
    clock.advance(2.0)
    await asyncio.sleep(0)
    assert bus.pending == 0
    clock.advance(1.0)
    await asyncio.sleep(0)
    last = await bus.next()
    assert last is not None and last.deliveries == 3
    last.ack()
    clock.advance(60.0)
    await asyncio.sleep(0)
    assert bus.pending == 0
    assert (bus.published, bus.delivered, bus.acked, bus.naked, bus.redelivered) == (2, 4, 2, 1, 2)
    waiter = asyncio.ensure_future(bus.next())
    await asyncio.sleep(0)
    await bus.close()
    assert await waiter is None


async def test_the_broker_names_runs_by_their_creation_time() -> None:
    clock, us, eu = FakeClock(), InlineStore(), InlineStore()
    async with platform(clock, us, eu) as control:
        await create_tenants(control)
        bus = LoopbackBus(clock, ack_wait_s=30.0)
        driver = broker_driver(control, clock, us, eu, bus)
        async with driver:
            made = []
            for n in range(3):
                app = application(n, "Ada", 5_000)
                made.append(await driver.submit("regional-bank", "loan-approval", app))
                clock.advance(1.5)
            records = [await us.get_run("regional-bank", run_id) for run_id in made]
        await bus.close()
    assert sorted(made) == made
    for record in records:
        assert _RUN_ID.fullmatch(record.id)
        assert int(record.id[4:16], 16) == int(record.created_at * 1000)
