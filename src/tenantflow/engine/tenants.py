"""The tenant registry: tenants, their versioned policies, and where their data lives.

Policies are validated before anything is written, every change is a new policy version and an
audit row in the same transaction, and the engine keeps the current policy of every tenant in
memory so that admission and dispatch never look one up in the store (O(1) per decision).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tenantflow.domain.ids import DEFAULT_STORE, check_tenant
from tenantflow.domain.policy import DEFAULT_REGIONS, Policy, validate_policy
from tenantflow.domain.records import RunStatus
from tenantflow.domain.tenancy import DeleteTenant, PutTenant, TenantRecord
from tenantflow.errors import ConfigurationError, ConflictError, NotFoundError, TenantflowError

if TYPE_CHECKING:
    from tenantflow.engine.engine import Engine

__all__ = ["TenantInfo", "Tenants"]


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


class Tenants:
    """Create, read, update and delete tenants (``engine.tenants``)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._cache: dict[str, TenantInfo] = {}

    @property
    def known_regions(self) -> frozenset[str]:
        return frozenset(DEFAULT_REGIONS) | frozenset(self._engine.regions)

    async def load(self) -> None:
        """Read every tenant from every region store and configure the scheduler for it."""
        for key, store in self._engine.stores.items():
            for record in await store.list_tenants():
                info = self._info(record, key)
                self._cache[info.id] = info
                self._engine.configure_tenant(info)

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
        for key, store in self._engine.stores.items():
            try:
                record = await store.get_tenant(tenant_id)
            except NotFoundError:
                continue
            info = self._info(record, key)
            self._cache[info.id] = info
            self._engine.configure_tenant(info)
            return info
        self._cache.pop(tenant_id, None)
        return None

    async def _announce(self, tenant_id: str) -> None:
        """Tell the other processes of a cluster that the tenant changed."""
        coordinator = self._engine.coordinator
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
        key = self._engine.store_key_for(policy.region)
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
            and self._engine.store_key_for(policy.region) != info.store
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
        engine = self._engine
        now = engine.clock.now()
        version = await engine.runtimes[key].writer.write(
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
        self._cache[tenant_id] = info
        engine.configure_tenant(info)
        await self._announce(tenant_id)
        return info

    async def delete(
        self, tenant_id: str, *, actor: str = "library", purge_audit: bool = False
    ) -> dict[str, Any]:
        """Purge every row of the tenant and return what was deleted and what is left (all
        zeros). Its audit log is kept (with a final ``tenant.deleted`` row) unless
        ``purge_audit``. Refused while the tenant has runs in flight: cancel them first."""
        info = await self.get(tenant_id)
        engine = self._engine
        busy = any(
            r.tenant_id == tenant_id for rt in engine.runtimes.values() for r in rt.active.values()
        )
        store = engine.stores[info.store]
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
            for key in await engine.keys.list(tenant_id):
                if key.revoked_at is None:
                    await engine.keys.revoke(tenant_id, key.id, actor=actor)
        result = await engine.runtimes[info.store].writer.write(
            DeleteTenant(tenant_id, engine.clock.now(), actor, purge_audit)
        )
        if isinstance(result, TenantflowError):
            raise result
        self._cache.pop(tenant_id, None)
        await self._announce(tenant_id)
        if any(result["left"].values()):
            raise ConfigurationError(f"tenant {tenant_id!r} was not fully purged: {result['left']}")
        return dict(result)
