"""An in-memory store for unit tests: the same semantics as SQLite, nothing durable.

It passes the same store contract suite (``tenantflow.testing``) as the real stores. A batch is
applied atomically: on an exception the previous state is restored.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

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
    RecoverOrphans,
    RenewLeases,
    RunRecord,
    RunStatus,
    StartAttempt,
    StateVersionRecord,
    StepRecord,
    StepStatus,
    Transition,
    next_state_hash,
)
from tenantflow.errors import ConflictError, NotFoundError

__all__ = ["MemoryStore"]

_ACTIVE = {RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.COMPENSATING, RunStatus.CANCELLING}


class MemoryStore:
    """A :class:`~tenantflow.ports.Store` in dictionaries."""

    url = "memory://"

    def __init__(self) -> None:
        self.runs: dict[str, RunRecord] = {}
        self.steps: dict[str, dict[str, StepRecord]] = {}
        self.versions: dict[str, list[StateVersionRecord]] = {}
        self.event_log: list[EventRecord] = []
        self._idem: dict[tuple[str, str], str] = {}

    @property
    def exclusive(self) -> bool:
        return True

    async def open(self, *, execute: bool = True) -> None:
        return None

    async def close(self) -> None:
        return None

    async def apply(self, ops: Sequence[Op]) -> list[Any]:
        snapshot = copy.deepcopy((self.runs, self.steps, self.versions, self.event_log, self._idem))
        try:
            return [self._apply(op) for op in ops]
        except BaseException:
            self.runs, self.steps, self.versions, self.event_log, self._idem = snapshot
            raise

    def _apply(self, op: Op) -> Any:
        if isinstance(op, StartAttempt):
            return self._start(op)
        if isinstance(op, FinishAttempt):
            return self._finish(op)
        if isinstance(op, FailAttempt):
            return self._fail(op)
        if isinstance(op, Transition):
            self._transition(op)
            return True
        if isinstance(op, CreateRun):
            return self._create(op)
        if isinstance(op, RenewLeases):
            return self._renew(op)
        if isinstance(op, RecoverOrphans):
            return self._recover(op)
        raise TypeError(f"unknown op {type(op).__name__}")

    def _log(self, tenant_id: str, run_id: str, ts: float, events: Sequence[NewEvent]) -> None:
        for e in events:
            self.event_log.append(
                EventRecord(
                    len(self.event_log) + 1,
                    tenant_id,
                    run_id,
                    ts,
                    e.kind,
                    e.step,
                    e.attempt,
                    dict(e.data or {}),
                )
            )

    def _step(self, tenant_id: str, run_id: str, key: str) -> StepRecord | None:
        step = self.steps.get(run_id, {}).get(key)
        return step if step is not None and step.tenant_id == tenant_id else None

    def _create(self, op: CreateRun) -> CreateResult:
        r = op.run
        if r.idempotency_key is not None:
            existing = self._idem.get((r.tenant_id, r.idempotency_key))
            if existing is not None:
                return CreateResult(existing, created=False)
        if r.id in self.runs:
            raise ConflictError(f"run {r.id!r} exists", run_id=r.id)
        h = next_state_hash("", 0, None, r.input_json)
        self.runs[r.id] = replace(r, state_version=0, state_hash=h, meta=dict(r.meta))
        self.steps[r.id] = {s.key: replace(s) for s in op.steps}
        self.versions[r.id] = [
            StateVersionRecord(r.id, r.tenant_id, 0, None, None, r.input_json, h, r.created_at)
        ]
        if r.idempotency_key is not None:
            self._idem[(r.tenant_id, r.idempotency_key)] = r.id
        self._log(r.tenant_id, r.id, r.created_at, op.events)
        return CreateResult(r.id, created=True)

    def _start(self, op: StartAttempt) -> Lease | None:
        s = self._step(op.tenant_id, op.run_id, op.key)
        if s is None:
            return None
        claimable = (s.status == StepStatus.READY and s.available_at <= op.now) or (
            s.status == StepStatus.RUNNING and (s.lease_expires_at or 0.0) < op.now
        )
        if not claimable:
            return None
        s.status = StepStatus.RUNNING
        s.attempt += 1
        s.fence += 1
        s.owner = op.owner
        s.lease_expires_at = op.lease_until
        s.started_at = op.now
        self._log(op.tenant_id, op.run_id, op.now, [NewEvent("step.started", op.key, s.attempt)])
        return Lease(s.fence, s.attempt, op.lease_until)

    def _fenced(
        self, tenant_id: str, run_id: str, key: str, fence: int, now: float
    ) -> StepRecord | None:
        s = self._step(tenant_id, run_id, key)
        if (
            s is None
            or s.fence != fence
            or s.status != StepStatus.RUNNING
            or (s.lease_expires_at or 0.0) < now
        ):
            return None
        return s

    def _append_version(
        self, tenant_id: str, run_id: str, step: str, delta: bytes, now: float
    ) -> int:
        run = self.runs[run_id]
        version = run.state_version + 1
        h = next_state_hash(run.state_hash, version, step, delta)
        self.versions[run_id].append(
            StateVersionRecord(run_id, tenant_id, version, version - 1, step, delta, h, now)
        )
        run.state_version, run.state_hash, run.updated_at = version, h, now
        self.steps[run_id][step].version = version
        self._log(
            tenant_id, run_id, now, [NewEvent("state.version", step, None, {"version": version})]
        )
        return version

    def _finish(self, op: FinishAttempt) -> Any:
        s = self._fenced(op.tenant_id, op.run_id, op.key, op.fence, op.now)
        if s is None:
            return STALE
        s.status, s.output_json, s.error = StepStatus.SUCCEEDED, op.output_json, None
        s.owner, s.lease_expires_at, s.finished_at = None, None, op.now
        self._log(op.tenant_id, op.run_id, op.now, [NewEvent("step.succeeded", op.key, s.attempt)])
        version = 0
        if op.delta_json is not None:
            version = self._append_version(op.tenant_id, op.run_id, op.key, op.delta_json, op.now)
        self._transition(op.then)
        return version

    def _fail(self, op: FailAttempt) -> Any:
        s = self._fenced(op.tenant_id, op.run_id, op.key, op.fence, op.now)
        if s is None:
            return STALE
        s.status = StepStatus.READY if op.retry_at is not None else StepStatus.FAILED
        s.error, s.owner, s.lease_expires_at = op.error, None, None
        s.available_at = op.retry_at if op.retry_at is not None else 0.0
        s.finished_at = None if op.retry_at is not None else op.now
        data: dict[str, Any] = {"error": op.error}
        if op.retry_at is not None:
            data["retry_at"] = op.retry_at
        kind = "step.retrying" if op.retry_at is not None else "step.failed"
        self._log(op.tenant_id, op.run_id, op.now, [NewEvent(kind, op.key, s.attempt, data)])
        self._transition(op.then)
        return True

    def _transition(self, t: Transition) -> None:
        run = self.runs.get(t.run_id)
        if run is None or run.tenant_id != t.tenant_id:
            raise NotFoundError(f"run {t.run_id!r} not found", kind="run", id=t.run_id)
        steps = self.steps[t.run_id]
        for u in t.steps:
            if u.create:
                if u.key in steps:
                    raise ConflictError(f"step {u.key!r} exists", run_id=t.run_id, step=u.key)
                steps[u.key] = StepRecord(
                    t.run_id, t.tenant_id, u.key, u.status, available_at=u.available_at or 0.0
                )
            else:
                s = steps[u.key]
                s.status = u.status
                if u.available_at is not None:
                    s.available_at = u.available_at
                if u.output_json is not None:
                    s.output_json = u.output_json
                if u.error is not None:
                    s.error = u.error
                if u.status != StepStatus.RUNNING:
                    s.owner = None
                if u.status in TERMINAL_STEP:
                    s.finished_at = t.now
            if u.delta_json is not None:
                self._append_version(t.tenant_id, t.run_id, u.key, u.delta_json, t.now)
        if t.run is not None:
            run.status = t.run.status
            if t.run.result_json is not None:
                run.result_json = t.run.result_json
            if t.run.error is not None:
                run.error = t.run.error
            run.updated_at = t.now
            if t.run.status in TERMINAL_RUN:
                run.finished_at = t.now
        self._log(t.tenant_id, t.run_id, t.now, t.events)

    def _renew(self, op: RenewLeases) -> list[tuple[str, str, int]]:
        lost: list[tuple[str, str, int]] = []
        for run_id, steps in self.steps.items():
            for s in steps.values():
                if s.owner == op.owner and s.status == StepStatus.RUNNING:
                    if (s.lease_expires_at or 0.0) >= op.now:
                        s.lease_expires_at = op.lease_until
                    else:
                        lost.append((run_id, s.key, s.fence))
        return lost

    def _recover(self, op: RecoverOrphans) -> int:
        n = 0
        for run_id, steps in self.steps.items():
            for s in steps.values():
                if s.status == StepStatus.RUNNING and (op.owners is None or s.owner in op.owners):
                    s.status, s.owner, s.lease_expires_at, s.available_at = (
                        StepStatus.READY,
                        None,
                        None,
                        op.now,
                    )
                    self._log(
                        s.tenant_id,
                        run_id,
                        op.now,
                        [NewEvent("step.recovered", s.key, s.attempt, {"reason": "owner died"})],
                    )
                    n += 1
        return n

    # -- reads --------------------------------------------------------------------------------

    async def get_run(self, tenant_id: str, run_id: str) -> RunRecord:
        run = self.runs.get(run_id)
        if run is None or run.tenant_id != tenant_id:
            raise NotFoundError(f"run {run_id!r} not found", kind="run", id=run_id)
        return replace(run, meta=dict(run.meta))

    async def list_runs(
        self,
        tenant_id: str,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[RunRecord]:
        rows = [
            r
            for r in self.runs.values()
            if r.tenant_id == tenant_id
            and (status is None or r.status == status)
            and (workflow is None or r.workflow == workflow)
        ]
        rows.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        if before is not None:
            cursor = await self.get_run(tenant_id, before)
            rows = [r for r in rows if (r.created_at, r.id) < (cursor.created_at, cursor.id)]
        return [replace(r) for r in rows[:limit]]

    async def get_steps(self, tenant_id: str, run_id: str) -> list[StepRecord]:
        return sorted(
            (replace(s) for s in self.steps.get(run_id, {}).values() if s.tenant_id == tenant_id),
            key=lambda s: s.key,
        )

    async def events(self, tenant_id: str, run_id: str, after_id: int = 0) -> list[EventRecord]:
        return [
            e
            for e in self.event_log
            if e.tenant_id == tenant_id and e.run_id == run_id and e.id > after_id
        ]

    async def state_versions(
        self, tenant_id: str, run_id: str, upto: int | None = None
    ) -> list[StateVersionRecord]:
        return [
            v
            for v in self.versions.get(run_id, [])
            if v.tenant_id == tenant_id and (upto is None or v.version <= upto)
        ]

    async def active_runs(self) -> list[tuple[RunRecord, list[StepRecord]]]:
        runs = sorted(
            (r for r in self.runs.values() if r.status in _ACTIVE),
            key=lambda r: (r.created_at, r.id),
        )
        return [(replace(r), await self.get_steps(r.tenant_id, r.id)) for r in runs]
