"""Where a tenant's data lives: the default store and one store per residency region.

A tenant's runs, state, audit log and ledgers live only in the store of its policy's region
(:class:`RegionRouter`); the tenant registry (:mod:`tenantflow.engine.tenants`) tells the
router which store each known tenant's data is in.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from tenantflow.domain.ids import DEFAULT_STORE
from tenantflow.errors import (
    ConfigurationError,
    NotFoundError,
    ResidencyError,
    StoreUnavailableError,
    TenantflowError,
)
from tenantflow.ports import Store

__all__ = ["RegionRouter"]

_PROBE = "readyz-probe"


class RegionRouter:
    """Routes tenants to stores.

    Args:
        store: the default store.
        region: the residency region of the default store (None: a single store that serves
            every tenant whose region has no store of its own, only when ``regions`` is empty).
        regions: more stores, one per residency region.

    Raises:
        ConfigurationError: ``region`` is also a key of ``regions``.
    """

    def __init__(self, store: Store, region: str | None, regions: Mapping[str, Store]) -> None:
        if region is not None and region in regions:
            raise ConfigurationError(
                f"region {region!r} is both the default store's and in regions", field="regions"
            )
        self.store = store
        self.region = region
        self.regions: dict[str, Store] = dict(regions)
        self.stores: dict[str, Store] = {DEFAULT_STORE: store, **self.regions}
        self._homes: dict[str, str] = {}

    def store_key_for(self, region: str | None) -> str:
        """Which store holds the data of a tenant whose residency region is ``region``.

        Raises:
            ResidencyError: no store serves ``region``.
        """
        if region is None or region == self.region:
            return DEFAULT_STORE
        if region in self.regions:
            return region
        if self.region is None and not self.regions:
            return DEFAULT_STORE  # a single unlabelled store serves every tenant
        configured = ", ".join(sorted(self.labels())) or "none"
        raise ResidencyError(
            f"no store serves region {region!r} (configured: {configured})", region=region
        )

    def labels(self) -> set[str]:
        """The regions some store is labelled with."""
        return set(self.regions) | ({self.region} if self.region else set())

    def place(self, tenant: str, store_key: str) -> None:
        """Record that ``tenant``'s data lives in the store ``store_key``."""
        self._homes[tenant] = store_key

    def forget(self, tenant: str) -> None:
        """``tenant`` is gone: its next data would go to the default store."""
        self._homes.pop(tenant, None)

    def home_of(self, tenant: str) -> str | None:
        """The key of the store holding a known tenant's data; None for an unknown tenant."""
        return self._homes.get(tenant)

    def store_key_of(self, tenant: str) -> str:
        """The key of the store that holds ``tenant``'s data (the default for unknown ones)."""
        return self._homes.get(tenant, DEFAULT_STORE)

    def store_for_tenant(self, tenant: str) -> Store:
        """The store that holds ``tenant``'s data."""
        return self.stores[self.store_key_of(tenant)]

    async def probe(self, timeout_s: float) -> None:
        """A tenant-scoped read of a run that cannot exist on every store, and a round trip on
        the writer's connection of a store that reads on another (SQLite: its ``ping``): an
        answer within the timeout (wall time: it is the process's readiness) means the store
        is reachable and its writes are not stuck.

        Raises:
            StoreUnavailableError: a store did not answer in time, or failed.
        """
        for key, store in self.stores.items():
            try:
                async with asyncio.timeout(timeout_s):
                    with contextlib.suppress(NotFoundError):
                        await store.get_run(_PROBE, _PROBE)
                    ping = getattr(store, "ping", None)
                    if ping is not None:
                        await ping()
            except (TenantflowError, TimeoutError) as exc:
                raise StoreUnavailableError(
                    f"store {key!r} is not answering", store=key, retry_after_s=5.0
                ) from exc
