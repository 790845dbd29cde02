from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

import tenantflow as tf
from tenantflow.domain.spec import Retry, StepSpec, WorkflowSpec


class App(BaseModel):
    name: str


class Out(BaseModel):
    v: int


async def _noop(ctx: Any) -> int:
    return 1


def test_parameters_bind_to_input_and_upstream_steps() -> None:
    wf = tf.Workflow("w", input=App)

    @wf.step
    async def a(ctx: tf.StepContext, app: App) -> Out:
        return Out(v=1)

    @wf.step
    async def b(ctx: tf.StepContext, a: Out, input: App) -> Out:
        return a

    spec = wf.spec
    assert spec.step("b").deps == ("a",)
    assert [(p.name, p.source) for p in spec.step("b").params] == [
        ("a", "step"),
        ("input", "input"),
    ]
    assert spec.sinks == ("b",)
    assert spec.roots == ("a",)


def test_unmatched_parameter_is_refused_at_definition() -> None:
    wf = tf.Workflow("w", input=App)
    with pytest.raises(tf.SpecError, match="parameter 'verify' of step 'decide'") as err:

        @wf.step
        async def decide(ctx: tf.StepContext, verify: Out) -> Out:
            return verify

    assert err.value.fields["parameter"] == "verify"


def test_unknown_dependency_and_sync_function_are_refused() -> None:
    wf = tf.Workflow("w")
    with pytest.raises(tf.SpecError, match="unknown step 'nope'"):

        @wf.step(after=["nope"])
        async def a(ctx: tf.StepContext) -> None:
            return None

    with pytest.raises(tf.SpecError, match="must be an async function"):

        @wf.step
        def b(ctx: tf.StepContext) -> None:  # type: ignore[type-var]
            return None


def test_cycle_is_detected() -> None:
    a = StepSpec("a", _noop, deps=("b",), params=())
    b = StepSpec("b", _noop, deps=("a",), params=())
    with pytest.raises(tf.SpecError, match="cycle through a, b"):
        WorkflowSpec("w", "1", Any, [a, b])


def test_duplicate_and_bad_names_are_refused() -> None:
    with pytest.raises(tf.SpecError, match="twice"):
        WorkflowSpec("w", "1", Any, [StepSpec("a", _noop, (), ()), StepSpec("a", _noop, (), ())])
    with pytest.raises(tf.SpecError, match="invalid"):
        WorkflowSpec("bad name", "1", Any, [StepSpec("a", _noop, (), ())])
    with pytest.raises(tf.SpecError, match="no steps"):
        WorkflowSpec("w", "1", Any, [])


def test_fan_out_must_name_a_parameter_and_timeout_must_be_positive() -> None:
    wf = tf.Workflow("w")
    with pytest.raises(tf.SpecError, match="fans out over 'items'"):

        @wf.step(fan_out="items")
        async def a(ctx: tf.StepContext) -> None:
            return None

    with pytest.raises(tf.SpecError, match="timeout"):

        @wf.step(timeout=timedelta(0))
        async def b(ctx: tf.StepContext) -> None:
            return None


def test_retry_backoff_grows_and_is_capped_with_jitter() -> None:
    r = Retry(
        max_attempts=10,
        initial=timedelta(seconds=1),
        multiplier=2,
        max_interval=timedelta(seconds=5),
        jitter=0.2,
    )
    assert r.delay_s(1, 0.5) == pytest.approx(1.0)
    assert r.delay_s(3, 0.5) == pytest.approx(4.0)
    assert r.delay_s(8, 0.5) == pytest.approx(5.0)
    assert r.delay_s(1, 0.0) == pytest.approx(0.8)
    assert r.delay_s(1, 0.999999) == pytest.approx(1.2, rel=1e-4)
    assert r.should_retry(1, ValueError())
    assert not r.should_retry(10, ValueError())
    no = Retry(no_retry_on=(KeyError,))
    assert not no.should_retry(1, KeyError())
    with pytest.raises(tf.ConfigurationError):
        Retry(max_attempts=0)
