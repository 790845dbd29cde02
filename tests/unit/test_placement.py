"""Placements compose engines; the API and the CLI see only the control plane and its views."""

from __future__ import annotations

import asyncio

import pytest

import tenantflow as tf
from tenantflow.placement import ControlPlane, RunSnapshot
from tenantflow.placement.centralized import open_front, open_worker
from tenantflow.placement.embedded import open_embedded
from tenantflow.testing import FakeClock


def _plane(engine: tf.Engine) -> ControlPlane:
    return engine  # what the API and the CLI are given


async def test_an_embedded_placement_executes_and_shows_runs_as_read_only_views() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    wf = tf.Workflow("held", input=int)

    @wf.step
    async def only(ctx: tf.StepContext, input: int) -> int:
        started.set()
        await release.wait()
        return input * 2

    engine = open_embedded("memory://", clock=FakeClock(), auto_tenant="standard", slots=4)
    assert engine.cluster is None and engine.config.slots == 4
    plane = _plane(engine)
    engine.register(wf)
    async with engine:
        run = await plane.submit("held", tenant="t1", input=21)
        await started.wait()
        view = plane.run_snapshot("t1", run.id)
        assert view == RunSnapshot(
            run.id, "t1", tf.RunStatus.RUNNING, "held", wf.spec.version, "normal"
        )
        assert plane.run_snapshot("t2", run.id) is None  # another tenant's run is not seen
        with pytest.raises(AttributeError):
            view.status = tf.RunStatus.COMPLETED  # type: ignore[misc]
        release.set()
        assert await run.result() == 42
        assert plane.run_snapshot("t1", run.id) is None  # no longer executing here
        await plane.ready(1.0)
        events = await plane.events_after("t1", run.id, 0)
        assert [e.kind for e in events] == [e.kind for e in await plane.timeline("t1", run.id)]
        assert await plane.events_after("t1", run.id, events[-1].id) == []


def test_placements_refuse_what_they_cannot_be() -> None:
    with pytest.raises(tf.ConfigurationError, match="centralized"):
        open_embedded("memory://", cluster="worker")
    with pytest.raises(tf.ConfigurationError, match="PostgreSQL"):
        open_front("memory://")
    with pytest.raises(tf.ConfigurationError, match="PostgreSQL"):
        open_worker("memory://")
    with pytest.raises(tf.ConfigurationError, match="unknown engine option 'slot'"):
        open_embedded("memory://", slot=3)
    with pytest.raises(tf.ConfigurationError, match="slots must be at least 1"):
        tf.EngineConfig(slots=0)
