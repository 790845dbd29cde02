"""The tenant registry: tenants, their versioned policies, and where their data lives.

Policies are validated before anything is written, every change is a new policy version and an
audit row in the same transaction, and the engine keeps the current policy of every tenant in
memory so that admission and dispatch never look one up in the store (O(1) per decision).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tenantflow.domain.ids import DEFAULT_STORE, check_tenant
from tenantflow.domain.policy import DEFAULT_REGIONS, Policy, validate_policy
from tenantflow.domain.records import RunStatus
from tenantflow.domain.tenancy import DeleteTenant, PurgeRuns, PutTenant, TenantRecord
from tenantflow.errors import ConfigurationError, ConflictError, NotFoundError, TenantflowError
from tenantflow.ports import Clock, Coordinator

if TYPE_CHECKING:
    from tenantflow.engine.regions import RegionRouter

__all__ = ["PURGE_BATCH", "PURGE_FIRST", "PURGE_SHARE", "TenantInfo", "Tenants"]

# The retention job: the most runs it deletes in one transaction (a run leaves about fifteen
# rows); the runs of its first transaction where it sizes them to a time (on SQLite:
# domain.tenancy.PURGE_TARGET_S); the most of the store's time it takes (the rest is left to
# the running tenants).
PURGE_BATCH = 100
PURGE_FIRST = 10
PURGE_SHARE = 0.2


@dataclass(frozen=True, slots=True)
class TenantInfo:
    """A tenant and its current policy."""

    id: str
    org_id: str | None
    policy: Policy
    policy_version: int
    created_at: float
    updated_at: float
    store: str  # the key of the region store holding the tenant's data

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "org_id": self.org_id,
            "policy_version": self.policy_version,
            "region": self.policy.region,
            "store": self.store,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "policy": self.policy.model_dump(mode="json"),
        }


def _timed(
    write: Callable[[Any], Awaitable[Any]],
) -> Callable[[Any], Awaitable[tuple[Any, float]]]:
    """``write`` as a background write: its result and the seconds it took (real time)."""

    async def timed(op: Any) -> tuple[Any, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await write(op)
        return result, loop.time() - started

    return timed


class Tenants:
    """Create, read, update and delete tenants (``engine.tenants``).

    Args:
        router: the stores; told which store holds each known tenant's data.
        clock: the engine's clock.
        write: writes an op to the store with the given key (through its writer).
        background: writes a maintenance op (the retention purge) to the store with the given
            key and returns its result with the seconds its transaction took (the writer's
            background lane: alone, when nothing else waits); ``write``, timed, when not given.
        on_policy: applies a tenant's (changed) policy to scheduling and admission.
        in_flight: whether this process holds runs of a tenant.
        revoke_keys: revokes a tenant's API keys (``tenant, actor``) before it is deleted.
        coordinator: a cluster's coordination (tells other processes of changes), or None.
    """

    def __init__(
        self,
        router: RegionRouter,
        clock: Clock,
        write: Mapping[str, Callable[[Any], Awaitable[Any]]],
        *,
        on_policy: Callable[[TenantInfo], None],
        in_flight: Callable[[str], bool],
        revoke_keys: Callable[[str, str], Awaitable[None]],
        coordinator: Coordinator | None,
        background: Mapping[str, Callable[[Any], Awaitable[tuple[Any, float]]]] | None = None,
    ) -> None:
        self._router = router
        self._clock = clock
        self._write = write
        self._background = background or {key: _timed(w) for key, w in write.items()}
        self._on_policy = on_policy
        self._in_flight = in_flight
        self._revoke_keys = revoke_keys
        self._coordinator = coordinator
        self._cache: dict[str, TenantInfo] = {}

    def _remember(self, info: TenantInfo) -> None:
        self._cache[info.id] = info
        self._router.place(info.id, info.store)

    def _forget(self, tenant_id: str) -> None:
        self._cache.pop(tenant_id, None)
        self._router.forget(tenant_id)

    @property
    def known_regions(self) -> frozenset[str]:
        return frozenset(DEFAULT_REGIONS) | frozenset(self._router.regions)

    async def load(self) -> None:
        """Read every tenant from every region store and configure the scheduler for it."""
        for key, store in self._router.stores.items():
            for record in await store.list_tenants():
                info = self._info(record, key)
                self._remember(info)
                self._on_policy(info)

    def _info(self, record: TenantRecord, store_key: str) -> TenantInfo:
        policy = Policy.model_validate(
            json.loads(record.policy_json), context={"known_regions": self.known_regions}
        )
        return TenantInfo(
            record.id,
            record.org_id,
            policy,
            record.policy_version,
            record.created_at,
            record.updated_at,
            store_key,
        )

    async def refresh(self, tenant_id: str) -> TenantInfo | None:
        """Re-read one tenant from the stores (another process changed it); None if it is gone."""
        for key, store in self._router.stores.items():
            try:
                record = await store.get_tenant(tenant_id)
            except NotFoundError:
                continue
            info = self._info(record, key)
            self._remember(info)
            self._on_policy(info)
            return info
        self._forget(tenant_id)
        return None

    async def _announce(self, tenant_id: str) -> None:
        """Tell the other processes of a cluster that the tenant changed."""
        coordinator = self._coordinator
        if coordinator is not None:
            await coordinator.notify("tenant", tenant_id, "")

    def cached(self, tenant_id: str) -> TenantInfo | None:
        """The tenant's current info from memory (None if unknown): no store access."""
        return self._cache.get(tenant_id)

    def list(self) -> list[TenantInfo]:
        return sorted(self._cache.values(), key=lambda t: t.id)

    async def get(self, tenant_id: str) -> TenantInfo:
        info = self._cache.get(tenant_id)
        if info is None:
            raise NotFoundError(f"tenant {tenant_id!r} not found", kind="tenant", id=tenant_id)
        return info

    async def create(
        self,
        tenant_id: str,
        *,
        tier: str = "standard",
        org_id: str | None = None,
        policy: Policy | None = None,
        actor: str = "library",
        **overrides: Any,
    ) -> TenantInfo:
        """Register a tenant with a tier preset (``enterprise``, ``standard``, ``free``) and any
        field overridden, or with a full ``policy``.

        Raises:
            ConfigurationError: an invalid tenant id or policy (negative caps, unknown region,
                a model both allowed and denied, …).
            ResidencyError: no store serves the policy's region.
            ConflictError: the tenant exists.
        """
        check_tenant(tenant_id)
        if tenant_id in self._cache:
            raise ConflictError(f"tenant {tenant_id!r} already exists", tenant=tenant_id)
        if policy is None:
            policy = Policy.for_tier(
                tier,
                known_regions=self.known_regions,
                **({"org_id": org_id} if org_id else {}),
                **overrides,
            )
        else:
            policy = validate_policy(
                policy.with_overrides(**overrides) if overrides else policy, self.known_regions
            )
        key = self._router.store_key_for(policy.region)
        return await self._put(tenant_id, org_id or policy.org_id, policy, key, actor, create=True)

    async def update(
        self, tenant_id: str, *, actor: str = "library", **overrides: Any
    ) -> TenantInfo:
        """Change fields of a tenant's policy: new admissions use it at once, running runs at
        their next step boundary. A tenant's region is fixed (its data lives there)."""
        info = await self.get(tenant_id)
        policy = info.policy.with_overrides(known_regions=self.known_regions, **overrides)
        if (
            policy.region != info.policy.region
            and self._router.store_key_for(policy.region) != info.store
        ):
            raise ConflictError(
                f"tenant {tenant_id!r} keeps its data in"
                f" {info.policy.region or 'the default store'}; its region cannot move to"
                " another store",
                tenant=tenant_id,
                field="region",
            )
        return await self._put(
            tenant_id, policy.org_id or info.org_id, policy, info.store, actor, create=False
        )

    async def _put(
        self,
        tenant_id: str,
        org_id: str | None,
        policy: Policy,
        key: str,
        actor: str,
        *,
        create: bool,
    ) -> TenantInfo:
        now = self._clock.now()
        version = await self._write[key](
            PutTenant(tenant_id, org_id, policy.model_dump_json(), now, actor, create)
        )
        if isinstance(version, TenantflowError):
            raise version
        previous = self._cache.get(tenant_id)
        info = TenantInfo(
            tenant_id,
            org_id,
            policy,
            int(version),
            previous.created_at if previous else now,
            now,
            key,
        )
        self._remember(info)
        self._on_policy(info)
        await self._announce(tenant_id)
        return info

    async def purge_runs(
        self,
        *,
        batch: int = PURGE_BATCH,
        share: float = PURGE_SHARE,
        target_s: float | None = None,
    ) -> dict[str, dict[str, int]]:
        """The retention job: delete every tenant's finished runs older than its policy's
        ``data_retention`` (with their state, events and reviews). Returns rows by tenant.

        The runs go a batch at a time, the oldest first, each batch in a transaction of its
        own (audited in it): ``batch`` runs, or with ``target_s`` (by default the store's
        ``purge_target_s``: SQLite's is 2 ms, where every write waits for the one
        committing) as many as fit in about ``target_s`` of the store's time, measured on the
        batches before (at least ``PURGE_FIRST`` runs or ``batch`` if fewer, at most ``batch``,
        at most twice the last): a running tenant's commit that comes while one is written
        waits for it. After each, the store is left to the running tenants long enough that
        the purge takes at most ``share`` of its time, so a purge of a million runs never holds
        the store for long, nor most of the time."""
        if batch < 1:
            raise ConfigurationError("batch must be at least 1", field="batch", value=batch)
        if not 0.0 < share <= 1.0:
            raise ConfigurationError("share must be in (0, 1]", field="share", value=share)
        if target_s is not None and not (math.isfinite(target_s) and target_s > 0.0):
            raise ConfigurationError(
                "target_s must be a positive number of seconds", field="target_s", value=target_s
            )
        out: dict[str, dict[str, int]] = {}
        now = self._clock.now()
        for info in self.list():
            retention = info.policy.data_retention
            if retention is None:
                continue
            before = now - retention.total_seconds()
            total: dict[str, int] = {}
            target = target_s
            if target is None:
                target = getattr(self._router.stores[info.store], "purge_target_s", None)
            least = batch if target is None else min(batch, PURGE_FIRST)
            size = least
            while True:
                deleted, busy_s = await self._background[info.store](
                    PurgeRuns(info.id, before, self._clock.now(), limit=size)
                )
                for table, rows in deleted.items():
                    total[table] = total.get(table, 0) + rows
                if deleted["runs"] < size:
                    break
                if target is not None:
                    # (in floats: a store's tiny time makes no overflow; 1e-9: 19.99999… is 20)
                    fit = size * target / busy_s if busy_s > 0 else math.inf
                    size = max(least, int(min(batch, 2 * size, fit) + 1e-9))
                # Real time, not the engine's clock: what is shared is the store's real time
                # (a fake clock stands still while a batch is written).
                await asyncio.sleep(busy_s * (1.0 - share) / share)
            out[info.id] = total
        return out

    async def delete(
        self, tenant_id: str, *, actor: str = "library", purge_audit: bool = False
    ) -> dict[str, Any]:
        """Purge every row of the tenant and return what was deleted and what is left (all
        zeros). Its audit log is kept (with a final ``tenant.deleted`` row) unless
        ``purge_audit``. Refused while the tenant has runs in flight: cancel them first."""
        info = await self.get(tenant_id)
        busy = self._in_flight(tenant_id)
        store = self._router.stores[info.store]
        for status in ("queued", "running", "paused", "compensating", "cancelling"):
            busy = busy or bool(await store.list_runs(tenant_id, status=RunStatus(status), limit=1))
        if busy:
            raise ConflictError(
                f"tenant {tenant_id!r} has unfinished runs; cancel them first",
                tenant=tenant_id,
            )
        if info.store != DEFAULT_STORE:
            # Its API keys are in the default store, out of reach of the region's purge: revoke
            # them first, so that a tenant re-created with this id never inherits them.
            await self._revoke_keys(tenant_id, actor)
        result = await self._write[info.store](
            DeleteTenant(tenant_id, self._clock.now(), actor, purge_audit)
        )
        if isinstance(result, TenantflowError):
            raise result
        self._forget(tenant_id)
        await self._announce(tenant_id)
        if any(result["left"].values()):
            raise ConfigurationError(f"tenant {tenant_id!r} was not fully purged: {result['left']}")
        return dict(result)
