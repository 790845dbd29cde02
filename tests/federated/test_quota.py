"""Global quota leases: the sum held never exceeds the limit, whatever order heartbeats come in
and however demand moves; a cell without the plane never uses more than its last lease."""

from __future__ import annotations

import random

import pytest

from tenantflow.placement.federated.quota import Allocator, GlobalLimit, Lease, decayed


@pytest.mark.parametrize("seed", range(5))
def test_the_sum_of_leases_held_never_exceeds_the_limit(seed: int) -> None:
    rng = random.Random(seed)
    allocator = Allocator(ttl_s=10)
    allocator.set_limit("tool:bureau", GlobalLimit(rate_per_s=10.0, burst=20))
    cells = [f"c{i}" for i in range(rng.randint(2, 8))]
    now = 0.0
    for _ in range(500):
        now += rng.uniform(0, 1)
        cell = rng.choice(cells)
        allocator.grant(cell, rng.choice([0, 0, 1, 5, 50, 500]), now)
        rate, burst = allocator.held_total("tool:bureau")
        assert rate <= 10.0 + 1e-9 and burst <= 20, (rate, burst)
        if rng.random() < 0.02 and len(cells) > 1:
            gone = cells.pop(rng.randrange(len(cells)))
            allocator.forget(gone)


def test_shares_follow_demand_within_a_round_of_heartbeats() -> None:
    allocator = Allocator(ttl_s=10)
    allocator.set_limit("r", GlobalLimit(rate_per_s=100.0, burst=100))
    now = 0.0
    for _ in range(3):  # equal demand: even shares once every cell renewed
        for cell in ("a", "b", "c", "d"):
            now += 0.1
            allocator.grant(cell, 10, now)
    even = {c: r for c, (r, _) in allocator.held["r"].items()}
    assert all(24 < r <= 25 + 1e-9 for r in even.values()), even
    for _ in range(2):  # "a" gets busy, the others go quiet
        for cell, backlog in (("a", 300), ("b", 0), ("c", 0), ("d", 0)):
            now += 0.1
            allocator.grant(cell, backlog, now)
    grown = allocator.held["r"]["a"][0]
    assert grown > 90, grown  # 301 of 304 shares
    assert allocator.held_total("r")[0] <= 100 + 1e-9


def test_without_the_plane_a_lease_decays_to_a_share_never_above_itself() -> None:
    big = Lease("r", 80.0, 80, expires_at=10.0, cells=4, limit_rate_per_s=100.0, limit_burst=100)
    small = Lease("r", 5.0, 5, expires_at=10.0, cells=4, limit_rate_per_s=100.0, limit_burst=100)
    assert decayed(big, 9.9) == (80.0, 80)  # still valid
    assert decayed(big, 10.0) == (25.0, 25)  # expired: an even share
    assert decayed(small, 10.0) == (5.0, 5)  # never above the last lease


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        GlobalLimit(rate_per_s=0.0, burst=1)
    with pytest.raises(ValueError):
        GlobalLimit(rate_per_s=1.0, burst=0)


def test_a_cell_refuses_a_resource_it_holds_no_lease_of() -> None:
    from tenantflow.errors import RateLimitedError
    from tenantflow.placement.federated.cell import LeasedLimits, _limit

    limits = LeasedLimits({}, retry_after_s=0.5)
    limits["tool:bureau"] = _limit(0.0, 0)
    limits["tool:other"] = _limit(4.0, 3)
    with pytest.raises(RateLimitedError) as refused:
        limits.get("tool:bureau")
    assert refused.value.fields["retry_after_s"] == 0.5
    granted = limits.get("tool:other")
    assert granted.rate_per_s == pytest.approx(4.0) and granted.burst == 3
    assert limits.get("tool:unlimited") is None
