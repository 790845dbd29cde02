"""SQLite schema of tenancy: tenants, audit chain, budget ledgers, rate buckets, reviews, usage.

The ops on these tables are dialect-neutral (:mod:`~tenantflow.adapters.sql_tenancy`); only the
DDL is SQLite's own, and the PostgreSQL schema is derived from it (``postgres_schema``).
"""

from __future__ import annotations

__all__ = ["MIGRATION"]

MIGRATION: list[str] = [
    """CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        org_id TEXT,
        policy TEXT NOT NULL,
        policy_version INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE policy_versions (
        tenant_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        policy TEXT NOT NULL,
        actor TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (tenant_id, version)
    ) WITHOUT ROWID""",
    """CREATE TABLE audit_log (
        tenant_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        ts REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (tenant_id, seq)
    ) WITHOUT ROWID""",
    """CREATE TABLE ledgers (
        tenant_id TEXT NOT NULL,
        scope TEXT NOT NULL,
        unit TEXT NOT NULL,
        limit_amount INTEGER,
        spent INTEGER NOT NULL DEFAULT 0,
        reserved INTEGER NOT NULL DEFAULT 0,
        overrun INTEGER NOT NULL DEFAULT 0,
        period TEXT,
        period_start REAL,
        PRIMARY KEY (tenant_id, scope, unit)
    ) WITHOUT ROWID""",
    """CREATE TABLE holds (
        tenant_id TEXT NOT NULL,
        key TEXT NOT NULL,
        scope TEXT NOT NULL,
        unit TEXT NOT NULL,
        amount INTEGER NOT NULL,
        state TEXT NOT NULL,
        charged INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        PRIMARY KEY (tenant_id, key, scope, unit)
    ) WITHOUT ROWID""",
    "CREATE INDEX holds_open ON holds (tenant_id, key) WHERE state = 'held'",
    """CREATE TABLE rate_buckets (
        tenant_id TEXT NOT NULL,
        resource TEXT NOT NULL,
        tat REAL,
        factor REAL NOT NULL DEFAULT 1.0,
        PRIMARY KEY (tenant_id, resource)
    ) WITHOUT ROWID""",
    """CREATE TABLE reviews (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        step TEXT NOT NULL,
        pool TEXT NOT NULL,
        lane TEXT NOT NULL,
        status TEXT NOT NULL,
        sla_due REAL,
        created_at REAL NOT NULL,
        payload TEXT NOT NULL,
        claimed_by TEXT,
        decided_by TEXT,
        comment TEXT,
        decided_at REAL,
        escalations INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX reviews_queue ON reviews (tenant_id, pool, status, sla_due)",
    """CREATE TABLE calls (
        tenant_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        key TEXT NOT NULL,
        idx INTEGER NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        result TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (run_id, key, idx)
    ) WITHOUT ROWID""",
    """CREATE TABLE usage (
        tenant_id TEXT NOT NULL,
        day TEXT NOT NULL,
        metric TEXT NOT NULL,
        dim TEXT NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (tenant_id, day, metric, dim)
    ) WITHOUT ROWID""",
]
