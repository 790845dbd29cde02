"""SQL for the SQLite store: how each op is applied, and the scoped reads.

Runs on the store's writer thread with a connection in autocommit mode; :func:`apply_batch`
wraps a batch in one ``BEGIN IMMEDIATE … COMMIT``. Every statement names the tenant.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from tenantflow.adapters import sqlite_tenancy as tq
from tenantflow.domain import tenancy as t_ops
from tenantflow.domain.records import (
    STALE,
    TERMINAL_RUN,
    TERMINAL_STEP,
    CreateResult,
    CreateRun,
    FailAttempt,
    FinishAttempt,
    Lease,
    NewEvent,
    Op,
    ParkAttempt,
    RecordCall,
    RecoverOrphans,
    RenewLeases,
    RunRecord,
    RunStatus,
    StartAttempt,
    StepRecord,
    StepStatus,
    Transition,
    next_state_hash,
)
from tenantflow.errors import NotFoundError

__all__ = ["active_runs", "apply_batch", "get_run", "get_steps", "list_runs"]

_RUN_COLS = (
    "id, tenant_id, workflow, workflow_version, status, input, created_at, updated_at, lane,"
    " state_version, state_hash, result, error, idempotency_key, parent_run_id, finished_at, meta"
)
_STEP_COLS = (
    "run_id, tenant_id, key, status, attempt, fence, owner, lease_expires_at, available_at,"
    " output, error, version, started_at, finished_at"
)


def apply_batch(conn: sqlite3.Connection, ops: Sequence[Op]) -> list[Any]:
    """Apply ``ops`` in one transaction. If one op raises, each op is retried alone so that a
    single bad op fails only itself; its result is then the exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        results = [_apply(conn, op) for op in ops]
    except sqlite3.IntegrityError as exc:
        conn.execute("ROLLBACK")
        if len(ops) == 1:
            return [exc]
        out: list[Any] = []
        for op in ops:
            out.extend(apply_batch(conn, [op]))
        return out
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return results


def _apply(conn: sqlite3.Connection, op: Op) -> Any:
    if isinstance(op, StartAttempt):
        return _start(conn, op)
    if isinstance(op, FinishAttempt):
        return _finish(conn, op)
    if isinstance(op, FailAttempt):
        return _fail(conn, op)
    if isinstance(op, Transition):
        _transition(conn, op)
        return True
    if isinstance(op, CreateRun):
        return _create(conn, op)
    if isinstance(op, RenewLeases):
        return _renew(conn, op)
    if isinstance(op, RecoverOrphans):
        return _recover(conn, op)
    if isinstance(op, ParkAttempt):
        return _park(conn, op)
    if isinstance(op, RecordCall):
        conn.execute(
            "INSERT OR IGNORE INTO calls (tenant_id, run_id, key, idx, kind, name, result,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (op.tenant_id, op.run_id, op.key, op.index, op.kind, op.name, op.result_json, op.now),
        )
        return True
    return _apply_tenancy(conn, op)


def _park(conn: sqlite3.Connection, op: ParkAttempt) -> Any:
    row = conn.execute(
        "UPDATE steps SET status = ?, owner = NULL, lease_expires_at = NULL, available_at = ?"
        " WHERE run_id = ? AND key = ? AND tenant_id = ? AND fence = ? AND status = 'running'"
        " AND lease_expires_at >= ? RETURNING attempt",
        (op.status.value, op.available_at, op.run_id, op.key, op.tenant_id, op.fence, op.now),
    ).fetchone()
    if row is None:
        return STALE
    kind = "step.waiting" if op.status == StepStatus.WAITING else "step.deferred"
    data: dict[str, Any] = {"reason": op.reason}
    if op.status != StepStatus.WAITING:
        data["until"] = op.available_at
    _events(conn, op.tenant_id, op.run_id, op.now, [NewEvent(kind, op.key, row[0], data)])
    _transition(conn, op.then)
    return True


def _apply_tenancy(conn: sqlite3.Connection, op: Any) -> Any:
    def then(t: Transition) -> None:
        _transition(conn, t)

    if isinstance(op, t_ops.Reserve):
        return tq.reserve(conn, op)
    if isinstance(op, t_ops.Settle):
        return tq.settle(conn, op)
    if isinstance(op, t_ops.AcquireRate):
        return tq.acquire_rate(conn, op)
    if isinstance(op, t_ops.ReleaseHolds):
        return tq.release_holds(conn, op)
    if isinstance(op, t_ops.Charge):
        return tq.charge(conn, op)
    if isinstance(op, t_ops.ThrottleRate):
        return tq.throttle_rate(conn, op)
    if isinstance(op, t_ops.CreateReview):
        return tq.create_review(conn, op, then)
    if isinstance(op, t_ops.ClaimReview):
        return tq.claim_review(conn, op)
    if isinstance(op, t_ops.DecideReview):
        return tq.decide_review(conn, op, then)
    if isinstance(op, t_ops.EscalateReview):
        return tq.escalate_review(conn, op, then)
    if isinstance(op, t_ops.PutTenant):
        return tq.put_tenant(conn, op)
    if isinstance(op, t_ops.DeleteTenant):
        return tq.delete_tenant(conn, op)
    if isinstance(op, t_ops.PurgeRuns):
        return tq.purge_runs(conn, op)
    raise TypeError(f"unknown op {type(op).__name__}")


def _events(
    conn: sqlite3.Connection, tenant_id: str, run_id: str, ts: float, events: Sequence[NewEvent]
) -> None:
    if events:
        conn.executemany(
            "INSERT INTO events (tenant_id, run_id, ts, kind, step, attempt, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    tenant_id,
                    run_id,
                    ts,
                    e.kind,
                    e.step,
                    e.attempt,
                    json.dumps(e.data, default=str) if e.data else None,
                )
                for e in events
            ],
        )


def _create(conn: sqlite3.Connection, op: CreateRun) -> CreateResult:
    r = op.run
    if r.idempotency_key is not None:
        row = conn.execute(
            "SELECT id FROM runs WHERE tenant_id = ? AND idempotency_key = ?",
            (r.tenant_id, r.idempotency_key),
        ).fetchone()
        if row is not None:
            return CreateResult(row[0], created=False)
    state_hash = next_state_hash("", 0, None, r.input_json)
    conn.execute(
        f"INSERT INTO runs ({_RUN_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            r.id,
            r.tenant_id,
            r.workflow,
            r.workflow_version,
            r.status.value,
            r.input_json,
            r.created_at,
            r.updated_at,
            r.lane,
            0,
            state_hash,
            r.result_json,
            r.error,
            r.idempotency_key,
            r.parent_run_id,
            r.finished_at,
            json.dumps(r.meta, default=str),
        ),
    )
    conn.executemany(
        "INSERT INTO steps (run_id, key, tenant_id, status, available_at) VALUES (?, ?, ?, ?, ?)",
        [(s.run_id, s.key, s.tenant_id, s.status.value, s.available_at) for s in op.steps],
    )
    conn.execute(
        "INSERT INTO state_versions (run_id, version, tenant_id, parent, step, delta, hash,"
        " created_at) VALUES (?, 0, ?, NULL, NULL, ?, ?, ?)",
        (r.id, r.tenant_id, r.input_json, state_hash, r.created_at),
    )
    _events(conn, r.tenant_id, r.id, r.created_at, op.events)
    return CreateResult(r.id, created=True)


def _start(conn: sqlite3.Connection, op: StartAttempt) -> Lease | None:
    row = conn.execute(
        "UPDATE steps SET status = 'running', attempt = attempt + 1, fence = fence + 1,"
        " owner = ?, lease_expires_at = ?, started_at = ?"
        " WHERE run_id = ? AND key = ? AND tenant_id = ?"
        " AND ((status = 'ready' AND available_at <= ?)"
        "      OR (status = 'running' AND lease_expires_at < ?))"
        " RETURNING fence, attempt",
        (op.owner, op.lease_until, op.now, op.run_id, op.key, op.tenant_id, op.now, op.now),
    ).fetchone()
    if row is None:
        return None
    _events(conn, op.tenant_id, op.run_id, op.now, [NewEvent("step.started", op.key, row[1])])
    return Lease(fence=row[0], attempt=row[1], lease_expires_at=op.lease_until)


def _append_version(
    conn: sqlite3.Connection, tenant_id: str, run_id: str, step: str, delta: bytes, now: float
) -> int:
    row = conn.execute(
        "SELECT state_version, state_hash FROM runs WHERE id = ? AND tenant_id = ?",
        (run_id, tenant_id),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"run {run_id!r} not found", run_id=run_id)
    version = int(row[0]) + 1
    state_hash = next_state_hash(row[1], version, step, delta)
    conn.execute(
        "INSERT INTO state_versions (run_id, version, tenant_id, parent, step, delta, hash,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (run_id, version, tenant_id, version - 1, step, delta, state_hash, now),
    )
    conn.execute(
        "UPDATE runs SET state_version = ?, state_hash = ?, updated_at = ?"
        " WHERE id = ? AND tenant_id = ?",
        (version, state_hash, now, run_id, tenant_id),
    )
    conn.execute(
        "UPDATE steps SET version = ? WHERE run_id = ? AND key = ? AND tenant_id = ?",
        (version, run_id, step, tenant_id),
    )
    _events(
        conn, tenant_id, run_id, now, [NewEvent("state.version", step, None, {"version": version})]
    )
    return version


def _finish(conn: sqlite3.Connection, op: FinishAttempt) -> Any:
    row = conn.execute(
        "UPDATE steps SET status = 'succeeded', output = ?, error = NULL, owner = NULL,"
        " lease_expires_at = NULL, finished_at = ?"
        " WHERE run_id = ? AND key = ? AND tenant_id = ? AND fence = ? AND status = 'running'"
        " AND lease_expires_at >= ? RETURNING attempt",
        (op.output_json, op.now, op.run_id, op.key, op.tenant_id, op.fence, op.now),
    ).fetchone()
    if row is None:
        return STALE
    _events(conn, op.tenant_id, op.run_id, op.now, [NewEvent("step.succeeded", op.key, row[0])])
    version = 0
    if op.delta_json is not None:
        version = _append_version(conn, op.tenant_id, op.run_id, op.key, op.delta_json, op.now)
    _transition(conn, op.then)
    return version


def _fail(conn: sqlite3.Connection, op: FailAttempt) -> Any:
    status = StepStatus.READY if op.retry_at is not None else StepStatus.FAILED
    row = conn.execute(
        "UPDATE steps SET status = ?, error = ?, owner = NULL, lease_expires_at = NULL,"
        " available_at = ?, finished_at = ?"
        " WHERE run_id = ? AND key = ? AND tenant_id = ? AND fence = ? AND status = 'running'"
        " AND lease_expires_at >= ? RETURNING attempt",
        (
            status.value,
            op.error,
            op.retry_at if op.retry_at is not None else 0.0,
            None if op.retry_at is not None else op.now,
            op.run_id,
            op.key,
            op.tenant_id,
            op.fence,
            op.now,
        ),
    ).fetchone()
    if row is None:
        return STALE
    data: dict[str, Any] = {"error": op.error}
    if op.retry_at is not None:
        data["retry_at"] = op.retry_at
    kind = "step.retrying" if op.retry_at is not None else "step.failed"
    _events(conn, op.tenant_id, op.run_id, op.now, [NewEvent(kind, op.key, row[0], data)])
    _transition(conn, op.then)
    return True


def _transition(conn: sqlite3.Connection, t: Transition) -> None:
    for u in t.steps:
        if u.create:
            conn.execute(
                "INSERT INTO steps (run_id, key, tenant_id, status, available_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (t.run_id, u.key, t.tenant_id, u.status.value, u.available_at or 0.0),
            )
        else:
            conn.execute(
                "UPDATE steps SET status = ?, available_at = COALESCE(?, available_at),"
                " output = COALESCE(?, output), error = COALESCE(?, error),"
                " owner = CASE WHEN ? THEN NULL ELSE owner END,"
                " finished_at = CASE WHEN ? THEN ? ELSE finished_at END"
                " WHERE run_id = ? AND key = ? AND tenant_id = ?",
                (
                    u.status.value,
                    u.available_at,
                    u.output_json,
                    u.error,
                    u.status != StepStatus.RUNNING,
                    u.status in TERMINAL_STEP,
                    t.now,
                    t.run_id,
                    u.key,
                    t.tenant_id,
                ),
            )
        if u.delta_json is not None:
            _append_version(conn, t.tenant_id, t.run_id, u.key, u.delta_json, t.now)
    if t.run is not None:
        terminal = t.run.status in TERMINAL_RUN
        conn.execute(
            "UPDATE runs SET status = ?, result = COALESCE(?, result), error = COALESCE(?, error),"
            " updated_at = ?, finished_at = CASE WHEN ? THEN ? ELSE finished_at END"
            " WHERE id = ? AND tenant_id = ?",
            (
                t.run.status.value,
                t.run.result_json,
                t.run.error,
                t.now,
                terminal,
                t.now,
                t.run_id,
                t.tenant_id,
            ),
        )
    _events(conn, t.tenant_id, t.run_id, t.now, t.events)
    tq.append_audit(conn, t.tenant_id, t.now, t.audit)
    tq.add_usage(conn, t.tenant_id, t.now, t.usage)
    if t.review is not None:
        tq.insert_review(conn, t.review)
    if t.release_prefix is not None:
        tq.release_holds(conn, t_ops.ReleaseHolds(t.tenant_id, t.release_prefix, t.now))


def _renew(conn: sqlite3.Connection, op: RenewLeases) -> list[tuple[str, str, int]]:
    conn.execute(
        "UPDATE steps SET lease_expires_at = ?"
        " WHERE owner = ? AND status = 'running' AND lease_expires_at >= ?",
        (op.lease_until, op.owner, op.now),
    )
    rows = conn.execute(
        "SELECT run_id, key, fence FROM steps WHERE owner = ? AND status = 'running'"
        " AND lease_expires_at < ?",
        (op.owner, op.now),
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def _recover(conn: sqlite3.Connection, op: RecoverOrphans) -> int:
    if op.owners is None:
        rows = conn.execute(
            "SELECT tenant_id, run_id, key, attempt FROM steps WHERE status = 'running'"
        ).fetchall()
    else:
        marks = ",".join("?" for _ in op.owners)
        rows = conn.execute(
            "SELECT tenant_id, run_id, key, attempt FROM steps WHERE status = 'running'"
            f" AND owner IN ({marks})",
            op.owners,
        ).fetchall()
    for tenant_id, run_id, key, attempt in rows:
        conn.execute(
            "UPDATE steps SET status = 'ready', owner = NULL, lease_expires_at = NULL,"
            " available_at = ? WHERE run_id = ? AND key = ? AND tenant_id = ?",
            (op.now, run_id, key, tenant_id),
        )
        _events(
            conn,
            tenant_id,
            run_id,
            op.now,
            [NewEvent("step.recovered", key, attempt, {"reason": "owner died"})],
        )
        # The dead attempt's budget holds are released: its calls are re-made (or replayed).
        tq.release_holds(conn, t_ops.ReleaseHolds(tenant_id, f"{run_id}:{key}:", op.now))
    return len(rows)


# -- reads ----------------------------------------------------------------------------------


def _run_from_row(r: Sequence[Any]) -> RunRecord:
    return RunRecord(
        id=r[0],
        tenant_id=r[1],
        workflow=r[2],
        workflow_version=r[3],
        status=RunStatus(r[4]),
        input_json=r[5],
        created_at=r[6],
        updated_at=r[7],
        lane=r[8],
        state_version=r[9],
        state_hash=r[10],
        result_json=r[11],
        error=r[12],
        idempotency_key=r[13],
        parent_run_id=r[14],
        finished_at=r[15],
        meta=json.loads(r[16] or "{}"),
    )


def _step_from_row(r: Sequence[Any]) -> StepRecord:
    return StepRecord(
        run_id=r[0],
        tenant_id=r[1],
        key=r[2],
        status=StepStatus(r[3]),
        attempt=r[4],
        fence=r[5],
        owner=r[6],
        lease_expires_at=r[7],
        available_at=r[8],
        output_json=r[9],
        error=r[10],
        version=r[11],
        started_at=r[12],
        finished_at=r[13],
    )


def get_run(conn: sqlite3.Connection, tenant_id: str, run_id: str) -> RunRecord:
    row = conn.execute(
        f"SELECT {_RUN_COLS} FROM runs WHERE id = ? AND tenant_id = ?", (run_id, tenant_id)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"run {run_id!r} not found", kind="run", id=run_id)
    return _run_from_row(row)


def list_runs(
    conn: sqlite3.Connection,
    tenant_id: str,
    status: RunStatus | None,
    workflow: str | None,
    limit: int,
    before: str | None,
) -> list[RunRecord]:
    sql = f"SELECT {_RUN_COLS} FROM runs WHERE tenant_id = ?"
    args: list[Any] = [tenant_id]
    if status is not None:
        sql += " AND status = ?"
        args.append(status.value)
    if workflow is not None:
        sql += " AND workflow = ?"
        args.append(workflow)
    if before is not None:
        cursor = get_run(conn, tenant_id, before)
        sql += " AND (created_at < ? OR (created_at = ? AND id < ?))"
        args.extend([cursor.created_at, cursor.created_at, cursor.id])
    sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
    args.append(limit)
    return [_run_from_row(r) for r in conn.execute(sql, args).fetchall()]


def get_steps(conn: sqlite3.Connection, tenant_id: str, run_id: str) -> list[StepRecord]:
    rows = conn.execute(
        f"SELECT {_STEP_COLS} FROM steps WHERE run_id = ? AND tenant_id = ? ORDER BY key",
        (run_id, tenant_id),
    ).fetchall()
    return [_step_from_row(r) for r in rows]


def active_runs(conn: sqlite3.Connection) -> list[tuple[RunRecord, list[StepRecord]]]:
    runs = [
        _run_from_row(r)
        for r in conn.execute(
            f"SELECT {_RUN_COLS} FROM runs WHERE status IN"
            " ('queued', 'running', 'paused', 'compensating', 'cancelling')"
            " ORDER BY created_at, id"
        ).fetchall()
    ]
    return [(r, get_steps(conn, r.tenant_id, r.id)) for r in runs]
