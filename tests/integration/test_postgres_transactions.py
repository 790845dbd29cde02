"""The PostgreSQL store's transactions: ``BEGIN`` ... ``COMMIT`` sent as statements of one
pipeline. What commits, what is rolled back (an error in the block, a statement the server
refused, a cancellation while waiting), and that the connection goes back to the pool out of
any transaction, so the next transaction on it starts clean."""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Sequence
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.adapters.sql import Result, Sql, Together
from tenantflow.domain.records import (
    STALE,
    CreateRun,
    FinishAttempt,
    Lease,
    NewEvent,
    RunRecord,
    RunStatus,
    StartAttempt,
    StepRecord,
    StepStatus,
    StepUpdate,
    Transition,
)
from tenantflow.errors import StoreError

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from tenantflow.adapters.postgres import PostgresStore  # noqa: E402
from tenantflow.adapters.postgres_schema import SYSTEM_ROLE  # noqa: E402

pytestmark = [pytest.mark.timeout(60), pytest.mark.postgres]

IDLE = psycopg.pq.TransactionStatus.IDLE


async def _store(url: str) -> PostgresStore:
    """A store with one pooled connection: every transaction below runs on the same one."""
    store = PostgresStore.from_url(f"{url}&pool_size=1")
    await store.open()
    await store.execute_sql("CREATE TABLE scratch (id integer PRIMARY KEY, note text)")
    return store


async def _ids(store: PostgresStore) -> list[int]:
    return [row[0] for row in await store.execute_sql("SELECT id FROM scratch ORDER BY id")]


async def _assert_idle(store: PostgresStore) -> None:
    """The pool's one connection is lent out of any transaction."""
    assert store._pool is not None
    async with store._pool.connection() as conn:
        assert conn.info.transaction_status == IDLE, conn.info.transaction_status


async def test_the_statements_of_a_block_commit_together(postgres_url: str) -> None:
    store = await _store(postgres_url)
    try:
        async with store._transaction() as session:
            await session.execute(Sql("INSERT INTO scratch VALUES (?, ?)", (1, "a"), results=False))
            await session.execute(Sql("INSERT INTO scratch VALUES (?, ?)", (2, "b"), results=False))
            read = await session.execute(Sql("SELECT count(*) FROM scratch"))
            assert read.rows == [(2,)]  # its own writes, before the commit
            await session.execute(Sql("INSERT INTO scratch VALUES (?, ?)", (3, "c"), results=False))
        assert await _ids(store) == [1, 2, 3]
        await _assert_idle(store)
    finally:
        await store.close()


async def test_an_error_in_the_block_rolls_back_what_it_sent(postgres_url: str) -> None:
    store = await _store(postgres_url)
    try:
        with pytest.raises(RuntimeError, match="step code failed"):
            async with store._transaction() as session:
                await session.execute(Sql("INSERT INTO scratch VALUES (1, 'sent, not read')"))
                await session.execute(
                    Sql("INSERT INTO scratch VALUES (2, 'queued')", results=False)
                )
                raise RuntimeError("step code failed")
        assert await _ids(store) == []
        await _assert_idle(store)
    finally:
        await store.close()


async def test_a_refused_statement_fails_the_block_and_commits_nothing(postgres_url: str) -> None:
    store = await _store(postgres_url)
    try:
        await store.execute_sql("INSERT INTO scratch VALUES (7, 'there before')")
        with pytest.raises(StoreError, match="duplicate key"):
            async with store._translated(), store._transaction() as session:
                await session.execute(Sql("INSERT INTO scratch VALUES (1, 'x')", results=False))
                # Refused by the server; nothing waits for it, so the error comes at the
                # commit's sync, and the server skips the COMMIT sent after it.
                await session.execute(Sql("INSERT INTO scratch VALUES (7, 'y')", results=False))
                await session.execute(Sql("INSERT INTO scratch VALUES (2, 'z')", results=False))
        assert await _ids(store) == [7]
        await _assert_idle(store)
        # The connection is usable: the next block commits.
        async with store._transaction() as session:
            await session.execute(Sql("INSERT INTO scratch VALUES (3, 'after')", results=False))
        assert await _ids(store) == [3, 7]
    finally:
        await store.close()


async def test_a_block_cancelled_while_it_waits_commits_nothing(postgres_url: str) -> None:
    store = await _store(postgres_url)
    other = await psycopg.AsyncConnection.connect(store.conninfo, autocommit=True)
    try:
        await store.execute_sql("INSERT INTO scratch VALUES (9, 'locked by another session')")
        await other.execute("BEGIN")
        await other.execute("SELECT id FROM scratch WHERE id = 9 FOR UPDATE")
        entered = asyncio.Event()

        async def block() -> None:
            async with store._transaction() as session:
                await session.execute(Sql("INSERT INTO scratch VALUES (1, 'x')", results=False))
                entered.set()
                await session.execute(Sql("SELECT id FROM scratch WHERE id = 9 FOR UPDATE"))
                await session.execute(Sql("INSERT INTO scratch VALUES (2, 'y')", results=False))

        task = asyncio.create_task(block())
        await asyncio.wait_for(entered.wait(), 10)
        await asyncio.sleep(0.2)  # the lock wait has begun (it cannot end before the rollback)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await other.execute("ROLLBACK")
        assert await _ids(store) == [9]
        await _assert_idle(store)
        async with store._transaction() as session:
            await session.execute(Sql("INSERT INTO scratch VALUES (3, 'after')", results=False))
        assert await _ids(store) == [3, 9]
    finally:
        await other.close()
        await store.close()


async def _prepared_here(store: PostgresStore) -> list[str]:
    """The statements prepared on the pool's one connection (``pg_prepared_statements`` is
    per session)."""
    rows = await store.execute_sql("SELECT statement FROM pg_prepared_statements ORDER BY name")
    return [row[0] for row in rows]


async def test_statements_are_prepared_once_per_connection(postgres_url: str) -> None:
    store = await _store(postgres_url)
    try:
        for i in range(3):
            async with store._transaction() as session:
                await session.execute(
                    Sql("INSERT INTO scratch VALUES (?, ?)", (i, "n"), results=False)
                )
        prepared = await _prepared_here(store)
        assert prepared.count("INSERT INTO scratch VALUES ($1, $2)") == 1, prepared
        assert await _ids(store) == [0, 1, 2]
    finally:
        await store.close()


async def test_a_statement_that_fails_to_prepare_is_not_taken_as_prepared(
    postgres_url: str,
) -> None:
    from tenantflow.adapters import postgres_wire

    store = await _store(postgres_url)
    try:
        bad = Sql("SELECT nope FROM scratch WHERE id = ?", (1,))
        for _ in range(2):  # the second time it is prepared again, and fails again the same way
            with pytest.raises(StoreError, match="nope"):
                async with store._translated(), store._transaction() as session:
                    await session.execute(bad)
        assert store._pool is not None
        async with store._pool.connection() as conn:
            names = postgres_wire._prepared[conn]
        assert not any(b"nope" in text for text, _ in names), names
        await store.execute_sql("INSERT INTO scratch VALUES (1, 'fine')")
        assert await _ids(store) == [1]
    finally:
        await store.close()


async def test_the_prepared_statements_outlive_a_rolled_back_transaction(
    postgres_url: str,
) -> None:
    """A rollback by psycopg deallocates every statement prepared on the connection once psycopg
    has prepared one of its own (after a few executions of a query through its cursors): the
    pool's connections have psycopg's preparation off, so the store's statements stay."""
    store = await _store(postgres_url)
    try:
        await store.execute_sql("INSERT INTO scratch VALUES (1, 'a')")  # prepared now
        for _ in range(8):  # through psycopg's own cursor, as the cluster's coordination does
            async with store.scoped(None) as conn:
                await conn.execute("SELECT count(*) FROM tenants WHERE id > %s", ("",))
        with pytest.raises(StoreError, match="duplicate key"):
            async with store._translated(), store._transaction() as session:
                await session.execute(Sql("INSERT INTO scratch VALUES (?, ?)", (1, "again")))
        await store.execute_sql("INSERT INTO scratch VALUES (2, 'b')")
        assert await _ids(store) == [1, 2]
    finally:
        await store.close()


async def test_past_the_bound_statements_are_sent_unprepared(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tenantflow.adapters import postgres_wire

    store = await _store(postgres_url)  # its set-up statements filled the connection's cache
    monkeypatch.setattr(postgres_wire, "MAX_PREPARED", 0)
    try:
        before = await _prepared_here(store)
        async with store._transaction() as session:
            await session.execute(Sql("INSERT INTO scratch VALUES (?, ?)", (5, "x")))
            read = await session.execute(Sql("SELECT note FROM scratch WHERE id = ?", (5,)))
            assert read.rows == [("x",)]
        assert await _prepared_here(store) == before
        assert await _ids(store) == [5]
    finally:
        await store.close()


async def test_an_error_read_mid_transaction_stops_it_there(postgres_url: str) -> None:
    store = await _store(postgres_url)
    try:
        with pytest.raises(StoreError, match="division by zero"):
            async with store._translated(), store._transaction() as session:
                await session.execute(Sql("INSERT INTO scratch VALUES (1, 'x')", results=False))
                await session.execute(Sql("SELECT 1 / (id - 1) FROM scratch"))
                await session.execute(Sql("INSERT INTO scratch VALUES (2, 'y')", results=False))
        assert await _ids(store) == []
        await _assert_idle(store)
    finally:
        await store.close()


async def test_statements_deallocated_behind_the_store_are_prepared_again(
    postgres_url: str,
) -> None:
    """Should something deallocate the connection's statements (``DISCARD ALL``, a proxy), the
    one transaction that meets it fails, and the statements are prepared anew after it."""
    store = await _store(postgres_url)
    try:
        await store.execute_sql("INSERT INTO scratch VALUES (1, 'a')")
        assert store._pool is not None
        async with store._pool.connection() as conn:
            await conn.execute("DEALLOCATE ALL")
        with pytest.raises(StoreError, match="does not exist"):
            await store.execute_sql("INSERT INTO scratch VALUES (2, 'b')")
        await store.execute_sql("INSERT INTO scratch VALUES (2, 'b')")
        assert await _ids(store) == [1, 2]
    finally:
        await store.close()


async def test_a_connection_given_back_moments_ago_is_lent_without_a_check(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from psycopg_pool import AsyncConnectionPool

    from tenantflow.adapters import postgres

    checks: list[object] = []
    real = AsyncConnectionPool.check_connection

    async def counted(conn: object) -> None:
        checks.append(conn)
        await real(conn)  # type: ignore[arg-type]

    monkeypatch.setattr(AsyncConnectionPool, "check_connection", staticmethod(counted))
    store = await _store(postgres_url)
    try:
        checks.clear()
        for _ in range(3):
            await store.execute_sql("SELECT 1")
        assert checks == []  # each time it had just been given back
        monkeypatch.setattr(postgres, "CHECK_IDLE_S", 0.0)
        await asyncio.sleep(0.01)
        await store.execute_sql("SELECT 1")
        assert len(checks) == 1  # idle longer than CHECK_IDLE_S: a round trip first
    finally:
        await store.close()


def _count_twice() -> Generator[Sql, Result, tuple[int, int]]:
    """A read in two segments: the second statement is sent after the first one's result."""
    first = yield Sql("SELECT count(*) FROM runs")
    second = yield Sql("SELECT count(*) FROM runs")
    return first.rows[0][0], second.rows[0][0]


async def test_every_segment_of_a_read_is_scoped_to_its_tenant(postgres_url: str) -> None:
    """A read takes no transaction of its own: each segment (up to a sync) is one, and the
    tenant scope ends with it. The scope is set again for the next: were it not, the second
    statement would run as the connecting role, which sees every tenant's rows."""
    wf = tf.Workflow("pg-two-segments", input=int)

    @wf.step
    async def only(ctx: tf.StepContext, input: int) -> int:
        return input

    async with tf.Engine.open(postgres_url, auto_tenant="standard") as engine:
        engine.register(wf)
        for tenant in ("t1", "t2", "t2"):
            handle = await engine.submit("pg-two-segments", tenant=tenant, input=1)
            await handle.result()
        store = engine.store
        assert isinstance(store, PostgresStore)
        assert await store._read("t1", _count_twice()) == (1, 1)
        assert await store._read("t2", _count_twice()) == (2, 2)
        assert await store._read(None, _count_twice()) == (3, 3)  # system scope: all


async def test_a_read_runs_queries_only_in_read_only_transactions(postgres_url: str) -> None:
    """A read's statements are queries; one that is not (a write, or a ``COMMIT`` that would
    end the scoped transaction mid-read) is refused before it is sent, and a query that writes
    (a ``WITH`` around a ``DELETE``) is refused by the server: the transaction is read-only."""

    def reads_then(statement: Sql) -> Generator[Sql, Result, None]:
        yield Sql("SELECT count(*) FROM runs")
        yield statement

    store = await _store(postgres_url)
    try:
        await store.execute_sql("INSERT INTO scratch VALUES (1, 'kept')")
        for refused in (
            Sql("DELETE FROM scratch"),
            Sql("COMMIT", results=False),
            Sql("INSERT INTO scratch VALUES (?, ?)", [(2, "x")], many=True, merge="append"),
        ):
            with pytest.raises(StoreError, match="a read runs queries only"):
                await store._read(None, reads_then(refused))
        writing_query = Sql(
            "WITH gone AS (DELETE FROM scratch RETURNING id) SELECT count(*) FROM gone"
        )
        with pytest.raises(StoreError, match="read-only transaction"):
            await store._read(None, reads_then(writing_query))
        assert await _ids(store) == [1]
    finally:
        await store.close()


async def test_a_transaction_that_writes_runs_in_one_scope(postgres_url: str) -> None:
    """``in_transaction`` (tenant moves, the mesh's projector): the writes of a query in one
    transaction as the tenant, committed together, or none of them when it raises."""

    def move(fail: bool) -> Generator[Sql, Result, int]:
        yield Sql("INSERT INTO scratch VALUES (?, ?)", (1, "one"), results=False)
        found = yield Sql("SELECT count(*) FROM scratch")
        yield Sql("INSERT INTO scratch VALUES (?, ?)", (2, "two"), results=False)
        if fail:
            raise RuntimeError("the fingerprint does not match")
        return int(found.rows[0][0])

    store = await _store(postgres_url)
    try:
        await store.execute_sql(f"GRANT SELECT, INSERT ON scratch TO {SYSTEM_ROLE}")
        with pytest.raises(RuntimeError, match="fingerprint"):
            await store.in_transaction(None, move(fail=True))
        assert await _ids(store) == []
        assert await store.in_transaction(None, move(fail=False)) == 1
        assert await _ids(store) == [1, 2]
    finally:
        await store.close()


async def test_a_cancelled_read_leaves_no_statement_taken_as_prepared(postgres_url: str) -> None:
    """A statement is kept as prepared only once the server said so: one whose preparation
    was skipped (the read was cancelled before it) is prepared anew next time, not executed
    by a name the server never knew."""
    store = await _store(postgres_url)
    try:

        def slow_then_count() -> Generator[Sql, Result, object]:
            both = yield Together(
                "", statements=[Sql("SELECT pg_sleep(5)"), Sql("SELECT count(*) FROM scratch")]
            )
            return both

        task = asyncio.create_task(store._read(None, slow_then_count()))
        await asyncio.sleep(0.5)  # the sleep is running; the count waits behind it
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await store.execute_sql("SELECT count(*) FROM scratch") == [(0,)]
    finally:
        await store.close()


async def test_the_servers_error_is_raised_not_a_later_rows_loading(postgres_url: str) -> None:
    store = await _store(postgres_url)
    try:

        def three() -> Generator[Sql, Result, object]:
            return (
                yield Together(
                    "",
                    statements=[
                        Sql("SELECT 'infinity'::date"),  # a value Python's date cannot hold
                        Sql("SELECT 1 / 0"),
                        Sql("SELECT 44"),
                    ],
                )
            )

        with pytest.raises(StoreError, match="division by zero"):
            await store._read(None, three())
        assert await store.execute_sql("SELECT 44") == [(44,)]
    finally:
        await store.close()


_NOW = 1_800_000_000.0


def _count_syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, every sync of a store's wire appends how many statements it waits for
    (0: nothing was sent since the last one, no round trip)."""
    from tenantflow.adapters import postgres_wire

    syncs: list[int] = []
    real = postgres_wire.Wire.sync

    async def counted(self: postgres_wire.Wire, *, check: bool = True) -> None:
        syncs.append(len(self._waiting))
        await real(self, check=check)

    monkeypatch.setattr(postgres_wire.Wire, "sync", counted)
    return syncs


def _submission(
    run_id: str,
    key: str | None = None,
    tenant: str = "t1",
    *,
    then_b: bool = False,
    status: RunStatus = RunStatus.QUEUED,
    events: Sequence[NewEvent] = (),
) -> CreateRun:
    """A run of ``tenant`` with step ``a`` ready (``then_b``: and step ``b`` pending)."""
    record = RunRecord(
        id=run_id,
        tenant_id=tenant,
        workflow="wf",
        workflow_version="1",
        status=status,
        input_json=b"1",
        created_at=_NOW,
        updated_at=_NOW,
        idempotency_key=key,
    )
    steps = [StepRecord(run_id, tenant, "a", StepStatus.READY)]
    if then_b:
        steps.append(StepRecord(run_id, tenant, "b", StepStatus.PENDING))
    return CreateRun(record, steps, list(events))


async def _claimed(
    store: PostgresStore, run_id: str, tenant: str = "t1", *, then_b: bool = False
) -> Lease:
    """A running run of ``tenant`` with one step, ``a``, claimed (``then_b``: and step ``b``
    pending): a's lease."""
    submitted = [NewEvent("run.submitted")]
    run = _submission(
        run_id, None, tenant, then_b=then_b, status=RunStatus.RUNNING, events=submitted
    )
    await store.apply([run])
    [lease] = await store.apply([StartAttempt(tenant, run_id, "a", "owner", _NOW, _NOW + 30)])
    assert isinstance(lease, Lease)
    return lease


async def test_a_finish_reads_the_version_and_makes_its_fenced_update_in_one_round_trip(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an expected version to compare, a finish with a state delta sends the read of
    the run's version (locking the run) and its fenced update together: two round trips for
    the whole transaction (that one and the commit), where it took three. What it writes is
    the same: the step records the version the run moves to, and a stale fence writes
    nothing."""
    now = _NOW
    store = PostgresStore.from_url(postgres_url)
    await store.open()
    try:
        lease = await _claimed(store, "r1")
        syncs = _count_syncs(monkeypatch)

        def finish(fence: int) -> FinishAttempt:
            then = Transition("t1", "r1", now + 1)
            return FinishAttempt("t1", "r1", "a", fence, now + 1, b"2", b'{"a":2}', then)

        assert await store.apply([finish(lease.fence + 1)]) == [STALE]
        assert await store.apply([finish(lease.fence)]) == [1]
        assert len([n for n in syncs if n]) == 4  # two transactions, two round trips each
        [step] = await store.get_steps("t1", "r1")
        assert (step.status, step.version) == (StepStatus.SUCCEEDED, 1)
        versions = await store.state_versions("t1", "r1")
        assert [v.version for v in versions] == [0, 1]
    finally:
        await store.close()


async def test_the_finishes_of_a_batch_send_their_events_in_one_statement(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows held for a multi-row statement are sent before a statement that names their table,
    not before every pair of statements sent together: two finishes in one batch (each sends
    its version read and its fenced update together) still write their events in one INSERT."""
    from tenantflow.adapters import postgres_wire

    now = _NOW
    store = PostgresStore.from_url(postgres_url)
    await store.open()
    try:
        leases = {run: await _claimed(store, run) for run in ("r1", "r2")}
        texts: list[bytes] = []
        real = postgres_wire.Wire.send

        async def recorded(
            self: postgres_wire.Wire, text: bytes, args: Any = (), *, many: bool = False
        ) -> postgres_wire.Sent:
            texts.append(text)
            return await real(self, text, args, many=many)

        monkeypatch.setattr(postgres_wire.Wire, "send", recorded)
        finishes = [
            FinishAttempt(
                "t1",
                run,
                "a",
                leases[run].fence,
                now + 1,
                b"2",
                b'{"a":2}',
                Transition("t1", run, now + 1),
            )
            for run in ("r1", "r2")
        ]
        assert await store.apply(finishes) == [1, 1]
        inserts = [t for t in texts if t.startswith(b"INSERT INTO events")]
        assert len(inserts) == 1, inserts
        for run in ("r1", "r2"):
            kinds = [e.kind for e in await store.events("t1", run)]
            assert kinds.count("step.succeeded") == 1, kinds
    finally:
        await store.close()


async def test_submissions_without_a_key_wait_for_no_insert_of_their_own(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submission with no idempotency key has nothing to learn from its run's insert (it
    lands or raises): a batch of three is one round trip, its commit, where each insert took
    one of its own. A run id already taken is still refused, alone; a key still answers the
    run that has it."""
    store = PostgresStore.from_url(postgres_url)
    await store.open()
    try:
        syncs = _count_syncs(monkeypatch)
        results = await store.apply([_submission(f"r{i}") for i in range(3)])
        assert [(r.run_id, r.created) for r in results] == [(f"r{i}", True) for i in range(3)]
        assert len([n for n in syncs if n]) == 1
        taken, fresh = await store.apply([_submission("r1"), _submission("r3")])
        assert isinstance(taken, tf.ConflictError)
        assert (fresh.run_id, fresh.created) == ("r3", True)
        first, again = await store.apply([_submission("k1", "key"), _submission("k2", "key")])
        assert (first.run_id, first.created, again.run_id, again.created) == (
            "k1",
            True,
            "k1",
            False,
        )
        runs = sorted(r.id for r in await store.list_runs("t1", limit=10))
        assert runs == ["k1", "r0", "r1", "r2", "r3"]
        assert [s.key for s in await store.get_steps("t1", "r3")] == ["a"]
    finally:
        await store.close()


def _finish_a(tenant: str, run: str, fence: int, *, b_ready: bool = False) -> FinishAttempt:
    """Step ``a`` of ``run`` succeeded (output 2, state delta a=2); ``b_ready``: b is ready."""
    then = Transition(tenant, run, _NOW + 1)
    if b_ready:
        then.steps.append(StepUpdate("b", StepStatus.READY, available_at=_NOW))
    return FinishAttempt(tenant, run, "a", fence, _NOW + 1, b"2", b'{"a":2}', then)


async def test_the_finishes_of_a_batch_take_the_round_trips_of_one(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant's finishes of different runs are driven side by side: each goes as far as it
    can, then one wait answers all of them. Two tenants' four finishes in a batch take the
    round trips one takes alone and one more (the second tenant's turn; the tenants go one
    after the other, locking in the order every process locks in), not four more; each is
    decided as it would be alone (a stale fence among them writes nothing of its own and
    nothing of the others is lost)."""
    store = PostgresStore.from_url(postgres_url)
    await store.open()
    try:
        runs = [("t1", "r1"), ("t1", "r2"), ("t2", "r3"), ("t2", "r4"), ("t1", "r5")]
        leases = {run: await _claimed(store, run, tenant) for tenant, run in runs}
        syncs = _count_syncs(monkeypatch)
        assert await store.apply([_finish_a("t1", "r5", leases["r5"].fence)]) == [1]
        alone = len([n for n in syncs if n])
        syncs.clear()
        batch = [_finish_a(t, r, leases[r].fence) for t, r in runs[:4]]
        batch[1] = _finish_a("t1", "r2", leases["r2"].fence + 1)  # a stale fence
        assert await store.apply(batch) == [1, STALE, 1, 1]
        assert alone == 2  # the finish's version read and fenced update, then the commit
        assert len([n for n in syncs if n]) == alone + 1
        for tenant, run in runs:
            [a] = await store.get_steps(tenant, run)
            stale = run == "r2"
            assert a.status == (StepStatus.RUNNING if stale else StepStatus.SUCCEEDED)
            versions = [v.version for v in await store.state_versions(tenant, run)]
            assert versions == ([0] if stale else [0, 1])
            kinds = [e.kind for e in await store.events(tenant, run)]
            assert ("step.succeeded" in kinds) is not stale
    finally:
        await store.close()


async def test_ops_of_one_run_in_a_batch_are_not_driven_side_by_side(
    postgres_url: str,
) -> None:
    """A finish that readies step b and b's claim in the same batch (the engine writes the
    claim beside the completion): the claim meets b ready, as when one ran after the other.
    Driven side by side, the claim would be sent before the finish's update of b."""
    store = PostgresStore.from_url(postgres_url)
    await store.open()
    try:
        leases = {run: await _claimed(store, run, then_b=True) for run in ("r1", "r2")}
        batch = [
            _finish_a("t1", "r1", leases["r1"].fence, b_ready=True),
            _finish_a("t1", "r2", leases["r2"].fence, b_ready=True),
            StartAttempt("t1", "r1", "b", "owner", _NOW + 2, _NOW + 30),
        ]
        first, second, claim = await store.apply(batch)
        assert (first, second) == (1, 1)
        assert isinstance(claim, Lease)
        steps = {s.key: s.status for s in await store.get_steps("t1", "r1")}
        assert steps == {"a": StepStatus.SUCCEEDED, "b": StepStatus.RUNNING}
    finally:
        await store.close()


def test_a_batch_is_cut_into_waves_of_ops_that_write_only_runs_of_their_own() -> None:
    from tenantflow.adapters.postgres import _claims_together, _side_by_side
    from tenantflow.domain.tenancy import AuditEntry

    audited = Transition("t1", "r6", _NOW, audit=[AuditEntry("a", "x", "run:r6")])
    elsewhere = _finish_a("t1", "r7", 1)
    elsewhere.then = Transition("t1", "parent", _NOW)  # a child's end moving its parent
    ops: list[Any] = [
        StartAttempt("t1", "r1", "a", "o", _NOW, _NOW + 1),  # 0: with 1, one claim statement
        StartAttempt("t1", "r2", "a", "o", _NOW, _NOW + 1),  # 1
        _finish_a("t1", "r3", 1),  # 2
        _submission("r4"),  # 3
        _finish_a("t1", "r1", 1),  # 4: r1 again: a new wave
        _submission("r5", key="k"),  # 5: with a key: alone
        audited,  # 6: alone
        elsewhere,  # 7: writes another run than its own: alone
        _finish_a("t1", "r8", 1),  # 8
        Transition("t1", "r9", _NOW),  # 9
        _finish_a("t2", "r10", 1),  # 10: another tenant: a new wave
        _finish_a("t2", "r11", 1),  # 11
    ]
    groups = _claims_together(ops, list(range(len(ops))))
    assert _side_by_side(ops, groups) == [
        [[0, 1], [2], [3]],
        [[4]],
        [[5]],
        [[6]],
        [[7]],
        [[8], [9]],
        [[10], [11]],
    ]


async def test_a_deadlock_with_another_transaction_is_retried_not_raised(
    postgres_url: str,
) -> None:
    """PostgreSQL aborts one of two transactions that wait on each other (SQLSTATE 40P01,
    which psycopg raises as an ``OperationalError``, not a ``TransactionRollback``). When it
    is the store's batch, nothing of it was committed: it is tried again, and lands once the
    other transaction has ended, rather than failing as if the server were down."""
    from tests.conftest import POSTGRES_URL

    store = PostgresStore.from_url(postgres_url)
    await store.open()
    watcher = await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True)
    try:
        for run in ("r1", "r2"):
            await _claimed(store, run)
        assert store._pool is not None
        async with store._pool.connection() as other:  # another process's transaction
            await other.execute("BEGIN")  # (the pool's connections are in autocommit)
            # It never looks for deadlocks first: the store's transaction is the one aborted.
            await other.execute("SET LOCAL deadlock_timeout = '60s'")
            await other.execute("SELECT 1 FROM runs WHERE id = 'r2' FOR UPDATE")
            batch = [
                Transition("t1", run, _NOW + 1, events=[NewEvent("noted")]) for run in ("r1", "r2")
            ]
            task = asyncio.create_task(store.apply(batch))
            # The store locks its runs in order: r1, then it waits for r2.
            waiting = 0
            for _ in range(600):
                cursor = await watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%%FROM runs%%' AND pid <> %s",
                    (other.info.backend_pid,),
                )
                row = await cursor.fetchone()
                waiting = row[0] if row else 0
                if waiting:
                    break
                await asyncio.sleep(0.01)
            assert waiting, "the store's batch never waited for r2"
            # Taking r1 closes the cycle; the store's transaction is aborted, so this lands.
            await other.execute("SELECT 1 FROM runs WHERE id = 'r1' FOR UPDATE")
            await other.execute("ROLLBACK")
        assert await task == [True, True]
        for run in ("r1", "r2"):
            assert "noted" in [e.kind for e in await store.events("t1", run)]
    finally:
        await watcher.close()
        await store.close()
