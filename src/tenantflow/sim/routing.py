"""Which endpoint a simulated model call goes to.

With tenant controls the choice is the real :func:`~tenantflow.domain.routing.select_endpoint`
(residency, allow lists, context, health, tier, budget), called with the health the scenario's
outage windows give at that moment. Without controls it is the baseline router: the fastest
healthy endpoint of the preferred tier (then the cheapest), wherever it is and whatever the
tenant's policy says — which is how residency violations come about.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tenantflow.domain.policy import ModelTier, Policy
from tenantflow.domain.routing import Selection, select_endpoint
from tenantflow.errors import ContractError, NotAllowedError, ResidencyError
from tenantflow.sim.scenario import SimEndpoint
from tenantflow.sim.spec import ModelCallSpec

__all__ = ["Router"]

_NO_ROUTE = (ResidencyError, NotAllowedError, ContractError)


class Router:
    """Endpoint choice for model calls.

    Args:
        endpoints: The scenario's endpoints.
    """

    def __init__(self, endpoints: Sequence[SimEndpoint]) -> None:
        self.endpoints = list(endpoints)
        self.real = [e.endpoint for e in self.endpoints]
        self.by_name = {e.endpoint.name: e for e in self.endpoints}
        self._has_outages = any(e.outages for e in self.endpoints)
        self._all = frozenset(self.by_name)
        self._memo: dict[tuple[int, int], tuple[Selection | None, int]] = {}

    def select(
        self, policy: Policy, model: ModelCallSpec, remaining: int | None, now_s: float
    ) -> Selection:
        """:func:`select_endpoint` for one call, memoised where ``remaining`` cannot matter.

        Budget enters the choice only by dropping endpoints whose worst case exceeds
        ``remaining``; when ``remaining`` covers the dearest endpoint of all, nothing is
        dropped and the answer is the unlimited one, computed once per policy and call (never
        cached while an outage schedule makes health change over time).

        Raises:
            BudgetExceededError, ResidencyError, NotAllowedError, ContractError: as
                :func:`select_endpoint`.
        """
        if self._has_outages:
            return self._select(policy, model, remaining, now_s)
        key = (id(policy), id(model))
        memo = self._memo.get(key)
        if memo is None:
            bound = max(
                e.worst_case_micros(model.prompt_tokens, model.max_tokens) for e in self.real
            )
            try:
                unlimited: Selection | None = self._select(policy, model, None, now_s)
            except _NO_ROUTE:
                unlimited = None  # raises again below, every time: nothing to remember
            memo = self._memo[key] = (unlimited, bound)
        unlimited, bound = memo
        if unlimited is not None and (remaining is None or remaining >= bound):
            return unlimited
        return self._select(policy, model, remaining, now_s)

    def fastest(self, tier: ModelTier, model: ModelCallSpec, now_s: float) -> SimEndpoint | None:
        """The baseline router: the fastest healthy endpoint of ``tier`` (any tier if none),
        then the cheapest for this call; None when every endpoint is down."""
        live = [e for e in self.endpoints if e.healthy(now_s)]
        if not live:
            return None
        of_tier = [e for e in live if e.endpoint.tier == tier] or live
        return min(
            of_tier,
            key=lambda e: (
                e.latency_s,
                e.endpoint.worst_case_micros(model.prompt_tokens, model.max_tokens),
                e.endpoint.name,
            ),
        )

    def _select(
        self, policy: Policy, model: ModelCallSpec, remaining: int | None, now_s: float
    ) -> Selection:
        return select_endpoint(
            policy,
            self.real,
            healthy=self._healthy(now_s),
            max_tokens=model.max_tokens,
            prompt_tokens=model.prompt_tokens,
            remaining_micros=remaining,
            prefer_tier=model.tier,
        )

    def _healthy(self, now_s: float) -> frozenset[str] | Callable[[str], bool]:
        if not self._has_outages:
            return self._all
        by_name = self.by_name
        return lambda name: by_name[name].healthy(now_s)
