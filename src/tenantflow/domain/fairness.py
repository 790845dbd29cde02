"""Fairness metrics: Jain's index over weight-normalised throughput.

Jain's index of ``x_1..x_n`` is ``(Σx)² / (n · Σx²)``. It is 1.0 when every value is equal and
``1/n`` when one value holds everything; ``k/n`` when ``k`` values share equally and the rest
get nothing. Applied to throughput divided by weight, 1.0 means every tenant got exactly its
weighted share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from tenantflow.errors import ContractError

__all__ = ["jain_index", "max_min_shares", "weighted_jain"]


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index of ``values``.

    Args:
        values: Non-negative, finite allocations (throughput, service time, ...).

    Returns:
        A number in ``[1/n, 1]``; 1.0 when all values are equal, including all zero.

    Raises:
        ContractError: ``values`` is empty, or holds a negative or non-finite number.
    """
    if not values:
        raise ContractError("jain_index needs at least one value", field="values")
    total = 0.0
    squares = 0.0
    for value in values:
        if not (value >= 0.0 and math.isfinite(value)):
            raise ContractError(
                f"jain_index values must be finite and >= 0, got {value!r}", field="values"
            )
        total += value
        squares += value * value
    if squares == 0.0:
        return 1.0  # nobody got anything: equal, if useless
    return min(1.0, total * total / (len(values) * squares))


def weighted_jain(throughput: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Jain's index of each tenant's throughput divided by its weight.

    The tenants measured are those in ``weights`` (e.g. every tenant that had work); a tenant
    missing from ``throughput`` counts as 0.

    Args:
        throughput: Service received per tenant (any unit), >= 0.
        weights: Weight per tenant, > 0.

    Returns:
        Jain's index of ``throughput[t] / weights[t]`` over the tenants in ``weights``.

    Raises:
        ContractError: ``weights`` is empty, a weight is not > 0, a throughput value is
            invalid, or ``throughput`` names a tenant that has no weight.
    """
    extra = throughput.keys() - weights.keys()
    if extra:
        raise ContractError(
            f"throughput for tenants without a weight: {sorted(extra)[:5]}", field="weights"
        )
    normalised: list[float] = []
    for tenant_id, weight in weights.items():
        if not (weight > 0.0 and math.isfinite(weight)):
            raise ContractError(f"weight of {tenant_id!r} must be > 0", field="weights")
        normalised.append(throughput.get(tenant_id, 0.0) / weight)
    return jain_index(normalised)


def max_min_shares(
    demand: Mapping[str, float],
    weight: Mapping[str, float],
    cap: Mapping[str, float],
    capacity: float,
) -> dict[str, float]:
    """Weighted max-min fair shares of ``capacity`` (water-filling).

    Nobody is given more than ``min(demand, cap)``; what they leave is split by weight among
    those who want more, until the capacity or the demand runs out. This is what a perfectly
    fair, work-conserving scheduler would hand each tenant.

    Args:
        demand: What each tenant asked for (e.g. slot-seconds of work), >= 0.
        weight: Each tenant's weight, > 0 (every tenant of ``demand`` needs one).
        cap: Each tenant's ceiling (e.g. running-step cap × duration); ``math.inf`` for none.
        capacity: What there is to share, >= 0.

    Returns:
        Each tenant's share, at least ``1e-12`` so it can divide.

    Raises:
        ContractError: a tenant of ``demand`` has no weight or cap, or a weight is not > 0.
    """
    missing = [t for t in demand if t not in weight or t not in cap]
    if missing:
        raise ContractError(f"no weight or cap for tenants {missing[:5]}", field="weight")
    if any(not weight[t] > 0.0 for t in demand):
        raise ContractError("every weight must be > 0", field="weight")
    limit = {t: max(0.0, min(demand[t], cap[t])) for t in demand}
    share = dict.fromkeys(demand, 0.0)
    left = max(0.0, capacity)
    open_ = {t for t in demand if limit[t] > 0.0}
    while open_ and left > 1e-9:
        level = left / sum(weight[t] for t in open_)
        capped = {t for t in open_ if limit[t] - share[t] <= level * weight[t]}
        if not capped:
            for t in open_:
                share[t] += level * weight[t]
            break
        for t in capped:
            left -= limit[t] - share[t]
            share[t] = limit[t]
        open_ -= capped
    return {t: max(v, 1e-12) for t, v in share.items()}
