"""The store contract: every Store implementation must pass these, op by op."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tenantflow.adapters.memory import MemoryStore
from tenantflow.adapters.sqlite import SqliteStore
from tenantflow.domain.records import (
    STALE,
    CreateRun,
    FailAttempt,
    FinishAttempt,
    NewEvent,
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
from tenantflow.errors import NotFoundError, StoreUnavailableError
from tenantflow.ports import Store

NOW = 1_800_000_000.0


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "c.db")
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
