"""AdmissionController: per-tenant caps and queues, lane order, backpressure, cap changes."""

from __future__ import annotations

from collections.abc import Hashable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenantflow.domain.admission import AdmissionController
from tenantflow.domain.scheduler import Lane
from tenantflow.errors import BackpressureError, ConfigurationError, ConflictError, NotFoundError

T0 = 1_700_000_000.0


def controller(max_queued: int = 100, **caps: int | None) -> AdmissionController:
    ctl = AdmissionController(max_queued=max_queued, aging_s=60.0)
    for tenant_id, cap in caps.items():
        ctl.configure_tenant(tenant_id, active_cap=cap, now_s=T0)
    return ctl


def test_runs_start_under_the_cap_and_wait_above_it() -> None:
    ctl = controller(a=2)
    assert ctl.submit("a", "r1", "normal", T0)
    assert ctl.submit("a", "r2", "normal", T0)
    assert not ctl.submit("a", "r3", "normal", T0)
    assert (ctl.active("a"), ctl.queued("a")) == (2, 1)
    assert ctl.finished("a", "r1", T0 + 1) == ["r3"]
    assert ctl.finished("a", "r2", T0 + 2) == []
    assert (ctl.active("a"), ctl.queued("a"), ctl.total_active, ctl.total_queued) == (1, 0, 1, 0)


def test_queue_order_is_lane_then_fifo() -> None:
    ctl = controller(a=1)
    assert ctl.submit("a", "running", "normal", T0)
    submitted: list[tuple[str, Lane]] = [
        ("n1", "normal"),
        ("b1", "background"),
        ("u1", "urgent"),
        ("n2", "normal"),
        ("u2", "urgent"),
    ]
    for i, (key, lane) in enumerate(submitted):
        assert not ctl.submit("a", key, lane, T0 + i)
    order: list[Hashable] = []
    current: Hashable = "running"
    for i in range(len(submitted)):
        (current,) = ctl.finished("a", current, T0 + 10 + i)
        order.append(current)
    assert order == ["u1", "u2", "n1", "n2", "b1"]


def test_aging_lets_old_background_runs_past_fresh_urgent_ones() -> None:
    ctl = controller(a=1)  # aging_s = 60
    ctl.submit("a", "running", "normal", T0)
    ctl.submit("a", "old-background", "background", T0)
    ctl.submit("a", "fresh-urgent", "urgent", T0 + 120)
    assert ctl.finished("a", "running", T0 + 120) == ["old-background"]


def test_tenants_queue_independently() -> None:
    ctl = controller(a=1, b=1)
    ctl.submit("a", "a1", "normal", T0)
    ctl.submit("a", "a2", "normal", T0)
    assert ctl.submit("b", "b1", "normal", T0)  # a's queue does not hold b back
    assert ctl.finished("b", "b1", T0) == []  # and b's finishing admits nothing of a's
    assert ctl.queued("a") == 1


def test_a_full_queue_refuses_with_retry_after_and_keeps_nothing() -> None:
    ctl = controller(max_queued=2, a=1, b=1)
    ctl.submit("a", "a0", "normal", T0)
    ctl.submit("a", "a1", "normal", T0)
    ctl.submit("a", "a2", "normal", T0)
    with pytest.raises(BackpressureError) as info:
        ctl.submit("a", "a3", "urgent", T0)
    err = info.value
    assert err.fields["scope"] == "global"
    assert err.retry_after_s > 0
    assert err.to_dict()["code"] == "backpressure"
    assert ctl.total_queued == 2 and ctl.queued("a") == 2  # refused, not silently queued
    # A run that can start at once adds nothing to the queue: one tenant's flood must not
    # block another tenant's admissions.
    assert ctl.submit("b", "b0", "normal", T0)
    with pytest.raises(BackpressureError):
        ctl.submit("b", "b1", "normal", T0)  # but b's waiting run is refused too
    # Once runs drain the same submission goes through.
    assert ctl.finished("a", "a0", T0 + 1) == ["a1"]
    assert not ctl.submit("a", "a3", "urgent", T0 + 1)


def test_retry_after_follows_the_recent_drain_rate() -> None:
    ctl = AdmissionController(
        max_queued=10, min_retry_after_s=0.5, max_retry_after_s=120.0, drain_half_life_s=60.0
    )
    ctl.configure_tenant("a", active_cap=1, now_s=T0)
    ctl.submit("a", 0, "normal", T0)
    for n in range(1, 11):
        ctl.submit("a", n, "normal", T0)
    with pytest.raises(BackpressureError) as info:
        ctl.submit("a", "late", "normal", T0)
    assert info.value.retry_after_s == 120.0  # nothing has drained yet: the cautious maximum
    # Drain one run every 2 s for a minute: 0.5 runs/s.
    now, next_key = T0, 11
    active: Hashable = 0
    for _ in range(30):
        now += 2.0
        (active,) = ctl.finished("a", active, now)
        ctl.submit("a", next_key, "normal", now)  # keep the queue full
        next_key += 1
    with pytest.raises(BackpressureError) as info:
        ctl.submit("a", "late", "normal", now)
    # 10 queued must fall to 9 (90 % of the limit): one run at 0.5 runs/s is about 2 s.
    assert info.value.retry_after_s == pytest.approx(2.0, rel=0.25)
    with pytest.raises(BackpressureError) as info:  # a long silence lowers the rate
        ctl.submit("a", "late", "normal", now + 600)
    assert info.value.retry_after_s > 20.0


def test_per_tenant_queue_limit_refuses_only_that_tenant() -> None:
    ctl = controller(max_queued=100, a=1, b=1)
    ctl.configure_tenant("a", active_cap=1, max_queued=1, now_s=T0)
    ctl.submit("a", "a0", "normal", T0)
    ctl.submit("a", "a1", "normal", T0)
    with pytest.raises(BackpressureError) as info:
        ctl.submit("a", "a2", "normal", T0)
    assert info.value.fields["scope"] == "tenant" and info.value.fields["tenant_id"] == "a"
    ctl.submit("b", "b0", "normal", T0)
    assert not ctl.submit("b", "b1", "normal", T0)


def test_cap_changes_apply_at_runtime_without_stopping_active_runs() -> None:
    ctl = controller(a=3)
    for key in ["r1", "r2", "r3", "r4", "r5"]:
        ctl.submit("a", key, "normal", T0)
    assert ctl.active("a") == 3
    assert ctl.configure_tenant("a", active_cap=1, now_s=T0) == []  # nobody is stopped
    assert ctl.active("a") == 3
    assert ctl.finished("a", "r1", T0) == []  # 2 active, cap 1: still over
    assert ctl.finished("a", "r2", T0) == []
    assert ctl.finished("a", "r3", T0) == ["r4"]
    assert ctl.configure_tenant("a", active_cap=None, now_s=T0) == ["r5"]  # raised: admit now
    assert ctl.submit("a", "r6", "normal", T0)


def test_duplicates_unknowns_and_withdrawals() -> None:
    ctl = controller(a=1)
    with pytest.raises(NotFoundError):
        ctl.submit("ghost", "r", "normal", T0)
    ctl.submit("a", "r1", "normal", T0)
    ctl.submit("a", "r2", "normal", T0)
    ctl.submit("a", "r3", "normal", T0)
    with pytest.raises(ConflictError):
        ctl.submit("a", "r1", "normal", T0)  # active
    with pytest.raises(ConflictError):
        ctl.submit("a", "r2", "urgent", T0)  # queued
    with pytest.raises(NotFoundError):
        ctl.finished("a", "r2", T0)  # queued, not active
    assert ctl.withdraw("a", "r2")
    assert not ctl.withdraw("a", "r2") and not ctl.withdraw("a", "r1")
    assert not ctl.withdraw("ghost", "r1")
    assert ctl.finished("a", "r1", T0) == ["r3"]  # the withdrawn run is skipped
    assert ctl.submit("a", "r2", "normal", T0) is False  # and may be submitted again


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        AdmissionController(max_queued=0)
    with pytest.raises(ConfigurationError):
        AdmissionController(max_queued=1, aging_s=0.0)
    with pytest.raises(ConfigurationError):
        AdmissionController(max_queued=1, min_retry_after_s=5.0, max_retry_after_s=1.0)
    ctl = AdmissionController(max_queued=1)
    with pytest.raises(ConfigurationError):
        ctl.configure_tenant("a", active_cap=-1, now_s=T0)
    with pytest.raises(ConfigurationError):
        ctl.configure_tenant("a", max_queued=0, now_s=T0)


ops = st.lists(
    st.tuples(
        st.sampled_from(["submit", "finish", "withdraw", "cap"]),
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["urgent", "normal", "background"]),
        st.integers(0, 3),
    ),
    max_size=200,
)


@settings(max_examples=100, deadline=None)
@given(ops)
def test_no_run_is_lost_and_caps_hold(script: list[tuple[str, str, Lane, int]]) -> None:
    ctl = AdmissionController(max_queued=8)
    caps = {"a": 1, "b": 2, "c": 0}
    for tenant_id, cap in caps.items():
        ctl.configure_tenant(tenant_id, active_cap=cap, now_s=T0)
    active: dict[str, set[int]] = {t: set() for t in caps}
    waiting: dict[str, set[int]] = {t: set() for t in caps}
    over_cap = dict.fromkeys(caps, False)  # a lowered cap may leave a tenant above it
    for n, (op, tenant_id, lane, arg) in enumerate(script):
        now = T0 + n
        admitted: list[Hashable] = []
        if op == "submit":
            try:
                if ctl.submit(tenant_id, n, lane, now):
                    admitted = [n]
                else:
                    waiting[tenant_id].add(n)
            except BackpressureError as exc:
                assert exc.retry_after_s > 0 and ctl.total_queued >= 8
        elif op == "finish" and active[tenant_id]:
            run = sorted(active[tenant_id])[arg % len(active[tenant_id])]
            active[tenant_id].discard(run)
            admitted = ctl.finished(tenant_id, run, now)
        elif op == "withdraw" and waiting[tenant_id]:
            run = sorted(waiting[tenant_id])[arg % len(waiting[tenant_id])]
            assert ctl.withdraw(tenant_id, run)
            waiting[tenant_id].discard(run)
        elif op == "cap":
            over_cap[tenant_id] = len(active[tenant_id]) > arg
            caps[tenant_id] = arg
            admitted = ctl.configure_tenant(tenant_id, active_cap=arg, now_s=now)
        for started in admitted:
            assert isinstance(started, int)
            waiting[tenant_id].discard(started)
            active[tenant_id].add(started)
        for t in caps:
            if len(active[t]) <= caps[t]:
                over_cap[t] = False
            assert ctl.active(t) == len(active[t]) and ctl.queued(t) == len(waiting[t])
            assert len(active[t]) <= caps[t] or over_cap[t]
            # Work-conserving per tenant: nobody waits while its tenant is under its cap.
            assert not waiting[t] or len(active[t]) >= caps[t]
    assert ctl.total_queued == sum(len(w) for w in waiting.values())
    assert ctl.total_active == sum(len(a) for a in active.values())
