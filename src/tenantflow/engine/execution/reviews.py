"""Human review: the review steps of a run, and the tenant's review queues.

A review step (``@workflow.review``), or a call the budget ladder or an agent loop escalates,
parks its step as WAITING (holding no slot) and opens a ReviewTask in the tenant's reviewer
pool, in the same transaction (:class:`ReviewSteps`, deciding with
:func:`~tenantflow.domain.progress.on_review_requested`). Reviewers of one tenant only ever see
that tenant's tasks: every call of :class:`Reviews` takes the tenant, and every store query is
scoped by it. A decision moves the waiting step on in the same transaction as it is recorded
(:func:`~tenantflow.domain.progress.on_review_decided`). A task past its SLA is handled as the
tenant's policy says: escalate to another pool, auto-reject, or fail the step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tenantflow.domain.ids import new_review_id
from tenantflow.domain.progress import (
    Attempt,
    Decision,
    RunView,
    on_review_decided,
    on_review_requested,
)
from tenantflow.domain.tenancy import ClaimReview, EscalateReview, ReviewRecord, ReviewStatus
from tenantflow.engine.execution.active import ActiveRun
from tenantflow.engine.execution.outcomes import Escalated
from tenantflow.engine.gateway import human_response
from tenantflow.errors import ConflictError, TenantflowError
from tenantflow.observability.events import Observers, ReviewSlaBreached
from tenantflow.ports import Clock, Store

if TYPE_CHECKING:
    from tenantflow.domain.records import Op
    from tenantflow.engine.tenants import Tenants

__all__ = ["ReviewHost", "ReviewSteps", "ReviewWiring", "Reviews"]


class _Writes(Protocol):
    async def write(self, op: Op) -> Any: ...


class _Driver(Protocol):
    """What the review service asks of the driver of a tenant's runs."""

    @property
    def writer(self) -> _Writes: ...

    async def review_decided(
        self,
        run: ActiveRun,
        review: ReviewRecord,
        *,
        approved: bool,
        comment: str | None,
        reviewer: str,
        fail_step: bool = False,
    ) -> Any: ...


class ReviewHost(Protocol):
    """What the review service asks of the engine around it."""

    @property
    def clock(self) -> Clock: ...

    @property
    def observers(self) -> Observers: ...

    @property
    def tenants(self) -> Tenants: ...

    def store_for_tenant(self, tenant: str) -> Store: ...

    def runtime_for_tenant(self, tenant: str) -> _Driver: ...

    def active_run(self, tenant: str, run_id: str) -> ActiveRun | None: ...

    def drives(self, tenant: str) -> bool: ...

    def review_opened(self, review: ReviewRecord) -> None: ...

    def command(
        self, tenant: str, kind: str, target: str, payload: dict[str, Any]
    ) -> Awaitable[dict[str, Any] | None]: ...


@dataclass(frozen=True, slots=True)
class ReviewWiring:
    """A :class:`ReviewHost` made of the engine's parts (so that the service holds no engine)."""

    clock: Clock
    observers: Observers
    tenants: Tenants
    store_for_tenant: Callable[[str], Store]
    runtime_for_tenant: Callable[[str], _Driver]
    active_run: Callable[[str, str], ActiveRun | None]
    drives: Callable[[str], bool]
    review_opened: Callable[[ReviewRecord], None]
    command: Callable[[str, str, str, dict[str, Any]], Awaitable[dict[str, Any] | None]]


_OPEN = (ReviewStatus.PENDING.value, ReviewStatus.CLAIMED.value)


class ReviewSteps:
    """Opens and decides the review steps of one driver's runs."""

    def __init__(
        self, *, clock: Clock, commit: Callable[[ActiveRun, Decision], Awaitable[Any]]
    ) -> None:
        self.clock = clock
        self.commit = commit

    async def open(
        self,
        run: ActiveRun,
        view: RunView,
        att: Attempt,
        payload: Any,
        *,
        kind: str = "step",
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Park the step as WAITING and open its review task, in one transaction."""
        review_id = new_review_id()
        decision = on_review_requested(view, att, payload, review_id, kind=kind, extra=extra)
        await self.commit(run, decision)

    async def escalate(
        self, run: ActiveRun, view: RunView, att: Attempt, outcome: Escalated
    ) -> None:
        """Hand call ``outcome.error.index`` to a human: the reviewer's answer replaces it."""
        signal = outcome.error
        payload = {"reason": signal.reason, "prompt": signal.prompt[:4000]}
        extra = {"call_index": signal.index}
        await self.open(run, view, att, payload, kind="escalation", extra=extra)

    async def decided(
        self,
        run: ActiveRun,
        review: ReviewRecord,
        *,
        approved: bool,
        comment: str | None,
        reviewer: str,
        fail_step: bool = False,
    ) -> Any:
        """Record a human decision and move the waiting step on, in one transaction."""
        async with run.lock:
            decision = on_review_decided(
                run.view(self.clock.now()),
                review,
                approved=approved,
                comment=comment,
                reviewer=reviewer,
                fail_step=fail_step,
                human_response=human_response,
            )
            return await self.commit(run, decision)


class Reviews:
    """List, claim and decide a tenant's review tasks (``engine.reviews``)."""

    def __init__(self, engine: ReviewHost) -> None:
        self._engine = engine
        self._subscribers: list[Callable[[ReviewRecord], None]] = []

    def subscribe(self, callback: Callable[[ReviewRecord], None]) -> Callable[[], None]:
        """Call ``callback`` with every task this engine opens or escalates to another pool.

        For reviewer tooling in the same process (notifications, a simulated reviewer pool).
        The callback runs on the event loop and must not block; the record is already
        committed. Returns a function that unsubscribes.
        """
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def notify(self, review: ReviewRecord) -> None:
        """Tell subscribers a task was opened or moved (called by the engine after commit)."""
        for callback in list(self._subscribers):
            callback(review)

    async def list(
        self,
        tenant: str,
        *,
        pool: str | None = None,
        status: tuple[str, ...] | None = _OPEN,
        limit: int = 100,
    ) -> list[ReviewRecord]:
        """The tenant's tasks (open ones by default), urgent lane first, then by SLA."""
        store = self._engine.store_for_tenant(tenant)
        return await store.list_reviews(tenant, pool=pool, statuses=status, limit=limit)

    async def get(self, tenant: str, review_id: str) -> ReviewRecord:
        return await self._engine.store_for_tenant(tenant).get_review(tenant, review_id)

    async def queue_depths(self, tenant: str) -> dict[str, int]:
        """Open tasks per pool."""
        return dict(Counter(r.pool for r in await self.list(tenant, limit=100_000)))

    async def claim(self, tenant: str, review_id: str, *, reviewer: str) -> ReviewRecord:
        """Take a task so other reviewers see it is being handled."""
        runtime = self._engine.runtime_for_tenant(tenant)
        result = await runtime.writer.write(
            ClaimReview(tenant, review_id, reviewer, self._engine.clock.now())
        )
        if isinstance(result, TenantflowError):
            raise result
        return result  # type: ignore[no-any-return]

    async def decide(
        self,
        tenant: str,
        review_id: str,
        *,
        reviewer: str,
        approve: bool,
        comment: str | None = None,
        fail_step: bool = False,
    ) -> ReviewRecord:
        """Approve or reject; the waiting step goes on in the same transaction."""
        review = await self.get(tenant, review_id)
        if review.status not in (ReviewStatus.PENDING, ReviewStatus.CLAIMED):
            raise ConflictError(
                f"review {review_id} is already {review.status.value}", review_id=review_id
            )
        if not self._engine.drives(tenant):  # another worker drives the run: pass it on
            payload = {
                "reviewer": reviewer,
                "approve": approve,
                "comment": comment,
                "fail_step": fail_step,
            }
            await self._engine.command(tenant, "decide", review_id, payload)
            return await self.get(tenant, review_id)
        run = self._engine.active_run(tenant, review.run_id)
        if run is None:
            raise ConflictError(
                f"the run of review {review_id} is not executing in this engine",
                review_id=review_id,
            )
        runtime = self._engine.runtime_for_tenant(tenant)
        result = await runtime.review_decided(
            run, review, approved=approve, comment=comment, reviewer=reviewer, fail_step=fail_step
        )
        return result  # type: ignore[no-any-return]

    async def check_sla(self, tenant: str, review_id: str) -> None:
        """Apply the tenant's breach action to a task whose SLA has passed."""
        engine = self._engine
        try:
            review = await self.get(tenant, review_id)
        except TenantflowError:
            return
        now = engine.clock.now()
        if review.status not in (ReviewStatus.PENDING, ReviewStatus.CLAIMED):
            return
        if review.sla_due is None or review.sla_due > now:
            return
        info = engine.tenants.cached(tenant)
        action, pool = ("fail", None) if info is None else info.policy.review_breach
        if engine.observers:
            engine.observers.emit(
                ReviewSlaBreached(
                    tenant_id=tenant,
                    run_id=review.run_id,
                    at_s=now,
                    review_id=review.id,
                    step=review.step,
                    pool=review.pool,
                    action=action,
                    due_s=review.sla_due,
                )
            )
        try:
            if action == "escalate" and pool and pool != review.pool:
                sla = info.policy.review_sla if info is not None else None
                due = now + sla.total_seconds() if sla is not None else None
                runtime = engine.runtime_for_tenant(tenant)
                updated = await runtime.writer.write(
                    EscalateReview(tenant, review_id, pool, due, now, "SLA breached")
                )
                if isinstance(updated, ReviewRecord):
                    engine.review_opened(updated)
            elif action == "auto_reject" or (action == "escalate"):
                await self.decide(
                    tenant,
                    review_id,
                    reviewer="system",
                    approve=False,
                    comment="SLA breached: auto-rejected",
                )
            else:
                await self.decide(
                    tenant,
                    review_id,
                    reviewer="system",
                    approve=False,
                    comment="SLA breached",
                    fail_step=True,
                )
        except ConflictError:
            return  # decided meanwhile
