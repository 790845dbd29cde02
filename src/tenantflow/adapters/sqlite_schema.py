"""SQLite schema migrations, applied in order and recorded in ``tf_schema``.

Each migration is a list of statements; a database is brought up to date in one transaction.
Keep these in step with the PostgreSQL migrations: the same tables, columns and meaning.
"""

from __future__ import annotations

import sqlite3

from tenantflow.adapters.sqlite_memory import MIGRATION as _MEMORY
from tenantflow.adapters.sqlite_tenancy import MIGRATION as _TENANCY

__all__ = ["MIGRATIONS", "migrate", "schema_version", "schema_version_readonly"]

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL,
            workflow TEXT NOT NULL,
            workflow_version TEXT NOT NULL,
            status TEXT NOT NULL,
            lane TEXT NOT NULL DEFAULT 'normal',
            input BLOB NOT NULL,
            result BLOB,
            error TEXT,
            state_version INTEGER NOT NULL DEFAULT 0,
            state_hash TEXT NOT NULL,
            idempotency_key TEXT,
            parent_run_id TEXT,
            meta TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL
        )""",
        "CREATE UNIQUE INDEX runs_idempotency ON runs (tenant_id, idempotency_key)"
        " WHERE idempotency_key IS NOT NULL",
        "CREATE INDEX runs_tenant_created ON runs (tenant_id, created_at, id)",
        "CREATE INDEX runs_active ON runs (status)"
        " WHERE status IN ('queued', 'running', 'paused', 'compensating', 'cancelling')",
        """CREATE TABLE steps (
            run_id TEXT NOT NULL,
            key TEXT NOT NULL,
            tenant_id TEXT NOT NULL,
            status TEXT NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            fence INTEGER NOT NULL DEFAULT 0,
            owner TEXT,
            lease_expires_at REAL,
            available_at REAL NOT NULL DEFAULT 0,
            output BLOB,
            error TEXT,
            version INTEGER,
            started_at REAL,
            finished_at REAL,
            PRIMARY KEY (run_id, key)
        ) WITHOUT ROWID""",
        "CREATE INDEX steps_running ON steps (owner) WHERE status = 'running'",
        """CREATE TABLE state_versions (
            run_id TEXT NOT NULL,
            version INTEGER NOT NULL,
            tenant_id TEXT NOT NULL,
            parent INTEGER,
            step TEXT,
            delta BLOB NOT NULL,
            hash TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (run_id, version)
        ) WITHOUT ROWID""",
        # State versions are append-only: an UPDATE is refused by the database itself.
        """CREATE TRIGGER state_versions_immutable BEFORE UPDATE ON state_versions
           BEGIN SELECT RAISE(ABORT, 'state versions are immutable'); END""",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            tenant_id TEXT NOT NULL,
            run_id TEXT NOT NULL,
            ts REAL NOT NULL,
            kind TEXT NOT NULL,
            step TEXT,
            attempt INTEGER,
            data TEXT
        )""",
        "CREATE INDEX events_run ON events (run_id, id)",
    ],
    _TENANCY,
    # API keys: the control plane's table (keys live in the default store only). tenant_id is
    # NULL for an admin key; only the secret's SHA-256 digest is kept.
    [
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            tenant_id TEXT,
            name TEXT NOT NULL,
            prefix TEXT NOT NULL,
            secret_sha256 TEXT NOT NULL,
            created_at REAL NOT NULL,
            revoked_at REAL,
            created_by TEXT NOT NULL,
            revoked_by TEXT
        )""",
        "CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at)",
    ],
    # Workers sharing one database (tenantflow.engine.cluster): their heartbeats, which worker
    # drives which tenant (a lease), and the inbox of run commands for the driving worker.
    [
        """CREATE TABLE workers (
            id TEXT PRIMARY KEY,
            info TEXT,
            started_at REAL NOT NULL,
            beat_at REAL NOT NULL
        )""",
        """CREATE TABLE tenant_owners (
            tenant_id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            expires_at REAL NOT NULL
        )""",
        "CREATE INDEX tenant_owners_owner ON tenant_owners (owner)",
        """CREATE TABLE commands (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            tenant_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            target TEXT NOT NULL,
            payload TEXT,
            created_at REAL NOT NULL,
            taken_by TEXT,
            taken_until REAL,
            done_at REAL,
            result TEXT
        )""",
        "CREATE INDEX commands_open ON commands (tenant_id, id) WHERE done_at IS NULL",
        "CREATE INDEX runs_unfinished ON runs (status)"
        " WHERE status IN ('queued', 'running', 'paused', 'compensating', 'cancelling')",
    ],
    # Agent memory (tenantflow.engine.memory): entries, documents and their words, per tenant
    # and namespace.
    _MEMORY,
    # runs_unfinished (migration 4) repeats runs_active (migration 1) exactly: every run insert
    # and status change kept two identical indexes.
    ["DROP INDEX IF EXISTS runs_unfinished"],
    # The side-effect outbox (tenantflow.domain.outbox): a row per fx.enqueued event, written
    # in the transaction that made the side effect ready, marked published once the broker has
    # it, removed when an agent's final outcome (delivered, dead-lettered) is recorded.
    [
        """CREATE TABLE outbox (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL,
            run_id TEXT NOT NULL,
            step TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_at REAL NOT NULL,
            published_at REAL
        )""",
        "CREATE INDEX outbox_unpublished ON outbox (created_at, id) WHERE published_at IS NULL",
    ],
    # Reviews by run: a retention purge batch deletes its runs' reviews without reading every
    # review of the tenant (tests/contract/test_store_plans.py).
    ["CREATE INDEX reviews_run ON reviews (tenant_id, run_id)"],
    # The running steps by owner, for lease renewal and recovery, no longer serve a finish: a
    # fenced finish (run, step, fence, status = 'running') implied steps_running's predicate, and
    # where statistics were taken while few steps ran, PostgreSQL's generic plan walked every
    # running step of every tenant instead of the step's primary key (tests/contract/
    # test_store_plans.py). A running step always has an owner; its queries say so.
    [
        "DROP INDEX steps_running",
        "CREATE INDEX steps_running ON steps (owner)"
        " WHERE status = 'running' AND owner IS NOT NULL",
    ],
]


def schema_version(conn: sqlite3.Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS tf_schema (version INTEGER NOT NULL)")
    row = conn.execute("SELECT MAX(version) FROM tf_schema").fetchone()
    return int(row[0] or 0)


def schema_version_readonly(conn: sqlite3.Connection) -> int:
    """The schema version without creating anything (0 for an empty database)."""
    row = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'tf_schema'"
    ).fetchone()
    if row is None:
        return 0
    return int(conn.execute("SELECT MAX(version) FROM tf_schema").fetchone()[0] or 0)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every pending migration in one transaction; returns the resulting version.

    Raises:
        RuntimeError: the database was written by a newer release (its schema is ahead).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = schema_version(conn)
        if current > len(MIGRATIONS):
            raise RuntimeError(
                f"the database schema is version {current}, newer than this release's"
                f" {len(MIGRATIONS)}; upgrade tenantflow"
            )
        for number, statements in enumerate(MIGRATIONS, start=1):
            if number <= current:
                continue
            for sql in statements:
                conn.execute(sql)
            conn.execute("INSERT INTO tf_schema (version) VALUES (?)", (number,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(MIGRATIONS)
