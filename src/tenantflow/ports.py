"""The engine's seams: the roles adapters play.

The engine talks to the outside only through these Protocols. Adapters implement them
(``SqliteStore``, ``MemoryStore``, ``SystemClock``; ``tenantflow.testing.FakeClock``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal, Protocol

from tenantflow.domain.audit import AuditRecord
from tenantflow.domain.breaker import CircuitBreaker
from tenantflow.domain.cluster import Command, Notice
from tenantflow.domain.keys import ApiKeyRecord
from tenantflow.domain.memory import MemoryEntry, SearchHit
from tenantflow.domain.models import ModelRequest, ModelResponse
from tenantflow.domain.records import (
    EventRecord,
    Op,
    RunRead,
    RunRecord,
    RunStatus,
    StateVersionRecord,
    StepRecord,
)
from tenantflow.domain.scheduler import Lane
from tenantflow.domain.tenancy import AuditEntry, ReviewRecord, TenantRecord, UsageDelta

if TYPE_CHECKING:
    from tenantflow.domain.policy import Policy
    from tenantflow.observability.events import Observers

__all__ = [
    "STREAM_DELTAS",
    "CallScope",
    "Clock",
    "Coordinator",
    "Delivery",
    "DeliveryQueue",
    "Grant",
    "LedgerRouter",
    "ModelProvider",
    "OpSink",
    "Store",
    "WorkQueue",
]


class Clock(Protocol):
    """Time, injected: the engine never reads the system clock itself."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[None]:
        """Cancel the enclosed block after ``seconds``, raising :class:`TimeoutError`."""
        ...


class Store(Protocol):
    """Durable runs, steps, state versions and the execution log.

    Every read takes the caller's ``tenant_id`` and sees only that tenant's rows. Writes are ops
    (see :mod:`tenantflow.domain.records`) applied by :meth:`apply` in one transaction.
    System-scoped reads are few and named so: recovery after a restart (``active_runs``,
    ``pending_reviews``) and the control plane's (``list_tenants``, ``get_api_key``, and
    ``list_api_keys`` of admin keys).
    """

    url: str

    @property
    def exclusive(self) -> bool:
        """True when this process is known to be the only executor (dead attempts are orphans)."""
        ...

    async def open(self, *, execute: bool = True) -> None: ...

    async def close(self) -> None: ...

    async def apply(self, ops: Sequence[Op]) -> list[Any]:
        """Apply ``ops`` in one transaction; one result per op (see each op's docstring)."""
        ...

    async def get_run(self, tenant_id: str, run_id: str) -> RunRecord:
        """The run; :class:`~tenantflow.errors.NotFoundError` if this tenant has no such run."""
        ...

    async def list_runs(
        self,
        tenant_id: str,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: str | None = None,
        payloads: bool = True,
    ) -> list[RunRecord]:
        """The tenant's runs, newest first; ``before`` is a run id cursor from a previous page.
        With ``payloads=False`` inputs and results are not read (``input_json`` is empty and
        ``result_json`` None): lists that show neither stay cheap however big they are."""
        ...

    async def get_steps(self, tenant_id: str, run_id: str) -> list[StepRecord]: ...

    async def read_run(
        self,
        tenant_id: str,
        run_id: str,
        *,
        events_after: int | None = None,
        versions_after: int | None = None,
    ) -> RunRead:
        """The run and its steps in one read (one round trip, one transaction); with
        ``events_after`` also its events with a greater id, with ``versions_after`` its state
        versions after that one up to the run's. :class:`~tenantflow.errors.NotFoundError` if
        this tenant has no such run."""
        ...

    async def events(self, tenant_id: str, run_id: str, after_id: int = 0) -> list[EventRecord]: ...

    async def state_versions(
        self, tenant_id: str, run_id: str, upto: int | None = None
    ) -> list[StateVersionRecord]:
        """State versions 0..upto (all when None), in order."""
        ...

    async def active_runs(
        self, tenant_id: str | None = None
    ) -> list[tuple[RunRecord, list[StepRecord]]]:
        """Every unfinished run with its steps, for recovery (system scope); with
        ``tenant_id``, that tenant's only (in its scope)."""
        ...

    async def unfinished_runs(
        self, tenant_id: str, run_ids: Sequence[str]
    ) -> list[tuple[RunRecord, list[StepRecord]]]:
        """Those of the tenant's runs ``run_ids`` that exist and are unfinished, with steps."""
        ...

    async def get_tenant(self, tenant_id: str) -> TenantRecord:
        """The tenant; NotFoundError if absent."""
        ...

    async def list_tenants(self) -> list[TenantRecord]:
        """Every tenant (control plane scope)."""
        ...

    async def audit_log(self, tenant_id: str) -> list[AuditRecord]:
        """The tenant's audit rows in insertion order."""
        ...

    async def get_review(self, tenant_id: str, review_id: str) -> ReviewRecord: ...

    async def list_reviews(
        self,
        tenant_id: str,
        *,
        pool: str | None = None,
        statuses: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[ReviewRecord]:
        """The tenant's reviews, by lane, then SLA due time."""
        ...

    async def ledgers(self, tenant_id: str, scope: str | None = None) -> list[dict[str, Any]]: ...

    async def recorded_calls(
        self, tenant_id: str, run_id: str, key: str
    ) -> dict[int, tuple[str, str, str]]:
        """A step's recorded model and tool calls by call index: (kind, name, result JSON)."""
        ...

    async def pending_reviews(self) -> list[ReviewRecord]:
        """Every undecided review (system scope: SLA timers after a restart)."""
        ...

    async def usage(
        self, tenant_id: str, since_day: str | None = None, until_day: str | None = None
    ) -> list[dict[str, Any]]: ...

    async def get_api_key(self, key_id: str) -> ApiKeyRecord:
        """The API key with this id, whoever owns it (system scope: authentication looks a key
        up before it knows the tenant); NotFoundError if absent."""
        ...

    async def list_api_keys(self, tenant_id: str | None) -> list[ApiKeyRecord]:
        """The tenant's API keys, or with None the admin keys; revoked ones included, oldest
        first. A tenant sees only its own keys, never another's or an admin key."""
        ...

    async def get_memory(
        self, tenant_id: str, namespace: str, key: str, *, now: float
    ) -> MemoryEntry:
        """The tenant's live memory entry (not expired at ``now``); NotFoundError if there is
        none, in this namespace, for this tenant."""
        ...

    async def list_memory(
        self,
        tenant_id: str,
        namespace: str,
        *,
        now: float,
        prefix: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[MemoryEntry]:
        """The tenant's live entries in ``namespace`` by key (byte order): only keys starting
        with ``prefix``, after the key ``after`` (a cursor from a previous page)."""
        ...

    async def search_memory(
        self, tenant_id: str, namespace: str, terms: Sequence[str], *, now: float, limit: int = 5
    ) -> list[SearchHit]:
        """The tenant's live documents in ``namespace`` containing any of ``terms`` (words as
        :func:`~tenantflow.domain.memory.words` makes them), best first; ranked by the
        statistics of that namespace's documents only."""
        ...


STREAM_DELTAS: ContextVar[Callable[[str], None] | None] = ContextVar(
    "tenantflow_stream_deltas", default=None
)
"""Who listens to a streamed completion's text as it arrives: set by the caller around a
``ctx.model(..., stream=True)`` call (the gateway's routing, rate limit and budget apply as to
any call). A provider that streams calls it with each text delta, in order, before
``complete`` returns the whole response; a provider that does not stream never calls it (the
caller then has only the final text). It must not block or raise."""


class ModelProvider(Protocol):
    """A model vendor's API (or a simulation of one), for one or more endpoints.

    Raises :class:`~tenantflow.errors.ProviderThrottledError` on a 429 (with ``retry_after_s``)
    and :class:`~tenantflow.errors.ProviderError` on other failures; both carry ``tokens_in`` and
    ``tokens_out`` when some tokens were already produced (an interrupted stream), so that they
    are priced.
    """

    name: str

    async def complete(self, request: ModelRequest) -> ModelResponse: ...

    async def close(self) -> None: ...


class Coordinator(Protocol):
    """Workers sharing one database: liveness, tenant leases, the run-command inbox, wake-ups.

    Implemented by :class:`~tenantflow.adapters.postgres_cluster.PostgresCoordinator`; see
    :mod:`tenantflow.domain.cluster` for how tenants are assigned.
    """

    async def beat(
        self, worker: str, now: float, alive_s: float, info: dict[str, Any]
    ) -> list[str]:
        """Record the worker's heartbeat; the ids of the live workers."""
        ...

    async def members(self) -> list[dict[str, Any]]:
        """Every worker with a row: ``id``, ``info``, ``started_at``, ``beat_at`` (None for a
        worker that left and whose leases remain) and ``tenants`` (its leases: ``tenant_id``,
        ``expires_at``)."""
        ...

    async def hold(
        self, worker: str, tenants: Sequence[str], now: float, until: float
    ) -> list[str]:
        """Take or renew leases on tenants that are free, expired or ours; those now ours."""
        ...

    async def release(self, worker: str, tenants: Sequence[str] | None = None) -> None: ...

    async def active_runs(self) -> list[tuple[str, str]]:
        """(tenant, run id) of every unfinished run."""
        ...

    async def post(
        self, tenant_id: str, kind: str, target: str, payload: dict[str, Any], now: float
    ) -> int: ...

    async def take(
        self, worker: str, tenants: Sequence[str], now: float, until: float, limit: int = 100
    ) -> list[Command]: ...

    async def finish(self, command: Command, result: dict[str, Any], now: float) -> None: ...

    async def result(self, tenant_id: str, command_id: int) -> dict[str, Any] | None: ...

    async def notify(self, kind: str, tenant_id: str, target: str) -> None: ...

    def announce(self, kind: str, tenant_id: str, target: str) -> None:
        """Notify without waiting (batched with other announcements; best effort)."""
        ...

    async def close(self) -> None:
        """Send what is waiting to be announced."""
        ...

    def listen(self) -> AsyncIterator[Notice]:
        """Wake-ups as they arrive (see :class:`~tenantflow.domain.cluster.Notice`)."""
        ...

    def listen_ends(self, ready: Callable[[], None]) -> AsyncIterator[Notice]:
        """Announced ends of runs (kind ``ended``); ``ready`` is called once listening."""
        ...


class OpSink(Protocol):
    """Where ops are written: each resolves with its result once its transaction committed.

    Implemented by :class:`~tenantflow.engine.writer.Writer` (group commit to one store). Every
    transition is written to a sink before it is acted on.
    """

    async def write(self, op: Op) -> Any: ...


LedgerScope = Literal["tenant", "run", "platform"]


class LedgerRouter(Protocol):
    """Which sink owns a ledger: a tenant's and a run's belong with the tenant's data (its
    region's store); the platform's (limits shared by every tenant) with one designated
    store, so that a platform-wide quota is counted once, not once per region."""

    def sink_for(self, tenant_id: str, scope: LedgerScope) -> OpSink: ...


class Grant(Protocol):
    """A slot granted to a ready step: released exactly once, when the attempt stops holding
    it (its code returned, or it waits: a review, a rate limit, a backoff)."""

    def release(self) -> None: ...


Starter = Callable[[Grant], Coroutine[Any, Any, None]]


class WorkQueue(Protocol):
    """Where the driver hands ready steps: each is started with a slot when its turn comes.

    Implemented by :class:`~tenantflow.engine.dispatch.Dispatcher` (the weighted fair
    scheduler of one process). A broker-shaped queue delivers instead (:class:`DeliveryQueue`).
    """

    def push(
        self,
        tenant_id: str,
        key: tuple[str, str],
        lane: Lane,
        starter: Starter,
        *,
        in_flight: bool = True,
        hint_name: str = "",
    ) -> bool:
        """Queue step ``key`` = (run id, step key); a duplicate of a queued or running one is
        ignored (False)."""
        ...

    def remove(self, key: tuple[str, str]) -> None:
        """Withdraw a queued step (its run ended or moved to another process)."""
        ...

    def learn(self, hint_name: str, service_s: float) -> None:
        """Record how long an attempt of ``hint_name`` held its slot (a scheduling hint)."""
        ...

    def urgent(self, tenant_id: str) -> bool:
        """Whether ``tenant_id``'s transitions are written in the writer's urgent lane."""
        ...


class Delivery(Protocol):
    """One delivery of a message from a :class:`DeliveryQueue`, settled once: acked when done
    with, nak'ed to be delivered again (after ``delay_s``); marked in progress to hold off
    redelivery while it is being worked on."""

    @property
    def data(self) -> dict[str, Any]: ...

    @property
    def deliveries(self) -> int:
        """1 for the first delivery, 2 for the first redelivery, …"""
        ...

    def ack(self) -> None: ...

    def nak(self, delay_s: float = 0.0) -> None: ...

    def in_progress(self) -> None: ...


class DeliveryQueue(Protocol):
    """A message broker's work queue (JetStream-shaped): publish, then take deliveries that
    must be settled; one not acked within the ack timeout is delivered again."""

    def publish(self, data: dict[str, Any], *, delay_s: float = 0.0) -> None: ...

    async def next(self) -> Delivery | None:
        """The next delivery, waiting for one; None once the queue is closed."""
        ...


class CallScope(Protocol):
    """What the tool and model gateway needs of the attempt making a call: its identity and
    policy, the clock, the durable call record, a sink scoped to the attempt's own run (and
    the platform's ledger), circuit breakers and observers. Implemented privately by the
    engine for each attempt; step code never holds one."""

    @property
    def tenant_id(self) -> str: ...

    @property
    def run_id(self) -> str: ...

    @property
    def step(self) -> str: ...

    @property
    def attempt(self) -> int: ...

    @property
    def idempotency_key(self) -> str: ...

    @property
    def optional(self) -> bool: ...

    @property
    def policy(self) -> Policy: ...

    @property
    def budget_scope(self) -> str: ...

    @property
    def observers(self) -> Observers: ...

    def now_s(self) -> float: ...

    def next_call_index(self) -> int: ...

    async def recorded_call(self, index: int) -> str | None: ...

    async def write(self, op: Op) -> Any:
        """Write an op of this attempt's run (a platform rate bucket goes to the platform's
        ledger); an op for another tenant or run is refused."""
        ...

    def breaker(self, name: str) -> CircuitBreaker: ...

    def circuit(self, name: str) -> AbstractAsyncContextManager[None]: ...

    def log_event(self, kind: str, data: dict[str, Any]) -> None: ...

    async def note_decision(
        self,
        kind: str,
        data: dict[str, Any],
        *,
        audit: AuditEntry | None = None,
        usage: list[UsageDelta] | None = None,
    ) -> None: ...

    async def release_holds(self, key: str) -> None: ...

    async def remaining_micros(self) -> int | None: ...
