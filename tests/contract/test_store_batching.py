"""The store contract, continued: a batch's rows are what its ops write one by one.

Run on the in-memory store, SQLite and PostgreSQL. Both SQL stores hold a batch's append-only
rows (events, state versions, new steps, usage) and insert them later in the transaction
(PostgreSQL as multi-row statements, SQLite with one ``executemany`` per text), usage rows
of one tenant, day, metric and dimension summed first; a finish that ends the run sets the
run's new state version in the run's one ``UPDATE``. Each test here fails if one of those
merges went too far: usage summed across tenants, days, dimensions or commits, held rows
sent after a statement that reads or deletes their table, events out of their ops' order, a
refused op's held rows kept, a version written twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tenantflow.adapters.memory import MemoryStore
from tenantflow.adapters.sql_store import SqlStore
from tenantflow.adapters.sqlite import SqliteStore
from tenantflow.domain.records import (
    CreateRun,
    FinishAttempt,
    Lease,
    NewEvent,
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
from tenantflow.domain.tenancy import PurgeRuns, UsageDelta
from tenantflow.errors import NotFoundError

if TYPE_CHECKING:
    from tenantflow.adapters.postgres import PostgresStore

NOW = 1_800_000_000.0  # 2027-01-15 UTC
DAY = 86_400.0
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
        s = SqliteStore(tmp_path / "batch.db")
    else:
        s = postgres_store(request.getfixturevalue("postgres_url"))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def new_run(run_id: str, tenant: str = "t1", keys: tuple[str, ...] = ("a", "b")) -> CreateRun:
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
        StepRecord(run_id, tenant, k, StepStatus.READY if i == 0 else StepStatus.PENDING)
        for i, k in enumerate(keys)
    ]
    return CreateRun(record, steps, [NewEvent("run.submitted")])


def used(tenant: str, run_id: str, at: float, *usage: UsageDelta) -> Transition:
    return Transition(tenant, run_id, at, usage=list(usage))


async def totals(store: SqlStore, tenant: str) -> dict[tuple[str, str, str], Any]:
    return {(u["day"], u["metric"], u["dim"]): u["value"] for u in await store.usage(tenant)}


async def test_usage_is_summed_per_tenant_day_metric_and_dim_and_adds_across_commits(
    store: SqlStore,
) -> None:
    await store.apply([new_run("r1", "t1"), new_run("r2", "t2")])
    steps = "steps"
    await store.apply(
        [
            used("t1", "r1", NOW, UsageDelta(steps, 1.0)),
            used("t2", "r2", NOW, UsageDelta(steps, 2.0)),  # another tenant, same key
            used("t1", "r1", NOW + DAY, UsageDelta(steps, 4.0)),  # the next day
            used(
                "t1",
                "r1",
                NOW,
                UsageDelta("tokens_in", 8.0, "m"),
                UsageDelta("tokens_in", 16.0, "n"),
            ),
            used("t1", "r1", NOW, UsageDelta(steps, 32.0)),
        ]
    )
    today, tomorrow = "2027-01-15", "2027-01-16"
    assert await totals(store, "t1") == {
        (today, "steps", ""): 33.0,
        (tomorrow, "steps", ""): 4.0,
        (today, "tokens_in", "m"): 8.0,
        (today, "tokens_in", "n"): 16.0,
    }
    assert await totals(store, "t2") == {(today, "steps", ""): 2.0}
    # A later commit adds to the rows the first one wrote.
    await store.apply([used("t1", "r1", NOW, UsageDelta(steps, 64.0))])
    assert (await totals(store, "t1"))[(today, "steps", "")] == 97.0
    assert await totals(store, "t2") == {(today, "steps", ""): 2.0}


async def test_a_refused_ops_held_rows_are_dropped_with_it(store: SqlStore) -> None:
    # A run whose two steps share a key: its steps' INSERT is held and refused at the end of
    # the batch. The batch is then applied op by op: the good ops' rows are written once (not
    # summed with those of the failed attempt), the refused op leaves nothing.
    await store.apply([new_run("r1")])
    bad = new_run("bad", keys=("a", "a"))
    results = await store.apply(
        [used("t1", "r1", NOW, UsageDelta("steps", 1.0)), bad, new_run("r2")]
    )
    assert results[0] is True and isinstance(results[1], Exception) and results[2].created
    assert await totals(store, "t1") == {("2027-01-15", "steps", ""): 1.0}
    with pytest.raises(NotFoundError):
        await store.get_run("t1", "bad")
    assert await store.events("t1", "bad") == []
    assert await store.state_versions("t1", "bad") == []
    assert [e.kind for e in await store.events("t1", "r2")] == ["run.submitted"]


async def test_held_rows_are_written_before_a_statement_that_deletes_from_their_table(
    store: SqlStore,
) -> None:
    # The run is created and ended in the batch that purges it: its events, steps and state
    # version, held until then, must be there for the purge to delete.
    end = RunUpdate(RunStatus.COMPLETED, result_json=b"1")
    [created, ended, deleted] = await store.apply(
        [
            new_run("old"),
            Transition("t1", "old", NOW + 1, run=end, events=[NewEvent("x")]),
            PurgeRuns("t1", NOW + 50, NOW + 60),
        ]
    )
    assert created.created and ended is True
    assert (deleted["runs"], deleted["events"], deleted["steps"]) == (1, 2, 2)
    assert await store.events("t1", "old") == []
    assert await store.state_versions("t1", "old") == []
    assert await store.get_steps("t1", "old") == []


async def test_events_of_one_batch_keep_the_order_of_their_ops(store: SqlStore) -> None:
    await store.apply([new_run("r1"), new_run("r2")])
    await store.apply(
        [
            Transition("t1", "r1", NOW, events=[NewEvent("x1"), NewEvent("x2")]),
            Transition("t1", "r2", NOW, events=[NewEvent("y1")]),
            StartAttempt("t1", "r1", "a", "owner-1", NOW, NOW + 30),
            Transition("t1", "r1", NOW, events=[NewEvent("x3")]),
        ]
    )
    r1 = await store.events("t1", "r1")
    r2 = await store.events("t1", "r2")
    assert [e.kind for e in r1] == ["run.submitted", "x1", "x2", "step.started", "x3"]
    by_kind = {e.kind: e.id for e in r1 + r2}
    order = ["x1", "x2", "y1", "step.started", "x3"]
    assert sorted(order, key=by_kind.__getitem__) == order


async def test_a_finish_that_ends_the_run_writes_its_version_once(store: SqlStore) -> None:
    # Ending the run: the new version goes in the run's UPDATE. With a follow-on step update
    # that makes a version of its own, the finish's version must be written first.
    await store.apply([new_run("r1"), new_run("r2")])
    [l1, l2] = await store.apply(
        [StartAttempt("t1", r, "a", "owner-1", NOW, NOW + 30) for r in ("r1", "r2")]
    )
    assert isinstance(l1, Lease) and isinstance(l2, Lease)
    done = RunUpdate(RunStatus.COMPLETED, result_json=b"7")
    end = Transition("t1", "r1", NOW + 1, run=done)
    gather = Transition(
        "t1",
        "r2",
        NOW + 1,
        steps=[StepUpdate("b", StepStatus.SUCCEEDED, output_json=b"8", delta_json=b'{"b":8}')],
        run=done,
    )
    results = await store.apply(
        [
            FinishAttempt("t1", "r1", "a", l1.fence, NOW + 1, b"7", b'{"a":7}', end),
            FinishAttempt("t1", "r2", "a", l2.fence, NOW + 1, b"7", b'{"a":7}', gather),
        ]
    )
    assert results == [1, 1]
    h0 = next_state_hash("", 0, None, b'{"x":1}')
    h1 = next_state_hash(h0, 1, "a", b'{"a":7}')
    h2 = next_state_hash(h1, 2, "b", b'{"b":8}')
    for run_id, chain in (("r1", [(0, h0), (1, h1)]), ("r2", [(0, h0), (1, h1), (2, h2)])):
        versions = await store.state_versions("t1", run_id)
        assert [(v.version, v.hash) for v in versions] == chain
        run = await store.get_run("t1", run_id)
        assert (run.state_version, run.state_hash) == chain[-1]
        assert (run.status, run.result_json, run.finished_at) == (
            RunStatus.COMPLETED,
            b"7",
            NOW + 1,
        )
        assert run.updated_at == NOW + 1
