"""How an attempt's error becomes its outcome (tenantflow.engine.execution.outcomes)."""

from __future__ import annotations

import asyncio

import pytest

import tenantflow as tf
from tenantflow.engine.execution.outcomes import (
    AttemptOutcome,
    AwaitingChild,
    Cancelled,
    Escalated,
    Failed,
    LeaseLost,
    Paused,
    RateLimited,
    ReviewRequested,
    Skipped,
    Succeeded,
    classify,
)
from tenantflow.engine.signals import AwaitChild, Escalate, Pause, SkipStep

CASES: list[tuple[BaseException, bool, type[AttemptOutcome], str]] = [
    (
        tf.RateLimitedError("over", resource="tool:x", retry_after_s=2.0),
        False,
        RateLimited,
        "rate_limited",
    ),
    (SkipStep("budget"), False, Skipped, "skipped"),
    (SkipStep("budget"), True, Failed, "failed"),  # an element cannot be skipped on its own
    (Escalate("budget", 2, "prompt"), False, Escalated, "escalated"),
    (Pause("budget"), True, Paused, "paused"),
    (AwaitChild("run_child"), False, AwaitingChild, "waiting"),
    (ValueError("boom"), False, Failed, "failed"),
    (tf.NotAllowedError("no"), False, Failed, "failed"),
]


@pytest.mark.parametrize(("error", "element", "kind", "name"), CASES)
def test_classify(error: BaseException, element: bool, kind: type, name: str) -> None:
    outcome = classify(error, element=element)
    assert isinstance(outcome, kind)
    assert outcome.name == name
    assert outcome.error is error


def test_a_rate_limit_waits_at_least_a_millisecond() -> None:
    outcome = classify(tf.RateLimitedError("over", resource="r", retry_after_s=0.0), element=False)
    assert isinstance(outcome, RateLimited)
    assert (outcome.resource, outcome.wait_s) == ("r", 0.001)


def test_the_outcomes_without_an_error() -> None:
    cancelled = Cancelled(asyncio.CancelledError())
    assert [o.name for o in (Succeeded(1, b"1"), ReviewRequested({}), LeaseLost(), cancelled)] == [
        "succeeded",
        "review",
        "lease_lost",
        "cancelled",
    ]
    assert Succeeded(1, b"1").error is None and LeaseLost().error is None
