"""Tenancy ops in SQL: tenants, audit chain, budget ledgers, rate buckets, reviews, usage.

Dialect-neutral interpreter steps (see :mod:`~tenantflow.adapters.sql`): each function applies
one op inside the batch's transaction. Every read-check-write is atomic on both stores: SQLite
has one writer at a time; on PostgreSQL the rows read are locked (``FOR UPDATE``) and a chain or
bucket that may not exist yet is serialised by an advisory lock, so two concurrent reservations
(in any processes) can never both pass a check that only one of them fits.
"""

from __future__ import annotations

import json
import time as _time
from collections.abc import Callable, Sequence
from typing import Any

from tenantflow.adapters.sql import Gen, accumulate, count, execute, one, rows, serialize
from tenantflow.domain import budget as budget_math
from tenantflow.domain import ratelimit
from tenantflow.domain.audit import AuditRecord, append_record
from tenantflow.domain.tenancy import (
    AcquireRate,
    AppendAudit,
    AuditEntry,
    Charge,
    ClaimReview,
    CreateReview,
    DecideReview,
    DeleteTenant,
    EscalateReview,
    LedgerLine,
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
    "PURGE_STATEMENTS",
    "TENANT_TABLES",
    "append_audit",
    "append_audit_op",
    "audit_rows",
    "get_review",
    "get_tenant",
    "list_reviews",
    "list_tenants",
    "pending_reviews",
    "read_ledgers",
    "read_usage",
    "recorded_calls",
]

# Every table holding a tenant's rows, and its tenant column: what deletion purges and proves.
TENANT_TABLES: dict[str, str] = {
    "events": "tenant_id",
    "outbox": "tenant_id",
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
    "api_keys": "tenant_id",
    "commands": "tenant_id",
    "memory_terms": "tenant_id",
    "memory_documents": "tenant_id",
    "memory_entries": "tenant_id",
    "tenants": "id",
}

# Tables of the platform's own, not of any tenant: under row-level security with no policy for
# the application role (it sees none of their rows), written in system scope only.
SYSTEM_TABLES: frozenset[str] = frozenset({"workers", "tenant_owners"})

Then = Callable[[Any], Gen[None]]
"""Applies a follow-on ``records.Transition`` in the same transaction."""


def _day(ts: float) -> str:
    return _time.strftime("%Y-%m-%d", _time.gmtime(ts))


# -- audit ----------------------------------------------------------------------------------


def _last_audit(tenant_id: str) -> Gen[AuditRecord | None]:
    # Appending needs only the last row's seq and hash: never parse its (possibly tampered)
    # content here, so a damaged row is reported by verification, not by a failing write.
    row = yield from one(
        "SELECT seq, hash FROM audit_log WHERE tenant_id = ? ORDER BY seq DESC LIMIT 1", tenant_id
    )
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


def append_audit(tenant_id: str, now: float, entries: Sequence[AuditEntry]) -> Gen[None]:
    """Append entries to the tenant's hash chain (inside the caller's transaction)."""
    if not entries:
        return
    yield from serialize(f"audit:{tenant_id}")
    prev = yield from _last_audit(tenant_id)
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
        yield from execute(
            "INSERT INTO audit_log (tenant_id, seq, ts, actor, action, subject, detail,"
            " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rec.tenant_id,
            rec.seq,
            rec.ts,
            rec.actor,
            rec.action,
            rec.subject,
            json.dumps(rec.detail, sort_keys=True),
            rec.prev_hash,
            rec.hash,
        )
        prev = rec


def append_audit_op(op: AppendAudit) -> Gen[bool]:
    """:class:`~tenantflow.domain.tenancy.AppendAudit`."""
    yield from append_audit(op.tenant_id, op.now, op.entries)
    return True


def _audit_one(tenant_id: str, now: float, entry: AuditEntry) -> Gen[None]:
    yield from append_audit(tenant_id, now, [entry])


def audit_rows(tenant_id: str) -> Gen[list[AuditRecord]]:
    found = yield from rows(
        "SELECT tenant_id, seq, ts, actor, action, subject, detail, prev_hash, hash"
        " FROM audit_log WHERE tenant_id = ? ORDER BY seq",
        tenant_id,
    )
    return [_audit_from_row(r) for r in found]


def add_usage(tenant_id: str, now: float, deltas: Sequence[UsageDelta]) -> Gen[None]:
    day = _day(now)
    yield from accumulate(
        "INSERT INTO usage (tenant_id, day, metric, dim, value) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (tenant_id, day, metric, dim)"
        " DO UPDATE SET value = usage.value + excluded.value",
        [(tenant_id, day, d.metric, d.dim, d.value) for d in deltas],
    )


# -- tenants --------------------------------------------------------------------------------

_TENANT_COLS = "id, org_id, policy, policy_version, created_at, updated_at"


def get_tenant(tenant_id: str) -> Gen[TenantRecord]:
    row = yield from one(f"SELECT {_TENANT_COLS} FROM tenants WHERE id = ?", tenant_id)
    if row is None:
        raise NotFoundError(f"tenant {tenant_id!r} not found", kind="tenant", id=tenant_id)
    return TenantRecord(*row)


def list_tenants() -> Gen[list[TenantRecord]]:
    found = yield from rows(f"SELECT {_TENANT_COLS} FROM tenants ORDER BY id")
    return [TenantRecord(*r) for r in found]


def put_tenant(op: PutTenant) -> Gen[Any]:
    exists = yield from one(
        "SELECT policy_version FROM tenants WHERE id = ? /*pg: FOR UPDATE*/", op.tenant_id
    )
    if op.create and exists is not None:
        return ConflictError(f"tenant {op.tenant_id!r} already exists", tenant=op.tenant_id)
    if not op.create and exists is None:
        return NotFoundError(f"tenant {op.tenant_id!r} not found", kind="tenant", id=op.tenant_id)
    version = 1 if exists is None else int(exists[0]) + 1
    if exists is None:
        yield from execute(
            f"INSERT INTO tenants ({_TENANT_COLS}) VALUES (?, ?, ?, ?, ?, ?)",
            op.tenant_id,
            op.org_id,
            op.policy_json,
            version,
            op.now,
            op.now,
        )
    else:
        yield from execute(
            "UPDATE tenants SET org_id = ?, policy = ?, policy_version = ?, updated_at = ?"
            " WHERE id = ?",
            op.org_id,
            op.policy_json,
            version,
            op.now,
            op.tenant_id,
        )
    yield from execute(
        "INSERT INTO policy_versions (tenant_id, version, policy, actor, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        op.tenant_id,
        version,
        op.policy_json,
        op.actor,
        op.now,
    )
    action = "tenant.created" if op.create else "policy.updated"
    detail = {"policy_version": version, "policy": json.loads(op.policy_json)}
    entry = AuditEntry(op.actor, action, f"tenant:{op.tenant_id}", detail)
    yield from _audit_one(op.tenant_id, op.now, entry)
    return version


def delete_tenant(op: DeleteTenant) -> Gen[Any]:
    if (yield from one("SELECT 1 FROM tenants WHERE id = ?", op.tenant_id)) is None:
        return NotFoundError(f"tenant {op.tenant_id!r} not found", kind="tenant", id=op.tenant_id)
    deleted: dict[str, int] = {}
    for table, column in TENANT_TABLES.items():
        deleted[table] = yield from count(f"DELETE FROM {table} WHERE {column} = ?", op.tenant_id)
    if op.purge_audit:
        deleted["audit_log"] = yield from count(
            "DELETE FROM audit_log WHERE tenant_id = ?", op.tenant_id
        )
    else:
        entry = AuditEntry(
            op.actor, "tenant.deleted", f"tenant:{op.tenant_id}", {"deleted": deleted}
        )
        yield from _audit_one(op.tenant_id, op.now, entry)
    left: dict[str, int] = {}
    for table, column in TENANT_TABLES.items():
        row = yield from one(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", op.tenant_id)
        left[table] = int(row[0]) if row is not None else 0
    return {"deleted": deleted, "left": left}


# -- budgets --------------------------------------------------------------------------------


def _ledger(tenant_id: str, line: Any, now: float) -> Gen[tuple[int, int, int | None]]:
    """Make sure the ledger exists, is reset for the current period, and carries the current
    limit; returns (spent, reserved, limit). The ledger row stays locked until commit."""
    scope = line.scope
    start = budget_math.period_start(now, line.period) if line.period else None
    yield from execute(
        "INSERT INTO ledgers (tenant_id, scope, unit, limit_amount, period, period_start)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        tenant_id,
        scope,
        line.unit,
        line.limit,
        line.period,
        start,
    )
    row = yield from one(
        "SELECT spent, reserved, limit_amount, period_start FROM ledgers"
        " WHERE tenant_id = ? AND scope = ? AND unit = ? /*pg: FOR UPDATE*/",
        tenant_id,
        scope,
        line.unit,
    )
    assert row is not None  # inserted above
    spent, reserved, limit, period_start = int(row[0]), int(row[1]), row[2], row[3]
    if line.period and budget_math.needs_reset(period_start, now, line.period):
        # Compare-and-set on the period start: exactly one reset per period, whoever does it.
        reset = yield from count(
            "UPDATE ledgers SET spent = 0, overrun = 0, period_start = ?"
            " WHERE tenant_id = ? AND scope = ? AND unit = ?"
            " AND period_start IS /*pg: NOT DISTINCT FROM*/ ?",
            start,
            tenant_id,
            scope,
            line.unit,
            period_start,
        )
        if reset:
            spent = 0
    if limit != line.limit:
        yield from _ledger_add(tenant_id, scope, line.unit, "limit_amount = ?", line.limit)
        limit = line.limit
    return spent, reserved, limit


def _ledger_add(tenant_id: str, scope: str, unit: str, assignments: str, *args: Any) -> Gen[None]:
    """Update one ledger row: ``assignments`` is the SET clause, ``args`` its parameters."""
    yield from execute(
        f"UPDATE ledgers SET {assignments} WHERE tenant_id = ? AND scope = ? AND unit = ?",
        *args,
        tenant_id,
        scope,
        unit,
    )


def _has_hold(tenant_id: str, key: str, line: LedgerLine) -> Gen[bool]:
    held = yield from one(
        "SELECT 1 FROM holds WHERE tenant_id = ? AND key = ? AND scope = ? AND unit = ?",
        tenant_id,
        key,
        line.scope,
        line.unit,
    )
    return held is not None


def _hold(tenant_id: str, key: str, line: LedgerLine, now: float, *, held: bool) -> Gen[None]:
    """Record ``key``'s hold on ``line`` and book it on the ledger: open (``held``) for a
    reservation, or settled at once for a direct charge."""
    amount, charged = (line.amount, 0) if held else (0, line.amount)
    yield from execute(
        "INSERT INTO holds (tenant_id, key, scope, unit, amount, state, charged, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        tenant_id,
        key,
        line.scope,
        line.unit,
        amount,
        "held" if held else "settled",
        charged,
        now,
    )
    book = "reserved = reserved + ?, spent = spent + ?, overrun = overrun + ?"
    yield from _ledger_add(tenant_id, line.scope, line.unit, book, amount, charged, charged)


def reserve(op: Reserve) -> Gen[Any]:
    fresh = []
    for line in op.lines:
        if (yield from _has_hold(op.tenant_id, op.key, line)):
            continue  # idempotent: this key already holds (or held) on this ledger
        spent, reserved, limit = yield from _ledger(op.tenant_id, line, op.now)
        if limit is not None and spent + reserved + line.amount > limit:
            return Refusal(line.scope, line.unit, line.amount, max(0, limit - spent - reserved))
        fresh.append(line)
    for line in fresh:
        yield from _hold(op.tenant_id, op.key, line, op.now, held=True)
    yield from append_audit(op.tenant_id, op.now, op.audit)
    return True


def _close_hold(
    tenant_id: str, key: str, scope: str, unit: str, amount: int, actual: int | None
) -> Gen[None]:
    """Close an open hold: settled, charging ``actual``, or released (``actual`` None)."""
    charged = actual or 0
    yield from execute(
        "UPDATE holds SET state = ?, charged = ? WHERE tenant_id = ? AND key = ? AND scope = ?"
        " AND unit = ?",
        "released" if actual is None else "settled",
        charged,
        tenant_id,
        key,
        scope,
        unit,
    )
    book = "reserved = reserved - ?, spent = spent + ?, overrun = overrun + ?"
    overrun = max(0, charged - amount)
    yield from _ledger_add(tenant_id, scope, unit, book, amount, charged, overrun)


def settle(op: Settle) -> Gen[int]:
    held = yield from rows(
        "SELECT scope, unit, amount FROM holds WHERE tenant_id = ? AND key = ? AND state = 'held'"
        " /*pg: FOR UPDATE*/",
        op.tenant_id,
        op.key,
    )
    charged = 0
    for scope, unit, amount in held:
        actual = int(op.actual.get((scope, unit), 0))
        yield from _close_hold(op.tenant_id, op.key, scope, unit, amount, actual)
        if unit == "micros":
            charged = max(charged, actual)
    yield from add_usage(op.tenant_id, op.now, op.usage if held else [])
    return charged


def charge(op: Charge) -> Gen[bool]:
    done = False
    for line in op.lines:
        if (yield from _has_hold(op.tenant_id, op.key, line)):
            continue
        yield from _ledger(op.tenant_id, line, op.now)
        yield from _hold(op.tenant_id, op.key, line, op.now, held=False)
        done = True
    return done


def release_holds(op: ReleaseHolds) -> Gen[int]:
    held = yield from rows(
        "SELECT key, scope, unit, amount FROM holds WHERE tenant_id = ? AND state = 'held'"
        " AND substr(key, 1, ?) = ? /*pg: FOR UPDATE*/",
        op.tenant_id,
        len(op.prefix),
        op.prefix,
    )
    for key, scope, unit, amount in held:
        yield from _close_hold(op.tenant_id, key, scope, unit, amount, None)
    return len(held)


def read_ledgers(tenant_id: str, scope: str | None = None) -> Gen[list[dict[str, Any]]]:
    sql = (
        "SELECT scope, unit, limit_amount, spent, reserved, overrun, period, period_start"
        " FROM ledgers WHERE tenant_id = ?"
    )
    args: list[Any] = [tenant_id]
    if scope is not None:
        sql += " AND scope = ?"
        args.append(scope)
    keys = ("scope", "unit", "limit", "spent", "reserved", "overrun", "period", "period_start")
    found = yield from rows(sql, *args)
    return [dict(zip(keys, r, strict=True)) for r in found]


# -- rate limits ----------------------------------------------------------------------------


def _bucket(tenant_id: str, resource: str) -> Gen[tuple[float | None, float]]:
    """The bucket's (tat, factor), serialised against other writers of the same bucket."""
    yield from serialize(f"rate:{tenant_id}:{resource}")
    row = yield from one(
        "SELECT tat, factor FROM rate_buckets WHERE tenant_id = ? AND resource = ?",
        tenant_id,
        resource,
    )
    return (None, 1.0) if row is None else (row[0], float(row[1]))


def _put_bucket(tenant_id: str, resource: str, tat: float | None, factor: float) -> Gen[None]:
    yield from execute(
        "INSERT INTO rate_buckets (tenant_id, resource, tat, factor) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (tenant_id, resource) DO UPDATE SET tat = excluded.tat,"
        " factor = excluded.factor",
        tenant_id,
        resource,
        tat,
        factor,
    )


def acquire_rate(op: AcquireRate) -> Gen[RateDecision]:
    tat, factor = yield from _bucket(op.tenant_id, op.resource)
    decision = ratelimit.gcra(tat, op.now, op.rate_per_s * factor, op.burst, op.cost)
    if decision.allowed:
        new_factor = ratelimit.adapt_on_success(factor) if factor < 1.0 else factor
        yield from _put_bucket(op.tenant_id, op.resource, decision.new_tat_s, new_factor)
    return RateDecision(decision.allowed, decision.retry_after_s, decision.remaining)


def throttle_rate(op: ThrottleRate) -> Gen[float]:
    tat, factor = yield from _bucket(op.tenant_id, op.resource)
    new_factor = ratelimit.adapt_on_throttle(factor, op.retry_after_s)
    new_tat = ratelimit.defer_tat(
        tat, op.now, op.retry_after_s, op.rate_per_s * new_factor, op.burst
    )
    yield from _put_bucket(op.tenant_id, op.resource, new_tat, new_factor)
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


def get_review(tenant_id: str, review_id: str, *, lock: bool = False) -> Gen[ReviewRecord]:
    """The review; ``lock`` keeps its row locked until commit (a decision is being made)."""
    row = yield from one(
        f"SELECT {_REVIEW_COLS} FROM reviews WHERE id = ? AND tenant_id = ?"
        + (" /*pg: FOR UPDATE*/" if lock else ""),
        review_id,
        tenant_id,
    )
    if row is None:
        raise NotFoundError(f"review {review_id!r} not found", kind="review", id=review_id)
    return _review_from_row(row)


_LANE_ORDER = "CASE lane WHEN 'urgent' THEN 0 WHEN 'normal' THEN 1 ELSE 2 END"


def list_reviews(
    tenant_id: str, pool: str | None, statuses: Sequence[str] | None, limit: int
) -> Gen[list[ReviewRecord]]:
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
    found = yield from rows(sql, *args)
    return [_review_from_row(r) for r in found]


def create_review(op: CreateReview, then: Then) -> Gen[str]:
    r = op.review
    yield from insert_review(r)
    if op.then is not None:
        yield from then(op.then)
    return r.id


def _open_review(tenant_id: str, review_id: str) -> Gen[ReviewRecord | NotFoundError]:
    """The review, locked for a decision, or the NotFoundError to return."""
    try:
        return (yield from get_review(tenant_id, review_id, lock=True))
    except NotFoundError as exc:
        return exc


def _taken(r: ReviewRecord, review_id: str) -> ConflictError:
    return ConflictError(
        f"review {review_id} is {r.status.value}" + (f" by {r.claimed_by}" if r.claimed_by else ""),
        review_id=review_id,
        status=r.status.value,
    )


def claim_review(op: ClaimReview) -> Gen[Any]:
    r = yield from _open_review(op.tenant_id, op.review_id)
    if isinstance(r, NotFoundError):
        return r
    if r.status not in (ReviewStatus.PENDING, ReviewStatus.CLAIMED) or (
        r.status == ReviewStatus.CLAIMED and r.claimed_by != op.reviewer
    ):
        return _taken(r, op.review_id)
    yield from execute(
        "UPDATE reviews SET status = 'claimed', claimed_by = ? WHERE id = ? AND tenant_id = ?",
        op.reviewer,
        op.review_id,
        op.tenant_id,
    )
    entry = AuditEntry(op.reviewer, "review.claimed", f"review:{r.id}", {"run_id": r.run_id})
    yield from _audit_one(op.tenant_id, op.now, entry)
    return (yield from get_review(op.tenant_id, op.review_id))


def decide_review(op: DecideReview, then: Then) -> Gen[Any]:
    r = yield from _open_review(op.tenant_id, op.review_id)
    if isinstance(r, NotFoundError):
        return r
    if r.status not in (ReviewStatus.PENDING, ReviewStatus.CLAIMED) or (
        r.status == ReviewStatus.CLAIMED
        and r.claimed_by not in (None, op.reviewer)
        and op.reviewer != "system"
    ):
        return _taken(r, op.review_id)
    status = ReviewStatus.APPROVED if op.approved else ReviewStatus.REJECTED
    yield from execute(
        "UPDATE reviews SET status = ?, decided_by = ?, comment = ?, decided_at = ?"
        " WHERE id = ? AND tenant_id = ?",
        status.value,
        op.reviewer,
        op.comment,
        op.now,
        op.review_id,
        op.tenant_id,
    )
    detail = {"run_id": r.run_id, "comment": op.comment}
    entry = AuditEntry(op.reviewer, f"review.{status.value}", f"review:{r.id}", detail)
    yield from _audit_one(op.tenant_id, op.now, entry)
    if op.then is not None:
        yield from then(op.then)
    return (yield from get_review(op.tenant_id, op.review_id))


def escalate_review(op: EscalateReview, then: Then) -> Gen[Any]:
    r = yield from _open_review(op.tenant_id, op.review_id)
    if isinstance(r, NotFoundError):
        return r
    if r.status not in (ReviewStatus.PENDING, ReviewStatus.CLAIMED):
        return ConflictError(f"review {op.review_id} is {r.status.value}", review_id=op.review_id)
    yield from execute(
        "UPDATE reviews SET pool = ?, sla_due = ?, status = 'pending', claimed_by = NULL,"
        " escalations = escalations + 1 WHERE id = ? AND tenant_id = ?",
        op.pool,
        op.sla_due,
        op.review_id,
        op.tenant_id,
    )
    detail = {"from": r.pool, "to": op.pool, "reason": op.reason}
    entry = AuditEntry("system", "review.escalated", f"review:{r.id}", detail)
    yield from _audit_one(op.tenant_id, op.now, entry)
    if op.then is not None:
        yield from then(op.then)
    return (yield from get_review(op.tenant_id, op.review_id))


def read_usage(
    tenant_id: str, since_day: str | None, until_day: str | None
) -> Gen[list[dict[str, Any]]]:
    sql = "SELECT day, metric, dim, value FROM usage WHERE tenant_id = ?"
    args: list[Any] = [tenant_id]
    if since_day:
        sql += " AND day >= ?"
        args.append(since_day)
    if until_day:
        sql += " AND day <= ?"
        args.append(until_day)
    sql += " ORDER BY day, metric, dim"
    found = yield from rows(sql, *args)
    return [{"day": r[0], "metric": r[1], "dim": r[2], "value": r[3]} for r in found]


def recorded_calls(tenant_id: str, run_id: str, key: str) -> Gen[dict[int, tuple[str, str, str]]]:
    found = yield from rows(
        "SELECT idx, kind, name, result FROM calls WHERE tenant_id = ? AND run_id = ? AND key = ?",
        tenant_id,
        run_id,
        key,
    )
    return {int(r[0]): (r[1], r[2], r[3]) for r in found}


def pending_reviews() -> Gen[list[ReviewRecord]]:
    """Every undecided review (system scope: re-arming SLA timers after a restart)."""
    found = yield from rows(
        f"SELECT {_REVIEW_COLS} FROM reviews WHERE status IN ('pending', 'claimed')"
    )
    return [_review_from_row(r) for r in found]


def insert_review(r: ReviewRecord) -> Gen[None]:
    yield from execute(
        f"INSERT INTO reviews ({_REVIEW_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
    )


# Finished runs past retention, the oldest first: a range of the runs_tenant_created index
# (a run ends after it starts, so one that ended before the cutoff started before it), read in
# its order (no sort), so a batch reads its expired runs and not the tenant's others. Arguments:
# tenant, cutoff, cutoff, limit. Purging deletes from ``runs`` last, so every statement of one
# purge sees the same set.
_EXPIRED_RUNS = (
    "SELECT id FROM runs WHERE tenant_id = ? AND created_at < ?"
    " AND finished_at IS NOT NULL AND finished_at < ?"
    " AND status IN ('completed', 'failed', 'compensated', 'cancelled')"
    " ORDER BY created_at, id LIMIT ?"
)
_ALL = 2**62  # no limit

# What a purge deletes, by table, ``runs`` last; each statement takes the tenant and then the
# arguments of _EXPIRED_RUNS, except the last.
PURGE_STATEMENTS: tuple[tuple[str, str], ...] = (
    *(
        (table, f"DELETE FROM {table} WHERE tenant_id = ? AND run_id IN ({_EXPIRED_RUNS})")
        for table in ("events", "state_versions", "steps", "calls", "reviews")
    ),
    (
        "ledgers",
        "DELETE FROM ledgers WHERE tenant_id = ? AND scope IN"
        f" (SELECT 'run:' || id FROM ({_EXPIRED_RUNS}) AS expired)",
    ),
    # By primary key alone: the subquery names the tenant, and naming it here as well has
    # SQLite walk every run of the tenant in runs_tenant_created for each batch.
    ("runs", f"DELETE FROM runs WHERE id IN ({_EXPIRED_RUNS})"),
)


def purge_runs(op: PurgeRuns) -> Gen[dict[str, int]]:
    """Delete finished runs past retention (at most ``op.limit``), and everything that hangs
    off them."""
    limit = _ALL if op.limit is None else op.limit
    expired = (op.tenant_id, op.before, op.before, limit)
    deleted: dict[str, int] = {}
    for table, sql in PURGE_STATEMENTS:
        args = expired if table == "runs" else (op.tenant_id, *expired)
        deleted[table] = yield from count(sql, *args)
    if deleted["runs"]:
        detail = {"before": op.before, "deleted": deleted}
        entry = AuditEntry(op.actor, "retention.purged", f"tenant:{op.tenant_id}", detail)
        yield from _audit_one(op.tenant_id, op.now, entry)
    return deleted
