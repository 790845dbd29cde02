"""The queries whose cost must not grow with a tenant's history use an index: asserted on the
query plan, not on a timing.

A tenant's first page of runs, a run and its steps, and each statement of a retention purge
batch read only the rows they return (or delete) through an index: on SQLite the plan
(``EXPLAIN QUERY PLAN``) searches an index and neither scans a table nor sorts; on PostgreSQL
(``EXPLAIN``, with sequential scans priced out: on a test's few rows the planner would rightly
prefer them) it uses the named index. ``benchmarks/state_scale.py`` measures what these plans
give with a million runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tenantflow.adapters import sql_ops
from tenantflow.adapters.sql_ops import _RUN_COLS, _STEP_COLS
from tenantflow.adapters.sql_tenancy import PURGE_STATEMENTS
from tenantflow.adapters.sqlite_schema import migrate

NOW = 1_800_000_000.0
EXPIRED = ("t1", NOW, NOW, 100)  # tenant, cutoff, cutoff, batch

# (name, statement, arguments, the index each table is searched by)
READS = [
    (
        "first page",
        f"SELECT {_RUN_COLS} FROM runs WHERE tenant_id = ? ORDER BY created_at DESC, id DESC"
        " LIMIT ?",
        ("t1", 51),
        {"runs": "runs_tenant_created"},
    ),
    ("run", f"SELECT {_RUN_COLS} FROM runs WHERE id = ? AND tenant_id = ?", ("r1", "t1"), None),
    (
        "steps",
        f"SELECT {_STEP_COLS} FROM steps WHERE run_id = ? AND tenant_id = ? ORDER BY key",
        ("r1", "t1"),
        None,
    ),
]
# The expired runs are a range of runs_tenant_created (tenant and creation time) in every
# statement; the rows that hang off them are found by their run.
BY_RUN = {
    "events": "events_run",
    "state_versions": "state_versions_pkey",
    "steps": "steps_pkey",
    "calls": "calls_pkey",
    "reviews": "reviews_run",
    "ledgers": "ledgers_pkey",
    "runs": "runs_pkey",
}
PURGES = [
    (
        f"purge {table}",
        sql,
        EXPIRED if table == "runs" else ("t1", *EXPIRED),
        {"runs": "runs_tenant_created", table: BY_RUN[table]},
    )
    for table, sql in PURGE_STATEMENTS
]
# SQLite names a primary key of a rowid table by its automatic index, and of a WITHOUT ROWID
# table "PRIMARY KEY".
SQLITE_NAMES = {"runs_pkey": "sqlite_autoindex_runs_1"}


def sqlite_plan(tmp_path: Path, sql: str, args: tuple[Any, ...]) -> list[str]:
    import sqlite3

    conn = sqlite3.connect(tmp_path / "plans.db", isolation_level=None)
    try:
        migrate(conn)
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args)]
    finally:
        conn.close()


@pytest.mark.parametrize(("name", "sql", "args", "indexes"), READS + PURGES, ids=lambda v: v)
def test_sqlite_searches_an_index_and_never_scans_or_sorts(
    tmp_path: Path, name: str, sql: str, args: tuple[Any, ...], indexes: dict[str, str] | None
) -> None:
    plan = sqlite_plan(tmp_path, sql, args)
    assert plan, name
    for line in plan:
        assert not line.startswith("SCAN"), (name, plan)
        assert "TEMP B-TREE" not in line, (name, plan)
    for table, index in (indexes or {}).items():
        index = SQLITE_NAMES.get(index, index)
        by = "PRIMARY KEY" if index.endswith("_pkey") else f"INDEX {index}"
        assert any(re.match(rf"SEARCH {table} USING (COVERING )?{by}\b", line) for line in plan), (
            name,
            table,
            plan,
        )
    if name == "purge runs":
        # By primary key: not a walk through every run of the tenant.
        assert any(
            line.startswith("SEARCH runs USING INDEX sqlite_autoindex_runs_1 (id=?)")
            for line in plan
        ), plan
    if name.startswith("purge"):
        # The expired runs: a range of the tenant's runs by creation time, not all of them.
        assert any("runs_tenant_created (tenant_id=? AND created_at<?)" in line for line in plan)


@pytest.fixture
def postgres(postgres_url: str) -> Iterator[Any]:
    psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    schema = re.search(r"schema=(\w+)", postgres_url)
    assert schema is not None
    base = re.sub(r"[?&]schema=\w+", "", postgres_url)
    with psycopg.connect(
        base, options=f"-c search_path={schema.group(1)}", cursor_factory=psycopg.RawCursor
    ) as conn:
        conn.execute("SET enable_seqscan = off")
        yield conn


# A run by id: on an empty table PostgreSQL may pick either index holding the id; with rows it
# takes the primary key. The SQLite test checks that statement.
@pytest.mark.postgres
@pytest.mark.parametrize(
    ("name", "sql", "args", "indexes"), [READS[0], READS[2], *PURGES], ids=lambda v: v
)
def test_postgres_uses_the_index(
    postgres: Any, name: str, sql: str, args: tuple[Any, ...], indexes: dict[str, str] | None
) -> None:
    from tenantflow.adapters.postgres import postgres_text

    plan = "\n".join(r[0] for r in postgres.execute(b"EXPLAIN " + postgres_text(sql), args))
    assert "Seq Scan" not in plan, (name, plan)
    expected = indexes or {"runs" if "FROM runs" in sql else "steps": "pkey"}
    for table, index in expected.items():
        index = f"{table}_pkey" if index == "pkey" else index
        used = (
            rf"Index (Only )?Scan( Backward)? using {index} on {table}\b"
            rf"|Bitmap Index Scan on {index}\b"
        )
        assert re.search(used, plan), (
            name,
            table,
            plan,
        )


# The statements of a running attempt, by its own step. An attempt's finish, failure and park
# name the step (run, key, fence, status = 'running'); renewal and recovery find the running
# steps by owner.
BY_STEP = [
    ("finish", sql_ops._FINISH_AS_IS),
    ("finish recording the next state version", sql_ops._FINISH_NEXT),
    ("fail", sql_ops._FAIL),
    ("park", sql_ops._PARK),
]


RUNNING_STEPS = [
    ("renew", sql_ops._RENEW),
    ("lapsed leases", sql_ops._LAPSED),
    ("recover", sql_ops._RUNNING),
    ("recover an owner's", sql_ops._RUNNING + " AND owner IN (?, ?)"),
]


@pytest.mark.parametrize(
    ("name", "sql"), BY_STEP + RUNNING_STEPS, ids=[n for n, _ in BY_STEP + RUNNING_STEPS]
)
def test_sqlite_finds_a_step_by_its_key_and_running_steps_by_their_index(
    tmp_path: Path, name: str, sql: str
) -> None:
    plan = sqlite_plan(tmp_path, re.sub(r"/\*pg:.*?\*/", "", sql), (None,) * sql.count("?"))
    by = "INDEX steps_running" if (name, sql) in RUNNING_STEPS else "PRIMARY KEY"
    assert plan[0].startswith(f"SEARCH steps USING {by} "), (name, plan)


def _generic_plan(conn: Any, sql: str) -> str:
    """PostgreSQL's generic plan of ``sql`` (the plan a statement prepared on a store's
    connection keeps, whatever its arguments)."""
    from tenantflow.adapters.postgres import postgres_text

    conn.execute(b"PREPARE plan_probe AS " + postgres_text(sql))
    nulls = b", ".join([b"NULL"] * sql.count("?"))
    execute = b"EXECUTE plan_probe" + (b" (" + nulls + b")" if nulls else b"")
    found = conn.execute(b"EXPLAIN " + execute).fetchall()
    conn.execute(b"DEALLOCATE plan_probe")
    return "\n".join(r[0] for r in found)


@contextlib.contextmanager
def _app_connection(url: str, *setup: str) -> Iterator[Any]:
    """A connection to the migrated schema of ``url`` that runs ``setup`` as the owner, then
    acts as the app role scoped to tenant t1, with generic plans."""
    psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    from tenantflow.adapters.postgres import PostgresStore

    async def migrate() -> None:
        store = PostgresStore.from_url(url)
        await store.open()
        await store.close()

    asyncio.run(migrate())
    schema = re.search(r"schema=(\w+)", url)
    assert schema is not None
    base = re.sub(r"[?&]schema=\w+", "", url)
    with psycopg.connect(
        base, options=f"-c search_path={schema.group(1)}", cursor_factory=psycopg.RawCursor
    ) as conn:
        for statement in setup:
            conn.execute(statement)
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute("SET ROLE tenantflow_app")
        conn.execute("SELECT set_config('tenantflow.tenant', 't1', false)")
        yield conn
        conn.rollback()


@pytest.fixture
def steps_analysed_idle(postgres_empty_url: str) -> Iterator[Any]:
    """A connection to a migrated schema of its own (dropped afterwards, statistics and all)
    holding 4,000 steps of 1,000 runs, none running, analysed: the statistics a database gets
    when its autovacuum analyses steps in a quiet moment. It acts as the app role scoped to
    tenant t1, with generic plans."""
    with _app_connection(
        postgres_empty_url,
        "INSERT INTO steps (run_id, key, tenant_id, status, available_at)"
        " SELECT 'r' || (i / 4), 's' || (i % 4), 't' || (i % 10),"
        " CASE WHEN i % 3 = 0 THEN 'ready' ELSE 'succeeded' END, 0"
        " FROM generate_series(0, 3999) AS i",
        "ANALYZE steps",
    ) as conn:
        yield conn


@pytest.mark.postgres
@pytest.mark.parametrize(("name", "sql"), BY_STEP, ids=[n for n, _ in BY_STEP])
def test_postgres_finds_an_attempts_step_by_its_primary_key(
    steps_analysed_idle: Any, name: str, sql: str
) -> None:
    # Before migration 9 the partial index of running steps served these statements (their
    # conditions implied its predicate) and, with no step running when analysed, looked
    # cheaper than the primary key: every finish then walked all running steps of every tenant.
    plan = _generic_plan(steps_analysed_idle, sql)
    assert re.search(r"Index Scan using steps_pkey on steps\b", plan), (name, plan)
    assert "steps_running" not in plan, (name, plan)


@pytest.mark.postgres
@pytest.mark.parametrize(("name", "sql"), RUNNING_STEPS, ids=[n for n, _ in RUNNING_STEPS])
def test_postgres_finds_running_steps_by_the_partial_index(
    steps_analysed_idle: Any, name: str, sql: str
) -> None:
    plan = _generic_plan(steps_analysed_idle, sql)
    assert re.search(
        r"Index Scan using steps_running on steps\b|Bitmap Index Scan on steps_running\b", plan
    ), (
        name,
        plan,
    )


_RUNS = (
    "INSERT INTO runs (id, tenant_id, workflow, workflow_version, status, input, state_hash,"
    " created_at, updated_at) SELECT '{prefix}' || i, 't' || (i % {tenants}), 'w', '1', 'running',"
    " '\\x7b7d', 'h', i, i FROM generate_series(0, {last}) AS i"
)


@pytest.mark.postgres
@pytest.mark.parametrize(
    "setup",
    [
        # A young database: runs never analysed, one tenant's burst of 2,000 runs in it.
        [_RUNS.format(prefix="x", tenants=1, last=1999)],
        # Analysed with a few hundred runs of ten tenants, then a tenant's burst.
        [
            _RUNS.format(prefix="r", tenants=10, last=399),
            "ANALYZE runs",
            _RUNS.format(prefix="x", tenants=1, last=1999),
        ],
    ],
    ids=["never analysed", "analysed before a burst"],
)
def test_postgres_locks_a_batchs_runs_each_by_its_primary_key_in_order(
    postgres_empty_url: str, setup: list[str]
) -> None:
    """The lock a batch of several runs takes first finds each run by its primary key, one
    after the other in the order given (the caller's sorted order, which keeps two batches
    from deadlocking): written as ``id = ANY(?)`` its generic plan took the tenant's index on
    a young table and read all of the tenant's runs in every batch."""
    from tenantflow.adapters.postgres import _LOCK_RUNS

    with _app_connection(postgres_empty_url, *setup) as conn:
        plan = _generic_plan(conn, _LOCK_RUNS)
    lines = plan.splitlines()
    assert lines[0].startswith("Nested Loop"), plan
    assert lines[1].strip().startswith("->  Function Scan on unnest"), plan  # the ids, in order
    assert re.search(r"Index Scan using runs_pkey on runs\b", plan), plan
    assert "runs_tenant_created" not in plan, plan
    assert "Sort" not in plan, plan


@pytest.mark.postgres
def test_postgres_finds_an_open_command_by_its_tenant_and_id(postgres_empty_url: str) -> None:
    """A worker's command result names the command in the index of open commands by tenant
    and id: by its id alone, statistics taken when no command was open made that partial
    index look cheapest, and each finish walked every open command."""
    from tenantflow.adapters.postgres_cluster import FINISH_COMMAND

    commands = (
        "INSERT INTO commands (tenant_id, kind, target, created_at{done})"
        " SELECT 't' || (i % 10), 'k', 'x', i{value} FROM generate_series(1, {n}) AS i"
    )
    with _app_connection(
        postgres_empty_url,
        commands.format(done=", done_at", value=", i", n=2000),  # all done when analysed
        "ANALYZE commands",
        commands.format(done="", value="", n=3000),
    ) as conn:
        conn.execute("RESET ROLE")  # the coordinator works in the system scope
        sql = FINISH_COMMAND.replace("%s", "{}").format(1.0, "'{}'", 2500, "'t1'")
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql).fetchall())
    by_open = re.search(r"Index Cond: \((.*)\)", plan)
    assert by_open is not None, plan
    assert "tenant_id" in by_open.group(1) and "id = 2500" in by_open.group(1), plan
