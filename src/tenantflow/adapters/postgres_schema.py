"""PostgreSQL schema migrations, applied in order and recorded in ``tf_schema``.

In step with SQLite's (:data:`tenantflow.adapters.sqlite_schema.MIGRATIONS`) by construction:
migration *n* here is SQLite's migration *n* — the same tables, columns and indexes — in
PostgreSQL's types (``DOUBLE PRECISION`` for ``REAL``, ``BIGINT`` for ``INTEGER``, ``BYTEA``
for ``BLOB``, an identity column for ``AUTOINCREMENT``), with PostgreSQL's own statements where
SQLite's are its own (the trigger that keeps state versions immutable), and row-level security
on every table it creates (``tests/unit/test_migrations.py`` checks all of it).

Besides the tables, the migrations set up the second wall behind the application's own tenant
filters (see :mod:`~tenantflow.adapters.postgres` for how the store uses it):

* the tables belong to the connecting role, the **owner**, which runs migrations only;
* :data:`APP_ROLE` (``NOLOGIN``, not the owner, no ``BYPASSRLS``, granted to the owner) does all
  tenant-scoped work; every tenant table has ``ENABLE`` and ``FORCE ROW LEVEL SECURITY`` and a
  policy letting it see and write only rows whose tenant is the transaction's
  ``tenantflow.tenant`` setting (``USING`` and ``WITH CHECK``);
* :data:`SYSTEM_ROLE` (``NOLOGIN``, granted to the owner) does the few cross-tenant operations of
  recovery; its policy sees every tenant, and its grants allow only what recovery needs: reading,
  taking over and renewing step leases, logging the takeover and releasing the dead attempt's
  budget holds. It cannot insert runs or delete anything.

API keys (``api_keys``) follow the same design with one addition. A tenant key is a tenant row
like any other: the app role, scoped to its tenant, creates, lists, revokes and (with the tenant)
deletes it, and sees no other tenant's key and no admin key (``NULL`` never equals the setting).
Authentication looks a key up by id before it knows whose it is, so the system role reads every
key. An admin key (``tenant_id IS NULL``) belongs to no tenant: it is written in system scope,
and restrictive policies confine the system role's writes to such rows — it can neither create,
revoke nor re-assign a tenant's key, and it deletes nothing.
"""

from __future__ import annotations

import re
from typing import Any

from psycopg import AsyncConnection, sql

from tenantflow.adapters.sql_tenancy import SYSTEM_TABLES, TENANT_TABLES
from tenantflow.adapters.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS
from tenantflow.errors import StoreUnavailableError

__all__ = ["APP_ROLE", "MIGRATIONS", "SYSTEM_ROLE", "migrate", "schema_version"]

APP_ROLE = "tenantflow_app"
SYSTEM_ROLE = "tenantflow_system"
TENANT_SETTING = "tenantflow.tenant"

_ALL = "SELECT, INSERT, UPDATE, DELETE"
_APPEND_ONLY = "SELECT, INSERT, DELETE"  # rows are written once (and purged), never updated


def _role(name: str) -> list[str]:
    """Create the NOLOGIN role ``name`` if missing, and let the connecting role ``SET ROLE`` to
    it (a superuser can without a grant).

    Roles are cluster-wide: creating one needs ``CREATEROLE`` (often refused on managed
    PostgreSQL) and it outlives ``DROP DATABASE``. An administrator may create both roles and
    grant them to the owner beforehand; then neither is created nor granted again, and the
    owner needs no ``CREATEROLE``. Without either, the error says what to run."""
    create = f"CREATE ROLE {name} NOLOGIN NOSUPERUSER NOBYPASSRLS"
    return [
        f"""DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN
                BEGIN
                    {create};
                EXCEPTION WHEN insufficient_privilege THEN
                    RAISE EXCEPTION 'the role {name} does not exist and % may not create it'
                        ' (CREATEROLE): have an administrator run {create};'
                        ' GRANT {name} TO %;', current_user, current_user;
                END;
            END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END $$""",
        f"""DO $$ BEGIN
            IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
               AND NOT pg_has_role(current_user, '{name}', 'MEMBER') THEN
                EXECUTE format('GRANT {name} TO %I', current_user);
            END IF;
        EXCEPTION
            WHEN unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION '% is not a member of the role {name} and may not grant it'
                    ' to itself: have an administrator run GRANT {name} TO %;',
                    current_user, current_user;
        END $$""",
    ]


def _system_table(table: str) -> list[str]:
    """Row-level security on a table of the platform's own: the system role only."""
    return [
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY {table}_system ON {table} TO {SYSTEM_ROLE} USING (true) WITH CHECK (true)",
        f"GRANT {_ALL} ON {table} TO {SYSTEM_ROLE}",
    ]


def _tenant_table(table: str) -> list[str]:
    """Row-level security on ``table``: the app role sees the current tenant's rows only, the
    system role every row; the grants of :data:`_GRANTS` say what each may do to them."""
    app, system = _GRANTS[table]
    mine = f"{TENANT_TABLES.get(table, 'tenant_id')} = current_setting('{TENANT_SETTING}', true)"
    return [
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY {table}_tenant ON {table} TO {APP_ROLE} USING ({mine}) WITH CHECK ({mine})",
        f"CREATE POLICY {table}_system ON {table} TO {SYSTEM_ROLE} USING (true) WITH CHECK (true)",
        f"GRANT {app} ON {table} TO {APP_ROLE}",
        f"GRANT {system} ON {table} TO {SYSTEM_ROLE}",
        *_RESTRICTIONS.get(table, []),
    ]


_ROLES = [
    *_role(APP_ROLE),
    *_role(SYSTEM_ROLE),
    f"""DO $$ BEGIN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO {APP_ROLE}, {SYSTEM_ROLE}', current_schema());
    END $$""",
]

# What each role may do to each table (row-level security then limits it to the right rows).
# A new table must be added here: the migrations refuse to build without it.
_GRANTS: dict[str, tuple[str, str]] = {
    "runs": (_ALL, "SELECT"),
    "steps": (_ALL, "SELECT, UPDATE"),
    "state_versions": (_APPEND_ONLY, "SELECT"),
    "events": (_APPEND_ONLY, "SELECT, INSERT"),
    "tenants": (_ALL, "SELECT"),
    "policy_versions": (_APPEND_ONLY, "SELECT"),
    "audit_log": (_APPEND_ONLY, "SELECT"),
    "ledgers": (_ALL, "SELECT, UPDATE"),
    "holds": (_ALL, "SELECT, UPDATE"),
    "rate_buckets": (_ALL, "SELECT"),
    "reviews": (_ALL, "SELECT"),
    "calls": (_APPEND_ONLY, "SELECT"),
    "usage": (_ALL, "SELECT"),
    "api_keys": (_ALL, "SELECT, INSERT, UPDATE"),
    # A front posts a tenant's command and reads its result; the driving worker takes it.
    "commands": ("SELECT, INSERT, DELETE", "SELECT, UPDATE"),
    # Agent memory: entries are upserted; documents and their words are written once.
    "memory_entries": (_ALL, "SELECT"),
    "memory_documents": (_APPEND_ONLY, "SELECT"),
    "memory_terms": (_APPEND_ONLY, "SELECT"),
    # The side-effect outbox: written with a tenant's transition, read across tenants by the
    # relay, marked published and settled (as the tenant).
    "outbox": (_ALL, "SELECT"),
}

# Restrictive policies (ANDed with the permissive ones above) narrowing what a role may write.
# The system role reads every API key to authenticate, but writes only admin keys (no tenant).
_RESTRICTIONS: dict[str, list[str]] = {
    "api_keys": [
        f"CREATE POLICY api_keys_system_insert ON api_keys AS RESTRICTIVE FOR INSERT"
        f" TO {SYSTEM_ROLE} WITH CHECK (tenant_id IS NULL)",
        f"CREATE POLICY api_keys_system_update ON api_keys AS RESTRICTIVE FOR UPDATE"
        f" TO {SYSTEM_ROLE} USING (tenant_id IS NULL) WITH CHECK (tenant_id IS NULL)",
    ],
}

# What PostgreSQL has in place of SQLite-only statements, by migration version.
_INSTEAD: dict[int, list[str]] = {
    1: [
        # State versions are append-only: an UPDATE is refused by the database, whoever asks.
        """CREATE FUNCTION tf_state_versions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'state versions are immutable'; END $$""",
        """CREATE TRIGGER state_versions_immutable BEFORE UPDATE ON state_versions
            FOR EACH ROW EXECUTE FUNCTION tf_state_versions_immutable()""",
    ],
}

# SQLite's DDL in PostgreSQL's types: the tables, columns and indexes are defined once.
_TYPES = [
    (
        re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"),
        "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    ),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\)\s*WITHOUT ROWID\s*$"), ")"),
]
_CREATE_TABLE = re.compile(r"\s*CREATE TABLE (\w+)")


def _postgres_ddl(statement: str) -> str | None:
    """A SQLite migration statement in PostgreSQL's dialect; None for a SQLite trigger (see
    :data:`_INSTEAD`)."""
    if statement.lstrip().startswith("CREATE TRIGGER"):
        return None
    for pattern, replacement in _TYPES:
        statement = pattern.sub(replacement, statement)
    return statement


def _migration(version: int, sqlite: list[str]) -> list[str]:
    ddl = [t for t in map(_postgres_ddl, sqlite) if t is not None]
    tables = [m.group(1) for m in map(_CREATE_TABLE.match, ddl) if m is not None]
    secured = [
        s
        for table in tables
        for s in (_system_table(table) if table in SYSTEM_TABLES else _tenant_table(table))
    ]
    return [*(_ROLES if version == 1 else []), *ddl, *_INSTEAD.get(version, []), *secured]


MIGRATIONS: list[list[str]] = [
    _migration(version, statements) for version, statements in enumerate(SQLITE_MIGRATIONS, 1)
]

# Migrations of every schema in a database take turns: the roles they create are shared.
_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('tenantflow.migrate', 0))"


async def schema_version(conn: AsyncConnection[Any]) -> int:
    """The schema version without creating anything (0 for an empty schema)."""
    cur = await conn.execute("SELECT to_regclass('tf_schema') IS NOT NULL")
    row = await cur.fetchone()
    if row is None or not row[0]:
        return 0
    cur = await conn.execute("SELECT MAX(version) FROM tf_schema")
    row = await cur.fetchone()
    return int(row[0] or 0) if row is not None else 0


async def migrate(conn: AsyncConnection[Any], schema: str | None = None) -> int:
    """Apply every pending migration in one transaction; returns the resulting version.

    Args:
        conn: a connection as the owner role (in autocommit mode: the transaction is ours).
        schema: the schema to create first when missing (None: the connection's search path).

    Raises:
        StoreUnavailableError: the database was written by a newer release (its schema is ahead).
    """
    async with conn.transaction():
        await conn.execute(_MIGRATION_LOCK)
        if schema is not None:
            await conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
            )
        await conn.execute("CREATE TABLE IF NOT EXISTS tf_schema (version INTEGER NOT NULL)")
        current = await schema_version(conn)
        if current > len(MIGRATIONS):
            raise StoreUnavailableError(
                f"the database schema is version {current}, newer than this release's"
                f" {len(MIGRATIONS)}; upgrade tenantflow",
                schema_version=current,
            )
        for number, statements in enumerate(MIGRATIONS, start=1):
            if number <= current:
                continue
            for statement in statements:
                await conn.execute(statement.encode())
            await conn.execute("INSERT INTO tf_schema (version) VALUES (%s)", (number,))
    return len(MIGRATIONS)
