"""Tenants' policies on the fabric: the control plane puts, agents watch.

KV ``POLICY_<r>`` holds, per tenant (key ``<tenant>``), ``{"version": n, "policy": {...}}``: the
control plane puts a tenant's policy when it is created or changed; each agent watches the
bucket (a KV watch: put → agent in well under a millisecond on loopback) and keeps the latest
version per tenant, which it reports as applied (:attr:`PolicyBoard.applied`). An entry whose
version is older than one already applied is ignored (a late redelivery cannot roll back).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from tenantflow.adapters.nats.fabric import Fabric
from tenantflow.adapters.nats.subjects import Region, untoken

__all__ = ["PolicyBoard"]

log = logging.getLogger("tenantflow.mesh")


class PolicyBoard:
    """One region's policy bucket (see the module doc)."""

    def __init__(self, fabric: Fabric, region: str) -> None:
        self.fabric = fabric
        self.region = Region(region)
        self.applied: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._watcher: Any = None

    async def put(self, tenant: str, version: int, policy: dict[str, Any]) -> int:
        kv = await self.fabric.js.key_value(self.region.policy_bucket)
        body = {"version": version, "policy": policy}
        revision: int = await kv.put(Region.policy_key(tenant), json.dumps(body).encode())
        return revision

    async def watch(self, on_policy: Callable[[str, int, dict[str, Any]], None]) -> None:
        """Call ``on_policy(tenant, version, policy)`` for every newer policy, from now on (the
        bucket's current entries first)."""
        kv = await self.fabric.js.key_value(self.region.policy_bucket)
        self._watcher = await kv.watchall()

        async def loop() -> None:
            async for entry in self._watcher:
                if entry is None or entry.value is None or not entry.value:
                    continue
                try:
                    body = json.loads(entry.value)
                    tenant, version = untoken(entry.key), int(body["version"])
                except (ValueError, KeyError, TypeError):
                    log.error("a malformed policy entry %s", entry.key)
                    continue
                if version <= self.applied.get(tenant, -1):
                    continue
                on_policy(tenant, version, dict(body["policy"]))
                self.applied[tenant] = version
                log.info("policy of %s: version %d applied", tenant, version)

        self._task = asyncio.get_running_loop().create_task(loop())

    async def close(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
