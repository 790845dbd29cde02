"""The gateway of a mesh agent: the core's gateway, with rate limits and the period budget on
the fabric.

:class:`MeshGateway` is :class:`~tenantflow.engine.gateway.Gateway` (the same gates in the same
order: call record, allow lists, residency, rate limit, budget, breaker, the call) with two of
the gates moved onto NATS JetStream, so that every agent process of a region enforces one limit
without a central scheduler:

* **Rate limits** (the tenant's per tool or model, and the platform's shared ones) are token
  buckets in KV, spent through per-process token leases
  (:class:`~tenantflow.adapters.nats.leases.RateLeases`): a call takes a token from this
  process's lease, and leases a new batch with a compare-and-set when the lease is spent. A
  bucket with no token parks the step (``RateLimitedError`` with its retry-after), as
  elsewhere. A provider's 429 is recorded in the tenant's bucket in KV
  (:meth:`~tenantflow.adapters.nats.leases.RateLeases.throttle`): its factor is cut and no
  agent of the region is granted a lease before the provider's Retry-After, as the store's
  bucket does for an engine.
* **The tenant's period budget** (``policy.budget.period_micros``) is a ledger in KV
  (:class:`~tenantflow.adapters.nats.ledger.Ledger`, key ``<tenant>.<period>-<start>``): a
  priced call reserves its worst case there (compare-and-set, so ``spent + held <= limit``
  whatever the concurrency across agents) before the store's own reservation, and settles
  the actual cost (or releases the hold) when the store does. A refusal is the ``period``
  ``BudgetExceededError``, and the policy's degradation ladder applies. A hold carries the
  ledger's expiry, so a hold of an agent killed mid-call is released (not spent) after it.

The store still keeps the run's and the period's ledgers and the usage counters (the API reads
them); the KV ledger is the line every agent checks first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from tenantflow.adapters.nats.leases import RateLeases
from tenantflow.adapters.nats.ledger import Ledger
from tenantflow.domain.budget import period_start
from tenantflow.domain.models import ModelResponse
from tenantflow.domain.policy import RateLimit
from tenantflow.domain.tenancy import ReleaseHolds, Settle
from tenantflow.engine.gateway import Gateway
from tenantflow.errors import BudgetExceededError, RateLimitedError
from tenantflow.ports import CallScope

__all__ = ["MeshGateway", "period_budget"]

log = logging.getLogger("tenantflow.mesh")


def period_budget(period: str, now_s: float) -> str:
    """The KV ledger name of the period containing ``now_s`` (``monthly-2026-12-01``)."""
    start = datetime.fromtimestamp(period_start(now_s, period), tz=UTC)  # type: ignore[arg-type]
    return f"{period}-{start:%Y-%m-%d}"


class _LedgerScope:
    """The call's scope, with the store's settle and release mirrored onto the KV ledger."""

    def __init__(self, inner: CallScope, gateway: MeshGateway) -> None:
        self._inner = inner
        self._gateway = gateway

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def write(self, op: Any) -> Any:
        result = await self._inner.write(op)
        if isinstance(op, Settle):
            actual = int(op.actual.get(("period", "micros"), 0))
            await self._gateway.settle_period(self._inner, op.key, actual)
        elif isinstance(op, ReleaseHolds):
            for key in [k for k in self._gateway._holds if k.startswith(op.prefix)]:
                await self._gateway.settle_period(self._inner, key, 0)
        return result

    async def release_holds(self, key: str) -> None:
        await self._inner.release_holds(key)
        await self._gateway.settle_period(self._inner, key, 0)


class MeshGateway(Gateway):
    """The core's gateway with rate limits and the period budget on the fabric (module doc).

    Args:
        base: the app's gateway (its tools, models, platform limits and settings are used).
        leases: this process's token leases (None: the store's buckets, as elsewhere).
        ledgers: region -> the KV budget ledgers (None: the store's period ledger only).
        region_of: the mesh region of a tenant (whose buckets and ledger hold its limits).
    """

    def __init__(
        self,
        base: Gateway,
        *,
        leases: RateLeases | None,
        ledgers: Callable[[str], Ledger] | None,
        region_of: Callable[[str], str],
    ) -> None:
        super().__init__(
            base.tools,
            base.models,
            platform_limits=base.platform_limits,
            tenant_limits=base.tenant_limits,
        )
        self.spend_guard = base.spend_guard
        self.leases = leases
        self.ledgers = ledgers
        self.region_of = region_of
        self._opened: dict[tuple[str, str, str], int] = {}
        self._holds: dict[str, tuple[str, str, str]] = {}
        """call key -> (region, tenant, budget) of a hold open on a KV ledger."""
        self.kv_refusals = 0

    # -- the calls: the scope mirrors settles onto the KV ledger ------------------------------

    async def call_tool(self, ctx: CallScope, name: str, args: dict[str, Any]) -> Any:
        scope: Any = _LedgerScope(ctx, self) if self.ledgers is not None else ctx
        return await super().call_tool(scope, name, args)

    async def call_model(
        self,
        ctx: CallScope,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        temperature: float,
        tools: Iterable[str],
        stream: bool,
        tier: str | None,
        extra_tools: Iterable[Mapping[str, Any]] = (),
    ) -> ModelResponse:
        scope: Any = _LedgerScope(ctx, self) if self.ledgers is not None else ctx
        return await super().call_model(
            scope,
            messages,
            max_tokens=max_tokens,
            temperature=temperature,
            tools=tools,
            stream=stream,
            tier=tier,
            extra_tools=extra_tools,
        )

    # -- rate limits: token leases ------------------------------------------------------------

    async def _acquire(
        self, ctx: CallScope, bucket: str, resource: str, limit: RateLimit, whose: str
    ) -> None:
        if self.leases is None:
            await super()._acquire(ctx, bucket, resource, limit, whose)
            return
        wait = await self.leases.acquire(
            self.region_of(ctx.tenant_id), bucket, resource, limit.rate_per_s, limit.burst
        )
        if wait > 0:
            raise RateLimitedError(
                f"{whose} is over its rate limit for {resource!r}",
                resource=resource,
                retry_after_s=wait,
            )

    async def _throttle(
        self, ctx: CallScope, resource: str, limit: RateLimit, retry_after_s: float
    ) -> None:
        if self.leases is None:
            await super()._throttle(ctx, resource, limit, retry_after_s)
            return
        tenant = ctx.tenant_id
        await self.leases.throttle(
            self.region_of(tenant), tenant, resource, limit.rate_per_s, limit.burst, retry_after_s
        )

    # -- the period budget: the KV ledger -----------------------------------------------------

    async def _reserve(self, ctx: CallScope, key: str, micros: int, tokens: int) -> None:
        limit = ctx.policy.budget.period_micros
        if self.ledgers is None or limit is None or micros <= 0:
            await super()._reserve(ctx, key, micros, tokens)
            return
        tenant = ctx.tenant_id
        region = self.region_of(tenant)
        budget = period_budget(ctx.policy.budget.period, ctx.now_s())
        ledger = self.ledgers(region)
        if self._opened.get((region, tenant, budget)) != limit:
            await ledger.ensure(tenant, budget, limit)
            self._opened[(region, tenant, budget)] = limit
        granted, available = await ledger.try_reserve(tenant, budget, key, micros)
        if not granted:
            self.kv_refusals += 1
            raise BudgetExceededError(
                f"the period budget cannot cover this call: needs {micros} micros,"
                f" {max(0, available)} left",
                scope="period",
                unit="micros",
                needed=micros,
                available=max(0, available),
            )
        self._holds[key] = (region, tenant, budget)
        try:
            await super()._reserve(ctx, key, micros, tokens)
        except BaseException:
            await self.settle_period(ctx, key, 0)
            raise

    async def settle_period(self, ctx: CallScope, key: str, actual_micros: int) -> None:
        """Close the KV hold of ``key`` (if this process opened one), spending ``actual``."""
        hold = self._holds.pop(key, None)
        if hold is None:
            return
        region, tenant, budget = hold
        try:
            await self.ledgers(region).settle(tenant, budget, key, actual_micros)  # type: ignore[misc]
        except Exception as exc:  # the hold stays: conservative, never an overspend
            log.warning("settling %s on the budget ledger of %s failed: %s", key, tenant, exc)
