"""Agent memory: what workflow steps remember across runs, per tenant.

Two ways in, one implementation (:class:`MemoryView`, one tenant's memory in one namespace):

* ``engine.memory`` (:class:`Memory`) takes the tenant as its first argument — the caller's
  tenant: the API passes the one its key authenticates, the CLI the ``--tenant`` it was given::

      await engine.memory.put("bank-a", "preferred-channel", {"channel": "email"},
                              namespace="user:alice")
      entry = await engine.memory.get("bank-a", "preferred-channel", namespace="user:alice")

* ``ctx.memory`` in a step is bound to the run's tenant, which no argument can change::

      await ctx.memory.put("last-score", 712)
      await ctx.memory.scope("user:alice").get("preferred-channel")
      hits = await ctx.memory.search("overdraft dispute")

Entries and documents live in the tenant's store — its region's, like its runs — and, inside
it, in the tenant's partition: every read and write names the tenant and the namespace
(``default``, ``user:<id>``, ``session:<id>``). A write commits before it returns (through the
engine's group-commit writer when the engine executes, else in a transaction of its own), and
gets ``expires_at`` from the tenant's policy (``memory_retention``; none: kept until deleted).
Expired rows are never returned; :meth:`Memory.purge_expired` deletes them (the retention job,
next to :meth:`~tenantflow.engine.engine.Engine.purge_expired`). Deleting the tenant deletes
its memory.

A step may run more than once (execution is at-least-once): ``put`` and ``delete`` are
idempotent, and a document a step adds gets an id derived from the step's idempotency key and
the document's content, so a re-executed attempt does not add it twice.
"""

from __future__ import annotations

import builtins
import functools
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from tenantflow.domain.ids import check_tenant
from tenantflow.domain.memory import (
    DEFAULT_NAMESPACE,
    MAX_KEY_CHARS,
    MAX_LIST,
    MAX_SEARCH,
    AddDocument,
    DeleteDocument,
    DeleteMemory,
    DocumentAdded,
    MemoryEntry,
    PurgeMemory,
    PutMemory,
    SearchHit,
    check_document_id,
    check_key,
    check_limit,
    check_namespace,
    check_text,
    document_id_for,
    encode_metadata,
    encode_value,
    expiry,
    query_words,
    retention_of,
    term_counts,
)
from tenantflow.domain.policy import Policy
from tenantflow.domain.records import Op
from tenantflow.engine.direct import apply_one
from tenantflow.errors import ConfigurationError, StoreError, TenantflowError
from tenantflow.ports import Clock, Store

if TYPE_CHECKING:
    from tenantflow.engine.tenants import TenantInfo, Tenants

__all__ = ["Memory", "MemoryView", "step_memory"]

_PURGE_BATCH = 256  # tenants purged per transaction


@dataclass(frozen=True, slots=True)
class _Binding:
    """Whose memory, where it is stored, and how to write there."""

    tenant_id: str
    store: Store
    clock: Clock
    write: Callable[[Op], Awaitable[Any]]
    retention: Callable[[], Awaitable[timedelta | None]]
    origin: str | None = None  # a step's idempotency key: document ids derive from it


def _prefix(prefix: object) -> str | None:
    if prefix is None or prefix == "":
        return None
    if not isinstance(prefix, str) or len(prefix) > MAX_KEY_CHARS:
        raise ConfigurationError(
            f"invalid key prefix {prefix!r}: a string of at most {MAX_KEY_CHARS} characters",
            field="prefix",
        )
    return prefix


class MemoryView:
    """One tenant's memory in one namespace (``ctx.memory`` in a step).

    The tenant is fixed when the view is made; :meth:`scope` gives another namespace of the
    same tenant. Keys are 1-200 letters, digits and ``_ . : @ = + ~ , -``; values any JSON of
    at most 256 KiB. Errors: :class:`~tenantflow.errors.NotFoundError` for a missing (or
    expired) entry, :class:`~tenantflow.errors.ConfigurationError` (``field`` names what) for
    a bad namespace, key, value, text, query or limit — nothing is written then.
    """

    __slots__ = ("_binding", "_namespace")

    def __init__(self, binding: _Binding, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._binding = binding
        self._namespace = check_namespace(namespace)

    def __repr__(self) -> str:
        return f"MemoryView(tenant_id={self.tenant_id!r}, namespace={self._namespace!r})"

    @property
    def tenant_id(self) -> str:
        return self._binding.tenant_id

    @property
    def namespace(self) -> str:
        return self._namespace

    def scope(self, namespace: str) -> MemoryView:
        """The same tenant's memory in ``namespace`` (``"user:alice"``, ``"session:abc"``)."""
        return MemoryView(self._binding, namespace)

    def _now(self) -> float:
        return self._binding.clock.now()

    async def get(self, key: str) -> MemoryEntry:
        """The entry under ``key``; NotFoundError if there is none (or it expired)."""
        key = check_key(key)
        b = self._binding
        return await b.store.get_memory(b.tenant_id, self._namespace, key, now=self._now())

    async def put(self, key: str, value: Any) -> MemoryEntry:
        """Store ``value`` (JSON) under ``key``, replacing what was there; returns the entry as
        committed (its ``version`` counts the writes)."""
        key = check_key(key)
        value_json = encode_value(value)
        b = self._binding
        retention = await b.retention()
        now = self._now()
        op = PutMemory(b.tenant_id, self._namespace, key, value_json, now, expiry(now, retention))
        entry: MemoryEntry = await b.write(op)
        return entry

    async def delete(self, key: str) -> None:
        """Delete the entry under ``key``; NotFoundError if there is none (or it expired)."""
        key = check_key(key)
        b = self._binding
        await b.write(DeleteMemory(b.tenant_id, self._namespace, key, self._now()))

    async def add_document(
        self, text: str, *, metadata: Mapping[str, Any] | None = None, id: str | None = None
    ) -> str:
        """Store a document (``text`` with JSON ``metadata``, at most 256 KiB and 16 KiB) for
        :meth:`search`; returns its id. With ``id``, adding is idempotent: a live document with
        that id is left as it is."""
        return (await self.add(text, metadata=metadata, id=id)).id

    async def add(
        self, text: str, *, metadata: Mapping[str, Any] | None = None, id: str | None = None
    ) -> DocumentAdded:
        """:meth:`add_document`, telling also whether the document was new (``created``)."""
        text = check_text(text)
        metadata_json = encode_metadata(metadata)
        terms, length = term_counts(text)
        b = self._binding
        if id is not None:
            document_id = check_document_id(id)
        elif b.origin is not None:
            parts = (b.tenant_id, self._namespace, b.origin, text, metadata_json)
            document_id = document_id_for(*parts)
        else:
            document_id = "doc_" + secrets.token_hex(12)
        retention = await b.retention()
        now = self._now()
        op = AddDocument(
            b.tenant_id,
            self._namespace,
            document_id,
            text,
            metadata_json,
            terms,
            length,
            now,
            expiry(now, retention),
        )
        added: DocumentAdded = await b.write(op)
        return added

    async def delete_document(self, id: str) -> None:
        """Delete a document; NotFoundError if there is none (or it expired)."""
        document_id = check_document_id(id)
        b = self._binding
        await b.write(DeleteDocument(b.tenant_id, self._namespace, document_id, self._now()))

    async def search(self, query: str, *, limit: int = 5) -> builtins.list[SearchHit]:
        """The documents containing any word of ``query``, best first (BM25 over this
        tenant's documents in this namespace); at most ``limit`` (1..100)."""
        terms = query_words(query)
        limit = check_limit(limit, MAX_SEARCH)
        b = self._binding
        return await b.store.search_memory(
            b.tenant_id, self._namespace, terms, now=self._now(), limit=limit
        )

    async def list(
        self, *, prefix: str | None = None, after: str | None = None, limit: int = 100
    ) -> builtins.list[MemoryEntry]:
        """Entries by key (byte order): only keys starting with ``prefix``, only keys after
        ``after`` (the last key of the previous page); at most ``limit`` (1..1000)."""
        start = _prefix(prefix)
        cursor = None if after is None else check_key(after, field="after")
        limit = check_limit(limit, MAX_LIST)
        b = self._binding
        return await b.store.list_memory(
            b.tenant_id, self._namespace, now=self._now(), prefix=start, after=cursor, limit=limit
        )


class _StepRun(Protocol):
    @property
    def policy(self) -> Policy | None: ...


def step_memory(
    store: Store,
    clock: Clock,
    write: Callable[[Op], Awaitable[Any]],
    tenant_id: str,
    run: _StepRun | None,
    idempotency_key: str,
) -> MemoryView:
    """``ctx.memory``: the run's tenant's memory in its region's store, written through
    ``write`` (the attempt's scoped sink), with the retention of the run's policy snapshot."""

    async def retention() -> timedelta | None:
        if run is not None and run.policy is not None:
            return run.policy.memory_retention
        return retention_of((await store.get_tenant(tenant_id)).policy_json)

    binding = _Binding(tenant_id, store, clock, write, retention, idempotency_key)
    return MemoryView(binding)


class Memory:
    """Every tenant's agent memory (``engine.memory``); each call takes the caller's tenant.

    The methods are those of :class:`MemoryView` with the tenant first and the namespace as a
    keyword (``default`` when not given). The tenant must be registered
    (:class:`~tenantflow.errors.NotFoundError` otherwise).

    Args:
        tenants: the tenant registry.
        stores: the stores by key (a tenant's memory lives in the store holding its data).
        clock: the engine's clock.
        writers: per store key, the writer's ``write`` of an executing engine; None without
            one (each write is then a transaction of its own).
        started: whether the engine is started.
    """

    def __init__(
        self,
        tenants: Tenants,
        stores: Mapping[str, Store],
        clock: Clock,
        writers: Mapping[str, Callable[[Op], Awaitable[Any]]] | None,
        started: Callable[[], bool],
    ) -> None:
        self._tenants = tenants
        self._stores = stores
        self._clock = clock
        self._writers = writers
        self._started = started

    def _check_started(self) -> None:
        if not self._started():
            raise ConfigurationError(
                "the engine is not started: use `async with Engine.open(...)` or await start()"
            )

    async def _tenant(self, tenant: str) -> TenantInfo:
        self._check_started()
        return await self._tenants.get(check_tenant(tenant))

    async def view(self, tenant: str, namespace: str = DEFAULT_NAMESPACE) -> MemoryView:
        """The tenant's memory in ``namespace``, in the store that holds its data."""
        info = await self._tenant(tenant)
        store = self._stores[info.store]
        # Without a writer running (execute=False, e.g. the CLI next to a server on the same
        # database) each write is a transaction of its own.
        write: Callable[[Op], Awaitable[Any]] = (
            self._writers[info.store]
            if self._writers is not None
            else functools.partial(apply_one, store)
        )
        retention = info.policy.memory_retention

        async def policy_retention() -> timedelta | None:
            return retention

        binding = _Binding(info.id, store, self._clock, write, policy_retention)
        return MemoryView(binding, namespace)

    async def get(
        self, tenant: str, key: str, *, namespace: str = DEFAULT_NAMESPACE
    ) -> MemoryEntry:
        """The entry under ``key``; NotFoundError if there is none (or it expired)."""
        return await (await self.view(tenant, namespace)).get(key)

    async def put(
        self, tenant: str, key: str, value: Any, *, namespace: str = DEFAULT_NAMESPACE
    ) -> MemoryEntry:
        """Store ``value`` (JSON, at most 256 KiB) under ``key``; the entry as committed."""
        return await (await self.view(tenant, namespace)).put(key, value)

    async def delete(self, tenant: str, key: str, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        """Delete the entry under ``key``; NotFoundError if there is none (or it expired)."""
        await (await self.view(tenant, namespace)).delete(key)

    async def add_document(
        self,
        tenant: str,
        text: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        id: str | None = None,
    ) -> str:
        """Store a document for :meth:`search`; its id (see :meth:`MemoryView.add_document`)."""
        view = await self.view(tenant, namespace)
        return await view.add_document(text, metadata=metadata, id=id)

    async def delete_document(
        self, tenant: str, id: str, *, namespace: str = DEFAULT_NAMESPACE
    ) -> None:
        """Delete a document; NotFoundError if there is none (or it expired)."""
        await (await self.view(tenant, namespace)).delete_document(id)

    async def search(
        self, tenant: str, query: str, *, namespace: str = DEFAULT_NAMESPACE, limit: int = 5
    ) -> builtins.list[SearchHit]:
        """The tenant's documents in ``namespace`` matching ``query``, best first."""
        return await (await self.view(tenant, namespace)).search(query, limit=limit)

    async def purge_expired(self, tenant: str | None = None) -> dict[str, dict[str, int]]:
        """The retention job for memory: delete every tenant's (or one tenant's) expired
        entries and documents. Returns rows deleted by table, for the tenants that had any."""
        if tenant is not None:
            infos = [await self._tenant(tenant)]
        else:
            self._check_started()
            infos = self._tenants.list()
        now = self._clock.now()
        by_store: dict[str, builtins.list[PurgeMemory]] = {}
        for info in infos:
            by_store.setdefault(info.store, []).append(PurgeMemory(info.id, now))
        out: dict[str, dict[str, int]] = {}
        for key, ops in by_store.items():
            store = self._stores[key]
            for start in range(0, len(ops), _PURGE_BATCH):
                batch = ops[start : start + _PURGE_BATCH]
                for op, result in zip(batch, await store.apply(batch), strict=True):
                    if isinstance(result, BaseException):
                        raise (
                            result
                            if isinstance(result, TenantflowError)
                            else StoreError(f"purge refused by the store: {result}")
                        )
                    if any(result.values()):
                        out[op.tenant_id] = dict(result)
        return out

    async def list(
        self,
        tenant: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        prefix: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> builtins.list[MemoryEntry]:
        """The tenant's entries in ``namespace`` by key (see :meth:`MemoryView.list`)."""
        view = await self.view(tenant, namespace)
        return await view.list(prefix=prefix, after=after, limit=limit)
