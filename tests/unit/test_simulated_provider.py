"""SimulatedProvider: deterministic replies, bounded tokens, injected failures, clock latency."""

from __future__ import annotations

import asyncio
import math
import statistics
from typing import Any

import pytest

from tenantflow.adapters.providers import LatencyProfile, SimulatedProvider
from tenantflow.domain.models import ModelRequest, ModelResponse
from tenantflow.errors import ConfigurationError, ProviderError, ProviderThrottledError
from tenantflow.testing import FakeClock

LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


class RecordingClock(FakeClock):
    """A FakeClock whose sleeps return at once and are recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def ask(text: str, **kwargs: Any) -> ModelRequest:
    return ModelRequest(model="m", messages=({"role": "user", "content": text},), **kwargs)


def sim(clock: FakeClock | None = None, **kwargs: Any) -> SimulatedProvider:
    return SimulatedProvider(clock=clock or RecordingClock(), **kwargs)


async def outcomes(provider: SimulatedProvider, n: int) -> list[str]:
    out = []
    for i in range(n):
        try:
            await provider.complete(ask(f"prompt {i}"))
            out.append("ok")
        except ProviderThrottledError:
            out.append("throttled")
        except ProviderError:
            out.append("failed")
    return out


async def test_same_seed_same_replies_and_latencies() -> None:
    clock_a, clock_b = RecordingClock(), RecordingClock()
    a, b = sim(clock_a, seed=7), sim(clock_b, seed=7)
    prompts = [f"Assess application {i} for credit risk" for i in range(20)]
    replies_a = [await a.complete(ask(p)) for p in prompts]
    replies_b = [await b.complete(ask(p)) for p in prompts]
    assert replies_a == replies_b
    assert clock_a.sleeps == clock_b.sleeps
    assert len(set(clock_a.sleeps)) > 1  # drawn per call, not a constant
    assert len({r.text for r in replies_a}) == len(prompts)  # the text depends on the prompt
    assert all(r.text and r.tokens_out > 0 for r in replies_a)


async def test_different_seeds_give_different_replies() -> None:
    a, b = sim(seed=1), sim(seed=2)
    prompts = [f"question {i}" for i in range(20)]
    texts_a = [(await a.complete(ask(p))).text for p in prompts]
    texts_b = [(await b.complete(ask(p))).text for p in prompts]
    assert sum(x != y for x, y in zip(texts_a, texts_b, strict=True)) == len(prompts)


async def test_the_idempotency_key_is_part_of_the_reply() -> None:
    provider = sim()
    first = await provider.complete(ask("same prompt", idempotency_key="k1"))
    retry = await provider.complete(ask("same prompt", idempotency_key="k1"))
    other = await provider.complete(ask("same prompt", idempotency_key="k2"))
    assert first == retry
    assert first.text != other.text


async def test_prompt_tokens_follow_tokens_per_char() -> None:
    provider = sim(tokens_per_char=0.5)
    request = ModelRequest(
        model="m",
        messages=({"role": "system", "content": "abc"}, {"role": "user", "content": "hello"}),
    )
    assert (await provider.complete(request)).tokens_in == math.ceil(8 * 0.5)


async def test_reply_tokens_never_exceed_max_tokens() -> None:
    provider = sim(out_tokens=(50, 500))
    replies = [await provider.complete(ask(f"p{i}", max_tokens=100)) for i in range(200)]
    assert all(0 < r.tokens_out <= 100 for r in replies)
    capped = [r for r in replies if r.finish_reason == "length"]
    assert len(capped) > 100  # most draws in 50..500 exceed the cap
    assert all(r.tokens_out == 100 for r in capped)
    assert any(r.finish_reason == "stop" and r.tokens_out < 100 for r in replies)

    short = await sim().complete(ask("a long question " * 20, max_tokens=5))
    assert (short.tokens_out, short.finish_reason) == (5, "length")
    assert len(short.text) <= 5 / 0.25


async def test_failure_and_throttle_rates_hold_over_1000_calls() -> None:
    provider = sim(failure_rate=0.1, throttle_rate=0.05, seed=3)
    seen = await outcomes(provider, 1000)
    assert provider.calls == 1000
    assert provider.failed == seen.count("failed")
    assert provider.throttled == seen.count("throttled")
    assert 60 <= provider.failed <= 140  # 100 ± 4 standard deviations
    assert 20 <= provider.throttled <= 80  # 50 ± 4 standard deviations
    # The sequence is a function of the seed.
    assert await outcomes(sim(failure_rate=0.1, throttle_rate=0.05, seed=3), 1000) == seen
    assert await outcomes(sim(failure_rate=0.1, throttle_rate=0.05, seed=4), 1000) != seen


async def test_injected_errors_carry_their_fields() -> None:
    provider = sim(retry_after_s=2.5)
    provider.fail_next(1, throttle=True)
    provider.fail_next(1)
    with pytest.raises(ProviderThrottledError) as throttled:
        await provider.complete(ask("x"))
    assert throttled.value.retry_after_s == 2.5
    assert throttled.value.fields["status"] == 429
    with pytest.raises(ProviderError) as failed:
        await provider.complete(ask("x"))
    assert not isinstance(failed.value, ProviderThrottledError)
    assert failed.value.retryable
    assert failed.value.fields["tokens_out"] == 0
    assert isinstance(await provider.complete(ask("x")), ModelResponse)
    assert (provider.calls, provider.throttled, provider.failed) == (3, 1, 1)


async def test_set_down_fails_every_call_until_it_is_back_up() -> None:
    provider = sim()
    provider.set_down(True)
    for _ in range(5):
        with pytest.raises(ProviderError) as err:
            await provider.complete(ask("x"))
        assert err.value.fields["down"] is True
        assert err.value.retryable
    provider.set_down(False)
    assert (await provider.complete(ask("x"))).text
    assert (provider.calls, provider.failed) == (6, 5)


async def test_latency_is_awaited_on_the_clock() -> None:
    clock = FakeClock()
    provider = sim(clock, latency_ms=(200, 200))
    task = asyncio.create_task(provider.complete(ask("x")))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not task.done()
    assert clock.pending_timers == 1
    clock.advance(0.199)
    await asyncio.sleep(0)
    assert not task.done()
    clock.advance(0.002)
    reply = await asyncio.wait_for(task, 1)
    assert reply.tokens_out > 0


async def test_latency_follows_the_lognormal_profile() -> None:
    clock = RecordingClock()
    provider = sim(clock, latency_ms=LatencyProfile(median_ms=100, p99_ms=400))
    for i in range(2000):
        await provider.complete(ask(f"p{i}"))
    samples = sorted(clock.sleeps)
    assert statistics.median(samples) == pytest.approx(0.100, rel=0.1)
    assert samples[int(0.99 * len(samples))] == pytest.approx(0.400, rel=0.25)
    assert min(samples) > 0


async def test_an_interrupted_stream_reports_partial_tokens() -> None:
    provider = sim(out_tokens=(100, 100))
    full = await provider.complete(ask("stream this", stream=True))
    provider.fail_next(1)
    with pytest.raises(ProviderError) as err:
        await provider.complete(ask("stream this", stream=True))
    fields = err.value.fields
    assert fields["interrupted"] is True
    assert fields["tokens_in"] == full.tokens_in > 0
    assert 0 < fields["tokens_out"] < full.tokens_out


async def test_a_call_marker_produces_a_tool_call_for_a_known_tool() -> None:
    provider = sim()
    request = ask('Check the applicant. call:lookup {"customer": 42}', tools=(LOOKUP,))
    reply = await provider.complete(request)
    assert reply.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("lookup", {"customer": 42})]
    assert reply.tool_calls == (await provider.complete(request)).tool_calls
    # An unknown tool, or no tools offered, gives a plain reply.
    assert not (await provider.complete(ask("call:delete", tools=(LOOKUP,)))).tool_calls
    assert not (await provider.complete(ask("call:lookup"))).tool_calls


async def test_the_respond_hook_overrides_the_reply() -> None:
    def respond(request: ModelRequest) -> ModelResponse | None:
        if "fixed" in request.messages[-1]["content"]:
            return ModelResponse(text="fixed answer", tokens_in=1, tokens_out=2, model="m")
        return None

    clock = RecordingClock()
    provider = sim(clock, respond=respond)
    assert (await provider.complete(ask("fixed please"))).text == "fixed answer"
    assert (await provider.complete(ask("other"))).text != "fixed answer"
    assert len(clock.sleeps) == 2  # the hook's replies still take time


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_rate": 0.7, "throttle_rate": 0.4},
        {"failure_rate": -0.1},
        {"tokens_per_char": 0},
        {"out_tokens": (10, 5)},
        {"latency_ms": (500, 100)},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        sim(**kwargs)
