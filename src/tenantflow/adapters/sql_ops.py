"""Run ops in SQL: how each op is applied, and the scoped reads.

Dialect-neutral interpreter steps (see :mod:`~tenantflow.adapters.sql`): a store's driver runs
:func:`apply_op` for each op of a batch inside one transaction. Every statement names the tenant.

Claims are safe with writers in several processes: :class:`StartAttempt` claims a step with one
conditional ``UPDATE`` (on PostgreSQL restricted to rows it can lock at once, ``FOR UPDATE SKIP
LOCKED``, so two claimers never wait on each other and exactly one wins), and every fenced op
is a conditional ``UPDATE`` on the fencing token and a live lease, which PostgreSQL re-checks
against the latest committed row after any lock wait.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from tenantflow.adapters import sql_keys, sql_memory
from tenantflow.adapters import sql_tenancy as tq
from tenantflow.adapters.sql import Gen, Sql, append, count, execute, one, rows, together
from tenantflow.domain import keys as k_ops
from tenantflow.domain import memory as m_ops
from tenantflow.domain import outbox as o_ops
from tenantflow.domain import tenancy as t_ops
from tenantflow.domain.records import (
    STALE,
    TERMINAL_RUN,
    TERMINAL_STEP,
    CreateResult,
    CreateRun,
    EventRecord,
    FailAttempt,
    FinishAttempt,
    Lease,
    NewEvent,
    Op,
    ParkAttempt,
    RecordCall,
    RecoverOrphans,
    RenewLeases,
    RunRead,
    RunRecord,
    RunStatus,
    StartAttempt,
    StateVersionRecord,
    StepRecord,
    StepStatus,
    Transition,
    VersionConflict,
    next_state_hash,
    op_tenant,
)
from tenantflow.errors import NotFoundError

__all__ = [
    "active_runs",
    "apply_op",
    "events",
    "get_run",
    "get_steps",
    "list_runs",
    "op_tenant",
    "outbox",
    "start_attempts",
    "state_versions",
    "unfinished_runs",
]

_RUN_COLS = (
    "id, tenant_id, workflow, workflow_version, status, input, created_at, updated_at, lane,"
    " state_version, state_hash, result, error, idempotency_key, parent_run_id, finished_at, meta"
)
# The same columns with the input and result left unread (a list that shows neither).
_RUN_SUMMARY_COLS = (
    "id, tenant_id, workflow, workflow_version, status, NULL, created_at, updated_at, lane,"
    " state_version, state_hash, NULL, error, idempotency_key, parent_run_id, finished_at, meta"
)
_STEP_COLS = (
    "run_id, tenant_id, key, status, attempt, fence, owner, lease_expires_at, available_at,"
    " output, error, version, started_at, finished_at"
)
_ACTIVE = "('queued', 'running', 'paused', 'compensating', 'cancelling')"


def apply_op(op: Op) -> Gen[Any]:
    """The interpreter step for ``op``; its result is the op's result (see each op)."""
    handler = _HANDLERS.get(type(op))
    if handler is None:
        raise TypeError(f"unknown op {type(op).__name__}")
    then = getattr(op, "then", None)
    if isinstance(then, Transition) and then.expected_version is not None:
        # The outer op's own condition covers the whole op; one on its follow-ons would be
        # checked after the op had already written.
        raise TypeError(f"{type(op).__name__}.then carries an expected_version")
    return handler(op)


def _events(tenant_id: str, run_id: str, ts: float, new: Sequence[NewEvent]) -> Gen[None]:
    yield from append(
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
            for e in new
        ],
    )
    # An fx.enqueued event is also an outbox row, in this same transaction (domain.outbox).
    yield from append(
        "INSERT INTO outbox (id, tenant_id, run_id, step, payload, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (e.data["outbox_id"], tenant_id, run_id, e.step, json.dumps(e.data), ts)
            for e in new
            if e.kind == o_ops.FX_ENQUEUED and e.data is not None and e.step is not None
        ],
    )


def _mark_published(op: o_ops.MarkPublished) -> Gen[int]:
    marked = 0
    for start in range(0, len(op.ids), _ID_BATCH):
        ids = _padded(list(op.ids[start : start + _ID_BATCH]))
        marked += yield from count(
            "UPDATE outbox SET published_at = ? WHERE tenant_id = ? AND published_at IS NULL"
            f" AND id IN ({_marks(ids)})",
            op.now,
            op.tenant_id,
            *ids,
        )
    return marked


def _record_fx_outcome(op: o_ops.RecordFxOutcome) -> Gen[bool]:
    if op.kind not in o_ops.FX_OUTCOMES:
        raise ValueError(f"{op.kind!r} is not a side-effect outcome")
    where = " FROM outbox WHERE tenant_id = ? AND id = ? AND run_id = ?"
    if op.final:
        found = yield from count("DELETE" + where, op.tenant_id, op.outbox_id, op.run_id)
    else:
        found = len((yield from rows("SELECT id" + where, op.tenant_id, op.outbox_id, op.run_id)))
    if found:
        data = {"outbox_id": op.outbox_id, **op.data}
        yield from _events(
            op.tenant_id, op.run_id, op.now, [NewEvent(op.kind, op.step, None, data)]
        )
    return bool(found)


def _record_call(op: RecordCall) -> Gen[bool]:
    yield from execute(
        "INSERT INTO calls (tenant_id, run_id, key, idx, kind, name, result, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        op.tenant_id,
        op.run_id,
        op.key,
        op.index,
        op.kind,
        op.name,
        op.result_json,
        op.now,
    )
    return True


_FENCED = (
    " WHERE run_id = ? AND key = ? AND tenant_id = ? AND fence = ? AND status = 'running'"
    " AND lease_expires_at >= ? RETURNING attempt"
)
"""The attempt's own step, still running under its lease: found by its primary key (the
partial index of running steps cannot serve it, see the schema's migration 9)."""
_PARK = (
    "UPDATE steps SET status = ?, owner = NULL, lease_expires_at = NULL, available_at = ?" + _FENCED
)
_FAIL = (
    "UPDATE steps SET status = ?, error = ?, owner = NULL, lease_expires_at = NULL,"
    " available_at = ?, finished_at = ?" + _FENCED
)


def _park(op: ParkAttempt) -> Gen[Any]:
    row = yield from one(
        _PARK,
        op.status.value,
        op.available_at,
        op.run_id,
        op.key,
        op.tenant_id,
        op.fence,
        op.now,
    )
    if row is None:
        return STALE
    kind = "step.waiting" if op.status == StepStatus.WAITING else "step.deferred"
    data: dict[str, Any] = {"reason": op.reason}
    if op.status != StepStatus.WAITING:
        data["until"] = op.available_at
    yield from _events(op.tenant_id, op.run_id, op.now, [NewEvent(kind, op.key, row[0], data)])
    yield from _transition(op.then)
    return True


def _existing_run(tenant_id: str, key: str) -> Gen[str | None]:
    row = yield from one(
        "SELECT id FROM runs WHERE tenant_id = ? AND idempotency_key = ?", tenant_id, key
    )
    return None if row is None else str(row[0])


def _create(op: CreateRun) -> Gen[CreateResult]:
    r = op.run
    if r.idempotency_key is not None:
        existing = yield from _existing_run(r.tenant_id, r.idempotency_key)
        if existing is not None:
            return CreateResult(existing, created=False)
    state_hash = next_state_hash("", 0, None, r.input_json)
    insert = f"INSERT INTO runs ({_RUN_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    values = (
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
    )
    if r.idempotency_key is None:
        # Nothing to learn from the insert: it lands or raises (an id taken), so a driver
        # need not wait for it (PostgreSQL: no round trip of its own).
        yield from execute(insert, *values)
    else:
        # A concurrent submission with the same key (another process) wins the insert: this
        # one then returns the run that won, as if it had come second.
        inserted = yield from one(
            insert + " /*pg: ON CONFLICT (tenant_id, idempotency_key)"
            " WHERE idempotency_key IS NOT NULL DO NOTHING*/ RETURNING id",
            *values,
        )
        if inserted is None:
            winner = yield from _existing_run(r.tenant_id, r.idempotency_key)
            return CreateResult(winner or r.id, created=False)
    yield from append(
        "INSERT INTO steps (run_id, key, tenant_id, status, available_at) VALUES (?, ?, ?, ?, ?)",
        [(s.run_id, s.key, s.tenant_id, s.status.value, s.available_at) for s in op.steps],
    )
    yield from _insert_version(r.tenant_id, r.id, None, r.input_json, r.created_at, 0, state_hash)
    yield from _events(r.tenant_id, r.id, r.created_at, op.events)
    return CreateResult(r.id, created=True)


def _start(op: StartAttempt) -> Gen[Lease | None]:
    row = yield from one(
        "UPDATE steps SET status = 'running', attempt = attempt + 1, fence = fence + 1,"
        " owner = ?, lease_expires_at = ?, started_at = ?"
        " WHERE /*pg: (run_id, key) IN (SELECT run_id, key FROM steps WHERE*/"
        " run_id = ? AND key = ? AND tenant_id = ?"
        " AND ((status = 'ready' AND available_at <= ?)"
        "      OR (status = 'running' AND lease_expires_at < ?))"
        " /*pg: FOR UPDATE SKIP LOCKED)*/ RETURNING fence, attempt",
        op.owner,
        op.lease_until,
        op.now,
        op.run_id,
        op.key,
        op.tenant_id,
        op.now,
        op.now,
    )
    if row is None:
        return None
    started = [NewEvent("step.started", op.key, row[1])]
    yield from _events(op.tenant_id, op.run_id, op.now, started)
    return Lease(fence=row[0], attempt=row[1], lease_expires_at=op.lease_until)


def start_attempts(ops: Sequence[StartAttempt]) -> Gen[list[Lease | None]]:
    """Several attempts of one tenant's steps started by one statement (PostgreSQL's dialect):
    each op's result and events exactly as :func:`_start` gives them, with one statement for
    all of them instead of one each. The ops' ``(run_id, key)`` must all differ (a second
    claim of one step in the same transaction could not see the first)."""
    tenant = ops[0].tenant_id
    if any(op.tenant_id != tenant for op in ops):
        raise ValueError("start_attempts: the ops must be of one tenant")
    if len({(op.run_id, op.key) for op in ops}) != len(ops):
        raise ValueError("start_attempts: a step is claimed twice")
    args: list[Any] = []
    for op in ops:
        args.extend((op.run_id, op.key, op.owner, op.lease_until, op.now))
    args.extend((tenant, tenant))
    found = yield from rows(_start_many_text(len(ops)), *args)
    started = {(r[0], r[1]): (int(r[2]), int(r[3])) for r in found}
    leases: list[Lease | None] = []
    for op in ops:
        got = started.get((op.run_id, op.key))
        if got is None:
            leases.append(None)
            continue
        fence, attempt = got
        leases.append(Lease(fence=fence, attempt=attempt, lease_expires_at=op.lease_until))
        started_event = [NewEvent("step.started", op.key, attempt)]
        yield from _events(tenant, op.run_id, op.now, started_event)
    return leases


@lru_cache(maxsize=64)
def _start_many_text(n: int) -> str:
    """:func:`_start`'s claim for ``n`` steps: the same conditions, each step with its own
    owner, lease and time; rows locked by another transaction are skipped, as there."""
    values = ", ".join(
        ["(?::text, ?::text, ?::text, ?::double precision, ?::double precision)"] * n
    )
    return (
        f"WITH v (run_id, key, owner, lease, now) AS (VALUES {values}),"
        " c AS (SELECT s.run_id, s.key FROM steps s JOIN v ON s.run_id = v.run_id AND s.key = v.key"
        " WHERE s.tenant_id = ? AND ((s.status = 'ready' AND s.available_at <= v.now)"
        " OR (s.status = 'running' AND s.lease_expires_at < v.now))"
        " FOR UPDATE OF s SKIP LOCKED)"
        " UPDATE steps SET status = 'running', attempt = steps.attempt + 1,"
        " fence = steps.fence + 1, owner = v.owner, lease_expires_at = v.lease, started_at = v.now"
        " FROM c JOIN v ON c.run_id = v.run_id AND c.key = v.key"
        " WHERE steps.run_id = c.run_id AND steps.key = c.key AND steps.tenant_id = ?"
        " RETURNING steps.run_id, steps.key, steps.fence, steps.attempt"
    )


_LOCKED_VERSION = (
    "SELECT state_version, state_hash FROM runs WHERE id = ? AND tenant_id = ? /*pg: FOR UPDATE*/"
)


def _locked_version(tenant_id: str, run_id: str) -> Gen[tuple[int, str]]:
    """The run's current state version and its hash (the run row locked until the commit, so
    that a writer in another process waits and then reads the version this one wrote)."""
    return _version_of((yield from one(_LOCKED_VERSION, run_id, tenant_id)), run_id)


def _version_of(row: tuple[Any, ...] | None, run_id: str) -> tuple[int, str]:
    if row is None:
        raise NotFoundError(f"run {run_id!r} not found", run_id=run_id)
    return int(row[0]), str(row[1])


def _next_version(tenant_id: str, run_id: str, step: str, delta: bytes) -> Gen[tuple[int, str]]:
    """The run's next state version and its hash (the run row locked until the commit)."""
    current, parent_hash = yield from _locked_version(tenant_id, run_id)
    version = current + 1
    return version, next_state_hash(parent_hash, version, step, delta)


def _insert_version(
    tenant_id: str,
    run_id: str,
    step: str | None,
    delta: bytes,
    now: float,
    version: int,
    state_hash: str,
) -> Gen[None]:
    """Record state version ``version`` (version 0, the input, has no parent)."""
    yield from append(
        "INSERT INTO state_versions (run_id, version, tenant_id, parent, step, delta, hash,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                run_id,
                version,
                tenant_id,
                version - 1 if version else None,
                step,
                delta,
                state_hash,
                now,
            )
        ],
    )


def _write_version(
    tenant_id: str, run_id: str, step: str, delta: bytes, now: float, version: int, state_hash: str
) -> Gen[None]:
    """Record state version ``version`` and make it the run's current one."""
    yield from _insert_version(tenant_id, run_id, step, delta, now, version, state_hash)
    yield from execute(
        "UPDATE runs SET state_version = ?, state_hash = ?, updated_at = ?"
        " WHERE id = ? AND tenant_id = ?",
        version,
        state_hash,
        now,
        run_id,
        tenant_id,
    )


def _append_version(tenant_id: str, run_id: str, step: str, delta: bytes, now: float) -> Gen[int]:
    """A new state version made by ``step`` (recorded on the step, with its event)."""
    version, state_hash = yield from _next_version(tenant_id, run_id, step, delta)
    yield from _write_version(tenant_id, run_id, step, delta, now, version, state_hash)
    yield from execute(
        "UPDATE steps SET version = ? WHERE run_id = ? AND key = ? AND tenant_id = ?",
        version,
        run_id,
        step,
        tenant_id,
    )
    new_version = [NewEvent("state.version", step, None, {"version": version})]
    yield from _events(tenant_id, run_id, now, new_version)
    return version


_FINISH = (
    "UPDATE steps SET status = 'succeeded', output = ?, error = NULL, owner = NULL,"
    " lease_expires_at = NULL, finished_at = ?, version = {version}" + _FENCED
)
_FINISH_AS_IS = _FINISH.format(version="COALESCE(?, version)")
_FINISH_NEXT = _FINISH.format(
    version="(SELECT state_version + 1 FROM runs WHERE id = ? AND tenant_id = ?)"
)
"""The fenced finish recording the run's next state version, read by the statement itself: sent
together with the read of the version (:data:`_LOCKED_VERSION`, which locks the run row first),
both are one round trip on PostgreSQL, and the version it records is the one read."""


def _finish(op: FinishAttempt) -> Gen[Any]:
    # The state version is read first (and the run row locked), so that the expected version
    # is compared before anything is written, the fenced UPDATE of the step also records its
    # version, and every event of the op goes in one INSERT. Without an expected version to
    # compare, the read and the fenced UPDATE go together (one round trip).
    version, state_hash = 0, None
    fenced = (op.run_id, op.key, op.tenant_id, op.fence, op.now)
    if op.expected_version is None and op.delta_json is not None:
        locked, finished = yield from together(
            Sql(_LOCKED_VERSION, (op.run_id, op.tenant_id)),
            Sql(_FINISH_NEXT, (op.output_json, op.now, op.run_id, op.tenant_id, *fenced)),
        )
        current, parent_hash = _version_of(locked.one(), op.run_id)
        version = current + 1
        state_hash = next_state_hash(parent_hash, version, op.key, op.delta_json)
        row = finished.one()
    else:
        if op.expected_version is not None or op.delta_json is not None:
            current, parent_hash = yield from _locked_version(op.tenant_id, op.run_id)
            if op.expected_version is not None and current != op.expected_version:
                return VersionConflict(op.run_id, op.expected_version, current)
            if op.delta_json is not None:
                version = current + 1
                state_hash = next_state_hash(parent_hash, version, op.key, op.delta_json)
        row = yield from one(
            _FINISH_AS_IS,
            op.output_json,
            op.now,
            version if state_hash is not None else None,
            *fenced,
        )
    if row is None:
        return STALE
    events = [NewEvent("step.succeeded", op.key, row[0])]
    current_version: tuple[int, str] | None = None
    if op.delta_json is not None and state_hash is not None:
        then = op.then
        if (
            then.run is not None
            and (then.tenant_id, then.run_id) == (op.tenant_id, op.run_id)
            and all(u.delta_json is None for u in then.steps)
        ):
            # The run row is updated by the follow-on anyway, and nothing before that reads
            # its version: the new version goes in that same UPDATE.
            yield from _insert_version(
                op.tenant_id, op.run_id, op.key, op.delta_json, op.now, version, state_hash
            )
            current_version = (version, state_hash)
        else:
            yield from _write_version(
                op.tenant_id, op.run_id, op.key, op.delta_json, op.now, version, state_hash
            )
        events.append(NewEvent("state.version", op.key, None, {"version": version}))
    yield from _transition(op.then, first=events, version=current_version)
    return version


def _fail(op: FailAttempt) -> Gen[Any]:
    status = StepStatus.READY if op.retry_at is not None else StepStatus.FAILED
    row = yield from one(
        _FAIL,
        status.value,
        op.error,
        op.retry_at if op.retry_at is not None else 0.0,
        None if op.retry_at is not None else op.now,
        op.run_id,
        op.key,
        op.tenant_id,
        op.fence,
        op.now,
    )
    if row is None:
        return STALE
    data: dict[str, Any] = {"error": op.error}
    if op.retry_at is not None:
        data["retry_at"] = op.retry_at
    kind = "step.retrying" if op.retry_at is not None else "step.failed"
    yield from _events(op.tenant_id, op.run_id, op.now, [NewEvent(kind, op.key, row[0], data)])
    yield from _transition(op.then)
    return True


def _step_updates(t: Transition) -> Gen[None]:
    for u in t.steps:
        if u.create:
            yield from execute(
                "INSERT INTO steps (run_id, key, tenant_id, status, available_at)"
                " VALUES (?, ?, ?, ?, ?)",
                t.run_id,
                u.key,
                t.tenant_id,
                u.status.value,
                u.available_at or 0.0,
            )
        else:
            yield from execute(
                "UPDATE steps SET status = ?, available_at = COALESCE(?, available_at),"
                " output = COALESCE(?, output), error = COALESCE(?, error),"
                " owner = CASE WHEN ? THEN NULL ELSE owner END,"
                " finished_at = CASE WHEN ? THEN ? ELSE finished_at END"
                " WHERE run_id = ? AND key = ? AND tenant_id = ?",
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
            )
        if u.reopen:
            yield from execute(
                "UPDATE steps SET error = NULL, finished_at = NULL"
                " WHERE run_id = ? AND key = ? AND tenant_id = ?",
                t.run_id,
                u.key,
                t.tenant_id,
            )
        if u.delta_json is not None:
            yield from _append_version(t.tenant_id, t.run_id, u.key, u.delta_json, t.now)


def _transition(
    t: Transition, first: Sequence[NewEvent] = (), version: tuple[int, str] | None = None
) -> Gen[None]:
    """Apply ``t`` (``first``: events of the op that go before the transition's own;
    ``version``: the run's new state version and hash, set by ``t``'s run update, which the
    caller has checked there is)."""
    if first and any(u.delta_json is not None for u in t.steps):
        # Those step updates log state versions of their own: keep ``first`` ahead of them.
        yield from _events(t.tenant_id, t.run_id, t.now, first)
        first = ()
    yield from _step_updates(t)
    if t.run is not None:
        if t.run.reopen:
            yield from execute(
                "UPDATE runs SET result = NULL, error = NULL, finished_at = NULL"
                " WHERE id = ? AND tenant_id = ?",
                t.run_id,
                t.tenant_id,
            )
        terminal = t.run.status in TERMINAL_RUN
        yield from execute(
            _RUN_UPDATE if version is None else _RUN_UPDATE_VERSION,
            *(() if version is None else version),
            t.run.status.value,
            t.run.result_json,
            t.run.error,
            None if t.run.meta is None else json.dumps(t.run.meta, default=str),
            t.now,
            terminal,
            t.now,
            t.run_id,
            t.tenant_id,
        )
    yield from _events(t.tenant_id, t.run_id, t.now, [*first, *t.events] if first else t.events)
    yield from tq.append_audit(t.tenant_id, t.now, t.audit)
    yield from tq.add_usage(t.tenant_id, t.now, t.usage)
    if t.review is not None:
        yield from tq.insert_review(t.review)
    if t.release_prefix is not None:
        yield from tq.release_holds(t_ops.ReleaseHolds(t.tenant_id, t.release_prefix, t.now))


_RUN_UPDATE = (
    "UPDATE runs SET status = ?, result = COALESCE(?, result), error = COALESCE(?, error),"
    " meta = COALESCE(?, meta),"
    " updated_at = ?, finished_at = CASE WHEN ? THEN ? ELSE finished_at END"
    " WHERE id = ? AND tenant_id = ?"
)
_RUN_UPDATE_VERSION = _RUN_UPDATE.replace(
    "UPDATE runs SET ", "UPDATE runs SET state_version = ?, state_hash = ?, "
)


def _transition_op(t: Transition) -> Gen[bool | VersionConflict]:
    if t.expected_version is not None:
        current, _ = yield from _locked_version(t.tenant_id, t.run_id)
        if current != t.expected_version:
            return VersionConflict(t.run_id, t.expected_version, current)
    yield from _transition(t)
    return True


_RENEW = (
    "UPDATE steps SET lease_expires_at = ?"
    " WHERE owner = ? AND status = 'running' AND lease_expires_at >= ?"
)
_LAPSED = (
    "SELECT run_id, key, fence FROM steps WHERE owner = ? AND status = 'running'"
    " AND lease_expires_at < ?"
)
_RUNNING = (
    "SELECT tenant_id, run_id, key, attempt FROM steps"
    " WHERE status = 'running' AND owner IS NOT NULL"
)
"""Every running step. A running step always has an owner; saying so lets the partial index
steps_running serve the query."""


def _renew(op: RenewLeases) -> Gen[list[tuple[str, str, int]]]:
    yield from execute(_RENEW, op.lease_until, op.owner, op.now)
    lapsed = yield from rows(_LAPSED, op.owner, op.now)
    return [(r[0], r[1], r[2]) for r in lapsed]


def _recover(op: RecoverOrphans) -> Gen[int]:
    sql = _RUNNING
    args: tuple[str, ...] = ()
    if op.owners is not None:
        args = op.owners
        sql += f" AND owner IN ({','.join('?' for _ in op.owners)})"
    if op.tenant_id is not None:
        args = (*args, op.tenant_id)
        sql += " AND tenant_id = ?"
    # Another process recovering at the same moment skips the rows this one has locked.
    orphans = yield from rows(sql + " /*pg: FOR UPDATE SKIP LOCKED*/", *args)
    for tenant_id, run_id, key, attempt in orphans:
        yield from execute(
            "UPDATE steps SET status = 'ready', owner = NULL, lease_expires_at = NULL,"
            " available_at = ? WHERE run_id = ? AND key = ? AND tenant_id = ?",
            op.now,
            run_id,
            key,
            tenant_id,
        )
        recovered = [NewEvent("step.recovered", key, attempt, {"reason": "owner died"})]
        yield from _events(tenant_id, run_id, op.now, recovered)
        # The dead attempt's budget holds are released: its calls are re-made (or replayed).
        yield from tq.release_holds(t_ops.ReleaseHolds(tenant_id, f"{run_id}:{key}:", op.now))
    return len(orphans)


_HANDLERS: dict[type[Any], Callable[[Any], Gen[Any]]] = {
    o_ops.MarkPublished: _mark_published,
    o_ops.RecordFxOutcome: _record_fx_outcome,
    StartAttempt: _start,
    FinishAttempt: _finish,
    FailAttempt: _fail,
    Transition: _transition_op,
    CreateRun: _create,
    RenewLeases: _renew,
    RecoverOrphans: _recover,
    ParkAttempt: _park,
    RecordCall: _record_call,
    t_ops.Reserve: tq.reserve,
    t_ops.Settle: tq.settle,
    t_ops.AcquireRate: tq.acquire_rate,
    t_ops.ReleaseHolds: tq.release_holds,
    t_ops.Charge: tq.charge,
    t_ops.ThrottleRate: tq.throttle_rate,
    t_ops.CreateReview: lambda op: tq.create_review(op, _transition),
    t_ops.ClaimReview: tq.claim_review,
    t_ops.DecideReview: lambda op: tq.decide_review(op, _transition),
    t_ops.EscalateReview: lambda op: tq.escalate_review(op, _transition),
    t_ops.PutTenant: tq.put_tenant,
    t_ops.AppendAudit: tq.append_audit_op,
    t_ops.DeleteTenant: tq.delete_tenant,
    t_ops.PurgeRuns: tq.purge_runs,
    k_ops.CreateApiKey: sql_keys.create_api_key,
    k_ops.RevokeApiKey: sql_keys.revoke_api_key,
    m_ops.PutMemory: sql_memory.put_entry,
    m_ops.DeleteMemory: sql_memory.delete_entry,
    m_ops.AddDocument: sql_memory.add_document,
    m_ops.DeleteDocument: sql_memory.delete_document,
    m_ops.PurgeMemory: sql_memory.purge_memory,
}


# -- reads ----------------------------------------------------------------------------------


def _run_from_row(r: Sequence[Any]) -> RunRecord:
    return RunRecord(
        id=r[0],
        tenant_id=r[1],
        workflow=r[2],
        workflow_version=r[3],
        status=RunStatus(r[4]),
        input_json=r[5] if r[5] is not None else b"",
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


_RUN_BY_ID = f"SELECT {_RUN_COLS} FROM runs WHERE id = ? AND tenant_id = ?"
_STEPS_OF_RUN = f"SELECT {_STEP_COLS} FROM steps WHERE run_id = ? AND tenant_id = ? ORDER BY key"
_EVENTS_AFTER = (
    "SELECT id, tenant_id, run_id, ts, kind, step, attempt, data FROM events"
    " WHERE tenant_id = ? AND run_id = ? AND id > ? ORDER BY id"
)
_VERSIONS_BETWEEN = (
    "SELECT run_id, tenant_id, version, parent, step, delta, hash, created_at"
    " FROM state_versions WHERE tenant_id = ? AND run_id = ? AND version > ?"
    " AND version <= ? ORDER BY version"
)


def get_run(tenant_id: str, run_id: str) -> Gen[RunRecord]:
    row = yield from one(_RUN_BY_ID, run_id, tenant_id)
    if row is None:
        raise NotFoundError(f"run {run_id!r} not found", kind="run", id=run_id)
    return _run_from_row(row)


def read_run(
    tenant_id: str, run_id: str, events_after: int | None, versions_after: int | None
) -> Gen[RunRead]:
    """The run and its steps, and its events after ``events_after`` and state versions after
    ``versions_after`` up to the run's (each only when asked), in one transaction, sent
    together (:func:`~tenantflow.adapters.sql.together`: one round trip on PostgreSQL). The
    events are read first: a version committed meanwhile is covered by a later read's events;
    a version newer than the run as read is left for a later read too."""
    statements = [
        Sql(_RUN_BY_ID, (run_id, tenant_id)),
        Sql(_STEPS_OF_RUN, (run_id, tenant_id)),
    ]
    if events_after is not None:
        statements.insert(0, Sql(_EVENTS_AFTER, (tenant_id, run_id, events_after)))
    if versions_after is not None:
        statements.append(Sql(_VERSIONS_BETWEEN, (tenant_id, run_id, versions_after, 2**62)))
    parts = yield from together(*statements)
    found = [] if events_after is None else _events_from_rows(parts.pop(0).rows)
    if not parts[0].rows:
        raise NotFoundError(f"run {run_id!r} not found", kind="run", id=run_id)
    run = _run_from_row(parts[0].rows[0])
    steps = [_step_from_row(r) for r in parts[1].rows]
    versions = []
    if versions_after is not None:
        versions = [StateVersionRecord(*r) for r in parts[2].rows]
        versions = [v for v in versions if v.version <= run.state_version]
    return RunRead(run, steps, found, versions)


def list_runs(
    tenant_id: str,
    status: RunStatus | None,
    workflow: str | None,
    limit: int,
    before: str | None,
    payloads: bool = True,
) -> Gen[list[RunRecord]]:
    sql = f"SELECT {_RUN_COLS if payloads else _RUN_SUMMARY_COLS} FROM runs WHERE tenant_id = ?"
    args: list[Any] = [tenant_id]
    if status is not None:
        sql += " AND status = ?"
        args.append(status.value)
    if workflow is not None:
        sql += " AND workflow = ?"
        args.append(workflow)
    if before is not None:
        cursor = yield from one(
            "SELECT created_at FROM runs WHERE id = ? AND tenant_id = ?", before, tenant_id
        )
        if cursor is None:
            raise NotFoundError(f"run {before!r} not found", kind="run", id=before)
        sql += " AND (created_at < ? OR (created_at = ? AND id < ?))"
        args.extend([cursor[0], cursor[0], before])
    sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
    args.append(limit)
    found = yield from rows(sql, *args)
    return [_run_from_row(r) for r in found]


def get_steps(tenant_id: str, run_id: str) -> Gen[list[StepRecord]]:
    found = yield from rows(_STEPS_OF_RUN, run_id, tenant_id)
    return [_step_from_row(r) for r in found]


def events(tenant_id: str, run_id: str, after_id: int) -> Gen[list[EventRecord]]:
    found = yield from rows(_EVENTS_AFTER, tenant_id, run_id, after_id)
    return _events_from_rows(found)


def _events_from_rows(found: list[tuple[Any, ...]]) -> list[EventRecord]:
    return [
        EventRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7] or "{}"))
        for r in found
    ]


def outbox(tenant_id: str | None, limit: int, unpublished: bool) -> Gen[list[o_ops.OutboxRecord]]:
    """The oldest ``limit`` outbox rows (``unpublished``: only those not yet published): one
    tenant's, or every tenant's (None: the relay, in system scope)."""
    where = ["published_at IS NULL"] if unpublished else []
    args: tuple[str, ...] = ()
    if tenant_id is not None:
        where.append("tenant_id = ?")
        args = (tenant_id,)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    found = yield from rows(
        "SELECT id, tenant_id, run_id, step, payload, created_at, published_at FROM outbox"
        f"{clause} ORDER BY created_at, id LIMIT ?",
        *args,
        limit,
    )
    return [o_ops.OutboxRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6]) for r in found]


def state_versions(
    tenant_id: str, run_id: str, upto: int | None, *, after: int = -1
) -> Gen[list[StateVersionRecord]]:
    found = yield from rows(
        _VERSIONS_BETWEEN, tenant_id, run_id, after, upto if upto is not None else 2**62
    )
    return [StateVersionRecord(*r) for r in found]


def active_runs(tenant_id: str | None = None) -> Gen[list[tuple[RunRecord, list[StepRecord]]]]:
    """Every unfinished run with its steps (system scope: recovery after a restart), or one
    tenant's (a worker taking the tenant over)."""
    where, args = ("", ()) if tenant_id is None else (" AND tenant_id = ?", (tenant_id,))
    found = yield from rows(
        f"SELECT {_RUN_COLS} FROM runs WHERE status IN {_ACTIVE}{where} ORDER BY created_at, id",
        *args,
    )
    runs = [_run_from_row(r) for r in found]
    out = []
    for run in runs:
        out.append((run, (yield from get_steps(run.tenant_id, run.id))))
    return out


def unfinished_runs(
    tenant_id: str, run_ids: Sequence[str]
) -> Gen[list[tuple[RunRecord, list[StepRecord]]]]:
    """Those of the tenant's runs ``run_ids`` that are unfinished, with their steps (two
    statements for any number of runs: a worker loading the runs it was told of)."""
    out: list[tuple[RunRecord, list[StepRecord]]] = []
    for start in range(0, len(run_ids), _ID_BATCH):
        ids = _padded(run_ids[start : start + _ID_BATCH])
        # By primary key only (a status condition would tempt the planner into scanning the
        # index of unfinished runs); finished ones are dropped here.
        found = yield from rows(
            f"SELECT {_RUN_COLS} FROM runs WHERE tenant_id = ? AND id IN ({_marks(ids)})"
            " ORDER BY created_at, id",
            tenant_id,
            *ids,
        )
        runs = [r for r in map(_run_from_row, found) if r.status not in TERMINAL_RUN]
        if not runs:
            continue
        ids = _padded([r.id for r in runs])
        step_rows = yield from rows(
            f"SELECT {_STEP_COLS} FROM steps WHERE tenant_id = ? AND run_id IN ({_marks(ids)})"
            " ORDER BY run_id, key",
            tenant_id,
            *ids,
        )
        steps: dict[str, list[StepRecord]] = {r.id: [] for r in runs}
        for row in step_rows:
            step = _step_from_row(row)
            steps[step.run_id].append(step)
        out.extend((r, steps[r.id]) for r in runs)
    return out


_ID_BATCH = 64


def _padded(ids: Sequence[str]) -> list[str]:
    """``ids`` padded (with its first id) to 1, 4, 16 or 64 entries: a handful of statement
    texts, so that PostgreSQL prepares each once instead of planning every list length."""
    size = next(n for n in (1, 4, 16, _ID_BATCH) if n >= len(ids))
    return [*ids, *([ids[0]] * (size - len(ids)))]


def _marks(ids: Sequence[str]) -> str:
    return ",".join("?" for _ in ids)
