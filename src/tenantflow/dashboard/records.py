"""Where the dashboard keeps its sessions and sign-in failures: in the process, or in the store.

:class:`DashboardRecords` is a small keyed table of JSON values, each with an expiry, in
namespaces (``sessions``, ``sign-in``). :class:`ProcessRecords` keeps it in this process's memory
(a restart signs everyone out; several processes behind a load balancer would each have their
own). :class:`StoreRecords` keeps it in the database the API already uses, so that every
``tenantflow serve`` process on that database sees the same sessions and counts the same
failures: a session made by one process is valid in another, and signing out (or revoking the
key) in one ends it in all.

The rows live in the agent memory table (as durable schedules do, see
:mod:`tenantflow.engine.schedules`), under the reserved owner :data:`OWNER` — not a tenant id
(a tenant id starts with a letter or digit), so no tenant's memory, export, move or deletion
ever names them — in namespaces ``system:dashboard:<name>``, which the memory API refuses.
Nothing stored is a secret: sessions are keyed by the SHA-256 of their token and hold the key's
id and tenant, never the key; failures are keyed by a digest of what they count against.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

from tenantflow.domain.memory import DeleteMemory, PutMemory
from tenantflow.errors import NotFoundError, StoreError, TenantflowError

if TYPE_CHECKING:
    from tenantflow.placement.control import ControlPlane
    from tenantflow.ports import Store

__all__ = ["OWNER", "DashboardRecords", "ProcessRecords", "StoreRecords", "records_for"]

OWNER = "~dashboard"
"""The owner of the dashboard's rows in the memory table: never a valid tenant id."""

SWEEP_S = 60.0
"""How often a process deletes expired rows (at most; on a write)."""

_SWEEP_PAGE = 200


class DashboardRecords(Protocol):
    """Expiring JSON values by namespace and key."""

    async def put(
        self, namespace: str, key: str, value: dict[str, Any], *, now: float, expires_at: float
    ) -> None:
        """Insert or replace the value of ``key``; it is gone from ``expires_at``."""

    async def get(self, namespace: str, key: str, *, now: float) -> dict[str, Any] | None:
        """The live value of ``key`` (None: absent or expired)."""

    async def delete(self, namespace: str, key: str, *, now: float) -> None:
        """Delete ``key`` (absent: nothing happens)."""

    async def scan(
        self, namespace: str, prefix: str, *, now: float, limit: int
    ) -> list[tuple[str, dict[str, Any]]]:
        """The live values whose key starts with ``prefix``, by key, at most ``limit``."""


class ProcessRecords:
    """In this process's memory; past ``max_rows`` the oldest rows are dropped."""

    def __init__(self, max_rows: int = 50_000) -> None:
        self._max = max_rows
        self._rows: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}

    async def put(
        self, namespace: str, key: str, value: dict[str, Any], *, now: float, expires_at: float
    ) -> None:
        self._rows.pop((namespace, key), None)
        self._rows[(namespace, key)] = (expires_at, dict(value))  # last: oldest-first order
        if len(self._rows) > self._max:
            for found in [k for k, (until, _) in self._rows.items() if until <= now]:
                del self._rows[found]
        while len(self._rows) > self._max:
            del self._rows[next(iter(self._rows))]

    async def get(self, namespace: str, key: str, *, now: float) -> dict[str, Any] | None:
        found = self._rows.get((namespace, key))
        if found is None:
            return None
        if found[0] <= now:
            del self._rows[(namespace, key)]
            return None
        return dict(found[1])

    async def delete(self, namespace: str, key: str, *, now: float) -> None:
        self._rows.pop((namespace, key), None)

    async def scan(
        self, namespace: str, prefix: str, *, now: float, limit: int
    ) -> list[tuple[str, dict[str, Any]]]:
        found = sorted(
            (k, v)
            for (ns, k), (until, v) in self._rows.items()
            if ns == namespace and k.startswith(prefix) and until > now
        )
        return [(k, dict(v)) for k, v in found[:limit]]

    def __len__(self) -> int:
        return len(self._rows)


class StoreRecords:
    """In the store's memory table, owner :data:`OWNER` (see the module's docstring).

    Expired rows are deleted by whichever process writes next, at most every :data:`SWEEP_S`
    seconds (of the writes' clock) and a page of rows at a time, each pass going on where the
    last stopped: the table holds the live rows and those that expired since the last pass.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._swept: dict[str, float] = {}
        self._cursor: dict[str, str | None] = {}

    @staticmethod
    def _namespace(namespace: str) -> str:
        return f"system:dashboard:{namespace}"

    async def _apply(self, op: PutMemory | DeleteMemory) -> None:
        [result] = await self.store.apply([op])
        if isinstance(result, NotFoundError):
            return
        if isinstance(result, TenantflowError):
            raise result
        if isinstance(result, BaseException):
            raise StoreError(f"write refused by the store: {result}") from result

    async def put(
        self, namespace: str, key: str, value: dict[str, Any], *, now: float, expires_at: float
    ) -> None:
        ns = self._namespace(namespace)
        await self._apply(PutMemory(OWNER, ns, key, json.dumps(value), now, expires_at))
        if now - self._swept.get(ns, float("-inf")) >= SWEEP_S:
            self._swept[ns] = now
            await self._sweep(ns, now)

    async def _sweep(self, ns: str, now: float) -> None:
        """Delete the expired rows of one page of ``ns``, continuing where the last sweep
        stopped (back at the start after the last page): every row is looked at in turn."""
        # ``now=0`` lists expired rows too (live "at the epoch"); DeleteMemory removes them.
        after = self._cursor.get(ns)
        rows = await self.store.list_memory(OWNER, ns, now=0.0, after=after, limit=_SWEEP_PAGE)
        self._cursor[ns] = rows[-1].key if len(rows) == _SWEEP_PAGE else None
        for entry in rows:
            if entry.expires_at is not None and entry.expires_at <= now:
                await self._apply(DeleteMemory(OWNER, ns, entry.key, now))

    async def get(self, namespace: str, key: str, *, now: float) -> dict[str, Any] | None:
        try:
            entry = await self.store.get_memory(OWNER, self._namespace(namespace), key, now=now)
        except NotFoundError:
            return None
        return entry.value if isinstance(entry.value, dict) else None

    async def delete(self, namespace: str, key: str, *, now: float) -> None:
        await self._apply(DeleteMemory(OWNER, self._namespace(namespace), key, now))

    async def scan(
        self, namespace: str, prefix: str, *, now: float, limit: int
    ) -> list[tuple[str, dict[str, Any]]]:
        rows = await self.store.list_memory(
            OWNER, self._namespace(namespace), now=now, prefix=prefix, limit=limit
        )
        return [(e.key, e.value) for e in rows if isinstance(e.value, dict)]


def records_for(engine: ControlPlane) -> DashboardRecords:
    """The store's records when ``engine`` is an engine on a store (embedded, a cluster's
    front, a federated cell): shared by every process on that database; else this process's."""
    from tenantflow.engine.engine import Engine

    if isinstance(engine, Engine):
        return StoreRecords(engine.store)
    return ProcessRecords()
