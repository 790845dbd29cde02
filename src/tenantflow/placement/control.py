"""The control plane: what the API and the command line ask of tenantflow.

:class:`ControlPlane` is the one protocol the REST API (:mod:`tenantflow.api`) and the CLI depend
on: submit, cancel, decide a review, wait, and read runs, reviews and history. It says nothing of
where runs execute: an embedded engine executes them in this process, a centralized front queues
them for its workers (see :mod:`tenantflow.placement`). The values it speaks in are public types.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

from tenantflow.domain.audit import VerifyResult
from tenantflow.domain.records import EventRecord, RunRecord, RunStatus, StepRecord
from tenantflow.domain.spec import WorkflowSpec
from tenantflow.domain.state import Change
from tenantflow.engine.execution.reviews import Reviews
from tenantflow.engine.handle import RunHandle, RunSnapshot
from tenantflow.engine.history import StateVersion
from tenantflow.engine.keys import ApiKeyInfo, ApiKeys, Principal
from tenantflow.engine.memory import Memory
from tenantflow.engine.operator import Overview
from tenantflow.engine.plane import (
    BreakerView,
    MemberHealth,
    PlacementInfo,
    PlaneLoad,
    RunCost,
    TenantLatency,
    TenantLoad,
    VersionInfo,
)
from tenantflow.engine.run_signals import EventReceipt, SignalReceipt
from tenantflow.engine.runs import Reason, RetryResult
from tenantflow.engine.schedules import Schedules
from tenantflow.engine.tenants import TenantInfo, Tenants
from tenantflow.engine.workers import WorkerInfo
from tenantflow.observability.events import Observers

__all__ = [
    "ApiKeyInfo",
    "BreakerView",
    "ControlPlane",
    "MemberHealth",
    "Overview",
    "PlacementInfo",
    "PlaneLoad",
    "Principal",
    "Reason",
    "RetryResult",
    "RunCost",
    "RunHandle",
    "RunSnapshot",
    "StateVersion",
    "TenantInfo",
    "TenantLatency",
    "TenantLoad",
    "VersionInfo",
    "WorkerInfo",
]


class ControlPlane(Protocol):
    """Runs, reviews, tenants, keys and memory of every tenant, however the engine is placed.

    :class:`~tenantflow.engine.engine.Engine` implements it, embedded or as a cluster's front.
    Every call takes the caller's tenant: it comes from authentication (the API) or the
    caller (the CLI, the library), never from a request body.
    """

    @property
    def owner(self) -> str:
        """This process's id (on its claims and in its logs)."""

    @property
    def tenants(self) -> Tenants:
        """Create, read, update and delete tenants."""

    @property
    def keys(self) -> ApiKeys:
        """API keys: create, list, revoke, rotate, authenticate."""

    @property
    def memory(self) -> Memory:
        """Every tenant's agent memory."""

    @property
    def reviews(self) -> Reviews:
        """Review queues: list, claim and decide a tenant's review tasks."""

    @property
    def schedules(self) -> Schedules:
        """Interval, cron and one-shot schedules: in code, and durable per tenant
        (:mod:`.engine.schedules`)."""

    @property
    def observers(self) -> Observers:
        """Where engine events go (metrics, traces)."""

    async def start(self) -> None:
        """Open the stores (and, where runs execute here, resume them)."""

    async def close(self) -> None:
        """Stop and close the stores."""

    def workflow(self, name: str, version: str | None = None) -> WorkflowSpec:
        """A registered workflow (latest version unless ``version`` is given)."""

    def workflows(self) -> list[WorkflowSpec]:
        """Every registered workflow version, by name then version."""

    async def submit(
        self,
        workflow: str,
        *,
        tenant: str,
        input: Any,
        idempotency_key: str | None = None,
        lane: str | None = None,
        version: str | None = None,
    ) -> RunHandle:
        """Record a run; returns once it is durable."""

    def run_snapshot(self, tenant: str, run_id: str) -> RunSnapshot | None:
        """A run this process drives, as it is now (None: not driven here)."""

    async def cancel(
        self, tenant: str, run_id: str, reason: str = "cancelled by request"
    ) -> RunRecord:
        """Cancel a run (passed to the process that drives it)."""

    async def resume(self, tenant: str, run_id: str) -> RunRecord:
        """Resume a run the budget ladder paused (after its budget was raised or reset)."""

    async def publish(
        self, tenant: str, name: str, event_id: str, data: Any = None
    ) -> EventReceipt:
        """Start the workflows registered to event ``name`` (see ``Engine.publish``)."""

    async def signal(
        self,
        tenant: str,
        run_id: str,
        name: str,
        payload: Any = None,
        *,
        idempotency_key: str | None = None,
    ) -> SignalReceipt:
        """Send signal ``name`` into a run (see :meth:`tenantflow.engine.engine.Engine.signal`)."""

    async def overview(
        self, *, stuck_after: timedelta = timedelta(hours=1), top: int = 10
    ) -> Overview:
        """An operator's view across tenants: runs by status, top tenants by queue depth,
        spend and rate-limit waits today, stuck runs and what holds them."""

    async def workers(self) -> list[WorkerInfo]:
        """The workers sharing the database, their heartbeats and the tenants they hold (an
        operator's view; ConfigurationError on an embedded store)."""

    async def why(self, tenant: str, run_id: str) -> list[Reason]:
        """Why the run (and each unfinished step) is not progressing now: admission queue and
        cap, budget pause, rate-limit bucket and wake time, backoff, review, child run, lease."""

    async def retry(
        self,
        tenant: str,
        run_id: str,
        *,
        from_start: bool = False,
        actor: str = "engine",
        reason: str | None = None,
    ) -> RetryResult:
        """Retry a failed, cancelled or compensated run from its failed step, or from the
        start as a new run (see :meth:`tenantflow.engine.runs.RunControl.retry`)."""

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
        """Retry the tenant's runs that match a filter, one result per run."""

    async def wait(self, tenant: str, run_id: str, timeout: timedelta | None = None) -> RunRecord:
        """Wait until the run ends and return its record."""

    async def ready(self, timeout_s: float) -> None:
        """Return once every store answers.

        Raises:
            StoreUnavailableError: a store did not answer within ``timeout_s``.
        """

    async def get_run(self, tenant: str, run_id: str) -> RunRecord:
        """The run's record (NotFoundError if the tenant has no such run)."""

    async def list_runs(
        self,
        tenant: str,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: str | None = None,
        payloads: bool = True,
    ) -> list[RunRecord]:
        """The tenant's runs, newest first."""

    async def steps(self, tenant: str, run_id: str) -> list[StepRecord]:
        """The run's steps."""

    async def timeline(self, tenant: str, run_id: str) -> list[EventRecord]:
        """The run's events, oldest first."""

    async def events_after(self, tenant: str, run_id: str, after: int) -> list[EventRecord]:
        """The run's events after the event id ``after``."""

    async def state(self, tenant: str, run_id: str, version: int | None = None) -> StateVersion:
        """The run's state at ``version`` (latest when None)."""

    async def versions(self, tenant: str, run_id: str) -> list[StateVersion]:
        """Every state version of the run, in order."""

    async def diff(self, tenant: str, run_id: str, a: int, b: int) -> list[Change]:
        """What changed between state versions ``a`` and ``b``."""

    async def bisect(
        self, tenant: str, run_id: str, holds: Callable[[dict[str, Any]], bool]
    ) -> StateVersion | None:
        """The first state version where ``holds(state)`` is false."""

    async def usage(
        self, tenant: str, *, since: str | None = None, until: str | None = None
    ) -> list[dict[str, Any]]:
        """The tenant's usage counters per day."""

    async def budget(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's ledgers."""

    async def audit_log(self, tenant: str) -> list[Any]:
        """The tenant's audit rows, oldest first."""

    async def audit_verify(self, tenant: str) -> VerifyResult:
        """Check the tenant's audit hash chain."""

    # -- what a dashboard reads (values in tenantflow.engine.plane) ---------------------------

    def now(self) -> float:
        """The control plane's clock now (seconds since the epoch)."""

    def load(self) -> PlaneLoad:
        """Who holds the slots now: Jain's index, slots in use, each busy tenant's running and
        queued steps against its weighted max-min fair share (operators only)."""

    def tenant_load(self, tenant: str) -> TenantLoad:
        """One tenant's running and queued steps and active and queued runs."""

    def placement(self) -> PlacementInfo:
        """How the control plane is placed and which stores it reads (and, in ``detail``,
        what the placement says of itself: a federated cell names itself and its plane)."""

    async def health(self) -> list[MemberHealth]:
        """The placement's members of every kind (``process``, ``worker``, ``cell``,
        ``plane``, ``agent``...) with their state; the dashboard lists whatever kinds come."""

    def breakers(self) -> list[BreakerView]:
        """Every dependency's circuit breaker now."""

    def latency(self, tenants: list[str] | None = None) -> list[TenantLatency]:
        """Per tenant (every one seen when None): run latency p99 of the last minutes against
        its no-burst baseline."""

    async def run_costs(self, tenant: str, run_ids: list[str]) -> dict[str, RunCost]:
        """What each of the tenant's runs spent (a run of another tenant reads as nothing)."""

    async def version_list(self, tenant: str, run_id: str) -> list[VersionInfo]:
        """The run's state versions without their states (NotFoundError: no such run)."""
