"""The store contract, continued: the run-level compare-and-set and the tenant-scoped handle.

Run on the in-memory store, SQLite and PostgreSQL. A finish or a transition that carries the
run's expected state version commits only if the run is still at that version, so two
processes finishing parallel branches of one run can never both decide the join from the same
stale view. A handle scoped to one tenant takes the tenant from the caller, never from the op:
an op that names another tenant (or the system) is refused, and nothing is written.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tenantflow.adapters.memory import MemoryStore
from tenantflow.adapters.sql_store import SqlStore
from tenantflow.adapters.sqlite import SqliteStore
from tenantflow.domain.records import (
    STALE,
    CreateRun,
    FinishAttempt,
    Lease,
    NewEvent,
    RecoverOrphans,
    RunRecord,
    RunStatus,
    RunUpdate,
    StartAttempt,
    StepRecord,
    StepStatus,
    StepUpdate,
    Transition,
    VersionConflict,
)
from tenantflow.domain.tenancy import AuditEntry
from tenantflow.errors import PermissionDeniedError, StoreError

if TYPE_CHECKING:
    from tenantflow.adapters.postgres import PostgresStore

NOW = 1_800_000_000.0
STORES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def postgres_store(url: str) -> PostgresStore:
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    from tenantflow.adapters.postgres import PostgresStore

    return PostgresStore.from_url(url)


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    s: SqlStore
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SqliteStore(tmp_path / "cas.db")
    else:
        s = postgres_store(request.getfixturevalue("postgres_url"))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def branching_run(run_id: str, tenant: str = "t1") -> CreateRun:
    """Two parallel branches ``a`` and ``b`` (both ready) and their join ``j``."""
    record = RunRecord(
        id=run_id,
        tenant_id=tenant,
        workflow="wf",
        workflow_version="1",
        status=RunStatus.RUNNING,
        input_json=b'{"x":1}',
        created_at=NOW,
        updated_at=NOW,
    )
    steps = [
        StepRecord(run_id, tenant, "a", StepStatus.READY),
        StepRecord(run_id, tenant, "b", StepStatus.READY),
        StepRecord(run_id, tenant, "j", StepStatus.PENDING),
    ]
    return CreateRun(record, steps, [NewEvent("run.submitted")])


async def started(store: SqlStore, run_id: str, tenant: str = "t1") -> dict[str, Lease]:
    """Create the run and claim both branches."""
    await store.apply([branching_run(run_id, tenant)])
    claims = [StartAttempt(tenant, run_id, k, "owner-1", NOW, NOW + 30) for k in ("a", "b")]
    leases = await store.apply(claims)
    assert all(isinstance(x, Lease) for x in leases)
    return dict(zip(("a", "b"), leases, strict=True))


def finish(
    run_id: str, key: str, lease: Lease, expected: int | None, *, join: bool, tenant: str = "t1"
) -> FinishAttempt:
    """Branch ``key`` succeeds; ``join``: the finisher decided the other branch is done, so the
    join becomes ready in the same transaction."""
    then = Transition(tenant, run_id, NOW + 1)
    if join:
        then.steps.append(StepUpdate("j", StepStatus.READY))
    output = f'"{key}"'.encode()
    delta = f'{{"{key}":1}}'.encode()
    return FinishAttempt(
        tenant, run_id, key, lease.fence, NOW + 1, output, delta, then, expected_version=expected
    )


async def statuses(store: SqlStore, run_id: str, tenant: str = "t1") -> dict[str, StepStatus]:
    return {s.key: s.status for s in await store.get_steps(tenant, run_id)}


# -- the run-level compare-and-set ----------------------------------------------------------


async def test_a_finish_from_a_stale_version_writes_nothing(store: SqlStore) -> None:
    leases = await started(store, "r1")
    assert await store.apply([finish("r1", "a", leases["a"], 0, join=False)]) == [1]
    events_before = await store.events("t1", "r1")
    # b decided from version 0, where a was still running: refused, nothing written.
    [refused] = await store.apply([finish("r1", "b", leases["b"], 0, join=False)])
    assert refused == VersionConflict("r1", expected=0, current=1)
    assert await statuses(store, "r1") == {
        "a": StepStatus.SUCCEEDED,
        "b": StepStatus.RUNNING,  # still b's attempt, with its lease
        "j": StepStatus.PENDING,
    }
    assert await store.events("t1", "r1") == events_before
    assert [v.version for v in await store.state_versions("t1", "r1")] == [0, 1]
    # Decided again from version 1 (a is done): b's finish makes the join ready.
    assert await store.apply([finish("r1", "b", leases["b"], 1, join=True)]) == [2]
    assert await statuses(store, "r1") == {
        "a": StepStatus.SUCCEEDED,
        "b": StepStatus.SUCCEEDED,
        "j": StepStatus.READY,
    }
    # Without an expected version nothing is compared (and the fence still decides).
    [late] = await store.apply([finish("r1", "b", leases["b"], None, join=True)])
    assert late is STALE


async def test_a_transition_from_a_stale_version_writes_nothing(store: SqlStore) -> None:
    leases = await started(store, "r1")
    await store.apply([finish("r1", "a", leases["a"], 0, join=False)])
    end = Transition(
        "t1",
        "r1",
        NOW + 2,
        steps=[StepUpdate("b", StepStatus.CANCELLED)],
        run=RunUpdate(RunStatus.CANCELLED),
        events=[NewEvent("run.cancelled")],
        audit=[AuditEntry("ops", "cancelled", "run:r1")],
        expected_version=0,
    )
    [refused] = await store.apply([end])
    assert refused == VersionConflict("r1", expected=0, current=1)
    run = await store.get_run("t1", "r1")
    assert (run.status, run.state_version) == (RunStatus.RUNNING, 1)
    assert "run.cancelled" not in [e.kind for e in await store.events("t1", "r1")]
    assert await store.audit_log("t1") == []
    end.expected_version = 1
    assert await store.apply([end]) == [True]
    assert (await store.get_run("t1", "r1")).status == RunStatus.CANCELLED
    assert len(await store.audit_log("t1")) == 1


async def test_a_version_conflict_fails_only_its_own_op_in_a_batch(store: SqlStore) -> None:
    leases = await started(store, "r1")
    other = await started(store, "r2")
    results = await store.apply(
        [
            finish("r1", "a", leases["a"], 0, join=False),
            finish("r1", "b", leases["b"], 0, join=False),  # decided from the same version
            finish("r2", "a", other["a"], 0, join=False),
        ]
    )
    assert results == [1, VersionConflict("r1", 0, 1), 1]
    assert (await statuses(store, "r1"))["b"] == StepStatus.RUNNING


async def test_an_expected_version_on_a_follow_on_is_refused(store: SqlStore) -> None:
    leases = await started(store, "r1")
    op = finish("r1", "a", leases["a"], None, join=False)
    op.then.expected_version = 0  # would be checked after the op had written
    with pytest.raises(TypeError, match="expected_version"):
        await store.apply([op])
    assert (await statuses(store, "r1"))["a"] == StepStatus.RUNNING


async def test_two_racing_finishers_of_parallel_branches_have_one_winner(
    store: SqlStore,
) -> None:
    """Each finisher read version 0, saw the other branch running and decided the join is not
    ready. Exactly one commits; the other re-reads, decides the join and commits that."""
    runs = [f"r{i}" for i in range(8)]
    leases = {r: await started(store, r) for r in runs}
    races = [
        store.apply([finish(r, k, leases[r][k], 0, join=False)]) for r in runs for k in ("a", "b")
    ]
    results = [x for [x] in await asyncio.gather(*races)]
    for i, r in enumerate(runs):
        pair = results[2 * i : 2 * i + 2]
        assert sorted(pair, key=str) == [1, VersionConflict(r, 0, 1)]
        loser = ("a", "b")[pair.index(VersionConflict(r, 0, 1))]
        assert await store.apply([finish(r, loser, leases[r][loser], 1, join=True)]) == [2]
        assert await statuses(store, r) == {
            "a": StepStatus.SUCCEEDED,
            "b": StepStatus.SUCCEEDED,
            "j": StepStatus.READY,
        }


@pytest.mark.postgres
async def test_postgres_finishers_in_two_processes_have_one_winner(postgres_url: str) -> None:
    """Two stores (two pools: what two processes have) finish both branches of each run from
    the same version: the run row's lock makes the second wait and then see the new version."""
    first, second = postgres_store(postgres_url), postgres_store(postgres_url)
    await first.open()
    await second.open()
    try:
        runs = [f"r{i}" for i in range(10)]
        leases = {r: await started(first, r) for r in runs}
        races = [
            s.apply([finish(r, k, leases[r][k], 0, join=False)])
            for r in runs
            for s, k in ((first, "a"), (second, "b"))
        ]
        results = [x for [x] in await asyncio.gather(*races)]
        for i, r in enumerate(runs):
            assert sorted(results[2 * i : 2 * i + 2], key=str) == [1, VersionConflict(r, 0, 1)]
            assert [v.version for v in await first.state_versions("t1", r)] == [0, 1]
            done = await statuses(first, r)
            assert sorted(done[k] for k in ("a", "b")) == [StepStatus.RUNNING, StepStatus.SUCCEEDED]
    finally:
        await first.close()
        await second.close()


# -- the tenant-scoped handle ---------------------------------------------------------------


async def test_a_forged_op_through_a_tenant_scope_fails_closed(store: SqlStore) -> None:
    await store.apply([branching_run("mine", "t1"), branching_run("theirs", "t2")])
    scoped = store.for_tenant("t1")
    forged = Transition(
        "t2", "theirs", NOW, run=RunUpdate(RunStatus.FAILED, error="forged"), events=[]
    )
    honest = Transition("t1", "mine", NOW, events=[NewEvent("noted")])
    with pytest.raises(PermissionDeniedError, match="'t2'") as refused:
        await scoped.apply([honest, forged])
    assert refused.value.fields["index"] == 1
    # Nothing of the batch was written: not the forged op, not the honest one before it.
    assert (await store.get_run("t2", "theirs")).status == RunStatus.RUNNING
    assert "noted" not in [e.kind for e in await store.events("t1", "mine")]
    # A forged CreateRun (the run record names the tenant) and a system-scoped op: refused.
    with pytest.raises(PermissionDeniedError):
        await scoped.apply([branching_run("planted", "t2")])
    with pytest.raises(PermissionDeniedError, match="system"):
        await scoped.apply([RecoverOrphans(NOW)])
    assert [r.id for r in await store.list_runs("t2")] == ["theirs"]
    # The tenant's own ops go through, with their results.
    assert await scoped.apply([honest]) == [True]
    assert "noted" in [e.kind for e in await store.events("t1", "mine")]


@pytest.mark.postgres
async def test_postgres_a_scoped_batch_runs_in_the_callers_tenant_scope(
    postgres_url: str,
) -> None:
    """The second wall: were the check skipped, the batch still runs as the caller's tenant,
    and row-level security refuses the forged op's rows (the op's tenant is not trusted)."""
    pg = postgres_store(postgres_url)
    await pg.open()
    try:
        await pg.apply([branching_run("mine", "t1"), branching_run("theirs", "t2")])
        forged = Transition("t2", "theirs", NOW, events=[NewEvent("forged")])
        with pytest.raises(StoreError, match="row-level security"):
            await pg._apply_as("t1", [forged])
        assert "forged" not in [e.kind for e in await pg.events("t2", "theirs")]
        # The scope's own ops are written as the scope's tenant.
        honest = Transition("t1", "mine", NOW, events=[NewEvent("noted")])
        assert await pg.for_tenant("t1").apply([honest]) == [True]
        assert "noted" in [e.kind for e in await pg.events("t1", "mine")]
    finally:
        await pg.close()
