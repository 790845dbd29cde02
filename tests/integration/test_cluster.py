"""Workers sharing one PostgreSQL database, in one process: a front that queues, workers that
each drive the tenants they own, commands passed to the owner, and takeover when a worker goes.

(The multi-process test with SIGKILL is tests/reliability/test_cluster_kill.py.)
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

import tenantflow as tf
from tenantflow.domain.cluster import ENDED, Notice, assign, owners
from tenantflow.engine import ends as ends_module
from tenantflow.engine import runs as runs_module
from tenantflow.placement.centralized import open_front, open_worker

pytest.importorskip("psycopg", reason="the postgres extra is not installed")

pytestmark = [pytest.mark.timeout(90), pytest.mark.postgres]

LEASE = timedelta(seconds=1)
TENANTS = ("bank-a", "bank-b", "bank-c", "bank-d", "bank-e", "bank-f")
MANY = tuple(f"bank-{i}" for i in range(12))


def steps_workflow(executed: Counter[str], gate: asyncio.Event) -> tf.Workflow:
    """Three steps; the middle one waits for ``gate`` (so runs can be caught in flight)."""
    wf = tf.Workflow("three", input=int)

    @wf.step
    async def first(ctx: tf.StepContext, input: int) -> int:
        executed[f"{ctx.run_id}:first"] += 1
        return input + 1

    @wf.step
    async def second(ctx: tf.StepContext, first: int) -> int:
        await gate.wait()
        executed[f"{ctx.run_id}:second"] += 1
        return first * 2

    @wf.step
    async def third(ctx: tf.StepContext, second: int) -> int:
        executed[f"{ctx.run_id}:third"] += 1
        return second + 1

    return wf


def review_workflow() -> tf.Workflow:
    wf = tf.Workflow("approve", input=str)

    @wf.review(pool="credit")
    async def check(ctx: tf.StepContext, input: str) -> dict[str, str]:
        return {"applicant": input}

    @wf.step
    async def decide(ctx: tf.StepContext, check: tf.ReviewDecision) -> str:
        return "approved" if check.approved else "rejected"

    return wf


def engine(url: str, role: str, executed: Counter[str], gate: asyncio.Event) -> tf.Engine:
    place = {"front": open_front, "worker": open_worker}[role]
    e = place(url, lease=LEASE, slots=8)
    e.register(steps_workflow(executed, gate))
    e.register(review_workflow())
    return e


@asynccontextmanager
async def bank_a_on_a_worker(
    url: str, executed: Counter[str], gate: asyncio.Event
) -> AsyncIterator[tuple[tf.Engine, tf.Engine]]:
    """A worker and a front; tenant ``bank-a`` created and driven by the worker."""
    async with (
        engine(url, "worker", executed, gate) as worker,
        engine(url, "front", executed, gate) as front,
    ):
        await front.tenants.create("bank-a", tier="standard")
        await until(lambda: "bank-a" in worker.membership.owned)
        yield worker, front


async def until(predicate: object, seconds: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def test_rendezvous_spreads_tenants_evenly_and_moves_few_when_a_worker_joins() -> None:
    tenants = [f"t{i}" for i in range(3000)]
    two, three = owners(tenants, ["w1", "w2"]), owners(tenants, ["w1", "w2", "w3"])
    assert Counter(three.values()) == {"w1": 1000, "w2": 1000, "w3": 1000}
    moved = [t for t in tenants if two[t] != three[t]]
    to_new = [t for t in moved if three[t] == "w3"]
    assert len(to_new) == 1000 and len(moved) - len(to_new) <= 30  # almost only to the new one
    assert sorted(assign(tenants, ["w1", "w2", "w3"], "w1")) == sorted(
        t for t, w in three.items() if w == "w1"
    )
    # A tenant more or less moves (almost) no other tenant; no worker alive owns nothing.
    more = owners([*tenants, "new"], ["w1", "w2", "w3"])
    assert sum(more[t] != three[t] for t in tenants) <= 30
    assert owners(tenants, []) == {}


def test_few_tenants_are_spread_within_one_of_each_other() -> None:
    # Plain rendezvous hashing leaves e.g. 13/12/5 here; the bounded loads do not.
    for n in range(1, 40):
        tenants = [f"t{i}" for i in range(n)]
        counts = Counter(owners(tenants, ["a", "b", "c"]).values())
        assert sum(counts.values()) == n
        assert max(counts.values()) - min(counts.get(w, 0) for w in "abc") <= 1, counts


async def test_a_front_queues_runs_that_the_owning_workers_complete(postgres_url: str) -> None:
    executed: Counter[str] = Counter()
    gate = asyncio.Event()
    gate.set()
    async with (
        engine(postgres_url, "worker", executed, gate) as w1,
        engine(postgres_url, "worker", executed, gate) as w2,
        engine(postgres_url, "front", executed, gate) as front,
    ):
        for tenant in TENANTS:
            await front.tenants.create(tenant, tier="standard")
        # Every worker hears of the new tenants and the tenants are split between them.
        await until(lambda: len(w1.membership.owned | w2.membership.owned) == len(TENANTS))
        assert not (w1.membership.owned & w2.membership.owned)
        handles = [
            await front.submit("three", tenant=t, input=i) for i in range(5) for t in TENANTS
        ]
        for h in handles:
            record = await front.wait(h.tenant_id, h.id, timedelta(seconds=30))
            assert record.status == tf.RunStatus.COMPLETED, record
            assert front.decode_result(record) == ((int(record.input_json) + 1) * 2) + 1
        # Each step ran once, in the worker that owns the run's tenant.
        assert set(executed.values()) == {1} and len(executed) == 3 * len(handles)
        assert not front.runtime.active  # the front drives nothing


async def test_a_front_waiting_on_a_run_is_woken_by_its_end_not_by_reading_it_again(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read again on a timer, the run would be seen to end an hour later: only the worker's
    # announcement of its end (or the listener connecting) wakes the waiting front.
    monkeypatch.setattr(ends_module, "FALLBACK_S", 3600.0)
    monkeypatch.setattr(runs_module, "POLL_S", 3600.0)
    executed: Counter[str] = Counter()
    gate = asyncio.Event()
    async with bank_a_on_a_worker(postgres_url, executed, gate) as (_, front):
        handle = await front.submit("three", tenant="bank-a", input=1)
        reads: list[str] = []
        get_run = front.history.get_run

        async def counted(tenant: str, run_id: str) -> tf.RunRecord:
            reads.append(run_id)
            return await get_run(tenant, run_id)

        monkeypatch.setattr(front.history, "get_run", counted)
        waiting = asyncio.create_task(front.wait("bank-a", handle.id, timedelta(seconds=30)))
        ends = front.runs.ends
        assert ends is not None
        await until(lambda: ends.listening and ends.waiting(handle.id))
        await until(lambda: executed[f"{handle.id}:first"] == 1)
        gate.set()  # the run ends now, after the front is listening
        record = await waiting
        assert record.status == tf.RunStatus.COMPLETED
        # Read once before waiting, once when the listener connected, once when woken.
        assert 2 <= len(reads) <= 3 and set(reads) == {handle.id}
        assert not ends.waiting(handle.id)


async def test_the_ends_of_runs_go_on_a_channel_of_their_own(postgres_url: str) -> None:
    executed: Counter[str] = Counter()
    async with engine(postgres_url, "front", executed, asyncio.Event()) as front:
        from tenantflow.adapters.postgres_cluster import PostgresCoordinator

        coordinator = front.coordinator
        assert isinstance(coordinator, PostgresCoordinator)
        assert coordinator.ends_channel != coordinator.channel
        wakes: list[Notice] = []
        ends: list[Notice] = []
        listening = asyncio.Event()

        async def collect(source: AsyncIterator[Notice], into: list[Notice]) -> None:
            async for notice in source:
                into.append(notice)

        tasks = [
            asyncio.create_task(collect(coordinator.listen(), wakes)),
            asyncio.create_task(collect(coordinator.listen_ends(listening.set), ends)),
        ]
        try:
            await asyncio.wait_for(listening.wait(), 20)
            # The other listener has no ready signal: announce until it hears one.
            for _ in range(400):
                coordinator.announce("run", "bank-a", "probe")
                await asyncio.sleep(0.05)
                if wakes:
                    break
            coordinator.announce(ENDED, "bank-a", "r-ended")
            coordinator.announce("run", "bank-a", "r-last")
            await until(lambda: any(n.target == "r-last" for n in wakes) and bool(ends))
            assert ends == [Notice(ENDED, "bank-a", "r-ended")]
            assert all(n.kind == "run" for n in wakes)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def test_channel_names_fit_postgresql_and_no_schema_hears_another() -> None:
    from tenantflow.adapters.postgres_cluster import PostgresCoordinator

    def channels(schema: str) -> set[str]:
        c = PostgresCoordinator(SimpleNamespace(schema=schema))  # type: ignore[arg-type]
        return {c.channel, c.ends_channel}

    assert PostgresCoordinator(SimpleNamespace(schema=None)).channel == "tenantflow_public"  # type: ignore[arg-type]
    schemas = ["public", "x", "ended_x", "s" * 63, "s" * 62 + "t", "Ünïcode_" * 8]
    names = [channels(schema) for schema in schemas]
    assert all(len(n.encode()) <= 63 for pair in names for n in pair)
    assert all(len(pair) == 2 for pair in names)  # a schema's two channels differ
    assert len(set().union(*names)) == 2 * len(schemas)  # and no schema shares one


async def test_cancel_and_review_decisions_reach_the_owning_worker(postgres_url: str) -> None:
    executed: Counter[str] = Counter()
    gate = asyncio.Event()
    async with bank_a_on_a_worker(postgres_url, executed, gate) as (worker, front):
        stuck = await front.submit("three", tenant="bank-a", input=1)
        await until(lambda: executed[f"{stuck.id}:first"] == 1)
        cancelled = await front.cancel("bank-a", stuck.id, "changed my mind")
        assert cancelled.status in (tf.RunStatus.CANCELLING, tf.RunStatus.CANCELLED)
        final = await front.wait("bank-a", stuck.id, timedelta(seconds=20))
        assert final.status == tf.RunStatus.CANCELLED

        run = await front.submit("approve", tenant="bank-a", input="ada")
        await until(lambda: bool(worker.active_run("bank-a", run.id)), 10)

        async def pending() -> list[tf.ReviewRecord]:
            return await front.reviews.list("bank-a")

        for _ in range(200):
            reviews = await pending()
            if reviews:
                break
            await asyncio.sleep(0.05)
        [review] = reviews
        decided = await front.reviews.decide("bank-a", review.id, reviewer="ann", approve=True)
        assert decided.status.value == "approved"
        assert await front.run("bank-a", run.id).result(timedelta(seconds=20)) == "approved"
        # A command that fails on the worker fails on the front with the same error.
        with pytest.raises(tf.ConflictError):
            await front.reviews.decide("bank-a", review.id, reviewer="ann", approve=False)


async def test_when_a_worker_leaves_another_takes_its_tenants_and_runs(postgres_url: str) -> None:
    executed: Counter[str] = Counter()
    gate = asyncio.Event()
    async with engine(postgres_url, "worker", executed, gate) as stays:
        leaving = engine(postgres_url, "worker", executed, gate)
        await leaving.start()
        for tenant in MANY:
            await stays.tenants.create(tenant, tier="standard")
        await until(lambda: len(stays.membership.owned | leaving.membership.owned) == len(MANY))
        moved = sorted(leaving.membership.owned)
        assert moved and len(stays.membership.owned) < len(MANY)
        handles = [await stays.submit("three", tenant=t, input=1) for t in MANY]
        await until(lambda: all(executed[f"{h.id}:first"] == 1 for h in handles))
        await leaving.close()  # in flight: its runs wait in `second`
        await until(lambda: stays.membership.owned == set(MANY), 10)
        gate.set()
        for h in handles:
            record = await stays.wait(h.tenant_id, h.id, timedelta(seconds=20))
            assert record.status == tf.RunStatus.COMPLETED
        assert all(executed[f"{h.id}:first"] == 1 for h in handles)  # completed steps kept
        assert all(executed[f"{h.id}:third"] == 1 for h in handles)


def test_a_cluster_needs_postgresql(tmp_path: object) -> None:
    with pytest.raises(tf.ConfigurationError, match="PostgreSQL"):
        tf.Engine.open("memory://", cluster="worker")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_worker_process_serves_metrics_and_stops_cleanly_on_sigterm(postgres_url: str) -> None:
    port = free_port()
    command = [str(Path(sys.executable).with_name("tenantflow")), "worker", "--db", postgres_url]
    command += ["--lease", "1", "--metrics-port", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the worker never served metrics"
                time.sleep(0.1)
        assert "tenantflow_slots 64.0" in body
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert b"handing back" in err


def test_a_worker_refuses_sqlite_with_one_line() -> None:
    command = [
        str(Path(sys.executable).with_name("tenantflow")),
        "worker",
        "--db",
        "sqlite:///x.db",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "PostgreSQL" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


async def test_a_tenant_handed_over_leaves_nothing_behind_in_its_old_worker(
    postgres_url: str,
) -> None:
    executed: Counter[str] = Counter()
    gate = asyncio.Event()
    async with engine(postgres_url, "worker", executed, gate) as first:
        for tenant in MANY:
            await first.tenants.create(tenant, tier="standard", max_active_runs=1)
        await until(lambda: first.membership.owned == set(MANY))
        # One running run (held in `second`) and three queued behind it, per tenant.
        handles = [await first.submit("three", tenant=t, input=i) for i in range(4) for t in MANY]
        await until(lambda: all(first.admission.queued(t) == 3 for t in MANY))
        async with engine(postgres_url, "worker", executed, gate) as joined:
            # (With 12 tenants the joining worker gets none with probability 2^-12.)
            await until(lambda: bool(joined.membership.owned), 10)
            await until(lambda: not (first.membership.owned & joined.membership.owned), 10)
            for tenant in joined.membership.owned:  # the old worker forgot them entirely
                assert first.admission.active(tenant) == 0
                assert first.admission.queued(tenant) == 0
                assert not [r for r in first.runtime.active.values() if r.tenant_id == tenant]
            gate.set()
            for h in handles:
                record = await first.wait(h.tenant_id, h.id, timedelta(seconds=30))
                assert record.status == tf.RunStatus.COMPLETED
        assert all(executed[f"{h.id}:third"] == 1 for h in handles)
