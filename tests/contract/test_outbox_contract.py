"""The side-effect outbox on every store (memory, SQLite, PostgreSQL): a row per fx.enqueued
event in the same transaction, tenant-scoped marks and outcomes, and refusals across tenants."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.contract.test_store_contract import NOW, STORES, make_store, new_run

from tenantflow.domain.outbox import (
    FX_DEAD_LETTERED,
    FX_DELIVERED,
    FX_ENQUEUED,
    FX_FAILED,
    MarkPublished,
    RecordFxOutcome,
)
from tenantflow.domain.records import NewEvent, StepStatus, StepUpdate, Transition
from tenantflow.errors import PermissionDeniedError
from tenantflow.ports import Store


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = make_store(request.param, request, tmp_path)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def enqueue(run_id: str, tenant: str, step: str = "notify") -> Transition:
    data = {"outbox_id": f"{run_id}:{step}", "workflow": "wf", "version": "1", "args": {"a": 1}}
    return Transition(
        tenant,
        run_id,
        NOW + 1,
        steps=[StepUpdate(step, StepStatus.SUCCEEDED, output_json=b"null")],
        events=[NewEvent(FX_ENQUEUED, step, None, data)],
    )


async def test_an_fx_enqueued_event_is_an_outbox_row_of_its_tenant(store: Store) -> None:
    await store.apply([new_run("r1"), new_run("x1", tenant="t2")])
    await store.apply([enqueue("r1", "t1"), enqueue("x1", "t2")])
    rows = await store.outbox(None)  # type: ignore[attr-defined]
    assert [(r.id, r.tenant_id, r.run_id, r.step) for r in rows] == [
        ("r1:notify", "t1", "r1", "notify"),
        ("x1:notify", "t2", "x1", "notify"),
    ]
    assert rows[0].payload["args"] == {"a": 1} and rows[0].published_at is None
    mine = await store.outbox("t1")  # type: ignore[attr-defined]
    assert [r.id for r in mine] == ["r1:notify"]


async def test_an_outbox_row_exists_only_if_its_transition_committed(store: Store) -> None:
    await store.apply([new_run("r1")])
    with pytest.raises(PermissionDeniedError):  # the batch is refused: nothing is written
        await store.for_tenant("t1").apply([enqueue("r1", "t1"), MarkPublished("t2", [], NOW)])  # type: ignore[attr-defined]
    assert await store.outbox(None) == []  # type: ignore[attr-defined]


async def test_marks_and_outcomes_touch_only_their_tenants_rows(store: Store) -> None:
    await store.apply([new_run("r1"), new_run("x1", tenant="t2")])
    await store.apply([enqueue("r1", "t1"), enqueue("x1", "t2")])
    # Another tenant's id: nothing marked, nothing recorded.
    assert await store.apply([MarkPublished("t1", ["x1:notify"], NOW + 2)]) == [0]
    forged = RecordFxOutcome("t1", "x1", "x1:notify", "notify", FX_DELIVERED, NOW + 2)
    assert await store.apply([forged]) == [False]
    with pytest.raises(PermissionDeniedError):
        await store.for_tenant("t1").apply([MarkPublished("t2", ["x1:notify"], NOW)])  # type: ignore[attr-defined]
    [mark] = await store.for_tenant("t1").apply([MarkPublished("t1", ["r1:notify"], NOW + 2)])  # type: ignore[attr-defined]
    assert mark == 1
    assert [r.id for r in await store.outbox(None, unpublished=True)] == ["x1:notify"]  # type: ignore[attr-defined]
    assert await store.apply([MarkPublished("t1", ["r1:notify"], NOW + 3)]) == [0]  # once
    events = await store.events("t2", "x1")
    assert [e.kind for e in events].count(FX_DELIVERED) == 0


async def test_a_final_outcome_is_recorded_once_and_settles_the_row(store: Store) -> None:
    await store.apply([new_run("r1")])
    await store.apply([enqueue("r1", "t1")])
    failed = RecordFxOutcome("t1", "r1", "r1:notify", "notify", FX_FAILED, NOW + 2, {"attempt": 1})
    done = RecordFxOutcome("t1", "r1", "r1:notify", "notify", FX_DELIVERED, NOW + 3)
    assert await store.apply([failed, done, done]) == [True, True, False]
    assert await store.apply([failed]) == [False]  # settled: a late failure is not recorded
    assert await store.outbox(None) == []  # type: ignore[attr-defined]
    kinds = [(e.kind, e.step) for e in await store.events("t1", "r1")]
    assert kinds[-3:] == [
        (FX_ENQUEUED, "notify"),
        (FX_FAILED, "notify"),
        (FX_DELIVERED, "notify"),
    ]
    dead = RecordFxOutcome("t1", "r1", "r1:notify", "notify", FX_DEAD_LETTERED, NOW + 4)
    assert await store.apply([dead]) == [False]
