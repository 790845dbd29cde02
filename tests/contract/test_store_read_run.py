"""The store contract: ``read_run`` answers in one read what ``get_run``, ``get_steps``,
``events`` and ``state_versions`` answer one by one, inside the caller's tenant. Run on the
in-memory store, SQLite and PostgreSQL (where its statements go in one round trip)."""

from __future__ import annotations

import pytest
from tests.contract.test_store_batching import NOW, new_run, store  # noqa: F401 - the fixture

from tenantflow.adapters.sql_store import SqlStore
from tenantflow.domain.records import FinishAttempt, NewEvent, StartAttempt, StepUpdate, Transition
from tenantflow.domain.records import StepStatus as S
from tenantflow.errors import NotFoundError


async def _a_run_with_history(store: SqlStore) -> None:  # noqa: F811
    await store.apply([new_run("r1"), new_run("other", "t2")])
    [lease] = await store.apply([StartAttempt("t1", "r1", "a", "owner", NOW, NOW + 30)])
    assert lease is not None
    then = Transition(
        "t1", "r1", NOW + 1, steps=[StepUpdate("b", S.READY)], events=[NewEvent("x1")]
    )
    finish = FinishAttempt("t1", "r1", "a", lease.fence, NOW + 1, b'"out"', b'{"a":1}', then)
    [version] = await store.apply([finish])
    assert version == 1
    await store.apply([Transition("t1", "r1", NOW + 2, events=[NewEvent("x2")])])


async def test_read_run_is_the_reads_one_by_one(store: SqlStore) -> None:  # noqa: F811
    await _a_run_with_history(store)
    read = await store.read_run("t1", "r1", events_after=0, versions_after=-1)
    assert read.run == await store.get_run("t1", "r1")
    assert read.steps == await store.get_steps("t1", "r1")
    assert read.events == await store.events("t1", "r1")
    assert read.versions == await store.state_versions("t1", "r1")
    assert len(read.events) >= 3 and len(read.versions) >= 2
    assert read.run.state_version == read.versions[-1].version


async def test_read_run_reads_only_what_is_newer_and_only_what_is_asked(
    store: SqlStore,  # noqa: F811
) -> None:
    await _a_run_with_history(store)
    every = await store.events("t1", "r1")
    read = await store.read_run("t1", "r1", events_after=every[1].id, versions_after=0)
    assert read.events == every[2:]
    assert [v.version for v in read.versions] == [
        v.version for v in await store.state_versions("t1", "r1") if v.version > 0
    ]
    bare = await store.read_run("t1", "r1")
    assert (bare.events, bare.versions) == ([], [])
    assert bare.steps == read.steps


async def test_read_run_sees_only_the_callers_tenant(store: SqlStore) -> None:  # noqa: F811
    await _a_run_with_history(store)
    with pytest.raises(NotFoundError):
        await store.read_run("t2", "r1", events_after=0, versions_after=-1)
    with pytest.raises(NotFoundError):
        await store.read_run("t1", "other")
