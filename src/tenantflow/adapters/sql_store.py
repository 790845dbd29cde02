"""What the SQL stores share: every read of :class:`~tenantflow.ports.Store`, and the
tenant-scoped handle (:meth:`SqlStore.for_tenant`).

A subclass says how an interpreter generator runs (:meth:`SqlStore._read`): on SQLite's reader
thread (its writer's, for a store that does not execute), or in a PostgreSQL transaction scoped
to the tenant. The queries themselves are in
:mod:`~tenantflow.adapters.sql_ops` and :mod:`~tenantflow.adapters.sql_tenancy`.

**Whose scope a write runs in.** :meth:`~tenantflow.ports.Store.apply` is the engine's own
group commit: a batch mixes tenants, and each op runs as the tenant it names. Code that acts
for one tenant only writes through :meth:`SqlStore.for_tenant` instead: the tenant comes from
the handle (the caller's scope), never from the op, and an op naming another tenant, or a
system-scoped op, is refused before anything is written. On PostgreSQL the handle's batch also
runs in the handle's tenant scope, so row-level security would refuse a forged op's rows even
if the check were skipped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, TypeVar

from tenantflow.adapters import sql_keys, sql_memory, sql_ops
from tenantflow.adapters import sql_tenancy as tq
from tenantflow.adapters.sql import Gen
from tenantflow.domain.audit import AuditRecord
from tenantflow.domain.keys import ApiKeyRecord
from tenantflow.domain.memory import MemoryEntry, SearchHit
from tenantflow.domain.outbox import OutboxRecord
from tenantflow.domain.records import (
    EventRecord,
    Op,
    RunRead,
    RunRecord,
    RunStatus,
    StateVersionRecord,
    StepRecord,
    check_scope,
)
from tenantflow.domain.tenancy import ReviewRecord, TenantRecord

__all__ = ["SqlStore", "TenantScopedStore"]

T = TypeVar("T")


class SqlStore(ABC):
    """The reads of a SQL :class:`~tenantflow.ports.Store`; every one is scoped by tenant,
    except the system-scoped reads recovery needs (``active_runs``, ``pending_reviews``) and
    the control plane's (``list_tenants``, ``get_api_key``, ``list_api_keys(None)``)."""

    url: str

    @abstractmethod
    async def _read(self, tenant_id: str | None, query: Gen[T]) -> T:
        """Run ``query`` as ``tenant_id``; None runs it in system scope (across tenants)."""

    @abstractmethod
    async def apply(self, ops: Sequence[Op]) -> list[Any]:
        """Apply ``ops`` in one transaction, each as the tenant it names (the engine's own
        group commit); one result per op."""

    async def _apply_as(self, tenant_id: str, ops: Sequence[Op]) -> list[Any]:
        """Apply ``ops``, already checked to be ``tenant_id``'s, acting as ``tenant_id``.

        Without row-level security (SQLite) every statement names the op's tenant, which the
        check has made the scope's; PostgreSQL overrides this to enter the scope's tenant."""
        return await self.apply(ops)

    def for_tenant(self, tenant_id: str) -> TenantScopedStore:
        """A handle that writes as ``tenant_id`` only (see the module docstring)."""
        return TenantScopedStore(self, tenant_id)

    async def get_run(self, tenant_id: str, run_id: str) -> RunRecord:
        return await self._read(tenant_id, sql_ops.get_run(tenant_id, run_id))

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
        query = sql_ops.list_runs(tenant_id, status, workflow, limit, before, payloads)
        return await self._read(tenant_id, query)

    async def get_steps(self, tenant_id: str, run_id: str) -> list[StepRecord]:
        return await self._read(tenant_id, sql_ops.get_steps(tenant_id, run_id))

    async def read_run(
        self,
        tenant_id: str,
        run_id: str,
        *,
        events_after: int | None = None,
        versions_after: int | None = None,
    ) -> RunRead:
        query = sql_ops.read_run(tenant_id, run_id, events_after, versions_after)
        return await self._read(tenant_id, query)

    async def events(self, tenant_id: str, run_id: str, after_id: int = 0) -> list[EventRecord]:
        return await self._read(tenant_id, sql_ops.events(tenant_id, run_id, after_id))

    async def state_versions(
        self, tenant_id: str, run_id: str, upto: int | None = None
    ) -> list[StateVersionRecord]:
        return await self._read(tenant_id, sql_ops.state_versions(tenant_id, run_id, upto))

    async def active_runs(
        self, tenant_id: str | None = None
    ) -> list[tuple[RunRecord, list[StepRecord]]]:
        return await self._read(tenant_id, sql_ops.active_runs(tenant_id))

    async def unfinished_runs(
        self, tenant_id: str, run_ids: Sequence[str]
    ) -> list[tuple[RunRecord, list[StepRecord]]]:
        return await self._read(tenant_id, sql_ops.unfinished_runs(tenant_id, list(run_ids)))

    # -- tenancy reads ------------------------------------------------------------------------

    async def get_tenant(self, tenant_id: str) -> TenantRecord:
        return await self._read(tenant_id, tq.get_tenant(tenant_id))

    async def list_tenants(self) -> list[TenantRecord]:
        return await self._read(None, tq.list_tenants())

    async def audit_log(self, tenant_id: str) -> list[AuditRecord]:
        return await self._read(tenant_id, tq.audit_rows(tenant_id))

    async def get_review(self, tenant_id: str, review_id: str) -> ReviewRecord:
        return await self._read(tenant_id, tq.get_review(tenant_id, review_id))

    async def list_reviews(
        self,
        tenant_id: str,
        *,
        pool: str | None = None,
        statuses: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[ReviewRecord]:
        return await self._read(tenant_id, tq.list_reviews(tenant_id, pool, statuses, limit))

    async def ledgers(self, tenant_id: str, scope: str | None = None) -> list[dict[str, Any]]:
        return await self._read(tenant_id, tq.read_ledgers(tenant_id, scope))

    async def usage(
        self, tenant_id: str, since_day: str | None = None, until_day: str | None = None
    ) -> list[dict[str, Any]]:
        return await self._read(tenant_id, tq.read_usage(tenant_id, since_day, until_day))

    async def recorded_calls(
        self, tenant_id: str, run_id: str, key: str
    ) -> dict[int, tuple[str, str, str]]:
        """Results of a step's recorded model and tool calls, by call index."""
        return await self._read(tenant_id, tq.recorded_calls(tenant_id, run_id, key))

    async def pending_reviews(self) -> list[ReviewRecord]:
        return await self._read(None, tq.pending_reviews())

    async def outbox(
        self, tenant_id: str | None = None, *, limit: int = 100, unpublished: bool = False
    ) -> list[OutboxRecord]:
        """The oldest side effects of the outbox (``unpublished``: only those the relay has not
        published yet): the tenant's, or with None every tenant's (system scope: the relay)."""
        return await self._read(tenant_id, sql_ops.outbox(tenant_id, limit, unpublished))

    # -- API keys (the control plane's store) -------------------------------------------------

    async def get_api_key(self, key_id: str) -> ApiKeyRecord:
        return await self._read(None, sql_keys.get_api_key(key_id))

    async def list_api_keys(self, tenant_id: str | None) -> list[ApiKeyRecord]:
        return await self._read(tenant_id, sql_keys.list_api_keys(tenant_id))

    # -- agent memory -------------------------------------------------------------------------

    async def get_memory(
        self, tenant_id: str, namespace: str, key: str, *, now: float
    ) -> MemoryEntry:
        return await self._read(tenant_id, sql_memory.get_entry(tenant_id, namespace, key, now))

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
        query = sql_memory.list_entries(tenant_id, namespace, now, prefix, after, limit)
        return await self._read(tenant_id, query)

    async def search_memory(
        self, tenant_id: str, namespace: str, terms: Sequence[str], *, now: float, limit: int = 5
    ) -> list[SearchHit]:
        query = sql_memory.search(tenant_id, namespace, list(terms), now, limit)
        return await self._read(tenant_id, query)


class TenantScopedStore:
    """A store handle acting for one tenant: the tenant comes from here, not from the ops.

    Args:
        store: the store written to.
        tenant_id: the tenant every op must act for.
    """

    def __init__(self, store: SqlStore, tenant_id: str) -> None:
        self.store = store
        self.tenant_id = tenant_id

    async def apply(self, ops: Sequence[Op]) -> list[Any]:
        """Apply ``ops`` in one transaction as this handle's tenant; one result per op.

        Raises:
            PermissionDeniedError: an op acts for another tenant, or for the system; nothing of
                the batch is written.
        """
        check_scope(self.tenant_id, ops)
        return await self.store._apply_as(self.tenant_id, ops)
