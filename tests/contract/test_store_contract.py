"""The store contract: every Store implementation must pass these, op by op.

Each contract test runs on the in-memory store, SQLite and PostgreSQL (an empty schema per test,
see ``postgres_url`` in ``tests/conftest.py``); the tests at the end are specific to one store.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from tenantflow.adapters.memory import MemoryStore
from tenantflow.adapters.sqlite import SqliteStore
from tenantflow.domain.keys import ApiKeyRecord, CreateApiKey, Revocation, RevokeApiKey
from tenantflow.domain.records import (
    STALE,
    CreateRun,
    FailAttempt,
    FinishAttempt,
    NewEvent,
    ParkAttempt,
    RecordCall,
    RecoverOrphans,
    RenewLeases,
    RunRecord,
    RunStatus,
    RunUpdate,
    StartAttempt,
    StepRecord,
    StepStatus,
    StepUpdate,
    Transition,
    next_state_hash,
)
from tenantflow.domain.tenancy import (
    AcquireRate,
    AppendAudit,
    AuditEntry,
    Charge,
    ClaimReview,
    CreateReview,
    DecideReview,
    DeleteTenant,
    EscalateReview,
    LedgerLine,
    PurgeRuns,
    PutTenant,
    Refusal,
    ReleaseHolds,
    Reserve,
    ReviewRecord,
    ReviewStatus,
    Settle,
    ThrottleRate,
    UsageDelta,
)
from tenantflow.errors import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    StoreError,
    StoreUnavailableError,
)
from tenantflow.ports import Store

if TYPE_CHECKING:
    from tenantflow.adapters.postgres import PostgresStore

NOW = 1_800_000_000.0


STORES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """A closed store of ``kind``; PostgreSQL on a fresh schema of its own."""
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SqliteStore(tmp_path / "c.db")
    return postgres_store(request.getfixturevalue("postgres_url"))


def postgres_store(url: str) -> PostgresStore:
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    from tenantflow.adapters.postgres import PostgresStore

    return PostgresStore.from_url(url)


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = make_store(request.param, request, tmp_path)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def new_run(
    run_id: str, tenant: str = "t1", *, key: str | None = None, created: float = NOW
) -> CreateRun:
    record = RunRecord(
        id=run_id,
        tenant_id=tenant,
        workflow="wf",
        workflow_version="1",
        status=RunStatus.RUNNING,
        input_json=b'{"x":1}',
        created_at=created,
        updated_at=created,
        idempotency_key=key,
    )
    steps = [
        StepRecord(run_id, tenant, "a", StepStatus.READY),
        StepRecord(run_id, tenant, "b", StepStatus.PENDING),
    ]
    return CreateRun(record, steps, [NewEvent("run.submitted")])


def start(
    run_id: str, key: str = "a", now: float = NOW, lease: float = 30.0, tenant: str = "t1"
) -> StartAttempt:
    return StartAttempt(tenant, run_id, key, "owner-1", now, now + lease)


async def test_create_is_idempotent_per_tenant(store: Store) -> None:
    [first] = await store.apply([new_run("r1", key="k")])
    [again] = await store.apply([new_run("r2", key="k")])
    [other] = await store.apply([new_run("r3", tenant="t2", key="k")])
    assert (first.run_id, first.created) == ("r1", True)
    assert (again.run_id, again.created) == ("r1", False)
    assert (other.run_id, other.created) == ("r3", True)
    with pytest.raises(NotFoundError):
        await store.get_run("t1", "r2")


async def test_claims_are_exclusive_and_fenced(store: Store) -> None:
    await store.apply([new_run("r1")])
    [lease] = await store.apply([start("r1")])
    assert (lease.fence, lease.attempt) == (1, 1)
    [second] = await store.apply([start("r1", now=NOW + 1)])
    assert second is None  # a live lease cannot be claimed
    [pending] = await store.apply([start("r1", key="b")])
    assert pending is None  # not ready
    [taken] = await store.apply([start("r1", now=NOW + 31)])  # the lease lapsed
    assert (taken.fence, taken.attempt) == (2, 2)
    then = Transition("t1", "r1", NOW + 32)
    [stale] = await store.apply(
        [FinishAttempt("t1", "r1", "a", 1, NOW + 32, b"1", b'{"a":1}', then)]
    )
    assert stale is STALE
    [version] = await store.apply(
        [FinishAttempt("t1", "r1", "a", 2, NOW + 32, b"2", b'{"a":2}', then)]
    )
    assert version == 1
    [again] = await store.apply(
        [FinishAttempt("t1", "r1", "a", 2, NOW + 33, b"3", b'{"a":3}', then)]
    )
    assert again is STALE  # recorded exactly once
    steps = {s.key: s for s in await store.get_steps("t1", "r1")}
    assert steps["a"].status == StepStatus.SUCCEEDED and steps["a"].output_json == b"2"
    assert steps["a"].version == 1


async def test_a_result_after_the_lease_expired_is_refused(store: Store) -> None:
    await store.apply([new_run("r1")])
    [lease] = await store.apply([start("r1", lease=5)])
    then = Transition("t1", "r1", NOW + 6)
    [late] = await store.apply(
        [FinishAttempt("t1", "r1", "a", lease.fence, NOW + 6, b"1", b'{"a":1}', then)]
    )
    assert late is STALE
    [late_fail] = await store.apply(
        [FailAttempt("t1", "r1", "a", lease.fence, NOW + 6, "boom", None, then)]
    )
    assert late_fail is STALE
    assert (await store.get_run("t1", "r1")).state_version == 0


async def test_finish_appends_a_hash_chained_version_and_applies_follow_ons(store: Store) -> None:
    await store.apply([new_run("r1")])
    [lease] = await store.apply([start("r1")])
    then = Transition(
        "t1", "r1", NOW + 1, steps=[StepUpdate("b", StepStatus.READY)], events=[NewEvent("x")]
    )
    [v] = await store.apply(
        [FinishAttempt("t1", "r1", "a", lease.fence, NOW + 1, b"7", b'{"a":7}', then)]
    )
    assert v == 1
    versions = await store.state_versions("t1", "r1")
    assert [x.version for x in versions] == [0, 1]
    h0 = next_state_hash("", 0, None, b'{"x":1}')
    assert versions[0].hash == h0
    assert versions[1].hash == next_state_hash(h0, 1, "a", b'{"a":7}')
    assert versions[1].parent == 0
    run = await store.get_run("t1", "r1")
    assert (run.state_version, run.state_hash) == (1, versions[1].hash)
    steps = {s.key: s.status for s in await store.get_steps("t1", "r1")}
    assert steps == {"a": StepStatus.SUCCEEDED, "b": StepStatus.READY}
    kinds = [e.kind for e in await store.events("t1", "r1")]
    assert kinds == ["run.submitted", "step.started", "step.succeeded", "state.version", "x"]


async def test_retry_waits_until_available(store: Store) -> None:
    await store.apply([new_run("r1")])
    [lease] = await store.apply([start("r1")])
    [ok] = await store.apply(
        [
            FailAttempt(
                "t1",
                "r1",
                "a",
                lease.fence,
                NOW + 1,
                "boom",
                NOW + 10,
                Transition("t1", "r1", NOW + 1),
            )
        ]
    )
    assert ok is True
    [early] = await store.apply([start("r1", now=NOW + 5)])
    assert early is None
    [due] = await store.apply([start("r1", now=NOW + 10)])
    assert due.attempt == 2
    events = await store.events("t1", "r1")
    retry = [e for e in events if e.kind == "step.retrying"]
    assert retry[0].data["retry_at"] == NOW + 10 and retry[0].attempt == 1


async def test_transition_creates_children_and_ends_the_run(store: Store) -> None:
    await store.apply([new_run("r1")])
    t = Transition(
        "t1",
        "r1",
        NOW + 1,
        steps=[
            StepUpdate("b", StepStatus.MAPPED),
            StepUpdate("b[0]", StepStatus.READY, create=True),
        ],
    )
    await store.apply([t])
    assert {s.key for s in await store.get_steps("t1", "r1")} == {"a", "b", "b[0]"}
    gather = Transition(
        "t1",
        "r1",
        NOW + 2,
        steps=[StepUpdate("b", StepStatus.SUCCEEDED, output_json=b"[1]", delta_json=b'{"b":[1]}')],
        run=RunUpdate(RunStatus.COMPLETED, result_json=b"[1]"),
    )
    await store.apply([gather])
    run = await store.get_run("t1", "r1")
    assert (
        run.status == RunStatus.COMPLETED
        and run.finished_at == NOW + 2
        and run.result_json == b"[1]"
    )
    assert run.state_version == 1
    assert await store.active_runs() == []


async def test_lease_renewal_reports_lapsed_leases_and_recovery_frees_them(store: Store) -> None:
    await store.apply([new_run("r1"), new_run("r2")])
    await store.apply([start("r1", lease=10), start("r2", lease=100)])
    [lost] = await store.apply([RenewLeases("owner-1", NOW + 20, NOW + 50)])
    assert lost == [("r1", "a", 1)]
    [n] = await store.apply([RecoverOrphans(NOW + 21)])
    assert n == 2
    steps = await store.get_steps("t1", "r2")
    assert {s.key: s.status for s in steps}["a"] == StepStatus.READY
    assert "step.recovered" in [e.kind for e in await store.events("t1", "r2")]


async def test_reads_are_scoped_by_tenant_and_paginated(store: Store) -> None:
    await store.apply([new_run(f"r{i}", created=NOW + i) for i in range(5)])
    await store.apply([new_run("x1", tenant="t2")])
    page1 = await store.list_runs("t1", limit=2)
    assert [r.id for r in page1] == ["r4", "r3"]
    page2 = await store.list_runs("t1", limit=2, before="r3")
    assert [r.id for r in page2] == ["r2", "r1"]
    assert [r.id for r in await store.list_runs("t2")] == ["x1"]
    with pytest.raises(NotFoundError):
        await store.get_run("t2", "r1")
    assert await store.get_steps("t2", "r1") == []
    assert await store.events("t2", "r1") == []
    assert await store.state_versions("t2", "r1") == []
    [claim] = await store.apply([start("r1", tenant="t2")])
    assert claim is None  # another tenant cannot claim the step either
    active = await store.active_runs()
    assert sorted(r.id for r, _ in active) == ["r0", "r1", "r2", "r3", "r4", "x1"]


async def test_unfinished_runs_by_id_are_the_tenants_own_with_their_steps(store: Store) -> None:
    await store.apply([new_run("r1"), new_run("r2"), new_run("x1", tenant="t2")])
    done = Transition("t1", "r2", NOW + 1, run=RunUpdate(RunStatus.COMPLETED))
    await store.apply([done])
    found = await store.unfinished_runs("t1", ["r1", "r2", "x1", "nope"])
    assert [r.id for r, _ in found] == ["r1"]  # r2 ended, x1 is another tenant's
    [(_, steps)] = found
    assert steps == await store.get_steps("t1", "r1") and steps
    assert await store.unfinished_runs("t2", ["r1"]) == []
    assert await store.unfinished_runs("t1", []) == []
    assert [r.id for r, _ in await store.active_runs("t1")] == ["r1"]


async def test_sqlite_state_versions_are_immutable(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "i.db")
    await s.open()
    await s.apply([new_run("r1")])
    await s.close()
    conn = sqlite3.connect(tmp_path / "i.db")
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        conn.execute("UPDATE state_versions SET delta = 'x'")
    conn.close()


async def test_sqlite_refuses_a_second_executing_engine_and_bad_paths(tmp_path: Path) -> None:
    a = SqliteStore(tmp_path / "x.db")
    await a.open()
    b = SqliteStore(tmp_path / "x.db")
    with pytest.raises(StoreUnavailableError, match="another tenantflow engine"):
        await b.open()
    reader = SqliteStore(tmp_path / "x.db")
    await reader.open(execute=False)  # reading is fine
    await reader.close()
    await a.close()
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreUnavailableError, match="cannot open"):
        await SqliteStore(tmp_path / "dir.db").open()
    with pytest.raises(StoreUnavailableError, match="no tenantflow database"):
        await SqliteStore(tmp_path / "missing.db").open(execute=False)


# -- tenancy ops ----------------------------------------------------------------------------


def put_tenant(tenant: str, *, create: bool = True, cap: int = 5) -> PutTenant:
    return PutTenant(tenant, "org", f'{{"max_active_runs": {cap}}}', NOW, "admin", create)


async def test_tenants_are_versioned_audited_and_deleted_without_a_trace(store: Store) -> None:
    [v1, dup] = await store.apply([put_tenant("t1"), put_tenant("t1")])
    assert v1 == 1 and isinstance(dup, ConflictError)
    [v2, missing] = await store.apply(
        [put_tenant("t1", create=False, cap=7), put_tenant("nope", create=False)]
    )
    assert v2 == 2 and isinstance(missing, NotFoundError)
    await store.apply([put_tenant("t2"), new_run("r1"), new_run("x1", tenant="t2")])
    tenant = await store.get_tenant("t1")
    assert (tenant.policy_version, tenant.policy_json) == (2, '{"max_active_runs": 7}')
    assert [t.id for t in await store.list_tenants()] == ["t1", "t2"]
    [proof] = await store.apply([DeleteTenant("t1", NOW + 1, "admin")])
    assert proof["deleted"]["runs"] == 1 and proof["deleted"]["policy_versions"] == 2
    assert set(proof["left"].values()) == {0}
    with pytest.raises(NotFoundError):
        await store.get_tenant("t1")
    assert [t.id for t in await store.list_tenants()] == ["t2"]
    assert [r.id for r in await store.list_runs("t2")] == ["x1"]  # the other tenant is untouched
    log = await store.audit_log("t1")
    assert [(r.seq, r.action) for r in log] == [
        (1, "tenant.created"),
        (2, "policy.updated"),
        (3, "tenant.deleted"),
    ]
    assert all(r.prev_hash == p.hash for p, r in itertools.pairwise(log))


async def test_append_audit_extends_the_tenants_chain_in_the_batch(store: Store) -> None:
    entry = AuditEntry("admin:ops", "mcp_server.registered", "mcp_server:crm", {"tools": ["a"]})
    [created, appended] = await store.apply([put_tenant("t1"), AppendAudit("t1", NOW, [entry])])
    assert (created, appended) == (1, True)
    await store.apply([AppendAudit("t1", NOW + 1, [])])  # nothing to append: nothing written
    log = await store.audit_log("t1")
    assert [(r.seq, r.actor, r.action, r.subject) for r in log] == [
        (1, "admin", "tenant.created", "tenant:t1"),
        (2, "admin:ops", "mcp_server.registered", "mcp_server:crm"),
    ]
    assert log[1].detail == {"tools": ["a"]} and log[1].prev_hash == log[0].hash
    assert await store.audit_log("t2") == []


def line(amount: int, limit: int | None, scope: str = "period") -> LedgerLine:
    return LedgerLine(scope, "micros", amount, limit, "daily" if scope == "period" else None)


async def test_reservations_fit_or_are_refused_and_settle_exactly_once(store: Store) -> None:
    [ok, same, refused] = await store.apply(
        [
            Reserve("t1", "r1:a:0", [line(60, 100), line(60, None, "run:r1")], NOW),
            Reserve("t1", "r1:a:0", [line(60, 100)], NOW),  # idempotent by key
            Reserve("t1", "r1:b:0", [line(50, 100)], NOW),
        ]
    )
    assert ok is True and same is True
    assert refused == Refusal("period", "micros", 50, 40)
    [charged, again] = await store.apply(
        [
            Settle("t1", "r1:a:0", {("period", "micros"): 45, ("run:r1", "micros"): 45}, NOW),
            Settle("t1", "r1:a:0", {("period", "micros"): 45}, NOW),
        ]
    )
    assert (charged, again) == (45, 0)  # a retried settle never double-charges
    [held, released, extra, extra_again] = await store.apply(
        [
            Reserve("t1", "r1:c:0", [line(30, 100)], NOW),
            ReleaseHolds("t1", "r1:c:", NOW),
            Charge("t1", "stream:1", [line(70, 100)], NOW),
            Charge("t1", "stream:1", [line(70, 100)], NOW),
        ]
    )
    assert (held, released, extra, extra_again) == (True, 1, True, False)
    [period] = await store.ledgers("t1", "period")
    assert (period["spent"], period["reserved"], period["overrun"]) == (115, 0, 70)
    assert period["limit"] == 100 and period["period"] == "daily"
    assert await store.ledgers("t2") == []


async def test_a_new_period_resets_the_ledger_once(store: Store) -> None:
    await store.apply([Reserve("t1", "k1", [line(80, 100)], NOW)])
    await store.apply([Settle("t1", "k1", {("period", "micros"): 80}, NOW)])
    [refused] = await store.apply([Reserve("t1", "k2", [line(80, 100)], NOW + 1)])
    assert isinstance(refused, Refusal)
    [fits] = await store.apply([Reserve("t1", "k2", [line(80, 100)], NOW + 86_400)])
    assert fits is True
    [period] = await store.ledgers("t1")
    assert (period["spent"], period["reserved"]) == (0, 80)


async def test_rate_buckets_are_per_tenant_and_adapt_to_throttling(store: Store) -> None:
    take = [AcquireRate("t1", "tool:x", NOW, rate_per_s=1.0, burst=2) for _ in range(3)]
    first, second, third = await store.apply(take)
    assert first.allowed and second.allowed and not third.allowed
    assert third.retry_after_s > 0
    [other] = await store.apply([AcquireRate("t2", "tool:x", NOW, rate_per_s=1.0, burst=2)])
    assert other.allowed  # t1 exhausting its bucket leaves t2's alone
    [factor] = await store.apply([ThrottleRate("t1", "tool:x", NOW, 5.0, 1.0, 2)])
    assert 0 < factor < 1
    [later] = await store.apply([AcquireRate("t1", "tool:x", NOW + 3, rate_per_s=1.0, burst=2)])
    assert not later.allowed  # the provider's retry-after deferred the bucket


def review(review_id: str, *, lane: str = "normal", sla: float | None = None) -> ReviewRecord:
    return ReviewRecord(
        review_id, "t1", "r1", "a", "pool", lane, ReviewStatus.PENDING, sla, NOW, {"q": 1}
    )


async def test_reviews_are_claimed_decided_and_escalated_once(store: Store) -> None:
    await store.apply([new_run("r1")])
    waiting = Transition("t1", "r1", NOW, steps=[StepUpdate("a", StepStatus.WAITING)])
    [rid, _] = await store.apply(
        [
            CreateReview(review("v1", sla=NOW + 60), waiting),
            CreateReview(review("v2", lane="urgent")),
        ]
    )
    assert rid == "v1"
    assert [r.id for r in await store.list_reviews("t1")] == ["v2", "v1"]  # by lane first
    assert await store.list_reviews("t2") == []
    [claimed, taken, foreign] = await store.apply(
        [
            ClaimReview("t1", "v1", "alice", NOW),
            ClaimReview("t1", "v1", "bob", NOW),
            ClaimReview("t2", "v1", "mallory", NOW),
        ]
    )
    assert claimed.claimed_by == "alice" and claimed.status == ReviewStatus.CLAIMED
    assert isinstance(taken, ConflictError) and isinstance(foreign, NotFoundError)
    ready = Transition("t1", "r1", NOW + 1, steps=[StepUpdate("a", StepStatus.READY)])
    [decided, twice] = await store.apply(
        [
            DecideReview("t1", "v1", "alice", True, "fine", NOW + 1, ready),
            DecideReview("t1", "v1", "alice", False, None, NOW + 2),
        ]
    )
    assert decided.status == ReviewStatus.APPROVED and decided.comment == "fine"
    assert isinstance(twice, ConflictError)
    assert {s.key: s.status for s in await store.get_steps("t1", "r1")}["a"] == StepStatus.READY
    [moved] = await store.apply([EscalateReview("t1", "v2", "seniors", NOW + 90, NOW, "sla")])
    assert (moved.pool, moved.escalations, moved.sla_due) == ("seniors", 1, NOW + 90)
    assert [r.id for r in await store.pending_reviews()] == ["v2"]
    actions = [r.action for r in await store.audit_log("t1")]
    assert actions == ["review.claimed", "review.approved", "review.escalated"]


async def test_park_record_calls_and_usage(store: Store) -> None:
    await store.apply([new_run("r1")])
    [lease] = await store.apply([start("r1")])
    then = Transition("t1", "r1", NOW, usage=[UsageDelta("steps", 1.0), UsageDelta("steps", 2.0)])
    [parked, stale] = await store.apply(
        [
            ParkAttempt("t1", "r1", "a", lease.fence, NOW, StepStatus.READY, NOW + 5, "rate", then),
            ParkAttempt("t1", "r1", "a", lease.fence, NOW, StepStatus.READY, NOW + 5, "rate", then),
        ]
    )
    assert parked is True and stale is STALE
    deferred = [e for e in await store.events("t1", "r1") if e.kind == "step.deferred"]
    assert deferred[0].data == {"reason": "rate", "until": NOW + 5}
    [usage] = await store.usage("t1")
    assert (usage["metric"], usage["value"]) == ("steps", 3.0)
    calls = [
        RecordCall("t1", "r1", "a", 0, "model", "m", '"first"', NOW),
        RecordCall("t1", "r1", "a", 0, "model", "m", '"again"', NOW),  # recorded once
        RecordCall("t1", "r1", "a", 1, "tool", "t", "2", NOW),
    ]
    assert await store.apply(calls) == [True, True, True]
    assert await store.recorded_calls("t1", "r1", "a") == {
        0: ("model", "m", '"first"'),
        1: ("tool", "t", "2"),
    }
    assert await store.recorded_calls("t2", "r1", "a") == {}


async def test_retention_purges_only_finished_runs_past_the_cutoff(store: Store) -> None:
    await store.apply([new_run("old"), new_run("new"), new_run("live")])
    for run_id, at in (("old", NOW + 1), ("new", NOW + 100)):
        end = RunUpdate(RunStatus.COMPLETED, result_json=b"1")
        await store.apply([Transition("t1", run_id, at, run=end)])
    [deleted] = await store.apply([PurgeRuns("t1", NOW + 50, NOW + 200)])
    assert deleted["runs"] == 1 and deleted["events"] == 1 and deleted["steps"] == 2
    assert sorted(r.id for r in await store.list_runs("t1")) == ["live", "new"]
    assert await store.state_versions("t1", "old") == []
    assert [r.action for r in await store.audit_log("t1")] == ["retention.purged"]


async def test_a_limited_purge_deletes_the_oldest_expired_runs_first(store: Store) -> None:
    ids = ("r3", "r1", "r2")  # created in this order: not the order of their ids
    for n, run_id in enumerate(ids):
        await store.apply([new_run(run_id, created=NOW + n)])
        end = RunUpdate(RunStatus.COMPLETED, result_json=b"1")
        await store.apply([Transition("t1", run_id, NOW + 10, run=end)])
    [first] = await store.apply([PurgeRuns("t1", NOW + 50, NOW + 60, limit=2)])
    assert first["runs"] == 2 and first["steps"] == 4
    assert [r.id for r in await store.list_runs("t1")] == ["r2"]
    [rest] = await store.apply([PurgeRuns("t1", NOW + 50, NOW + 60, limit=2)])
    assert rest["runs"] == 1 and await store.list_runs("t1") == []
    [none] = await store.apply([PurgeRuns("t1", NOW + 50, NOW + 60, limit=2)])
    assert none["runs"] == 0
    assert [r.action for r in await store.audit_log("t1")] == ["retention.purged"] * 2


async def test_a_bad_op_fails_alone_and_the_rest_of_its_batch_commits(store: Store) -> None:
    await store.apply([new_run("r1")])
    duplicate = Transition("t1", "r1", NOW, steps=[StepUpdate("a", StepStatus.READY, create=True)])
    created, refused, other = await store.apply([new_run("r2"), duplicate, new_run("r3")])
    assert isinstance(refused, Exception)
    assert created.created and other.created
    assert sorted(r.id for r in await store.list_runs("t1")) == ["r1", "r2", "r3"]


async def test_one_batch_of_many_tenants_ops_writes_what_they_write_one_by_one(
    store: Store,
) -> None:
    # Interleaved tenants in one batch (PostgreSQL takes them tenant by tenant and merges their
    # events, state versions and usage into multi-row statements), a run claimed in the batch
    # that creates it, and usage rows to sum: the rows must be exactly those of op-by-op.
    runs = [("r1", "t1"), ("r2", "t2"), ("r3", "t1"), ("r4", "t3"), ("r5", "t2")]
    created = await store.apply(
        [new_run(r, t) for r, t in runs] + [start(r, tenant=t) for r, t in runs]
    )
    leases = created[len(runs) :]
    assert all(c.created for c in created[: len(runs)]) and all(leases)
    usage = [UsageDelta("steps", 1.0), UsageDelta("tokens_in", 10.0, "m")]
    finishes = [
        FinishAttempt(
            t,
            r,
            "a",
            lease.fence,
            NOW + 1,
            b"1",
            b'{"a":1}',
            Transition(t, r, NOW + 1, steps=[StepUpdate("b", StepStatus.READY)], usage=usage),
        )
        for (r, t), lease in zip(runs, leases, strict=True)
    ]
    assert await store.apply(finishes) == [1] * len(runs)
    h0 = next_state_hash("", 0, None, b'{"x":1}')
    for r, t in runs:
        versions = await store.state_versions(t, r)
        assert [(v.version, v.parent, v.hash) for v in versions] == [
            (0, None, h0),
            (1, 0, next_state_hash(h0, 1, "a", b'{"a":1}')),
        ]
        kinds = [e.kind for e in await store.events(t, r)]
        assert kinds == ["run.submitted", "step.started", "step.succeeded", "state.version"]
        steps = {s.key: s.status for s in await store.get_steps(t, r)}
        assert steps == {"a": StepStatus.SUCCEEDED, "b": StepStatus.READY}
    for tenant, n in (("t1", 2), ("t2", 2), ("t3", 1)):
        totals = {(u["metric"], u["dim"]): u["value"] for u in await store.usage(tenant)}
        assert totals == {("steps", ""): n, ("tokens_in", "m"): 10.0 * n}


async def test_claims_in_one_batch_are_each_decided_as_if_alone(store: Store) -> None:
    # One tenant's claims side by side in a batch (PostgreSQL sends them as one statement):
    # a ready step, a step not ready yet, a live lease, a lapsed lease, a step of another
    # tenant's run, a run that does not exist, and one step claimed twice.
    await store.apply([new_run(r) for r in ("r1", "r2", "r3", "r4")] + [new_run("r5", "t2")])
    [held, lapsed] = await store.apply([start("r2"), start("r3", lease=5.0)])
    assert held is not None and lapsed is not None
    at = NOW + 10
    results = await store.apply(
        [
            start("r1", now=at),  # ready: claimed
            start("r1", key="b", now=at),  # pending: not claimed
            start("r2", now=at),  # its lease runs to NOW + 30: not claimed
            start("r3", now=at),  # its lease ran out at NOW + 5: claimed again, fence 2
            start("r5", now=at),  # t2's run, as t1: not found
            start("nope", now=at),
            start("r4", now=at, lease=60.0),  # ready: claimed, with its own lease
            start("r4", now=at),  # the same step again: the first claim holds it
        ]
    )
    got = [None if r is None else (r.fence, r.attempt, r.lease_expires_at) for r in results]
    assert got == [
        (1, 1, at + 30),
        None,
        None,
        (2, 2, at + 30),
        None,
        None,
        (1, 1, at + 60),
        None,
    ]
    for run_id, attempts in (("r1", [1]), ("r2", [1]), ("r3", [1, 2]), ("r4", [1])):
        started = [e.attempt for e in await store.events("t1", run_id) if e.kind == "step.started"]
        assert started == attempts, run_id
    assert [e.kind for e in await store.events("t2", "r5")] == ["run.submitted"]
    steps = {
        (s.run_id, s.key): s for r in ("r1", "r3", "r4") for s in await store.get_steps("t1", r)
    }
    assert steps[("r1", "a")].status == StepStatus.RUNNING
    assert steps[("r1", "b")].status == StepStatus.PENDING
    assert (steps[("r3", "a")].fence, steps[("r3", "a")].lease_expires_at) == (2, at + 30)
    assert steps[("r4", "a")].lease_expires_at == at + 60


# -- API keys -------------------------------------------------------------------------------

K1, K2, K3, K4, K5, K6 = (f"key_{n}" + "0" * 23 for n in "123456")


def api_key(key_id: str, tenant: str | None, *, at: float = NOW) -> ApiKeyRecord:
    return ApiKeyRecord(key_id, tenant, "ci", f"tfk_{key_id[4:12]}", key_id[4:] * 2, at, "admin")


def create_key(key: ApiKeyRecord) -> CreateApiKey:
    audit = [AuditEntry("admin", "api_key.created", f"api_key:{key.id}")] if key.tenant_id else []
    return CreateApiKey(key, audit)


def revoke_key(
    tenant: str | None, key_id: str, *, at: float = NOW + 5, replacement: ApiKeyRecord | None = None
) -> RevokeApiKey:
    audit = [AuditEntry("alice", "api_key.revoked", f"api_key:{key_id}")] if tenant else []
    return RevokeApiKey(tenant, key_id, at, "alice", replacement, audit)


async def keys_of(store: Store) -> list[ApiKeyRecord]:
    """Every key row: t1's, t2's and the admin keys."""
    return [k for t in ("t1", "t2", None) for k in await store.list_api_keys(t)]


async def test_api_keys_are_looked_up_by_id_and_listed_by_owner(store: Store) -> None:
    k1, k2, k3 = api_key(K1, "t1"), api_key(K2, "t1", at=NOW + 1), api_key(K3, "t2")
    k4 = api_key(K4, None)
    assert await store.apply([create_key(k) for k in (k1, k2, k3, k4)]) == [True] * 4
    assert await store.get_api_key(K1) == k1
    assert await store.get_api_key(K4) == k4  # system scope: whoever owns the key
    with pytest.raises(NotFoundError):
        await store.get_api_key(K5)
    assert await store.list_api_keys("t1") == [k1, k2]
    assert await store.list_api_keys("t2") == [k3]
    assert await store.list_api_keys(None) == [k4]  # admin keys only
    assert await store.list_api_keys("t3") == []
    assert [r.action for r in await store.audit_log("t1")] == ["api_key.created"] * 2
    [duplicate] = await store.apply([create_key(api_key(K1, "t2"))])
    assert isinstance(duplicate, Exception)
    assert await store.list_api_keys("t2") == [k3]


async def test_a_key_is_revoked_only_by_its_owner_once(store: Store) -> None:
    await store.apply([create_key(api_key(k, t)) for k, t in ((K1, "t1"), (K3, "t2"), (K4, None))])
    strangers = await store.apply(
        [revoke_key("t2", K1), revoke_key(None, K1), revoke_key("t1", K4), revoke_key("t1", K5)]
    )
    assert all(isinstance(r, NotFoundError) for r in strangers)
    assert all(k.revoked_at is None for k in await keys_of(store))
    [done, again, admin] = await store.apply(
        [revoke_key("t1", K1), revoke_key("t1", K1, at=NOW + 9), revoke_key(None, K4)]
    )
    assert isinstance(done, Revocation) and done.changed
    assert (done.key.revoked_at, done.key.revoked_by) == (NOW + 5, "alice")
    assert again == Revocation(done.key, changed=False)  # nothing changes the second time
    assert admin.changed and admin.key.tenant_id is None
    assert await store.get_api_key(K1) == done.key
    assert (await store.get_api_key(K3)).revoked_at is None
    actions = [r.action for r in await store.audit_log("t1")]
    assert actions == ["api_key.created", "api_key.revoked"]


async def test_a_rotation_revokes_and_replaces_in_one_transaction(store: Store) -> None:
    await store.apply([create_key(api_key(k, t)) for k, t in ((K1, "t1"), (K2, "t1"), (K3, "t2"))])
    [rotated] = await store.apply([revoke_key("t1", K1, replacement=api_key(K5, "t1", at=NOW + 5))])
    assert rotated.changed and rotated.key.revoked_at == NOW + 5
    assert (await store.get_api_key(K5)).revoked_at is None
    [twice] = await store.apply([revoke_key("t1", K1, replacement=api_key(K6, "t1"))])
    assert isinstance(twice, ConflictError)
    with pytest.raises(NotFoundError):
        await store.get_api_key(K6)  # the refused rotation inserted nothing
    # A replacement that cannot be inserted (its id is taken) leaves the old key live.
    [clash] = await store.apply([revoke_key("t1", K2, replacement=api_key(K3, "t1"))])
    assert isinstance(clash, Exception)
    assert (await store.get_api_key(K2)).revoked_at is None
    assert (await store.get_api_key(K3)).tenant_id == "t2"
    assert [k.id for k in await store.list_api_keys("t1")] == [K1, K2, K5]
    assert [r.action for r in await store.audit_log("t1")].count("api_key.revoked") == 1


async def test_deleting_a_tenant_deletes_its_keys_and_no_others(store: Store) -> None:
    await store.apply([put_tenant("t1"), put_tenant("t2")])
    keys = [api_key(K1, "t1"), api_key(K2, "t1"), api_key(K3, "t2"), api_key(K4, None)]
    await store.apply([create_key(k) for k in keys])
    [proof] = await store.apply([DeleteTenant("t1", NOW + 1, "admin")])
    assert proof["deleted"]["api_keys"] == 2 and proof["left"]["api_keys"] == 0
    assert await keys_of(store) == keys[2:]
    with pytest.raises(NotFoundError):
        await store.get_api_key(K1)


# -- PostgreSQL -----------------------------------------------------------------------------


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[PostgresStore]:
    s = postgres_store(postgres_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.mark.postgres
async def test_postgres_rls_refuses_other_tenants_rows_when_the_sql_forgets_the_filter(
    pg: PostgresStore,
) -> None:
    await pg.apply([new_run("r1"), new_run("x1", tenant="t2")])
    # The application role is neither the owner nor a superuser, nor does it bypass RLS.
    [(role, superuser, bypass)] = await pg.execute_sql(
        "SELECT current_user, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user",
        tenant="t2",
    )
    assert (role, superuser, bypass) == ("tenantflow_app", False, False)
    [(owner,)] = await pg.execute_sql(
        "SELECT tableowner FROM pg_tables WHERE schemaname = current_schema()"
        " AND tablename = 'runs'"
    )
    assert owner != role
    # No tenant filter in any of these: the policies supply it.
    assert await pg.execute_sql("SELECT id FROM runs", tenant="t2") == [("x1",)]
    assert await pg.execute_sql("SELECT DISTINCT tenant_id FROM events", tenant="t2") == [("t2",)]
    assert await pg.execute_sql("UPDATE steps SET status = 'failed' RETURNING run_id", tenant="t2")
    assert {s.status for s in await pg.get_steps("t1", "r1")} == {
        StepStatus.READY,
        StepStatus.PENDING,
    }
    assert await pg.execute_sql("DELETE FROM runs RETURNING id", tenant="t2") == [("x1",)]
    assert [r.id for r in await pg.list_runs("t1")] == ["r1"]
    with pytest.raises(StoreError, match="row-level security"):
        await pg.execute_sql(
            "INSERT INTO events (tenant_id, run_id, ts, kind) VALUES ('t1', 'r1', 0, 'forged')",
            tenant="t2",
        )
    with pytest.raises(StoreError, match="row-level security"):
        await pg.execute_sql("UPDATE runs SET tenant_id = 't2' WHERE id = 'r1'", tenant="t1")
    # Without a tenant set, the application role sees nothing at all.
    assert await pg.execute_sql("SELECT count(*) FROM runs", tenant="") == [(0,)]


@pytest.mark.postgres
async def test_postgres_system_scope_reads_every_tenant_but_cannot_write_runs(
    pg: PostgresStore, postgres_url: str
) -> None:
    await pg.apply([new_run("r1"), new_run("x1", tenant="t2")])
    assert sorted(r.id for r, _ in await pg.active_runs()) == ["r1", "x1"]
    import psycopg

    parts = urlsplit(postgres_url)
    query = parse_qsl(parts.query)
    [schema] = [v for k, v in query if k == "schema"]
    server = urlunsplit(parts._replace(query=urlencode([q for q in query if q[0] != "schema"])))
    conn = await psycopg.AsyncConnection.connect(server, autocommit=True)
    async with conn:
        await conn.execute(f"SET search_path TO {schema}")
        await conn.execute("SET ROLE tenantflow_system")
        cur = await conn.execute("SELECT count(*) FROM runs")
        assert await cur.fetchone() == (2,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("DELETE FROM runs")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("UPDATE runs SET status = 'failed'")


@pytest.mark.postgres
async def test_postgres_claims_from_many_processes_have_one_winner(
    pg: PostgresStore, postgres_url: str
) -> None:
    """Two stores (two pools: what two processes have) race to claim and to reserve."""
    other = postgres_store(postgres_url)
    await other.open()
    try:
        await pg.apply([new_run(f"r{i}") for i in range(10)])
        claims = [
            s.apply([start(f"r{i}", now=NOW + n)])
            for i in range(10)
            for n, s in enumerate((pg, other, pg, other))
        ]
        leases = [r for [r] in await asyncio.gather(*claims) if r is not None]
        assert len(leases) == 10 and {(x.fence, x.attempt) for x in leases} == {(1, 1)}
        reserves = [
            s.apply([Reserve("t1", f"k{i}", [line(1, 10)], NOW)])
            for i, s in enumerate([pg, other] * 15)
        ]
        results = [r for [r] in await asyncio.gather(*reserves)]
        assert results.count(True) == 10  # never one more than the ledger holds
        [period] = await pg.ledgers("t1")
        assert period["reserved"] == 10
        entry = AuditEntry("ops", "noted", "tenant:shared")
        audits = [
            s.apply([Transition("shared", "r0", NOW, audit=[entry])]) for s in [pg, other] * 3
        ]
        await asyncio.gather(*audits)
        log = await pg.audit_log("shared")
        assert [r.seq for r in log] == list(range(1, 7))  # one chain, no fork
        assert all(r.prev_hash == p.hash for p, r in itertools.pairwise(log))
        submits = [s.apply([new_run(f"dup{i}", key="same")]) for i, s in enumerate([pg, other] * 3)]
        created = [r for [r] in await asyncio.gather(*submits)]
        assert [r.created for r in created].count(True) == 1  # one run per idempotency key…
        assert len({r.run_id for r in created}) == 1  # …and every submission is told which
    finally:
        await other.close()


@pytest.mark.postgres
async def test_postgres_without_pipeline_mode(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a libpq older than 14 every statement waits for its result; nothing else changes."""
    from tenantflow.adapters import postgres

    monkeypatch.setattr(postgres, "_PIPELINE", False)
    s = postgres_store(postgres_url)
    await s.open()
    try:
        [created, duplicate] = await s.apply([new_run("r1"), new_run("r1")])
        assert created.created and isinstance(duplicate, ConflictError)
        [lease] = await s.apply([start("r1")])
        then = Transition("t1", "r1", NOW + 1)
        finish = FinishAttempt("t1", "r1", "a", lease.fence, NOW + 1, b"1", b'{"a":1}', then)
        assert await s.apply([finish]) == [1]
        assert [v.version for v in await s.state_versions("t1", "r1")] == [0, 1]
    finally:
        await s.close()


@pytest.mark.postgres
async def test_postgres_schema_versions_and_immutable_state(postgres_empty_url: str) -> None:
    from tenantflow.adapters.postgres_schema import MIGRATIONS

    s = postgres_store(postgres_empty_url)
    with pytest.raises(StoreUnavailableError, match="db upgrade"):
        await s.open(execute=False)  # an empty schema: nothing to read yet
    assert await s.schema_version() == 0
    assert await s.upgrade() == len(MIGRATIONS)
    await s.open(execute=False)
    assert not s.exclusive
    await s.close()
    await s.open()
    await s.apply([new_run("r1")])
    with pytest.raises(StoreError, match="immutable"):
        await s.execute_sql("UPDATE state_versions SET delta = ?", (b"x",))
    await s.execute_sql("INSERT INTO tf_schema (version) VALUES (99)")
    await s.close()
    with pytest.raises(StoreUnavailableError, match="newer than this release"):
        await postgres_store(postgres_empty_url).open()


async def test_postgres_unreachable_server_and_bad_urls_are_clear_errors() -> None:
    down = postgres_store("postgres://tf:secret@127.0.0.1:1/db?schema=s&sslmode=disable")
    assert down.url == "postgres://tf:***@127.0.0.1:1/db?sslmode=disable&schema=s"
    with pytest.raises(StoreUnavailableError, match="unavailable") as err:
        await down.open()
    assert "secret" not in str(err.value)
    with pytest.raises(StoreUnavailableError, match="not open"):
        await down.get_run("t1", "r1")
    with pytest.raises(ConfigurationError, match="schema"):
        postgres_store("postgresql://h/db?schema=bad-name")
    with pytest.raises(ConfigurationError, match="pool_size"):
        postgres_store("postgresql://h/db?pool_size=many")
    with pytest.raises(ConfigurationError, match="connection string"):
        postgres_store("postgresql://h/db?nonsense=1")


async def _as_system(postgres_url: str) -> Any:
    """A connection of its own in the test's schema, acting as the system role."""
    import psycopg

    parts = urlsplit(postgres_url)
    query = parse_qsl(parts.query)
    [schema] = [v for k, v in query if k == "schema"]
    server = urlunsplit(parts._replace(query=urlencode([q for q in query if q[0] != "schema"])))
    conn = await psycopg.AsyncConnection.connect(server, autocommit=True)
    await conn.execute(f"SET search_path TO {schema}")
    await conn.execute("SET ROLE tenantflow_system")
    return conn


@pytest.mark.postgres
async def test_postgres_rls_shows_a_tenant_its_own_keys_only(pg: PostgresStore) -> None:
    keys = [api_key(K1, "t1"), api_key(K2, "t2"), api_key(K3, "t2"), api_key(K4, None)]
    await pg.apply([create_key(k) for k in keys])
    # No tenant filter in any of these: the policies supply it.
    assert await pg.execute_sql("SELECT id FROM api_keys", tenant="t1") == [(K1,)]
    assert await pg.execute_sql("SELECT id FROM api_keys ORDER BY id", tenant="t2") == [
        (K2,),
        (K3,),
    ]
    assert await pg.execute_sql("SELECT count(*) FROM api_keys", tenant="") == [(0,)]
    changed = await pg.execute_sql("UPDATE api_keys SET revoked_at = 1 RETURNING id", tenant="t1")
    assert changed == [(K1,)]  # neither t2's keys nor the admin key
    assert await pg.execute_sql("DELETE FROM api_keys RETURNING id", tenant="t1") == [(K1,)]
    insert = (
        "INSERT INTO api_keys (id, tenant_id, name, prefix, secret_sha256, created_at,"
        " created_by) VALUES (?, ?, 'x', 'tfk_', 'd', 0, 'mallory')"
    )
    for owner in ("t2", None):  # another tenant's key, or an admin key
        with pytest.raises(StoreError, match="row-level security"):
            await pg.execute_sql(insert, (K5, owner), tenant="t1")
    with pytest.raises(StoreError, match="row-level security"):
        await pg.execute_sql("UPDATE api_keys SET tenant_id = 't1'", tenant="t2")
    assert [k.id for k in await keys_of(pg)] == [K2, K3, K4]


@pytest.mark.postgres
async def test_postgres_system_scope_reads_every_key_but_writes_admin_keys_only(
    pg: PostgresStore, postgres_url: str
) -> None:
    import psycopg

    await pg.apply([create_key(k) for k in (api_key(K1, "t1"), api_key(K4, None))])
    conn = await _as_system(postgres_url)
    async with conn:
        cur = await conn.execute("SELECT id FROM api_keys ORDER BY id")
        assert await cur.fetchall() == [(K1,), (K4,)]
        cur = await conn.execute("UPDATE api_keys SET revoked_by = 'system' RETURNING id")
        assert await cur.fetchall() == [(K4,)]  # the tenant's key is out of its reach
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute(
                "INSERT INTO api_keys (id, tenant_id, name, prefix, secret_sha256, created_at,"
                " created_by) VALUES (%s, 't1', 'x', 'tfk_', 'd', 0, 'system')",
                (K5,),
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("DELETE FROM api_keys")
    assert (await pg.get_api_key(K1)).revoked_by is None
