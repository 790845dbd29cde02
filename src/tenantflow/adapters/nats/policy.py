"""Tenants' policies on the fabric: the control plane puts, agents watch.

KV ``POLICY_<r>`` holds, per tenant (key ``<tenant>``), ``{"version": n, "policy": {...}}``: the
control plane puts a tenant's policy when it is created or changed; each agent watches the
bucket (a KV watch: put → agent in well under a millisecond on loopback) and keeps the latest
version per tenant, which it reports as applied (:attr:`PolicyBoard.applied`). An entry whose
version is older than one already applied is ignored (a late redelivery cannot roll back).

**Step caps.** A tenant's ``max_running_steps`` is enforced by the server: it is the
``max_ack_pending`` of the tenant's durable consumers (one per step kind), so across every
agent process no more than that many of its work items of one kind are out (delivered and not
yet acknowledged; a step runs while its item is out). A policy put moves the cap of the
tenant's existing consumers *before* it returns (:func:`apply_cap`), and each agent applies it
again when its watch sees the new version (a consumer created meanwhile with the old cap is
corrected). After the update is acknowledged the server hands out an item only while fewer
than the new cap are out, so the only steps that can start over a lowered cap are those whose
items were already delivered (in flight or prefetched by an agent) when it was lowered.

**Intake.** :func:`queue_limit` is a tenant's queue-depth limit at intake (work items waiting
on the stream), from its policy; :func:`check_intake` refuses past it with a
:class:`~tenantflow.errors.BackpressureError` (the API's 429 and ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import Callable
from typing import Any

from tenantflow.adapters.nats.fabric import Fabric
from tenantflow.adapters.nats.subjects import KINDS, Region, token, untoken
from tenantflow.errors import BackpressureError

__all__ = [
    "QUEUED_PER_ACTIVE_RUN",
    "PolicyBoard",
    "apply_cap",
    "cap_of",
    "check_intake",
    "queue_limit",
]

QUEUED_PER_ACTIVE_RUN = 20
"""Work items a tenant may have waiting per run it may have active (``max_active_runs``)."""


def cap_of(policy: dict[str, Any]) -> int | None:
    """The consumers' ``max_ack_pending`` for a policy (as JSON): its ``max_running_steps``
    (at least 1: the server reads 0 as its default; None when the policy names none)."""
    cap = policy.get("max_running_steps")
    return None if cap is None else max(1, int(cap))


async def apply_cap(
    fabric: Fabric, region: str, tenant: str, cap: int, kinds: tuple[str, ...] = KINDS
) -> int:
    """Set ``max_ack_pending`` = ``cap`` on the tenant's existing consumers of ``region``;
    how many were changed (a consumer not there yet is created with the cap by its puller)."""
    from nats.js.errors import NotFoundError

    r = Region(region)
    changed = 0
    for kind in kinds:
        name = r.consumer(tenant, kind)
        try:
            info = await fabric.js.consumer_info(r.work_stream, name)
        except NotFoundError:
            continue
        if info.config.max_ack_pending == cap:
            continue
        config = info.config.evolve(max_ack_pending=cap)
        await fabric.js.add_consumer(r.work_stream, config)
        changed += 1
    return changed


def queue_limit(policy: dict[str, Any], per_active_run: int = QUEUED_PER_ACTIVE_RUN) -> int:
    """A tenant's intake limit: work items waiting, ``per_active_run`` per run it may have
    active (``max_active_runs``; a suspended tenant, 0, gets the allowance of one run)."""
    return max(1, int(policy.get("max_active_runs") or 0)) * max(1, per_active_run)


async def check_intake(
    fabric: Fabric,
    region: str,
    tenant: str,
    policy: dict[str, Any],
    *,
    per_active_run: int = QUEUED_PER_ACTIVE_RUN,
    ceiling: int | None = None,
) -> int:
    """Refuse a submission once the tenant's work items waiting in ``region`` reached its
    :func:`queue_limit` (or ``ceiling``, if lower); the number waiting otherwise.

    Raises:
        BackpressureError: the queue is full; ``retry_after_s`` estimates when it will be back
            under 90 % of its limit, at one item per running-step slot per second (1–60 s).
    """
    r = Region(region)
    info = await fabric.js.stream_info(
        r.work_stream, subjects_filter=f"tf.{r.name}.{token(tenant)}.run.*.cmd.*"
    )
    queued = sum((info.state.subjects or {}).values())
    limit = queue_limit(policy, per_active_run)
    if ceiling is not None:
        limit = min(limit, ceiling)
    if queued >= limit:
        excess = queued - int(limit * 0.9) + 1
        slots = max(1, int(policy.get("max_running_steps") or 1))
        raise BackpressureError(
            f"tenant {tenant!r} has {queued} work items waiting in {r.name} (limit {limit})",
            retry_after_s=float(min(60.0, max(1.0, excess / slots))),
            tenant=tenant,
            queued=queued,
            limit=limit,
        )
    return int(queued)


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
        """Put the tenant's policy; its step cap is on its consumers when this returns."""
        kv = await self.fabric.js.key_value(self.region.policy_bucket)
        body = {"version": version, "policy": policy}
        revision: int = await kv.put(Region.policy_key(tenant), json.dumps(body).encode())
        cap = cap_of(policy)
        if cap is not None:
            await apply_cap(self.fabric, self.region.name, tenant, cap)
        return revision

    async def watch(self, on_policy: Callable[[str, int, dict[str, Any]], Any]) -> None:
        """Call ``on_policy(tenant, version, policy)`` (awaited if it returns an awaitable)
        for every newer policy, from now on (the bucket's current entries first)."""
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
                try:
                    result = on_policy(tenant, version, dict(body["policy"]))
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:  # the next version, or the agent's restart, retries
                    log.error("policy of %s: version %d not applied: %s", tenant, version, exc)
                    continue
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
