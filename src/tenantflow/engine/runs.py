"""Acting on one run from outside it: cancel, resume, retry, wait, and a read-only view of it.

:class:`RunControl` decides where the act happens: on the run this process drives, or as a
command for the cluster's worker that drives it (see :mod:`tenantflow.engine.cluster`).

A retry (:meth:`RunControl.retry`) reopens a failed, cancelled or compensated run from its
failed step (see :mod:`tenantflow.domain.retry` for what runs again and what is kept), or, with
``from_start``, submits a new run of the same workflow version with the same input. Either way
it is written first and then goes through admission like any run: on a cluster the transition is
written by whichever process was asked and the worker that drives the tenant is told to load it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tenantflow.domain.contracts import contract_for
from tenantflow.domain.records import (
    TERMINAL_RUN,
    NewEvent,
    RunRecord,
    RunStatus,
    StepStatus,
    Transition,
    VersionConflict,
)
from tenantflow.domain.retry import RETRYABLE, check_retryable, plan_retry
from tenantflow.domain.tenancy import AuditEntry, ReviewRecord
from tenantflow.domain.why import Reason, WaitFacts, explain
from tenantflow.engine.admission import AdmissionGate
from tenantflow.engine.ends import RunEnds
from tenantflow.engine.handle import RunSnapshot
from tenantflow.engine.history import RunHistory
from tenantflow.engine.registry import WorkflowRegistry, decode_sink
from tenantflow.engine.submission import Submitter
from tenantflow.errors import ConfigurationError, ConflictError, RunFailedError, TenantflowError
from tenantflow.ports import Clock, Coordinator

__all__ = ["RETRY_LIMIT", "Reason", "RetryResult", "RunControl"]

RETRY_LIMIT = 500
"""The most runs one bulk retry acts on."""


@dataclass(frozen=True, slots=True)
class RetryResult:
    """What retrying one run did.

    Attributes:
        run_id: the run asked for.
        ok: whether it was retried.
        mode: ``"failed_step"`` (reopened in place) or ``"from_start"`` (a new run).
        run: the run that now runs: the same one reopened, or the new one (None if not ok).
        error: why it was not retried (the error's code, message and fields; None if ok).
    """

    run_id: str
    ok: bool
    mode: str
    run: RunRecord | None = None
    error: dict[str, Any] | None = None


POLL_S = 0.1
"""How often a run driven elsewhere is read again while waiting for it (engine time)."""


class RunControl:
    """Cancel, resume and wait on runs.

    Args:
        history: reads runs from the store.
        gate: the runs held here.
        clock: the engine's clock.
        execute: whether this engine executes runs.
        command: passes a command to the worker that drives a tenant (a cluster's).
        decode: a completed run's stored result as its workflow's result type.
        registry: the registered workflows (a retried run's version must be one).
        submitter: records the new run of a retry from the start.
        coordinator: a cluster's coordination (tells the tenant's worker to load a retried
            run), or None.
    """

    def __init__(
        self,
        history: RunHistory,
        gate: AdmissionGate,
        clock: Clock,
        *,
        execute: bool,
        command: Callable[[str, str, str, dict[str, Any]], Awaitable[Any]],
        decode: Callable[[RunRecord], Any],
        registry: WorkflowRegistry | None = None,
        submitter: Submitter | None = None,
        coordinator: Coordinator | None = None,
    ) -> None:
        self._history = history
        self._gate = gate
        self._clock = clock
        self._execute = execute
        self._command = command
        self._decode = decode
        self._registry = registry
        self._submitter = submitter
        self._coordinator = coordinator
        self.ends = None if coordinator is None else RunEnds(coordinator, clock, poll_s=POLL_S)
        """Wake-ups of waiters on runs another process drives (a cluster's; None otherwise)."""
        self._retrying: dict[str, asyncio.Lock] = {}

    def view(self, tenant: str, run_id: str) -> RunSnapshot | None:
        """A run this engine drives, as it is now (None: it is not executing here)."""
        run = self._gate.active_run(tenant, run_id)
        if run is None:
            return None
        spec = run.spec
        return RunSnapshot(run.id, run.tenant_id, run.status, spec.name, spec.version, run.lane)

    async def cancel(self, tenant: str, run_id: str, reason: str) -> RunRecord:
        """Cancel a run: stop its steps, compensate completed ones, end it ``cancelled``."""
        record = await self._history.get_run(tenant, run_id)
        if record.status in TERMINAL_RUN:
            raise ConflictError(
                f"run {run_id} already ended {record.status.value}",
                run_id=run_id,
                status=record.status.value,
            )
        if not self._gate.drives(tenant):
            await self._command(tenant, "cancel", run_id, {"reason": reason})
            return await self._history.get_run(tenant, run_id)
        active = self._gate.active_run(tenant, run_id)
        if active is None or not self._execute:
            raise ConflictError(f"run {run_id} is not executing in this engine", run_id=run_id)
        if active.status == RunStatus.QUEUED:
            self._gate.withdraw(tenant, run_id)
            active.status = RunStatus.RUNNING  # so that cancel() unwinds it like any run
        await self._gate.runtime_for_tenant(tenant).cancel(active, reason)
        return await self._history.get_run(tenant, run_id)

    async def wait(self, tenant: str, run_id: str, timeout: timedelta | None) -> RunRecord:
        """Wait until the run ends and return its record (TimeoutError past ``timeout`` of
        the engine's time)."""
        if timeout is None:
            return await self._until_done(tenant, run_id)
        async with self._clock.timeout(timeout.total_seconds()):  # the engine's time, as all
            return await self._until_done(tenant, run_id)

    async def result(self, tenant: str, run_id: str, timeout: timedelta | None) -> Any:
        """Wait until the run ends and return its result (:class:`RunFailedError` if it did not
        complete; TimeoutError past ``timeout`` of the engine's time).

        A run this engine drives to completion answers from the sink's output it holds (as
        JSON, decoded as the stored result is), without reading the run back from the store:
        its completion committed before the run ended here. Otherwise, and for a workflow with
        several sinks (whose result is read as the stored JSON object), the completed record is
        read and decoded.
        """
        if timeout is None:
            return await self._result(tenant, run_id)
        async with self._clock.timeout(timeout.total_seconds()):
            return await self._result(tenant, run_id)

    async def _result(self, tenant: str, run_id: str) -> Any:
        run = self._gate.active_run(tenant, run_id)
        if run is not None and len(run.spec.sinks) == 1:
            status, _ = await self._gate.watch(run_id)
            data = run.jsons.get(run.spec.sinks[0])
            if status == RunStatus.COMPLETED and data is not None:
                # decoded as the stored result is, so the caller gets the same value either way
                return decode_sink(run.spec, data)
        record = await self._until_done(tenant, run_id)
        if record.status != RunStatus.COMPLETED:
            raise RunFailedError(
                f"run {run_id} ended {record.status.value}: {record.error}",
                run_id=run_id,
                status=record.status.value,
                error=record.error,
            )
        return self._decode(record)

    async def _until_done(self, tenant: str, run_id: str) -> RunRecord:
        # A run executing here is not read before it ends: its end wakes the watch. One
        # executing elsewhere (or not yet resumed) is read again when its end is announced (on
        # a cluster, see tenantflow.engine.ends), or else every POLL_S.
        ends = self.ends
        woken = None
        try:
            while True:
                if self._gate.active_run(tenant, run_id) is not None:
                    await self._gate.watch(run_id)
                if ends is not None and woken is None:
                    woken = ends.expect(run_id)  # before the read: an end meanwhile wakes it
                current = await self._history.get_run(tenant, run_id)
                if current.status in TERMINAL_RUN:
                    return current
                if self._gate.active_run(tenant, run_id) is not None:
                    continue
                if woken is not None and ends is not None:
                    await ends.wait(woken)
                else:
                    await self._clock.sleep(POLL_S)
        finally:
            if woken is not None and ends is not None:
                ends.forget(run_id, woken)

    def open(self) -> None:
        """Listen for the ends of runs driven elsewhere from the next wait on (see
        :mod:`tenantflow.engine.ends`)."""
        if self.ends is not None:
            self.ends.open()

    async def close(self) -> None:
        """Stop listening for the ends of runs driven elsewhere."""
        if self.ends is not None:
            await self.ends.close()

    async def resume(self, tenant: str, run_id: str) -> RunRecord:
        """Resume a run the budget ladder paused (after its budget was raised or reset)."""
        run = self._gate.active_run(tenant, run_id)
        if run is None or run.status != RunStatus.PAUSED:
            record = await self._history.get_run(tenant, run_id)
            raise ConflictError(f"run {run_id} is {record.status.value}, not paused", run_id=run_id)
        await self._gate.runtime_for_tenant(tenant).set_running(
            run, "run.resumed", {"reason": "resumed by request"}
        )
        return await self._history.get_run(tenant, run_id)

    # -- why is it waiting? -------------------------------------------------------------------

    async def why(self, tenant: str, run_id: str) -> list[Reason]:
        """Every reason the run, and each of its unfinished steps, is not progressing now: its
        place in the admission queue and the cap that binds, a budget pause, a rate-limit bucket
        and its wake time, a retry's backoff, a review (pool, claim, SLA), a child run, a
        worker's lease, the upstream steps it waits for, a slot (see
        :func:`tenantflow.domain.why.explain`).

        Raises:
            NotFoundError: the tenant has no such run.
        """
        record = await self._history.get_run(tenant, run_id)
        now = self._clock.now()
        if record.status in TERMINAL_RUN:
            return explain(WaitFacts(record, [], []), now)
        store = self._gate.runtime_for_tenant(tenant).store
        steps = await store.get_steps(tenant, run_id)
        events = await store.events(tenant, run_id)
        spec = (
            self._registry.spec_or_none(record.workflow, record.workflow_version)
            if self._registry is not None
            else None
        )
        children: dict[str, RunStatus] = {}
        requested: dict[str, str] = {}  # step -> its latest review
        for event in events:
            if event.kind == "review.requested" and "review_id" in event.data and event.step:
                requested[event.step] = str(event.data["review_id"])
            elif event.kind == "step.waiting" and "child_run" in event.data:
                children[str(event.data["child_run"])] = RunStatus.RUNNING
        found_reviews: dict[str, ReviewRecord] = {}
        for step in steps:
            review_id = requested.get(step.key)
            if step.status == StepStatus.WAITING and review_id is not None:
                with contextlib.suppress(TenantflowError):
                    found_reviews[review_id] = await store.get_review(tenant, review_id)
        for child in list(children):
            try:
                children[child] = (await self._history.get_run(tenant, child)).status
            except TenantflowError:
                del children[child]
        info = self._gate.policy_of(tenant)
        policy = info.policy if info is not None else None
        active = queued = ahead = 0
        if record.status == RunStatus.QUEUED:
            for status in (RunStatus.RUNNING, RunStatus.PAUSED):
                active += len(await self._all(tenant, status))
            waiting_runs = await self._all(tenant, RunStatus.QUEUED)
            queued = len(waiting_runs)
            ahead = sum(
                1 for r in waiting_runs if (r.created_at, r.id) < (record.created_at, record.id)
            )
        live = self._execute and self._gate.drives(tenant)
        facts = WaitFacts(
            record,
            steps,
            events,
            spec,
            found_reviews,
            children,
            active_cap=policy.max_active_runs if policy is not None else None,
            active_runs=active,
            queued_ahead=ahead,
            queued=queued,
            running_cap=policy.max_running_steps if policy is not None else None,
            running_steps=self._gate.dispatcher.scheduler.running(tenant) if live else None,
        )
        return explain(facts, now)

    async def _all(self, tenant: str, status: RunStatus) -> list[RunRecord]:
        """The tenant's runs in ``status`` (ids and times; up to 10,000)."""
        found: list[RunRecord] = []
        before: str | None = None
        while len(found) < 10_000:
            page = await self._history.list_runs(
                tenant, status=status, limit=1000, before=before, payloads=False
            )
            found.extend(page)
            if len(page) < 1000:
                break
            before = page[-1].id
        return found

    # -- retry --------------------------------------------------------------------------------

    async def retry(
        self,
        tenant: str,
        run_id: str,
        *,
        from_start: bool = False,
        actor: str = "engine",
        reason: str | None = None,
    ) -> RetryResult:
        """Retry a failed, cancelled or compensated run (see the module docstring).

        Args:
            tenant: the caller's tenant.
            run_id: the run.
            from_start: submit a new run with the same input instead of reopening this one.
            actor: who asked (the audit log names them).
            reason: why (recorded in the run's log and the audit log).

        Raises:
            NotFoundError: the tenant has no such run.
            ConflictError: the run has not ended failed, cancelled or compensated, was retried
                meanwhile, or cannot be retried in place (``field="from_start"``).
            ConfigurationError: this engine does not execute runs, or the run's workflow
                version is not registered here.
        """
        if not self._execute or self._registry is None or self._submitter is None:
            raise ConfigurationError(
                "this engine is not executing runs (open it with execute=True, or ask a server)"
            )
        lock = self._retrying.setdefault(run_id, asyncio.Lock())
        try:
            async with lock:
                record = await self._history.get_run(tenant, run_id)
                check_retryable(record)
                if from_start:
                    return await self._retry_from_start(record, actor, reason)
                return await self._retry_in_place(record, actor, reason)
        finally:
            if not lock.locked():
                self._retrying.pop(run_id, None)

    async def _retry_in_place(
        self, record: RunRecord, actor: str, reason: str | None
    ) -> RetryResult:
        assert self._registry is not None
        tenant = record.tenant_id
        spec = self._registry.spec_or_none(record.workflow, record.workflow_version)
        if spec is None:
            raise ConfigurationError(
                f"run {record.id}'s workflow {record.workflow} version"
                f" {record.workflow_version} is not registered here",
                run_id=record.id,
                workflow=record.workflow,
                version=record.workflow_version,
            )
        runtime = self._gate.runtime_for_tenant(tenant)
        steps = await runtime.store.get_steps(tenant, record.id)
        events = await runtime.store.events(tenant, record.id)
        undone = {e.step for e in events if e.kind == "tool.compensated" and e.step}
        plan = plan_retry(
            spec, record, steps, undone=undone, now=self._clock.now(), actor=actor, reason=reason
        )
        result = await runtime.writer.write(plan.transition)
        if isinstance(result, VersionConflict):
            raise ConflictError(
                f"run {record.id} changed while it was being retried (retried already?);"
                " read it again",
                run_id=record.id,
            )
        await self._hand_over(tenant, record.id)
        return RetryResult(
            record.id, True, "failed_step", await self._history.get_run(tenant, record.id)
        )

    async def _hand_over(self, tenant: str, run_id: str) -> None:
        """Drive a reopened run here, or tell the worker that drives its tenant."""
        if self._gate.drives(tenant):
            runtime = self._gate.runtime_for_tenant(tenant)
            for stored, steps in await runtime.store.unfinished_runs(tenant, [run_id]):
                if not self._gate.holds_run(tenant, stored.id):
                    self._gate.take_over(runtime, stored, steps)
        elif self._coordinator is not None:
            self._coordinator.announce("run", tenant, run_id)

    async def _retry_from_start(
        self, record: RunRecord, actor: str, reason: str | None
    ) -> RetryResult:
        assert self._registry is not None and self._submitter is not None
        spec = self._registry.workflow(record.workflow, record.workflow_version)
        value = contract_for(spec.input_type).load(
            record.input_json, step="<input>", direction="input"
        )
        new_id, created = await self._submitter.submit(
            spec.name,
            tenant=record.tenant_id,
            input=value,
            idempotency_key=f"retry:{record.id}",
            lane=record.lane,
            version=spec.version,
        )
        if created:
            detail: dict[str, Any] = {
                "from_start": True,
                "new_run": new_id,
                "previous_status": record.status.value,
                "by": actor,
            }
            if reason:
                detail["reason"] = reason
            note = Transition(
                record.tenant_id,
                record.id,
                self._clock.now(),
                events=[NewEvent("run.retried", None, None, detail)],
                audit=[AuditEntry(actor, "run.retried", f"run:{record.id}", detail)],
            )
            await self._gate.runtime_for_tenant(record.tenant_id).writer.write(note)
        new = await self._history.get_run(record.tenant_id, new_id)
        return RetryResult(record.id, True, "from_start", new)

    async def retry_many(
        self,
        tenant: str,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        from_start: bool = False,
        actor: str = "engine",
        reason: str | None = None,
    ) -> list[RetryResult]:
        """Retry the tenant's runs that match a filter, oldest first; one result per run.

        Args:
            status: only runs that ended so (default: failed).
            workflow: only runs of this workflow.
            since: only runs that ended at or after this time (POSIX seconds).
            until: only runs that ended before this time.
            limit: at most this many runs (1..:data:`RETRY_LIMIT`).
            from_start: retry each from the start (see :meth:`retry`).

        Raises:
            ConfigurationError: a status that cannot be retried, a bad limit or time window.
        """
        status = status or RunStatus.FAILED
        if status not in RETRYABLE:
            raise ConfigurationError(
                f"status {status.value!r} cannot be retried: give failed, cancelled or compensated",
                field="status",
                value=status.value,
            )
        if not 1 <= limit <= RETRY_LIMIT:
            raise ConfigurationError(
                f"limit must be within 1..{RETRY_LIMIT}", field="limit", value=limit
            )
        if since is not None and until is not None and since >= until:
            raise ConfigurationError("since must be before until", field="since")
        matched = await self._matching(tenant, status, workflow, since, until, limit)
        results: list[RetryResult] = []
        for record in matched:  # the earliest to end first
            try:
                results.append(
                    await self.retry(
                        tenant, record.id, from_start=from_start, actor=actor, reason=reason
                    )
                )
            except TenantflowError as exc:
                body = {"code": exc.code, "message": exc.message, **_plain(exc.fields)}
                results.append(RetryResult(record.id, False, _mode(from_start), error=body))
        return results

    async def _matching(
        self,
        tenant: str,
        status: RunStatus,
        workflow: str | None,
        since: float | None,
        until: float | None,
        limit: int,
    ) -> list[RunRecord]:
        """The ``limit`` runs in ``status`` that ended earliest within the window."""
        found: list[RunRecord] = []
        before: str | None = None
        while True:
            page = await self._history.list_runs(
                tenant, status=status, workflow=workflow, limit=500, before=before, payloads=False
            )
            for record in page:
                ended = _ended(record)
                if (until is None or ended < until) and (since is None or ended >= since):
                    found.append(record)
            if len(page) < 500:
                break
            before = page[-1].id
        found.sort(key=lambda r: (_ended(r), r.created_at, r.id))
        return found[:limit]


def _ended(record: RunRecord) -> float:
    return record.finished_at if record.finished_at is not None else record.updated_at


def _mode(from_start: bool) -> str:
    return "from_start" if from_start else "failed_step"


def _plain(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v if isinstance(v, str | int | float | bool | None) else str(v)
        for k, v in fields.items()
    }
