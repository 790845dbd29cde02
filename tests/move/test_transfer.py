"""Store-level transfer of one tenant (adapters/tenant_transfer.py): which tables move, and
every row of every one of them copied, checked and purged, SQLite <-> PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tenantflow.adapters import open_store
from tenantflow.adapters.sql_tenancy import SYSTEM_TABLES, TENANT_TABLES
from tenantflow.adapters.sqlite_schema import MIGRATIONS
from tenantflow.adapters.tenant_transfer import (
    NOT_TENANT_DATA,
    Column,
    TenantExport,
    export_tenant,
    fingerprint,
    import_tenant,
    purge_tenant,
    schema_tables,
    tenant_rows,
    transfer_plan,
    unclassified_tables,
)
from tenantflow.domain.audit import verify_chain
from tenantflow.domain.tenancy import AuditEntry
from tenantflow.errors import ConflictError, NotFoundError
from tenantflow.ports import Store

pytestmark = pytest.mark.timeout(60)


# -- which tables move --------------------------------------------------------------------------


def test_every_table_of_the_schema_is_moved_or_named_as_not_tenant_data() -> None:
    # A new table must either hold a tenant column (it then moves) or be named, with a reason,
    # in NOT_TENANT_DATA: this fails until one of the two is done.
    assert unclassified_tables() == []
    moved = {t.name for t in transfer_plan()}
    # Everything a tenant's deletion purges moves, and so does its audit chain.
    assert set(TENANT_TABLES) | {"audit_log"} <= moved
    assert set(NOT_TENANT_DATA) >= SYSTEM_TABLES
    assert moved.isdisjoint(NOT_TENANT_DATA)
    assert moved | set(NOT_TENANT_DATA) == set(schema_tables())


def test_a_new_table_is_caught_or_moved_by_reading_the_schema() -> None:
    extra = [
        *MIGRATIONS,
        [
            "CREATE TABLE gadgets (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, n INTEGER)",
            "CREATE TABLE widgets (id TEXT PRIMARY KEY, owner TEXT NOT NULL)",
            "ALTER TABLE runs ADD COLUMN note TEXT",
        ],
    ]
    assert unclassified_tables(extra) == ["widgets"]  # no tenant column: it must be classified
    plan = {t.name: t for t in transfer_plan(extra)}
    assert plan["gadgets"].copied == ("id", "tenant_id", "n")  # a tenant table moves by itself
    assert plan["runs"].copied[-1] == "note"  # and so does a new column
    assert [c for c in plan["events"].columns if c.identity] == [Column("id", "INTEGER", True)]


def test_the_fingerprint_ignores_order_and_sees_every_value() -> None:
    a = {"runs": [("r1", 1.5, b"\x00", None), ("r2", 2.0, b"", "x")]}
    assert fingerprint(a) == fingerprint({"runs": list(reversed(a["runs"])), "steps": []})
    for changed in (("r1", 1.5, b"\x01", None), ("r1", 1.5000001, b"\x00", None)):
        assert fingerprint({"runs": [changed, a["runs"][1]]}) != fingerprint(a)
    assert fingerprint({"runs": [("1",)]}) != fingerprint({"runs": [(1,)]})


# -- every row of every table, both ways ----------------------------------------------------------


def _value(table: str, column: Column, tenant: str, n: int) -> Any:
    if column.name == ("id" if table == "tenants" else "tenant_id"):
        return tenant
    if column.type == "INTEGER":
        return 7 + n
    if column.type == "REAL":
        return 0.1 + n
    if column.type == "BLOB":
        return bytes([0, 255, n])
    return f"{table}.{column.name}.{tenant}.{n}"


async def _fill(store: Store, tenant: str) -> dict[str, int]:
    """One row (two for events) in every tenant table, with a value in every column."""
    counts: dict[str, int] = {}
    for table in transfer_plan():
        n_rows = 2 if table.name == "events" else 1
        for n in range(n_rows):
            values = [_value(table.name, c, tenant, n) for c in table.columns if not c.identity]
            marks = ", ".join("?" for _ in values)
            await store.execute_sql(  # type: ignore[attr-defined]
                f"INSERT INTO {table.name} ({', '.join(table.copied)}) VALUES ({marks})", values
            )
        counts[table.name] = n_rows
    return counts


@pytest.fixture
async def stores(postgres_url: str, tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    pg, lite = open_store(postgres_url), open_store(f"sqlite:///{tmp_path / 'cell.db'}")
    await pg.open()
    await lite.open()
    try:
        yield pg, lite
    finally:
        await pg.close()
        await lite.close()


def _without(export: TenantExport, *tables: str) -> dict[str, list[tuple[Any, ...]]]:
    return {k: v for k, v in export.rows.items() if k not in tables}


@pytest.mark.postgres
async def test_every_row_moves_from_postgresql_to_sqlite_and_back(
    stores: tuple[Store, Store],
) -> None:
    pg, lite = stores
    counts = await _fill(pg, "t1")
    await _fill(pg, "t2")  # a neighbour: never touched
    neighbour = await export_tenant(pg, "t2", now=1.0)
    here, there = pg, lite
    for leg in range(2):
        departure = AuditEntry("test", "tenant.moving", "tenant:t1", {"leg": leg})
        export = await export_tenant(here, "t1", now=10.0 + leg, departure=departure)
        # Each leg adds a departure row, and each earlier leg an arrival row and a run.moved event.
        grown = {"audit_log": counts["audit_log"] + 2 * leg + 1, "events": counts["events"] + leg}
        assert export.counts() == {**counts, **grown}
        arrival = AuditEntry("test", "tenant.moved", "tenant:t1", {"leg": leg})
        copied = await import_tenant(there, export, now=20.0, arrival=arrival, moved={"leg": leg})
        assert copied == export.counts()
        purged = await purge_tenant(here, "t1", expect=export.fingerprint)
        assert purged["deleted"] == export.counts()
        assert set(purged["left"].values()) == {0}
        assert set((await tenant_rows(here, "t1")).values()) == {0}
        # What arrived is the copy, value for value, plus a run.moved event per unfinished run
        # (the synthetic run is unfinished) and the arrival row, which extends the chain.
        arrived = await export_tenant(there, "t1", now=30.0)
        assert fingerprint(_without(arrived, "events", "audit_log")) == fingerprint(
            _without(export, "events", "audit_log")
        )
        assert len(arrived.rows["events"]) == len(export.rows["events"]) + 1
        head = arrived.rows["audit_log"][-1]
        assert head[4] == "tenant.moved" and head[1] == export.audit_head()[0] + 1  # type: ignore[index]
        here, there = there, here
    assert set((await tenant_rows(lite, "t1")).values()) == {0}
    # The neighbour on PostgreSQL is exactly as it was.
    assert (await export_tenant(pg, "t2", now=2.0)).fingerprint == neighbour.fingerprint


@pytest.mark.postgres
async def test_a_change_after_the_copy_stops_the_purge_and_a_present_tenant_stops_the_import(
    stores: tuple[Store, Store],
) -> None:
    pg, lite = stores
    await _fill(pg, "t1")
    export = await export_tenant(pg, "t1", now=1.0)
    await pg.execute_sql(  # type: ignore[attr-defined]
        "UPDATE ledgers SET spent = spent + 1 WHERE tenant_id = ?", ["t1"]
    )
    before = await tenant_rows(pg, "t1")
    with pytest.raises(ConflictError, match="changed in the source store"):
        await purge_tenant(pg, "t1", expect=export.fingerprint)
    assert await tenant_rows(pg, "t1") == before  # nothing deleted
    # A store that holds any row of the tenant refuses the import, and nothing is written.
    await lite.execute_sql(  # type: ignore[attr-defined]
        "INSERT INTO usage (tenant_id, day, metric, dim, value) VALUES ('t1', 'd', 'm', '', 1)"
    )
    arrival = AuditEntry("test", "tenant.moved", "tenant:t1", {})
    with pytest.raises(ConflictError, match="already has data"):
        await import_tenant(lite, export, now=2.0, arrival=arrival, moved={})
    assert sum((await tenant_rows(lite, "t1")).values()) == 1
    with pytest.raises(NotFoundError):
        await export_tenant(lite, "nobody", now=3.0)


async def test_the_audit_chain_verifies_across_a_sqlite_move(tmp_path: Path) -> None:
    from tenantflow.adapters.sql_tenancy import append_audit
    from tenantflow.adapters.tenant_transfer import _transaction

    a = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    b = open_store(f"sqlite:///{tmp_path / 'b.db'}")
    await a.open()
    await b.open()
    try:
        await a.execute_sql(  # type: ignore[attr-defined]
            "INSERT INTO tenants (id, org_id, policy, policy_version, created_at, updated_at)"
            " VALUES ('t1', NULL, '{}', 1, 0, 0)"
        )
        entries = [AuditEntry("x", f"act.{i}", "tenant:t1", {"i": i}) for i in range(5)]
        await _transaction(a, "t1", append_audit("t1", 1.0, entries))
        departure = AuditEntry("test", "tenant.moving", "tenant:t1", {})
        export = await export_tenant(a, "t1", now=2.0, departure=departure)
        arrival = AuditEntry("test", "tenant.moved", "tenant:t1", {})
        await import_tenant(b, export, now=3.0, arrival=arrival, moved={})
        await purge_tenant(a, "t1", expect=export.fingerprint)
        chain = await b.audit_log("t1")
        assert [r.action for r in chain][-2:] == ["tenant.moving", "tenant.moved"]
        assert len(chain) == 7 and verify_chain(chain, tenant_id="t1").ok
        assert await a.audit_log("t1") == []
    finally:
        await a.close()
        await b.close()
