"""OpenAIProvider over real HTTP against the local OpenAI-compatible test server."""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from tenantflow.adapters.providers import OpenAIProvider
from tenantflow.adapters.providers.testserver import OpenAITestServer
from tenantflow.domain.models import ModelRequest
from tenantflow.errors import ProviderError, ProviderThrottledError

KEY = "sk-test-123"
LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


def ask(text: str, **kwargs: Any) -> ModelRequest:
    return ModelRequest(model="gpt-test", messages=({"role": "user", "content": text},), **kwargs)


@pytest.fixture
def server() -> Iterator[OpenAITestServer]:
    with OpenAITestServer(api_key=KEY) as running:
        yield running


@pytest.fixture
async def provider(server: OpenAITestServer) -> AsyncIterator[OpenAIProvider]:
    client = OpenAIProvider("local", base_url=server.base_url, api_key=KEY, timeout_s=5)
    yield client
    await client.close()


async def test_a_completion_returns_text_and_usage(
    server: OpenAITestServer, provider: OpenAIProvider
) -> None:
    reply = await provider.complete(ask("hello there", max_tokens=64, temperature=0.3))
    assert reply.text == "You said: hello there"
    assert (reply.tokens_in, reply.tokens_out) == (math.ceil(len("hello there") / 4), 4)
    assert (reply.finish_reason, reply.model, reply.tool_calls) == ("stop", "gpt-test", ())
    [received] = server.requests
    assert received.path == "/v1/chat/completions"
    assert received.body == {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 64,
        "temperature": 0.3,
        "stream": False,
    }


async def test_max_tokens_caps_the_reply(provider: OpenAIProvider) -> None:
    reply = await provider.complete(ask("one two three four five", max_tokens=3))
    assert (reply.text, reply.tokens_out, reply.finish_reason) == ("You said: one", 3, "length")


async def test_authorization_and_idempotency_key_headers_are_sent(
    server: OpenAITestServer, provider: OpenAIProvider
) -> None:
    await provider.complete(ask("x", idempotency_key="run-1/step-2/attempt-1"))
    await provider.complete(ask("y"))
    first, second = (r.headers for r in server.requests)
    assert first["authorization"] == f"Bearer {KEY}"
    assert first["idempotency-key"] == "run-1/step-2/attempt-1"
    assert "idempotency-key" not in second


async def test_a_wrong_api_key_is_not_retryable(server: OpenAITestServer) -> None:
    wrong = OpenAIProvider("local", base_url=server.base_url, api_key="sk-wrong")
    try:
        with pytest.raises(ProviderError) as err:
            await wrong.complete(ask("x"))
    finally:
        await wrong.close()
    assert (err.value.fields["status"], err.value.retryable) == (401, False)
    assert err.value.fields["detail"] == "Incorrect API key provided."


async def test_tool_calls_are_parsed(server: OpenAITestServer, provider: OpenAIProvider) -> None:
    for stream in (False, True):
        server.queue(tool_calls=[("lookup", {"customer": 42}), ("score", {})])
        reply = await provider.complete(ask("check", tools=(LOOKUP,), stream=stream))
        assert reply.finish_reason == "tool_calls"
        assert [(c.name, c.arguments) for c in reply.tool_calls] == [
            ("lookup", {"customer": 42}),
            ("score", {}),
        ]
        assert all(c.id for c in reply.tool_calls)
        assert reply.tokens_out > 0
        assert server.requests[-1].body["tools"] == [LOOKUP]


async def test_429_raises_throttled_with_retry_after(
    server: OpenAITestServer, provider: OpenAIProvider
) -> None:
    server.queue(status=429, headers={"Retry-After": "2"}, message="Rate limit reached")
    with pytest.raises(ProviderThrottledError) as err:
        await provider.complete(ask("x"))
    assert err.value.retry_after_s == 2.0
    assert err.value.retryable
    assert "Rate limit reached" in err.value.message

    in_30s = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    server.queue(status=429, headers={"Retry-After": in_30s})
    server.queue(status=429)
    with pytest.raises(ProviderThrottledError) as dated:
        await provider.complete(ask("x"))
    assert 25 <= dated.value.retry_after_s <= 30
    with pytest.raises(ProviderThrottledError) as bare:
        await provider.complete(ask("x"))
    assert bare.value.retry_after_s == 1.0


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_retryable(
    server: OpenAITestServer, provider: OpenAIProvider, status: int
) -> None:
    server.queue(status=status)
    with pytest.raises(ProviderError) as err:
        await provider.complete(ask("x"))
    assert not isinstance(err.value, ProviderThrottledError)
    assert (err.value.fields["status"], err.value.retryable) == (status, True)
    assert (await provider.complete(ask("again"))).text == "You said: again"


async def test_a_bad_request_is_not_retryable_and_keeps_the_server_message(
    server: OpenAITestServer, provider: OpenAIProvider
) -> None:
    server.queue(status=400, message="'max_tokens' is too large: 999999.")
    with pytest.raises(ProviderError) as err:
        await provider.complete(ask("x"))
    assert (err.value.fields["status"], err.value.retryable) == (400, False)
    assert err.value.fields["detail"] == "'max_tokens' is too large: 999999."
    assert "'max_tokens' is too large" in str(err.value)


async def test_streaming_assembles_text_and_usage(
    server: OpenAITestServer, provider: OpenAIProvider
) -> None:
    plain = await provider.complete(ask("tell me a story"))
    streamed = await provider.complete(ask("tell me a story", stream=True))
    assert streamed == plain
    body = server.requests[-1].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert server.requests[-1].headers["accept"] == "text/event-stream"


async def test_a_broken_stream_reports_partial_tokens(
    server: OpenAITestServer, provider: OpenAIProvider
) -> None:
    prompt = "please write a long answer with many words in it"
    full = await provider.complete(ask(prompt, stream=True))
    server.queue(stream_break_after=3)
    with pytest.raises(ProviderError) as err:
        await provider.complete(ask(prompt, stream=True))
    fields = err.value.fields
    assert err.value.retryable
    assert fields["interrupted"] is True
    assert fields["tokens_in"] == full.tokens_in
    assert 0 < fields["tokens_out"] < full.tokens_out


async def test_a_timeout_is_retryable(server: OpenAITestServer) -> None:
    server.queue(delay_s=5)
    impatient = OpenAIProvider("local", base_url=server.base_url, api_key=KEY, timeout_s=0.2)
    try:
        with pytest.raises(ProviderError) as err:
            await impatient.complete(ask("x"))
    finally:
        await impatient.close()
    assert err.value.retryable
    assert err.value.fields["timeout"] is True
    assert isinstance(err.value.__cause__, httpx.TimeoutException)


async def test_an_unreachable_server_is_retryable() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = OpenAIProvider("local", base_url=f"http://127.0.0.1:{port}/v1")
    try:
        with pytest.raises(ProviderError) as err:
            await provider.complete(ask("x"))
    finally:
        await provider.close()
    assert (err.value.retryable, err.value.fields["status"]) == (True, None)
    assert isinstance(err.value.__cause__, httpx.ConnectError)


async def test_close_leaves_an_injected_client_open(server: OpenAITestServer) -> None:
    async with httpx.AsyncClient() as client:
        provider = OpenAIProvider("local", base_url=server.base_url, api_key=KEY, client=client)
        await provider.complete(ask("x"))
        await provider.close()
        assert not client.is_closed
        assert (await provider.complete(ask("still works"))).text == "You said: still works"
    own = OpenAIProvider("local", base_url=server.base_url)
    await own.close()
    with pytest.raises(ProviderError) as err:
        await own.complete(ask("x"))
    assert not err.value.retryable
