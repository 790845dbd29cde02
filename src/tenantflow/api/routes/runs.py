"""The caller's runs: submit, list, read, cancel, resume, retry, and their steps, timeline and
state history."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tenantflow.api.auth import EngineDep, TenantId, actor_of
from tenantflow.api.errors import ERROR_RESPONSES
from tenantflow.api.metrics import HttpMetrics
from tenantflow.api.schemas import (
    CancelIn,
    ChangeOut,
    ChangesOut,
    DelayedStart,
    EventOut,
    EventsOut,
    RunOut,
    RunsPage,
    RunSubmitted,
    StateOut,
    StatesOut,
    StepOut,
    StepsOut,
    SubmitIn,
)
from tenantflow.domain.contracts import contract_for
from tenantflow.domain.records import TERMINAL_RUN, RunRecord, RunStatus
from tenantflow.engine.runs import RETRY_LIMIT
from tenantflow.errors import BackpressureError, ConfigurationError, ConflictError, ContractError
from tenantflow.placement import ControlPlane, Reason, RetryResult

__all__ = ["RunPath", "SubmissionGate", "router"]

router = APIRouter(prefix="/v1/runs", tags=["runs"], responses=ERROR_RESPONSES)

RunPath = Annotated[str, Path(min_length=1, max_length=100, description="The run's id.")]


class SubmissionGate:
    """A per-process cap on submissions being recorded at once.

    Past the cap a submission is refused at once with 429 (``BackpressureError``) instead of
    queueing behind the others: under an open-loop overload the queue (and every caller's
    latency) would otherwise grow without bound while the store commits as fast as it can.
    """

    def __init__(self, limit: int, metrics: HttpMetrics | None = None) -> None:
        self.limit = limit
        self.in_flight = 0
        self._metrics = metrics

    def enter(self) -> None:
        if self.in_flight >= self.limit:
            if self._metrics is not None:
                self._metrics.submissions_refused.inc()
            raise BackpressureError(
                f"this server is recording {self.in_flight} submissions already; retry shortly",
                retry_after_s=1.0,
                in_flight=self.in_flight,
            )
        self.in_flight += 1
        if self._metrics is not None:
            self._metrics.submissions_in_flight.set(self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1
        if self._metrics is not None:
            self._metrics.submissions_in_flight.set(self.in_flight)


@router.post(
    "",
    status_code=201,
    response_model=RunSubmitted,
    summary="Submit a run",
    responses={
        200: {"model": RunSubmitted, "description": "An earlier submission with this key."},
        409: ERROR_RESPONSES[404] | {"description": "The key was used for another request."},
        402: ERROR_RESPONSES[404] | {"description": "The tenant's budget is spent."},
        202: {"model": DelayedStart, "description": "A delayed start (start_at, delay_s)."},
    },
)
async def submit(
    body: SubmitIn,
    request: Request,
    response: Response,
    engine: EngineDep,
    tenant: TenantId,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="Submitting again with the same key returns the same run (200).",
        ),
    ] = None,
) -> RunSubmitted:
    """Record a run of a registered workflow; it starts at once while the tenant is under its
    active-run cap, else it waits in the tenant's queue (status ``queued``). With ``start_at``
    or ``delay_s`` in the future, a delayed start is recorded instead (202, ``DelayedStart``)."""
    delayed = await _delayed_start(body, engine, tenant, idempotency_key)
    if delayed is not None:
        return delayed  # type: ignore[return-value]  # 202: documented in responses
    gate: SubmissionGate = request.app.state.submissions
    gate.enter()
    try:
        handle = await engine.submit(
            body.workflow,
            tenant=tenant,
            input=body.input,
            idempotency_key=idempotency_key,
            lane=body.lane,
            version=body.version,
        )
    except ContractError as exc:
        if exc.step == "<input>":  # the path inside the input, as a path in the request
            field = exc.field or "$"
            exc.fields["field"] = "body.input" + (
                "" if field == "$" else field if field.startswith("[") else f".{field}"
            )
        raise
    finally:
        gate.leave()
    if not handle.created:
        record = await engine.get_run(tenant, handle.id)
        _check_replay(engine, record, body)
        response.status_code = 200
        return _submitted(record, created=False)
    view = engine.run_snapshot(tenant, handle.id)
    if view is None:  # it ended at submission, or another process drives it (a front)
        return _submitted(await engine.get_run(tenant, handle.id), created=True)
    return RunSubmitted(
        id=view.id,
        status=view.status,
        workflow=view.workflow,
        workflow_version=view.workflow_version,
        lane=view.lane,
        created=True,
    )


async def _delayed_start(
    body: SubmitIn, engine: ControlPlane, tenant: str, idempotency_key: str | None
) -> JSONResponse | None:
    """A submission with ``start_at`` or ``delay_s`` in the future: a durable one-shot schedule
    (None: submit now)."""
    if body.start_at is None and body.delay_s is None:
        return None
    if body.start_at is not None and body.delay_s is not None:
        raise ConfigurationError("give start_at or delay_s, not both", field="body.start_at")
    now = engine.now()
    if body.start_at is not None:
        if body.start_at.tzinfo is None:
            raise ConfigurationError(
                "start_at needs a time zone (e.g. 2026-12-06T12:00:00Z)", field="body.start_at"
            )
        at = body.start_at.timestamp()
    else:
        assert body.delay_s is not None
        at = now + body.delay_s
    if at <= now:
        return None  # due already: an ordinary submission
    schedule, created = await engine.schedules.start_at(
        body.workflow,
        tenant=tenant,
        input=body.input,
        at=at,
        idempotency_key=idempotency_key,
        lane=body.lane,
        version=body.version,
    )
    out = DelayedStart(
        schedule=schedule.name,
        workflow=schedule.workflow,
        start_at=datetime.fromtimestamp(schedule.at or at, UTC),
        created=created,
    )
    return JSONResponse(out.model_dump(mode="json"), status_code=202 if created else 200)


def _submitted(record: RunRecord, *, created: bool) -> RunSubmitted:
    return RunSubmitted(
        id=record.id,
        status=record.status,
        workflow=record.workflow,
        workflow_version=record.workflow_version,
        lane=record.lane,
        created=created,
    )


def _check_replay(engine: ControlPlane, record: RunRecord, body: SubmitIn) -> None:
    """An idempotency key names one request: reusing it for another is a conflict."""
    spec = engine.workflow(body.workflow, body.version)
    _, input_json = contract_for(spec.input_type).check(
        body.input, step="<input>", direction="input"
    )
    same = (
        record.workflow == spec.name
        and (body.version is None or record.workflow_version == spec.version)
        and (body.lane is None or record.lane == body.lane)
        and record.input_json == input_json
    )
    if not same:
        raise ConflictError(
            f"Idempotency-Key {record.idempotency_key!r} was used for a different request"
            f" (run {record.id}); use a new key for a new run",
            run_id=record.id,
            field="header.Idempotency-Key",
        )


@router.get("", response_model=RunsPage, summary="List runs, newest first")
async def list_runs(
    engine: EngineDep,
    tenant: TenantId,
    status: Annotated[RunStatus | None, Query(description="Only runs in this status.")] = None,
    workflow: Annotated[
        str | None, Query(min_length=1, max_length=200, description="Only this workflow.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None,
        Query(min_length=1, max_length=100, description="`next` of the previous page."),
    ] = None,
) -> RunsPage:
    # One more than asked, to know whether there is a next page.
    runs = await engine.list_runs(
        tenant, status=status, workflow=workflow, limit=limit + 1, before=cursor
    )
    page = runs[:limit]
    more = len(runs) > limit
    return RunsPage(items=[RunOut.of(r) for r in page], next=page[-1].id if more else None)


class WaitingOut(BaseModel):
    step: str | None = Field(description="The step key it holds; null: the run as a whole.")
    kind: str = Field(description="As in `GET /v1/runs/{id}/why`.")
    message: str
    detail: dict[str, Any] = Field(description="The figures the message names (ISO-8601 times).")


class RunDetailOut(RunOut):
    waiting: list[WaitingOut] | None = Field(
        default=None,
        description="An unfinished run: what holds it and each unfinished step (as"
        " `GET /v1/runs/{id}/why`); null once it has ended.",
    )


@router.get("/{run_id}", response_model=RunDetailOut, summary="Show a run")
async def get_run(run_id: RunPath, engine: EngineDep, tenant: TenantId) -> RunDetailOut:
    record = await engine.get_run(tenant, run_id)
    out = RunDetailOut(**RunOut.of(record).model_dump())
    if record.status not in TERMINAL_RUN:
        reasons = await engine.why(tenant, run_id)
        out.waiting = [
            WaitingOut(step=r.step, kind=r.kind, message=r.message, detail=r.detail)
            for r in reasons
        ]
    return out


@router.get("/{run_id}/steps", response_model=StepsOut, summary="A run's steps")
async def steps(run_id: RunPath, engine: EngineDep, tenant: TenantId) -> StepsOut:
    found = await engine.steps(tenant, run_id)
    # People read a DAG in the order it ran.
    found.sort(key=lambda s: (s.started_at is None, s.started_at or 0.0, s.key))
    return StepsOut(items=[StepOut.of(s) for s in found])


@router.post(
    "/{run_id}/cancel",
    response_model=RunOut,
    summary="Cancel a run",
    responses={409: ERROR_RESPONSES[404] | {"description": "The run has already ended."}},
)
async def cancel(
    run_id: RunPath, engine: EngineDep, tenant: TenantId, body: CancelIn | None = None
) -> RunOut:
    """Stop the run's steps, compensate completed ones, and end it ``cancelled``."""
    record = await engine.cancel(tenant, run_id, (body or CancelIn()).reason)
    return RunOut.of(record)


@router.post(
    "/{run_id}/resume",
    response_model=RunOut,
    summary="Resume a paused run",
    responses={409: ERROR_RESPONSES[404] | {"description": "The run is not paused."}},
)
async def resume(run_id: RunPath, engine: EngineDep, tenant: TenantId) -> RunOut:
    """Resume a run the budget ladder paused (after its budget was raised or reset)."""
    return RunOut.of(await engine.resume(tenant, run_id))


@router.get("/{run_id}/timeline", response_model=EventsOut, summary="A run's execution log")
async def timeline(run_id: RunPath, engine: EngineDep, tenant: TenantId) -> EventsOut:
    return EventsOut(items=[EventOut.of(e) for e in await engine.timeline(tenant, run_id)])


@router.get("/{run_id}/state", response_model=StateOut, summary="A run's state at one version")
async def state(
    run_id: RunPath,
    engine: EngineDep,
    tenant: TenantId,
    version: Annotated[
        int | None, Query(ge=0, le=2**31, description="The state version; default: the latest.")
    ] = None,
) -> StateOut:
    return StateOut.of(await engine.state(tenant, run_id, version))


@router.get(
    "/{run_id}/state/versions", response_model=StatesOut, summary="Every state version of a run"
)
async def state_versions(run_id: RunPath, engine: EngineDep, tenant: TenantId) -> StatesOut:
    return StatesOut(items=[StateOut.of(v) for v in await engine.versions(tenant, run_id)])


@router.get(
    "/{run_id}/state/diff", response_model=ChangesOut, summary="What changed between versions"
)
async def state_diff(
    run_id: RunPath,
    engine: EngineDep,
    tenant: TenantId,
    a: Annotated[int, Query(ge=0, le=2**31, description="The earlier state version.")],
    b: Annotated[int, Query(ge=0, le=2**31, description="The later state version.")],
) -> ChangesOut:
    changes = await engine.diff(tenant, run_id, a, b)
    return ChangesOut(a=a, b=b, items=[ChangeOut.of(c) for c in changes])


# -- retry ---------------------------------------------------------------------------------------


class RetryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_start: bool = Field(
        default=False,
        description="Submit a new run with the same input instead of reopening this one at its"
        " failed step.",
    )
    reason: str | None = Field(default=None, min_length=1, max_length=500)


class RetryManyIn(RetryIn):
    status: Literal["failed", "cancelled", "compensated"] = Field(
        default="failed", description="Only runs that ended so."
    )
    workflow: str | None = Field(default=None, min_length=1, max_length=200)
    since: datetime | None = Field(default=None, description="Only runs that ended at or after.")
    until: datetime | None = Field(default=None, description="Only runs that ended before.")
    limit: int = Field(default=100, ge=1, le=RETRY_LIMIT, description="At most this many runs.")


class RetryOut(BaseModel):
    run_id: str = Field(description="The run asked for.")
    ok: bool
    mode: Literal["failed_step", "from_start"] = Field(
        description="failed_step: the run reopened at its failed step; from_start: a new run."
    )
    run: RunOut | None = Field(description="The run that now runs (null if not retried).")
    error: dict[str, Any] | None = Field(description="Why it was not retried (code, message).")

    @classmethod
    def of(cls, result: RetryResult) -> RetryOut:
        return cls(
            run_id=result.run_id,
            ok=result.ok,
            mode="from_start" if result.mode == "from_start" else "failed_step",
            run=None if result.run is None else RunOut.of(result.run),
            error=result.error,
        )


class RetriesOut(BaseModel):
    items: list[RetryOut] = Field(description="One per matching run, the earliest to end first.")
    retried: int
    refused: int


def _actor(request: Request) -> str:
    principal = getattr(request.state, "principal", None)
    return "api" if principal is None else actor_of(principal)


def _posix(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ConfigurationError(
            f"{value.isoformat()} has no time zone: give one (e.g. Z for UTC)", value=str(value)
        )
    return value.timestamp()


@router.post(
    "/retry",
    response_model=RetriesOut,
    summary="Retry the runs that match a filter",
    responses={400: ERROR_RESPONSES[404] | {"description": "A bad filter."}},
)
async def retry_many(
    request: Request, engine: EngineDep, tenant: TenantId, body: RetryManyIn | None = None
) -> RetriesOut:
    """Retry every run of the caller's that ended in ``status`` (default ``failed``) within the
    window, the earliest to end first, up to ``limit``; each run's result is answered apart (a
    run that cannot be retried does not stop the others)."""
    body = body or RetryManyIn()
    results = await engine.retry_many(
        tenant,
        status=RunStatus(body.status),
        workflow=body.workflow,
        since=_posix(body.since),
        until=_posix(body.until),
        limit=body.limit,
        from_start=body.from_start,
        actor=_actor(request),
        reason=body.reason,
    )
    items = [RetryOut.of(r) for r in results]
    retried = sum(1 for r in results if r.ok)
    return RetriesOut(items=items, retried=retried, refused=len(results) - retried)


@router.post(
    "/{run_id}/retry",
    response_model=RetryOut,
    summary="Retry a failed, cancelled or compensated run",
    responses={
        409: ERROR_RESPONSES[404]
        | {
            "description": "The run has not ended failed, cancelled or compensated, or must be"
            " retried from the start (field from_start)."
        }
    },
)
async def retry(
    run_id: RunPath,
    request: Request,
    engine: EngineDep,
    tenant: TenantId,
    body: RetryIn | None = None,
) -> RetryOut:
    """Reopen the run at its failed step: steps that did not succeed, and those downstream of
    them, run again; succeeded steps keep their recorded outputs; the retry is a state version,
    an event and an audit row, and the run goes through admission again. With
    ``from_start``, a new run with the same input (once: asking again returns it)."""
    body = body or RetryIn()
    result = await engine.retry(
        tenant, run_id, from_start=body.from_start, actor=_actor(request), reason=body.reason
    )
    return RetryOut.of(result)


# -- why is it waiting? ---------------------------------------------------------------------------


class ReasonOut(BaseModel):
    step: str | None = Field(description="The step key it holds; null: the run as a whole.")
    kind: str = Field(
        description="ended, admission, paused, unwinding, upstream, slot, rate_limit, backoff,"
        " deferred, review, child_run, leased, lease_lapsed, fan_out."
    )
    message: str
    detail: dict[str, Any] = Field(description="The figures the message names (ISO-8601 times).")

    @classmethod
    def of(cls, reason: Reason) -> ReasonOut:
        return cls(step=reason.step, kind=reason.kind, message=reason.message, detail=reason.detail)


class WhyOut(BaseModel):
    run_id: str
    status: RunStatus
    reasons: list[ReasonOut] = Field(description="What holds the run, then each unfinished step.")


@router.get("/{run_id}/why", response_model=WhyOut, summary="Why a run is waiting")
async def why(run_id: RunPath, engine: EngineDep, tenant: TenantId) -> WhyOut:
    """What holds the run and each of its unfinished steps now, computed from its stored state:
    its place in the tenant's admission queue and the cap that binds, a budget pause, a
    rate-limit bucket and when it refills, a retry's backoff, a review (pool, claim, SLA due), a
    child run, the worker holding a step's lease and until when, the upstream steps it waits
    for."""
    record = await engine.get_run(tenant, run_id)
    reasons = await engine.why(tenant, run_id)
    return WhyOut(run_id=run_id, status=record.status, reasons=[ReasonOut.of(r) for r in reasons])
