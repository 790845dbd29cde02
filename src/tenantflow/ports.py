"""The engine's seams: the roles adapters play.

The engine talks to the outside only through these Protocols. Adapters implement them
(``SqliteStore``, ``MemoryStore``, ``SystemClock``; ``tenantflow.testing.FakeClock``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from tenantflow.domain.audit import AuditRecord
from tenantflow.domain.cluster import Command, Notice
from tenantflow.domain.keys import ApiKeyRecord
from tenantflow.domain.memory import MemoryEntry, SearchHit
from tenantflow.domain.models import ModelRequest, ModelResponse
from tenantflow.domain.records import (
    EventRecord,
    Op,
    RunRecord,
    RunStatus,
    StateVersionRecord,
    StepRecord,
)
from tenantflow.domain.tenancy import ReviewRecord, TenantRecord

__all__ = ["Clock", "Coordinator", "ModelProvider", "Store"]


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

    def listen(self) -> AsyncIterator[Notice]: ...
