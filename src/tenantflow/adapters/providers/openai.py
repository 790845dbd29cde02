"""A model provider for any OpenAI-compatible ``/chat/completions`` HTTP API, over httpx.

Errors are translated at this boundary: a 429 becomes :class:`ProviderThrottledError` (with
``retry_after_s`` from ``Retry-After``/``retry-after-ms``), other statuses, timeouts and
connection failures become :class:`ProviderError` with ``retryable``, ``status`` and the token
fields. A stream that breaks midway reports the prompt's tokens and the tokens already produced,
so the interrupted call is still priced. A streamed completion's text deltas go, as they arrive,
to the listener in :data:`tenantflow.ports.STREAM_DELTAS` if one is set.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from tenantflow.domain.models import ModelRequest, ModelResponse, ToolCall
from tenantflow.errors import ProviderError, ProviderThrottledError
from tenantflow.ports import STREAM_DELTAS

__all__ = ["OpenAIProvider"]

_RETRYABLE_STATUSES = frozenset({408, 409})  # request timeout, conflicting in-flight request
_CHARS_PER_TOKEN = 4  # the usual rule of thumb, used only when the server reports no usage


def _estimate_tokens(chars: int) -> int:
    return math.ceil(chars / _CHARS_PER_TOKEN)


def _prompt_chars(request: ModelRequest) -> int:
    total = 0
    for message in request.messages:
        content = message.get("content")
        if content is not None:
            total += len(content if isinstance(content, str) else json.dumps(content))
    return total


class OpenAIProvider:
    """A :class:`~tenantflow.ports.ModelProvider` speaking the OpenAI chat-completions API.

    Args:
        name: the provider's name (endpoints refer to it).
        base_url: the API root, e.g. ``https://api.openai.com/v1``; requests go to
            ``{base_url}/chat/completions``.
        api_key: sent as ``Authorization: Bearer <api_key>`` when set.
        timeout_s: the connect/read/write/pool timeout of every request (also with ``client``).
        client: an ``httpx.AsyncClient`` to use (and not close); by default one is created and
            closed by :meth:`close`.
    """

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._url = f"{self.base_url}/chat/completions"
        self._api_key = api_key
        self._timeout = httpx.Timeout(timeout_s)
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=self._timeout)

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Send ``request`` and return the model's reply.

        Raises:
            ProviderThrottledError: the server answered 429; ``retry_after_s`` from its headers.
            ProviderError: any other failure. ``retryable`` is true for 5xx, 408, 409,
                timeouts, connection failures and broken streams, false for other 4xx (the
                server's message is in ``detail``); ``tokens_in``/``tokens_out`` say what was
                produced before the failure.
        """
        if self._client.is_closed:
            raise self._error(request, "the provider is closed", retryable=False)
        if request.stream:
            return await self._complete_streaming(request)
        try:
            response = await self._client.post(
                self._url,
                json=self._body(request),
                headers=self._headers(request),
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            raise self._transport_error(request, exc, interrupted=False) from exc
        if response.is_error:
            raise self._status_error(request, response)
        try:
            data = response.json()
            choice = data["choices"][0]
            message = choice["message"]
            text = message.get("content") or ""
            usage = data.get("usage") or {}
            tokens_in = int(usage.get("prompt_tokens", _estimate_tokens(_prompt_chars(request))))
            tokens_out = int(usage.get("completion_tokens", _estimate_tokens(len(text))))
            raw_calls = [
                (c["id"], c["function"]["name"], c["function"].get("arguments") or "")
                for c in message.get("tool_calls") or ()
            ]
        except (ValueError, LookupError, TypeError, AttributeError) as exc:
            detail = "the server sent a malformed completion"
            raise self._error(request, detail, status=response.status_code) from exc
        return ModelResponse(
            text=text,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            model=request.model,
            finish_reason=str(choice.get("finish_reason") or "stop"),
            tool_calls=self._tool_calls(request, raw_calls, tokens_in, tokens_out),
        )

    async def close(self) -> None:
        """Close the HTTP client if this provider created it."""
        if self._owns_client:
            await self._client.aclose()

    async def _complete_streaming(self, request: ModelRequest) -> ModelResponse:
        acc = _Stream(sink=STREAM_DELTAS.get())
        prompt_estimate = _estimate_tokens(_prompt_chars(request))
        try:
            async with self._client.stream(
                "POST",
                self._url,
                json=self._body(request),
                headers=self._headers(request),
                timeout=self._timeout,
            ) as response:
                if response.is_error:
                    await response.aread()
                    raise self._status_error(request, response)
                acc.started = True
                async for line in response.aiter_lines():
                    if acc.feed(line):
                        break
        except httpx.HTTPError as exc:
            if acc.finish_reason is None:  # a break after the last token loses nothing
                raise self._transport_error(
                    request,
                    exc,
                    interrupted=acc.started,
                    tokens_in=acc.tokens_in(prompt_estimate) if acc.started else 0,
                    tokens_out=acc.tokens_out(),
                ) from exc
        except (ValueError, LookupError, TypeError, AttributeError) as exc:
            raise self._error(
                request,
                "the server sent a malformed stream chunk",
                interrupted=True,
                tokens_in=acc.tokens_in(prompt_estimate),
                tokens_out=acc.tokens_out(),
            ) from exc
        tokens_in, tokens_out = acc.tokens_in(prompt_estimate), acc.tokens_out()
        if acc.error is not None or acc.finish_reason is None:
            detail = acc.error or "the stream ended before the completion finished"
            raise self._error(
                request, detail, interrupted=True, tokens_in=tokens_in, tokens_out=tokens_out
            )
        calls = [(c["id"], c["name"], c["arguments"]) for _, c in sorted(acc.calls.items())]
        return ModelResponse(
            text="".join(acc.text),
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            model=request.model,
            finish_reason=acc.finish_reason,
            tool_calls=self._tool_calls(request, calls, tokens_in, tokens_out),
        )

    def _body(self, request: ModelRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": list(request.messages),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stream": request.stream,
        }
        if request.tools:
            body["tools"] = list(request.tools)
        if request.stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _headers(self, request: ModelRequest) -> dict[str, str]:
        headers = {"Accept": "text/event-stream" if request.stream else "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        if request.idempotency_key:
            headers["Idempotency-Key"] = request.idempotency_key
        return headers

    def _tool_calls(
        self,
        request: ModelRequest,
        raw: list[tuple[str, str, str]],
        tokens_in: int,
        tokens_out: int,
    ) -> tuple[ToolCall, ...]:
        calls = []
        for call_id, name, arguments in raw:
            cause: ValueError | None = None
            try:
                parsed = json.loads(arguments) if arguments.strip() else {}
            except ValueError as exc:
                parsed, cause = None, exc
            if not isinstance(parsed, dict):
                # The tokens were produced and billed: report them so the call is priced.
                detail = f"the model sent invalid JSON arguments for tool {name!r}"
                raise self._error(
                    request, detail, tokens_in=tokens_in, tokens_out=tokens_out
                ) from cause
            calls.append(ToolCall(id=call_id, name=name, arguments=parsed))
        return tuple(calls)

    def _status_error(self, request: ModelRequest, response: httpx.Response) -> ProviderError:
        status = response.status_code
        detail = _error_detail(response)
        message = f"{self.name} answered HTTP {status}: {detail}"
        fields = {"provider": self.name, "model": request.model, "status": status}
        fields |= {"detail": detail, "tokens_in": 0, "tokens_out": 0}
        if status == 429:
            retry_after_s = _retry_after_s(response.headers)
            return ProviderThrottledError(
                message, retryable=True, retry_after_s=retry_after_s, **fields
            )
        retryable = status >= 500 or status in _RETRYABLE_STATUSES
        return ProviderError(message, retryable=retryable, **fields)

    def _transport_error(
        self, request: ModelRequest, exc: httpx.HTTPError, *, interrupted: bool, **tokens: int
    ) -> ProviderError:
        timeout = isinstance(exc, httpx.TimeoutException)
        what = "the stream broke off" if interrupted else "the request failed"
        if timeout:
            what = f"{what}: no answer within {self.timeout_s}s"
        detail = f"{what} ({type(exc).__name__}: {exc})"
        return self._error(request, detail, timeout=timeout, interrupted=interrupted, **tokens)

    def _error(self, request: ModelRequest, detail: str, **fields: Any) -> ProviderError:
        """A retryable ProviderError; ``fields`` override the defaults."""
        fields = {"status": None, "tokens_in": 0, "tokens_out": 0, "retryable": True, **fields}
        return ProviderError(
            f"{self.name}: {detail}", provider=self.name, model=request.model, **fields
        )


@dataclass
class _Stream:
    """What a server-sent-event stream has delivered so far."""

    started: bool = False
    text: list[str] = field(default_factory=list)
    chunks: int = 0
    calls: dict[int, dict[str, str]] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    error: str | None = None
    sink: Callable[[str], None] | None = None
    """Told each text delta as it arrives (:data:`tenantflow.ports.STREAM_DELTAS`)."""

    def feed(self, line: str) -> bool:
        """Take one SSE line; True when the stream is done."""
        if not line.startswith("data:"):
            return False  # blank separators, comments, event names
        payload = line[5:].strip()
        if payload == "[DONE]":
            return True
        data = json.loads(payload)
        if data.get("error"):
            error = data["error"]
            self.error = str(error.get("message") if isinstance(error, dict) else error)
            return True
        if data.get("usage"):
            self.usage = data["usage"]
        for choice in data.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self.text.append(delta["content"])
                self.chunks += 1
                if self.sink is not None:
                    self.sink(delta["content"])
            for part in delta.get("tool_calls") or ():
                call = self.calls.setdefault(
                    int(part.get("index", 0)), {"id": "", "name": "", "arguments": ""}
                )
                function = part.get("function") or {}
                call["id"] = part.get("id") or call["id"]
                call["name"] = function.get("name") or call["name"]
                call["arguments"] += function.get("arguments") or ""
                self.chunks += 1
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        return False

    def tokens_in(self, estimate: int) -> int:
        return int(self.usage["prompt_tokens"]) if self.usage else estimate

    def tokens_out(self) -> int:
        if self.usage:
            return int(self.usage["completion_tokens"])
        chars = sum(map(len, self.text)) + sum(len(c["arguments"]) for c in self.calls.values())
        return max(self.chunks, _estimate_tokens(chars))


def _error_detail(response: httpx.Response) -> str:
    """The message of an OpenAI-style ``{"error": {"message": ...}}`` body, or the raw text."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(data.get("message"), str):
            return str(data["message"])
    return response.text.strip()[:500] or response.reason_phrase


def _retry_after_s(headers: httpx.Headers, default: float = 1.0) -> float:
    """Seconds to wait, from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP-date)."""
    try:
        return max(0.0, float(headers["retry-after-ms"]) / 1000.0)
    except (KeyError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
