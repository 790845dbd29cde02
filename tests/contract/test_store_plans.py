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

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
