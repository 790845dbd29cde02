"""Run ids: ``run_`` and 24 hex digits, the creation time's milliseconds first, so that ids of
runs created together sort together (the store's indexes keyed by run id then take a burst's
writes on a few pages, not one random page each)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import tenantflow as tf
from tenantflow.adapters.sqlite import SqliteStore
from tenantflow.domain.ids import new_review_id, new_run_id
from tenantflow.testing import FakeClock

_ID = re.compile(r"^run_[0-9a-f]{24}$")


def test_an_id_carries_its_creation_millisecond_then_random_digits() -> None:
    run_id = new_run_id(1_800_000_000.1234)
    assert _ID.match(run_id)
    assert int(run_id[4:16], 16) == 1_800_000_000_123


def test_ids_sort_in_the_order_their_runs_were_created() -> None:
    times = [1_700_000_000.0, 1_700_000_000.001, 1_700_000_001.0, 1_700_086_400.0, 2_000_000_000.0]
    ids = [new_run_id(t) for t in times]
    assert sorted(ids) == ids


def test_ids_made_in_the_same_millisecond_differ() -> None:
    ids = {new_run_id(1_800_000_000.0) for _ in range(20_000)}
    assert len(ids) == 20_000
    assert len({i[4:16] for i in ids}) == 1


def test_review_ids_are_random() -> None:
    ids = {new_review_id() for _ in range(1_000)}
    assert len(ids) == 1_000
    assert all(re.fullmatch(r"rev_[0-9a-f]{20}", i) for i in ids)


@pytest.mark.parametrize("now", [0.0, -1.0, 1e20])
def test_a_time_out_of_range_still_makes_a_well_formed_id(now: float) -> None:
    assert _ID.match(new_run_id(now))


async def test_the_engine_names_runs_by_their_creation_time(tmp_path: Path) -> None:
    wf = tf.Workflow("ids", input=int)

    @wf.step
    async def only(ctx: tf.StepContext, input: int) -> int:
        return input

    clock = FakeClock(start=1_800_000_000.0)
    config = tf.EngineConfig(auto_tenant="standard")
    made = []
    async with tf.Engine(SqliteStore(tmp_path / "ids.db"), config, clock=clock) as engine:
        engine.register(wf)
        for i in range(3):
            handle = await engine.submit("ids", tenant="t1", input=i)
            made.append(handle.id)
            clock.advance(2.5)
        records = [await engine.get_run("t1", run_id) for run_id in made]
    assert sorted(made) == made
    for record in records:
        assert _ID.match(record.id)
        assert int(record.id[4:16], 16) == int(record.created_at * 1000)
