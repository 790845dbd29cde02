"""Model routing: pick the endpoint for a model call from the tenant's policy.

The rules, in the order they are applied:

1. **Residency** — only endpoints in the policy's region (a policy without a region may use any).
   Nothing ever falls back to another region: no usable in-region endpoint is a
   :class:`~tenantflow.errors.ResidencyError`, and the step waits or fails.
2. **Allow lists** — only models the policy allows and does not deny, else
   :class:`~tenantflow.errors.NotAllowedError`.
3. **Context** — the prompt plus ``max_tokens`` must fit the endpoint's context window.
4. **Health** — unhealthy endpoints are skipped.
5. **Tier and budget** — the cheapest endpoint of the preferred tier whose worst case fits the
   remaining budget; otherwise the cheapest affordable endpoint of another tier, marked
   ``degraded``; otherwise :class:`~tenantflow.errors.BudgetExceededError`.

Ties break on (worst-case cost, provider, name), so the choice is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Annotated, Any, Final, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)

from tenantflow.domain.budget import cost_micros, worst_case_micros
from tenantflow.domain.limits import INT64_MAX, MAX_TOKENS, within
from tenantflow.domain.policy import ModelTier, Policy
from tenantflow.errors import (
    BudgetExceededError,
    ConfigurationError,
    ContractError,
    NotAllowedError,
    ResidencyError,
    brief,
)

__all__ = ["Endpoint", "Selection", "select_endpoint"]

# Prompt and completion of at most MAX_TOKENS each, at this price, still fit 64 bits.
_MAX_PRICE: Final[int] = INT64_MAX // (2 * MAX_TOKENS) * 1000


class Endpoint(BaseModel):
    """A model deployment: where it runs, what it is, and what it costs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    provider: str = Field(min_length=1)
    model: str = Field(min_length=1)
    region: str = Field(min_length=1)
    tier: ModelTier
    # Prices and the context are bounded so that a call's cost fits the ledger's 64-bit columns.
    price_in_per_1k_micros: Annotated[int, within(0, _MAX_PRICE)] = Field(
        ge=0, description="µ$ per 1000 prompt tokens"
    )
    price_out_per_1k_micros: Annotated[int, within(0, _MAX_PRICE)] = Field(
        ge=0, description="µ$ per 1000 completion tokens"
    )
    max_context: Annotated[int, within(1, MAX_TOKENS)] = Field(
        gt=0, description="prompt + completion tokens the model accepts"
    )

    @model_validator(mode="wrap")
    @classmethod
    def _as_configuration_error(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        try:
            return handler(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise ConfigurationError(
                f"invalid endpoint {field} = {brief(first.get('input'))}: {first['msg']}",
                field=f"endpoint.{field}",
                value=first.get("input"),
            ) from exc

    def worst_case_micros(self, prompt_tokens: int, max_tokens: int) -> int:
        """What to reserve before calling: the prompt plus ``max_tokens`` of output."""
        return worst_case_micros(
            prompt_tokens,
            max_tokens,
            price_in_per_1k_micros=self.price_in_per_1k_micros,
            price_out_per_1k_micros=self.price_out_per_1k_micros,
        )

    def cost_micros(self, prompt_tokens: int, completion_tokens: int) -> int:
        """What to settle after calling, from the tokens actually consumed."""
        return cost_micros(
            prompt_tokens,
            completion_tokens,
            price_in_per_1k_micros=self.price_in_per_1k_micros,
            price_out_per_1k_micros=self.price_out_per_1k_micros,
        )


@dataclass(frozen=True, slots=True)
class Selection:
    """The chosen endpoint, its worst-case cost, and whether it departs from the preference."""

    endpoint: Endpoint
    estimate_micros: int
    degraded: bool
    reason: str


def select_endpoint(
    policy: Policy,
    endpoints: Iterable[Endpoint],
    *,
    healthy: Callable[[str], bool] | AbstractSet[str],
    max_tokens: int,
    prompt_tokens: int,
    remaining_micros: int | None,
    prefer_tier: ModelTier | None = None,
) -> Selection:
    """Choose the endpoint for one model call (see the module docstring for the rules).

    Args:
        policy: The run's policy snapshot.
        endpoints: Every endpoint the deployment knows, in any region.
        healthy: Endpoint names that may be called, or a predicate over names (circuit state).
        max_tokens: The most completion tokens the call may produce.
        prompt_tokens: The prompt's size in tokens.
        remaining_micros: Budget left for this call (``None``: unlimited).
        prefer_tier: Overrides the policy's ``model_tier`` for this step.

    Returns:
        The selection; ``degraded`` is True when the endpoint is not of the preferred tier.

    Raises:
        ResidencyError: no healthy endpoint in the policy's region (fields ``region``,
            ``tried``); the call is never sent to another region.
        NotAllowedError: the region has endpoints but none with an allowed model.
        ContractError: no allowed endpoint's context window fits the request.
        BudgetExceededError: no candidate's worst case fits ``remaining_micros``.
    """
    if prompt_tokens < 0 or max_tokens < 0:
        raise ValueError("prompt_tokens and max_tokens must be >= 0")
    is_healthy = healthy.__contains__ if isinstance(healthy, AbstractSet) else healthy
    region = policy.region
    in_region = [e for e in endpoints if region is None or e.region == region]
    if not in_region:
        raise ResidencyError(
            f"no endpoint in region {region!r}; calls never leave the tenant's region",
            region=region,
            tried=[],
        )
    allowed = [e for e in in_region if policy.allows_model(e.model)]
    if not allowed:
        raise NotAllowedError(
            f"no endpoint in region {region!r} serves a model this tenant may use",
            region=region,
            models=sorted({e.model for e in in_region}),
        )
    needed_context = prompt_tokens + max_tokens
    fitting = [e for e in allowed if e.max_context >= needed_context]
    if not fitting:
        raise ContractError(
            f"prompt_tokens + max_tokens = {needed_context} exceeds every allowed endpoint's "
            f"context (largest {max(e.max_context for e in allowed)})",
            field="max_tokens",
            needed=needed_context,
        )
    live = [e for e in fitting if is_healthy(e.name)]
    if not live:
        tried = sorted(e.name for e in fitting)
        raise ResidencyError(
            f"no healthy endpoint in region {region!r} (tried {', '.join(tried)}); "
            "not falling back to another region",
            region=region,
            tried=tried,
        )
    priced = sorted(
        ((e.worst_case_micros(prompt_tokens, max_tokens), e) for e in live),
        key=lambda pair: (pair[0], pair[1].provider, pair[1].name),
    )
    affordable = [
        (cost, e) for cost, e in priced if remaining_micros is None or cost <= remaining_micros
    ]
    tier = prefer_tier or policy.model_tier
    for cost, endpoint in affordable:
        if endpoint.tier == tier:
            return Selection(endpoint, cost, degraded=False, reason=f"cheapest healthy {tier}")
    if affordable:
        cost, endpoint = affordable[0]
        has_tier = any(e.tier == tier for _, e in priced)
        why = "does not fit the remaining budget" if has_tier else "has no healthy endpoint"
        return Selection(
            endpoint,
            cost,
            degraded=True,
            reason=f"preferred tier {tier!r} {why}; using {endpoint.tier} {endpoint.name!r}",
        )
    cheapest = priced[0][0]
    raise BudgetExceededError(
        f"the cheapest in-region endpoint needs {cheapest} µ$, {remaining_micros} µ$ remain",
        needed=cheapest,
        available=remaining_micros,
        scope="call",
        unit="micros",
    )
