"""The SQLite and PostgreSQL migrations stay in step: same versions, tables and columns."""

from __future__ import annotations

import re

import pytest

from tenantflow.adapters.sql_tenancy import SYSTEM_TABLES, TENANT_TABLES
from tenantflow.adapters.sqlite_schema import MIGRATIONS as SQLITE

pytest.importorskip("psycopg", reason="the postgres extra is not installed")
from tenantflow.adapters.postgres_schema import MIGRATIONS as POSTGRES

_TABLE = re.compile(r"CREATE TABLE (\w+) \((.*)\)", re.DOTALL)
_CONSTRAINT = ("PRIMARY KEY", "UNIQUE", "FOREIGN KEY", "CHECK")


def tables(statements: list[str]) -> dict[str, list[str]]:
    """The tables a migration creates, with their column names in order."""
    out: dict[str, list[str]] = {}
    for statement in statements:
        match = _TABLE.match(statement.strip())
        if match is None:
            continue
        lines = [part.strip() for part in match.group(2).split(",\n")]
        out[match.group(1)] = [
            line.split()[0] for line in lines if line and not line.startswith(_CONSTRAINT)
        ]
    return out


def test_both_dialects_have_the_same_migration_versions() -> None:
    # Versions are positions in the lists: version n is MIGRATIONS[n - 1] in both dialects.
    assert len(SQLITE) == len(POSTGRES)


@pytest.mark.parametrize("version", range(1, len(SQLITE) + 1))
def test_each_version_creates_the_same_tables_and_columns(version: int) -> None:
    sqlite, postgres = tables(SQLITE[version - 1]), tables(POSTGRES[version - 1])
    if any("CREATE TABLE" in s for s in SQLITE[version - 1]):
        assert sqlite, "the parser found no table"
    assert sqlite == postgres
    dropped = re.compile(r"DROP INDEX IF EXISTS (\w+)")
    assert [m for s in SQLITE[version - 1] for m in dropped.findall(s)] == [
        m for s in POSTGRES[version - 1] for m in dropped.findall(s)
    ]


def names(statements: list[str], kind: str) -> set[str]:
    return {m.group(1) for s in statements if (m := re.search(rf"CREATE {kind} (\w+)", s))}


@pytest.mark.parametrize("version", range(1, len(SQLITE) + 1))
def test_each_version_has_the_same_indexes_and_triggers_in_postgres_types(version: int) -> None:
    sqlite, postgres = SQLITE[version - 1], POSTGRES[version - 1]
    for kind in ("INDEX", "UNIQUE INDEX", "TRIGGER"):
        assert names(sqlite, kind) == names(postgres, kind), kind
    ddl = " ".join(s for s in postgres if s.lstrip().startswith("CREATE TABLE"))
    for sqlite_only in ("REAL", "BLOB", "AUTOINCREMENT", "WITHOUT ROWID", " INTEGER"):
        assert sqlite_only not in ddl


def test_every_tenant_table_is_under_forced_row_level_security() -> None:
    statements = [s for migration in POSTGRES for s in migration]
    protected = {*TENANT_TABLES, "audit_log"}
    created = {t for migration in POSTGRES for t in tables(migration)}
    assert protected | SYSTEM_TABLES == created  # every table is a tenant's or the platform's
    for table in protected:
        column = TENANT_TABLES.get(table, "tenant_id")
        assert f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY" in statements
        assert f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY" in statements
        [policy] = [s for s in statements if s.startswith(f"CREATE POLICY {table}_tenant ")]
        check = f"{column} = current_setting('tenantflow.tenant', true)"
        assert f"USING ({check}) WITH CHECK ({check})" in policy


def test_platform_tables_are_invisible_to_the_application_role() -> None:
    statements = [s for migration in POSTGRES for s in migration]
    for table in SYSTEM_TABLES:
        assert f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY" in statements
        policies = [s for s in statements if s.startswith(f"CREATE POLICY {table}_")]
        assert policies and all("TO tenantflow_system" in s for s in policies)
        assert not [
            s for s in statements if s.startswith("GRANT") and f" ON {table} TO tenantflow_app" in s
        ]


def test_the_system_role_reads_every_api_key_but_writes_only_admin_keys() -> None:
    statements = [s for migration in POSTGRES for s in migration]
    [grant] = [
        s for s in statements if s.startswith("GRANT") and "ON api_keys TO tenantflow_system" in s
    ]
    assert "SELECT" in grant and "DELETE" not in grant
    restrictive = [s for s in statements if "ON api_keys AS RESTRICTIVE" in s]
    assert {s.split(" FOR ")[1].split()[0] for s in restrictive} == {"INSERT", "UPDATE"}
    assert all("TO tenantflow_system" in s and "(tenant_id IS NULL)" in s for s in restrictive)
