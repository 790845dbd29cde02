"""SQL for tenancy on SQLite: tenants, audit chain, budget ledgers, rate buckets, reviews, usage.

Each function applies one op on the store's writer thread inside the batch's transaction.
SQLite has one writer at a time, so a read-check-write inside one op is atomic: two concurrent
reservations can never both pass a check that only one of them fits.
"""

from __future__ import annotations

import json
import sqlite3
import time as _time
from collections.abc import Sequence
from typing import Any

from tenantflow.domain import budget as budget_math
from tenantflow.domain import ratelimit
from tenantflow.domain.audit import AuditRecord, append_record
from tenantflow.domain.tenancy import (
    AcquireRate,
    AuditEntry,
    Charge,
    ClaimReview,
    CreateReview,
    DecideReview,
    DeleteTenant,
    EscalateReview,
    PurgeRuns,
    PutTenant,
    RateDecision,
    Refusal,
    ReleaseHolds,
    Reserve,
    ReviewRecord,
    ReviewStatus,
    Settle,
    TenantRecord,
    ThrottleRate,
    UsageDelta,
)
from tenantflow.errors import ConflictError, NotFoundError

__all__ = [
    "MIGRATION",
    "TENANT_TABLES",
    "append_audit",
    "audit_rows",
    "get_review",
    "get_tenant",
    "list_reviews",
    "list_tenants",
    "read_ledgers",
    "read_usage",
]

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

# Every table holding a tenant's rows, and its tenant column: what deletion purges and proves.
TENANT_TABLES: dict[str, str] = {
    "events": "tenant_id",
    "calls": "tenant_id",
    "state_versions": "tenant_id",
    "steps": "tenant_id",
    "runs": "tenant_id",
    "reviews": "tenant_id",
    "holds": "tenant_id",
    "ledgers": "tenant_id",
    "rate_buckets": "tenant_id",
    "usage": "tenant_id",
    "policy_versions": "tenant_id",
    "tenants": "id",
}


def _day(ts: float) -> str:
    return _time.strftime("%Y-%m-%d", _time.gmtime(ts))


# -- audit ----------------------------------------------------------------------------------


def _last_audit(conn: sqlite3.Connection, tenant_id: str) -> AuditRecord | None:
    # Appending needs only the last row's seq and hash: never parse its (possibly tampered)
    # content here, so a damaged row is reported by verification, not by a failing write.
    row = conn.execute(
        "SELECT seq, hash FROM audit_log WHERE tenant_id = ? ORDER BY seq DESC LIMIT 1",
        (tenant_id,),
    ).fetchone()
    if row is None:
        return None
    return AuditRecord.model_construct(
        tenant_id=tenant_id,
        seq=int(row[0]),
        ts=0.0,
        actor="",
        action="",
        subject="",
        detail={},
        prev_hash="",
        hash=str(row[1]),
    )


def _audit_from_row(r: Sequence[Any]) -> AuditRecord:
    return AuditRecord(
        tenant_id=r[0],
        seq=r[1],
        ts=r[2],
        actor=r[3],
        action=r[4],
        subject=r[5],
        detail=json.loads(r[6]),
        prev_hash=r[7],
        hash=r[8],
    )


def append_audit(
    conn: sqlite3.Connection, tenant_id: str, now: float, entries: Sequence[AuditEntry]
) -> None:
    """Append entries to the tenant's hash chain (inside the caller's transaction)."""
    if not entries:
        return
    prev = _last_audit(conn, tenant_id)
    for e in entries:
        rec = append_record(
            prev,
            tenant_id=tenant_id,
            ts=now,
            actor=e.actor,
            action=e.action,
            subject=e.subject,
            detail=e.detail,
        )
        conn.execute(
            "INSERT INTO audit_log (tenant_id, seq, ts, actor, action, subject, detail,"
            " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rec.tenant_id,
                rec.seq,
                rec.ts,
                rec.actor,
                rec.action,
                rec.subject,
                json.dumps(rec.detail, sort_keys=True),
                rec.prev_hash,
                rec.hash,
            ),
        )
        prev = rec


def audit_rows(conn: sqlite3.Connection, tenant_id: str) -> list[AuditRecord]:
    rows = conn.execute(
        "SELECT tenant_id, seq, ts, actor, action, subject, detail, prev_hash, hash"
        " FROM audit_log WHERE tenant_id = ? ORDER BY seq",
        (tenant_id,),
    ).fetchall()
    return [_audit_from_row(r) for r in rows]


def add_usage(
    conn: sqlite3.Connection, tenant_id: str, now: float, deltas: Sequence[UsageDelta]
) -> None:
    if deltas:
        day = _day(now)
        conn.executemany(
            "INSERT INTO usage (tenant_id, day, metric, dim, value) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (tenant_id, day, metric, dim)"
            " DO UPDATE SET value = value + excluded.value",
            [(tenant_id, day, d.metric, d.dim, d.value) for d in deltas],
        )


# -- tenants --------------------------------------------------------------------------------


def get_tenant(conn: sqlite3.Connection, tenant_id: str) -> TenantRecord:
    row = conn.execute(
        "SELECT id, org_id, policy, policy_version, created_at, updated_at FROM tenants"
        " WHERE id = ?",
        (tenant_id,),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"tenant {tenant_id!r} not found", kind="tenant", id=tenant_id)
    return TenantRecord(*row)


def list_tenants(conn: sqlite3.Connection) -> list[TenantRecord]:
    rows = conn.execute(
        "SELECT id, org_id, policy, policy_version, created_at, updated_at FROM tenants ORDER BY id"
    ).fetchall()
    return [TenantRecord(*r) for r in rows]


def put_tenant(conn: sqlite3.Connection, op: PutTenant) -> Any:
    exists = conn.execute(
        "SELECT policy_version FROM tenants WHERE id = ?", (op.tenant_id,)
    ).fetchone()
    if op.create and exists is not None:
        return ConflictError(f"tenant {op.tenant_id!r} already exists", tenant=op.tenant_id)
    if not op.create and exists is None:
        return NotFoundError(f"tenant {op.tenant_id!r} not found", kind="tenant", id=op.tenant_id)
    version = 1 if exists is None else int(exists[0]) + 1
    if exists is None:
        conn.execute(
            "INSERT INTO tenants (id, org_id, policy, policy_version, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (op.tenant_id, op.org_id, op.policy_json, version, op.now, op.now),
        )
    else:
        conn.execute(
            "UPDATE tenants SET org_id = ?, policy = ?, policy_version = ?, updated_at = ?"
            " WHERE id = ?",
            (op.org_id, op.policy_json, version, op.now, op.tenant_id),
        )
    conn.execute(
        "INSERT INTO policy_versions (tenant_id, version, policy, actor, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (op.tenant_id, version, op.policy_json, op.actor, op.now),
    )
    action = "tenant.created" if op.create else "policy.updated"
    append_audit(
        conn,
        op.tenant_id,
        op.now,
        [
            AuditEntry(
                op.actor,
                action,
                f"tenant:{op.tenant_id}",
                {"policy_version": version, "policy": json.loads(op.policy_json)},
            )
        ],
    )
    return version


def delete_tenant(conn: sqlite3.Connection, op: DeleteTenant) -> Any:
    if conn.execute("SELECT 1 FROM tenants WHERE id = ?", (op.tenant_id,)).fetchone() is None:
        return NotFoundError(f"tenant {op.tenant_id!r} not found", kind="tenant", id=op.tenant_id)
    deleted: dict[str, int] = {}
    for table, column in TENANT_TABLES.items():
        cur = conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (op.tenant_id,))
        deleted[table] = cur.rowcount
    if op.purge_audit:
        deleted["audit_log"] = conn.execute(
            "DELETE FROM audit_log WHERE tenant_id = ?", (op.tenant_id,)
        ).rowcount
    else:
        append_audit(
            conn,
            op.tenant_id,
            op.now,
            [
                AuditEntry(
                    op.actor, "tenant.deleted", f"tenant:{op.tenant_id}", {"deleted": deleted}
                )
            ],
        )
    left = {
        table: int(
            conn.execute(
                f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (op.tenant_id,)
            ).fetchone()[0]
        )
        for table, column in TENANT_TABLES.items()
    }
    return {"deleted": deleted, "left": left}


# -- budgets --------------------------------------------------------------------------------


def _ledger(
    conn: sqlite3.Connection, tenant_id: str, line: Any, now: float
) -> tuple[int, int, int | None]:
    """Make sure the ledger exists, is reset for the current period, and carries the current
    limit; returns (spent, reserved, limit)."""
    scope = line.scope
    start = budget_math.period_start(now, line.period) if line.period else None
    conn.execute(
        "INSERT OR IGNORE INTO ledgers (tenant_id, scope, unit, limit_amount, period, period_start)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (tenant_id, scope, line.unit, line.limit, line.period, start),
    )
    row = conn.execute(
        "SELECT spent, reserved, limit_amount, period_start FROM ledgers"
        " WHERE tenant_id = ? AND scope = ? AND unit = ?",
        (tenant_id, scope, line.unit),
    ).fetchone()
    spent, reserved, limit, period_start = int(row[0]), int(row[1]), row[2], row[3]
    if line.period and budget_math.needs_reset(period_start, now, line.period):
        # Compare-and-set on the period start: exactly one reset per period, whoever does it.
        cur = conn.execute(
            "UPDATE ledgers SET spent = 0, overrun = 0, period_start = ?"
            " WHERE tenant_id = ? AND scope = ? AND unit = ? AND period_start IS ?",
            (start, tenant_id, scope, line.unit, period_start),
        )
        if cur.rowcount:
            spent = 0
    if limit != line.limit:
        conn.execute(
            "UPDATE ledgers SET limit_amount = ? WHERE tenant_id = ? AND scope = ? AND unit = ?",
            (line.limit, tenant_id, scope, line.unit),
        )
        limit = line.limit
    return spent, reserved, limit


def reserve(conn: sqlite3.Connection, op: Reserve) -> Any:
    fresh = []
    for line in op.lines:
        held = conn.execute(
            "SELECT 1 FROM holds WHERE tenant_id = ? AND key = ? AND scope = ? AND unit = ?",
            (op.tenant_id, op.key, line.scope, line.unit),
        ).fetchone()
        if held is not None:
            continue  # idempotent: this key already holds (or held) on this ledger
        spent, reserved, limit = _ledger(conn, op.tenant_id, line, op.now)
        if limit is not None and spent + reserved + line.amount > limit:
            return Refusal(line.scope, line.unit, line.amount, max(0, limit - spent - reserved))
        fresh.append(line)
    for line in fresh:
        conn.execute(
            "INSERT INTO holds (tenant_id, key, scope, unit, amount, state, created_at)"
            " VALUES (?, ?, ?, ?, ?, 'held', ?)",
            (op.tenant_id, op.key, line.scope, line.unit, line.amount, op.now),
        )
        conn.execute(
            "UPDATE ledgers SET reserved = reserved + ?"
            " WHERE tenant_id = ? AND scope = ? AND unit = ?",
            (line.amount, op.tenant_id, line.scope, line.unit),
        )
    append_audit(conn, op.tenant_id, op.now, op.audit)
    return True


def settle(conn: sqlite3.Connection, op: Settle) -> int:
    rows = conn.execute(
        "SELECT scope, unit, amount FROM holds WHERE tenant_id = ? AND key = ? AND state = 'held'",
        (op.tenant_id, op.key),
    ).fetchall()
    charged = 0
    for scope, unit, amount in rows:
        actual = int(op.actual.get((scope, unit), 0))
        conn.execute(
            "UPDATE holds SET state = 'settled', charged = ? WHERE tenant_id = ? AND key = ?"
            " AND scope = ? AND unit = ?",
            (actual, op.tenant_id, op.key, scope, unit),
        )
        conn.execute(
            "UPDATE ledgers SET reserved = reserved - ?, spent = spent + ?, overrun = overrun + ?"
            " WHERE tenant_id = ? AND scope = ? AND unit = ?",
            (amount, actual, max(0, actual - amount), op.tenant_id, scope, unit),
        )
        if unit == "micros":
            charged = max(charged, actual)
    add_usage(conn, op.tenant_id, op.now, op.usage if rows else [])
    return charged


def charge(conn: sqlite3.Connection, op: Charge) -> bool:
    done = False
    for line in op.lines:
        exists = conn.execute(
            "SELECT 1 FROM holds WHERE tenant_id = ? AND key = ? AND scope = ? AND unit = ?",
            (op.tenant_id, op.key, line.scope, line.unit),
        ).fetchone()
        if exists is not None:
            continue
        _ledger(conn, op.tenant_id, line, op.now)
        conn.execute(
            "INSERT INTO holds (tenant_id, key, scope, unit, amount, state, charged, created_at)"
            " VALUES (?, ?, ?, ?, 0, 'settled', ?, ?)",
            (op.tenant_id, op.key, line.scope, line.unit, line.amount, op.now),
        )
        conn.execute(
            "UPDATE ledgers SET spent = spent + ?, overrun = overrun + ? WHERE tenant_id = ?"
            " AND scope = ? AND unit = ?",
            (line.amount, line.amount, op.tenant_id, line.scope, line.unit),
        )
        done = True
    return done


def release_holds(conn: sqlite3.Connection, op: ReleaseHolds) -> int:
    rows = conn.execute(
        "SELECT key, scope, unit, amount FROM holds WHERE tenant_id = ? AND state = 'held'"
        " AND substr(key, 1, ?) = ?",
        (op.tenant_id, len(op.prefix), op.prefix),
    ).fetchall()
    for key, scope, unit, amount in rows:
        conn.execute(
            "UPDATE holds SET state = 'released' WHERE tenant_id = ? AND key = ? AND scope = ?"
            " AND unit = ?",
            (op.tenant_id, key, scope, unit),
        )
        conn.execute(
            "UPDATE ledgers SET reserved = reserved - ?"
            " WHERE tenant_id = ? AND scope = ? AND unit = ?",
            (amount, op.tenant_id, scope, unit),
        )
    return len(rows)


def read_ledgers(
    conn: sqlite3.Connection, tenant_id: str, scope: str | None = None
) -> list[dict[str, Any]]:
    sql = (
        "SELECT scope, unit, limit_amount, spent, reserved, overrun, period, period_start"
        " FROM ledgers WHERE tenant_id = ?"
    )
    args: list[Any] = [tenant_id]
    if scope is not None:
        sql += " AND scope = ?"
        args.append(scope)
    keys = ("scope", "unit", "limit", "spent", "reserved", "overrun", "period", "period_start")
    return [dict(zip(keys, r, strict=True)) for r in conn.execute(sql, args).fetchall()]


# -- rate limits ----------------------------------------------------------------------------


def acquire_rate(conn: sqlite3.Connection, op: AcquireRate) -> RateDecision:
    row = conn.execute(
        "SELECT tat, factor FROM rate_buckets WHERE tenant_id = ? AND resource = ?",
        (op.tenant_id, op.resource),
    ).fetchone()
    tat, factor = (None, 1.0) if row is None else (row[0], float(row[1]))
    decision = ratelimit.gcra(tat, op.now, op.rate_per_s * factor, op.burst, op.cost)
    if decision.allowed:
        new_factor = ratelimit.adapt_on_success(factor) if factor < 1.0 else factor
        conn.execute(
            "INSERT INTO rate_buckets (tenant_id, resource, tat, factor) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (tenant_id, resource) DO UPDATE SET tat = excluded.tat,"
            " factor = excluded.factor",
            (op.tenant_id, op.resource, decision.new_tat_s, new_factor),
        )
    return RateDecision(decision.allowed, decision.retry_after_s, decision.remaining)


def throttle_rate(conn: sqlite3.Connection, op: ThrottleRate) -> float:
    row = conn.execute(
        "SELECT tat, factor FROM rate_buckets WHERE tenant_id = ? AND resource = ?",
        (op.tenant_id, op.resource),
    ).fetchone()
    tat, factor = (None, 1.0) if row is None else (row[0], float(row[1]))
    new_factor = ratelimit.adapt_on_throttle(factor, op.retry_after_s)
    new_tat = ratelimit.defer_tat(
        tat, op.now, op.retry_after_s, op.rate_per_s * new_factor, op.burst
    )
    conn.execute(
        "INSERT INTO rate_buckets (tenant_id, resource, tat, factor) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (tenant_id, resource) DO UPDATE SET tat = excluded.tat,"
        " factor = excluded.factor",
        (op.tenant_id, op.resource, new_tat, new_factor),
    )
    return new_factor


# -- reviews --------------------------------------------------------------------------------

_REVIEW_COLS = (
    "id, tenant_id, run_id, step, pool, lane, status, sla_due, created_at, payload, claimed_by,"
    " decided_by, comment, decided_at, escalations"
)


def _review_from_row(r: Sequence[Any]) -> ReviewRecord:
    return ReviewRecord(
        id=r[0],
        tenant_id=r[1],
        run_id=r[2],
        step=r[3],
        pool=r[4],
        lane=r[5],
        status=ReviewStatus(r[6]),
        sla_due=r[7],
        created_at=r[8],
        payload=json.loads(r[9]),
        claimed_by=r[10],
        decided_by=r[11],
        comment=r[12],
        decided_at=r[13],
        escalations=r[14],
    )


def get_review(conn: sqlite3.Connection, tenant_id: str, review_id: str) -> ReviewRecord:
    row = conn.execute(
        f"SELECT {_REVIEW_COLS} FROM reviews WHERE id = ? AND tenant_id = ?", (review_id, tenant_id)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"review {review_id!r} not found", kind="review", id=review_id)
    return _review_from_row(row)


_LANE_ORDER = "CASE lane WHEN 'urgent' THEN 0 WHEN 'normal' THEN 1 ELSE 2 END"


def list_reviews(
    conn: sqlite3.Connection,
    tenant_id: str,
    pool: str | None,
    statuses: Sequence[str] | None,
    limit: int,
) -> list[ReviewRecord]:
    sql = f"SELECT {_REVIEW_COLS} FROM reviews WHERE tenant_id = ?"
    args: list[Any] = [tenant_id]
    if pool is not None:
        sql += " AND pool = ?"
        args.append(pool)
    if statuses:
        sql += f" AND status IN ({','.join('?' for _ in statuses)})"
        args.extend(statuses)
    sql += f" ORDER BY {_LANE_ORDER}, COALESCE(sla_due, 1e18), created_at LIMIT ?"
    args.append(limit)
    return [_review_from_row(r) for r in conn.execute(sql, args).fetchall()]


def create_review(conn: sqlite3.Connection, op: CreateReview, then: Any) -> str:
    r = op.review
    insert_review(conn, r)
    if op.then is not None:
        then(op.then)
    return r.id


def claim_review(conn: sqlite3.Connection, op: ClaimReview) -> Any:
    try:
        r = get_review(conn, op.tenant_id, op.review_id)
    except NotFoundError as exc:
        return exc
    if r.status not in (ReviewStatus.PENDING, ReviewStatus.CLAIMED) or (
        r.status == ReviewStatus.CLAIMED and r.claimed_by != op.reviewer
    ):
        return ConflictError(
            f"review {op.review_id} is {r.status.value}"
            + (f" by {r.claimed_by}" if r.claimed_by else ""),
            review_id=op.review_id,
            status=r.status.value,
        )
    conn.execute(
        "UPDATE reviews SET status = 'claimed', claimed_by = ? WHERE id = ? AND tenant_id = ?",
        (op.reviewer, op.review_id, op.tenant_id),
    )
    append_audit(
        conn,
        op.tenant_id,
        op.now,
        [AuditEntry(op.reviewer, "review.claimed", f"review:{r.id}", {"run_id": r.run_id})],
    )
    return get_review(conn, op.tenant_id, op.review_id)


def decide_review(conn: sqlite3.Connection, op: DecideReview, then: Any) -> Any:
    try:
        r = get_review(conn, op.tenant_id, op.review_id)
    except NotFoundError as exc:
        return exc
    if r.status not in (ReviewStatus.PENDING, ReviewStatus.CLAIMED) or (
        r.status == ReviewStatus.CLAIMED
        and r.claimed_by not in (None, op.reviewer)
        and op.reviewer != "system"
    ):
        return ConflictError(
            f"review {op.review_id} is {r.status.value}"
            + (f" by {r.claimed_by}" if r.claimed_by else ""),
            review_id=op.review_id,
            status=r.status.value,
        )
    status = ReviewStatus.APPROVED if op.approved else ReviewStatus.REJECTED
    conn.execute(
        "UPDATE reviews SET status = ?, decided_by = ?, comment = ?, decided_at = ?"
        " WHERE id = ? AND tenant_id = ?",
        (status.value, op.reviewer, op.comment, op.now, op.review_id, op.tenant_id),
    )
    append_audit(
        conn,
        op.tenant_id,
        op.now,
        [
            AuditEntry(
                op.reviewer,
                f"review.{status.value}",
                f"review:{r.id}",
                {"run_id": r.run_id, "comment": op.comment},
            )
        ],
    )
    if op.then is not None:
        then(op.then)
    return get_review(conn, op.tenant_id, op.review_id)


def escalate_review(conn: sqlite3.Connection, op: EscalateReview, then: Any) -> Any:
    try:
        r = get_review(conn, op.tenant_id, op.review_id)
    except NotFoundError as exc:
        return exc
    if r.status not in (ReviewStatus.PENDING, ReviewStatus.CLAIMED):
        return ConflictError(f"review {op.review_id} is {r.status.value}", review_id=op.review_id)
    conn.execute(
        "UPDATE reviews SET pool = ?, sla_due = ?, status = 'pending', claimed_by = NULL,"
        " escalations = escalations + 1 WHERE id = ? AND tenant_id = ?",
        (op.pool, op.sla_due, op.review_id, op.tenant_id),
    )
    append_audit(
        conn,
        op.tenant_id,
        op.now,
        [
            AuditEntry(
                "system",
                "review.escalated",
                f"review:{r.id}",
                {"from": r.pool, "to": op.pool, "reason": op.reason},
            )
        ],
    )
    if op.then is not None:
        then(op.then)
    return get_review(conn, op.tenant_id, op.review_id)


def read_usage(
    conn: sqlite3.Connection, tenant_id: str, since_day: str | None, until_day: str | None
) -> list[dict[str, Any]]:
    sql = "SELECT day, metric, dim, value FROM usage WHERE tenant_id = ?"
    args: list[Any] = [tenant_id]
    if since_day:
        sql += " AND day >= ?"
        args.append(since_day)
    if until_day:
        sql += " AND day <= ?"
        args.append(until_day)
    sql += " ORDER BY day, metric, dim"
    return [
        {"day": r[0], "metric": r[1], "dim": r[2], "value": r[3]}
        for r in conn.execute(sql, args).fetchall()
    ]


def recorded_calls(
    conn: sqlite3.Connection, tenant_id: str, run_id: str, key: str
) -> dict[int, tuple[str, str, str]]:
    rows = conn.execute(
        "SELECT idx, kind, name, result FROM calls WHERE tenant_id = ? AND run_id = ? AND key = ?",
        (tenant_id, run_id, key),
    ).fetchall()
    return {int(r[0]): (r[1], r[2], r[3]) for r in rows}


def pending_reviews(conn: sqlite3.Connection) -> list[ReviewRecord]:
    """Every undecided review (system scope: re-arming SLA timers after a restart)."""
    rows = conn.execute(
        f"SELECT {_REVIEW_COLS} FROM reviews WHERE status IN ('pending', 'claimed')"
    ).fetchall()
    return [_review_from_row(r) for r in rows]


def insert_review(conn: sqlite3.Connection, r: ReviewRecord) -> None:
    conn.execute(
        f"INSERT INTO reviews ({_REVIEW_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            r.id,
            r.tenant_id,
            r.run_id,
            r.step,
            r.pool,
            r.lane,
            r.status.value,
            r.sla_due,
            r.created_at,
            json.dumps(r.payload, default=str),
            None,
            None,
            None,
            None,
            0,
        ),
    )


def purge_runs(conn: sqlite3.Connection, op: PurgeRuns) -> dict[str, int]:
    """Delete finished runs past retention, and everything that hangs off them."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS purge_ids (id TEXT PRIMARY KEY)")
    conn.execute("DELETE FROM purge_ids")
    conn.execute(
        "INSERT INTO purge_ids SELECT id FROM runs WHERE tenant_id = ? AND finished_at IS NOT NULL"
        " AND finished_at < ? AND status IN ('completed', 'failed', 'compensated', 'cancelled')",
        (op.tenant_id, op.before),
    )
    deleted: dict[str, int] = {}
    for table in ("events", "state_versions", "steps", "calls", "reviews"):
        deleted[table] = conn.execute(
            f"DELETE FROM {table} WHERE tenant_id = ? AND run_id IN (SELECT id FROM purge_ids)",
            (op.tenant_id,),
        ).rowcount
    deleted["ledgers"] = conn.execute(
        "DELETE FROM ledgers WHERE tenant_id = ? AND scope IN (SELECT 'run:' || id FROM purge_ids)",
        (op.tenant_id,),
    ).rowcount
    deleted["runs"] = conn.execute(
        "DELETE FROM runs WHERE tenant_id = ? AND id IN (SELECT id FROM purge_ids)", (op.tenant_id,)
    ).rowcount
    if deleted["runs"]:
        append_audit(
            conn,
            op.tenant_id,
            op.now,
            [
                AuditEntry(
                    op.actor,
                    "retention.purged",
                    f"tenant:{op.tenant_id}",
                    {"before": op.before, "deleted": deleted},
                )
            ],
        )
    return deleted
