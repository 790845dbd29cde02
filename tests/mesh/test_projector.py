"""The projector builds the read model (runs, steps, timeline, state versions) from the
execution log alone, into a SQLite store: a projector killed mid-stream (an entry applied and
not acknowledged) and started again builds exactly the read model of one that never crashed,
and a replay of the whole stream writes nothing."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.adapters import open_store
from tenantflow.adapters.nats.log import ExecutionLog
from tenantflow.placement.mesh.agent import AgentOptions, close_agent, open_agent
from tenantflow.placement.mesh.projector import Projector
from tenantflow.selftest.workload import STEPS, WORKFLOW, setup, tenant_of

from .helpers import create_tenants, submitter, wait_all, wait_log

pytestmark = pytest.mark.timeout(90)

RUNS = 6
TABLES = {
    "runs": "SELECT id, tenant_id, workflow, status, input, result, error, state_version,"
    " state_hash, meta, created_at, updated_at, finished_at FROM runs ORDER BY id",
    "steps": "SELECT * FROM steps ORDER BY run_id, key",
    "events": "SELECT * FROM events ORDER BY id",
    "state_versions": "SELECT * FROM state_versions ORDER BY run_id, version",
}


def _dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(path) as conn:
        return {name: conn.execute(sql).fetchall() for name, sql in TABLES.items()}


class _Crashing(Projector):
    """Dies (its task cancelled) right after applying its ``crash_after``-th entry, before
    acknowledging it."""

    def __init__(self, *args: Any, crash_after: int, **options: Any) -> None:
        super().__init__(*args, **options)
        self.crash_after = crash_after
        self.crashed = asyncio.Event()

    async def _project(self, msg: Any) -> None:
        if self.stats.applied + 1 == self.crash_after:
            ack = msg.ack

            async def no_ack() -> None:
                self.crashed.set()
                raise asyncio.CancelledError  # the process died here

            msg.ack = no_ack
            try:
                await super()._project(msg)
            finally:
                msg.ack = ack
            return
        await super()._project(msg)


async def _drain(projector: Projector, entries: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while projector.stats.applied + projector.stats.seen < entries:
        assert time.monotonic() < deadline, (projector.stats, entries)
        await asyncio.sleep(0.05)


async def test_a_crashed_projector_resumes_to_the_same_read_model(
    mesh_server: Any, admin: Any, postgres_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("TF_SELFTEST_STEP_MS", "1,3")
    await create_tenants(postgres_url)
    driver, store = await submitter(postgres_url, admin, "eu")
    options = AgentOptions(
        postgres_url,
        mesh_server.url,
        mesh_server.creds["agent-eu"],
        ["eu"],
        default_region="eu",
        sweep=False,
        setups=(setup,),
    )
    agent = await open_agent(options)
    try:
        runs = []
        for i in range(RUNS):
            runs.append((tenant_of(i), await driver.submit(tenant_of(i), WORKFLOW, {"i": i})))
        await wait_all(store, runs)
        log = ExecutionLog(admin)
        entries = 0
        for tenant, run_id in runs:
            timeline = await wait_log(log, "eu", tenant, run_id)
            entries += sum(1 for e in timeline if e["subject"].endswith(".state"))
    finally:
        await close_agent(*agent)
    assert entries > RUNS  # several entries per run: there is a middle to crash in

    reference_path, crashed_path = tmp_path / "reference.db", tmp_path / "crashed.db"
    reference, crashed = (open_store(f"sqlite:///{p}") for p in (reference_path, crashed_path))
    for s in (reference, crashed):
        await s.open()
    try:
        async with Projector(admin, reference, ["eu"], durable="reference") as straight:
            await _drain(straight, entries)
        assert straight.stats.applied == entries and straight.stats.seen == 0

        first = _Crashing(admin, crashed, ["eu"], durable="crashy", ack_wait_s=1.0, crash_after=4)
        await first.start()
        await asyncio.wait_for(first.crashed.wait(), 20)
        await asyncio.sleep(0.1)
        await first.close()
        assert first.stats.applied == 4  # the 4th applied, never acknowledged
        async with Projector(
            admin, crashed, ["eu"], durable="crashy", ack_wait_s=1.0
        ) as second:  # same consumer: it resumes after the last acknowledged entry
            await _drain(second, entries - 3)
        assert second.stats.applied == entries - 4
        assert second.stats.seen == 1  # the entry applied before the crash, delivered again

        expected = _dump(reference_path)
        assert _dump(crashed_path) == expected
        assert len(expected["runs"]) == RUNS
        assert len(expected["steps"]) == RUNS * len(STEPS)
        # The read model answers the API's reads, as the write model does.
        for tenant, run_id in runs:
            projected, written = (
                await crashed.get_run(tenant, run_id),
                await store.get_run(tenant, run_id),
            )
            assert projected.status == written.status == tf.RunStatus.COMPLETED
            assert projected.result_json == written.result_json
            assert projected.state_version == written.state_version
            p_steps = {
                s.key: (s.status, s.output_json) for s in await crashed.get_steps(tenant, run_id)
            }
            w_steps = {
                s.key: (s.status, s.output_json) for s in await store.get_steps(tenant, run_id)
            }
            assert p_steps == w_steps
            p_events = [(e.kind, e.step, e.data) for e in await crashed.events(tenant, run_id)]
            w_events = [(e.kind, e.step, e.data) for e in await store.events(tenant, run_id)]
            assert p_events == w_events
            p_versions = await crashed.state_versions(tenant, run_id)
            w_versions = await store.state_versions(tenant, run_id)
            assert [(v.version, v.delta_json, v.hash) for v in p_versions] == [
                (v.version, v.delta_json, v.hash) for v in w_versions
            ]

        # A replay of the whole stream (a new consumer) writes nothing.
        async with Projector(admin, crashed, ["eu"], durable="replay") as replay:
            await _drain(replay, entries)
        assert replay.stats.applied == 0 and replay.stats.seen == entries
        assert _dump(crashed_path) == expected
    finally:
        await reference.close()
        await crashed.close()
        await driver.queue.close()
        await driver.close()
        await store.close()


async def test_the_mesh_control_plane_reads_runs_from_a_sqlite_read_model(
    mesh_server: Any, admin: Any, postgres_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    from tenantflow.placement.centralized import open_front
    from tenantflow.placement.mesh.control import MeshControl

    monkeypatch.setenv("TF_SELFTEST_STEP_MS", "1,3")
    front = open_front(postgres_url)
    setup(front)
    control = MeshControl(
        front,
        nats_url=mesh_server.url,
        creds=mesh_server.creds["admin"],
        regions=["eu"],
        default_region="eu",
        read_model=f"sqlite:///{tmp_path / 'read.db'}",
    )
    await control.start()
    options = AgentOptions(
        postgres_url,
        mesh_server.url,
        mesh_server.creds["agent-eu"],
        ["eu"],
        default_region="eu",
        sweep=False,
        setups=(setup,),
    )
    agent = await open_agent(options)
    try:
        await control.tenants.create("acme")
        run_id = (await control.submit(WORKFLOW, tenant="acme", input={"i": 3})).id
        first = await control.get_run("acme", run_id)  # projected before submit returned
        assert first.id == run_id and first.workflow == WORKFLOW
        deadline = time.monotonic() + 20
        while (await control.get_run("acme", run_id)).status != tf.RunStatus.COMPLETED:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        written = front.router.store_for_tenant("acme")
        kinds = [e.kind for e in await control.timeline("acme", run_id)]
        assert kinds == [e.kind for e in await written.events("acme", run_id)]
        assert kinds[0] == "run.submitted" and kinds[-1] == "run.completed"
        tail = await control.events_after(
            "acme", run_id, (await control.timeline("acme", run_id))[-2].id
        )
        assert [e.kind for e in tail] == ["run.completed"]
        versions = await control.versions("acme", run_id)
        assert [v.version for v in versions] == list(range(len(STEPS) + 1))
        assert (await control.state("acme", run_id)).state == (
            await front.state("acme", run_id)
        ).state
        # The reads come from the projection: a run the projector has not seen is not there.
        assert control.projector is not None
        await control.projector.close()
        driver, store = await submitter(postgres_url, admin, "eu")
        try:
            unseen = await driver.submit("acme", WORKFLOW, {"i": 4})
        finally:
            await driver.queue.close()
            await driver.close()
            await store.close()
        with pytest.raises(tf.NotFoundError):
            await control.get_run("acme", unseen)
        await control.projector.start()  # resumes where it stopped
        assert await control.projector.wait_for(unseen, 20)
        assert (await control.get_run("acme", unseen)).id == unseen
    finally:
        await close_agent(*agent)
        await control.close()


async def test_projecting_into_postgresql(
    mesh_server: Any,
    admin: Any,
    postgres_url: str,
    postgres_empty_url: str,
    monkeypatch: Any,
) -> None:
    """The same projection into a PostgreSQL read model (its own schema, in the tenant's
    row-level-security scope): what it holds equals the write model, and a replay writes
    nothing."""
    monkeypatch.setenv("TF_SELFTEST_STEP_MS", "1,3")
    await create_tenants(postgres_url)
    driver, store = await submitter(postgres_url, admin, "eu")
    options = AgentOptions(
        postgres_url,
        mesh_server.url,
        mesh_server.creds["agent-eu"],
        ["eu"],
        default_region="eu",
        sweep=False,
        setups=(setup,),
    )
    agent = await open_agent(options)
    read = open_store(postgres_empty_url)
    await read.open()
    try:
        runs = []
        for i in range(3):
            runs.append((tenant_of(i), await driver.submit(tenant_of(i), WORKFLOW, {"i": i})))
        await wait_all(store, runs)
        log = ExecutionLog(admin)
        entries = 0
        for tenant, run_id in runs:
            timeline = await wait_log(log, "eu", tenant, run_id)
            entries += sum(1 for e in timeline if e["subject"].endswith(".state"))
        async with Projector(admin, read, ["eu"], durable="pg") as projector:
            await _drain(projector, entries)
        assert projector.stats.applied == entries
        for tenant, run_id in runs:
            projected, written = (
                await read.get_run(tenant, run_id),
                await store.get_run(tenant, run_id),
            )
            assert (projected.status, projected.result_json, projected.state_version) == (
                written.status,
                written.result_json,
                written.state_version,
            )
            p_steps = [
                (s.key, s.status, s.output_json) for s in await read.get_steps(tenant, run_id)
            ]
            w_steps = [
                (s.key, s.status, s.output_json) for s in await store.get_steps(tenant, run_id)
            ]
            assert sorted(p_steps) == sorted(w_steps)
            p_events = [(e.kind, e.step, e.data) for e in await read.events(tenant, run_id)]
            assert p_events == [
                (e.kind, e.step, e.data) for e in await store.events(tenant, run_id)
            ]
            p_versions = [(v.version, v.hash) for v in await read.state_versions(tenant, run_id)]
            w_versions = [(v.version, v.hash) for v in await store.state_versions(tenant, run_id)]
            assert p_versions == w_versions
        before = [len(await read.events(t, r)) for t, r in runs]
        async with Projector(admin, read, ["eu"], durable="pg_replay") as replay:
            await _drain(replay, entries)
        assert replay.stats.applied == 0 and replay.stats.seen == entries
        assert [len(await read.events(t, r)) for t, r in runs] == before
    finally:
        await read.close()
        await close_agent(*agent)
        await driver.queue.close()
        await driver.close()
        await store.close()
