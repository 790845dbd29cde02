"""A deterministic simulated model provider for tests, demos and load.

The reply to a request is a pure function of ``(seed, request content, idempotency_key)``: the
same prompt gives the same text, token counts and tool calls, run after run. What varies per call
(latency, injected failures and 429s) is drawn from ``(seed, call number)``, so a sequence of calls
is reproducible too. Latency is awaited on the injected :class:`~tenantflow.ports.Clock`: a
``FakeClock`` makes a call instant in tests, a compressed clock speeds up a demo.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenantflow.domain.models import ModelRequest, ModelResponse, ToolCall
from tenantflow.errors import ConfigurationError, ProviderError, ProviderThrottledError
from tenantflow.ports import Clock

__all__ = ["LatencyProfile", "SimulatedProvider"]

_Z99 = 2.3263478740408408  # the standard normal's 99th percentile
_CALL_RE = re.compile(r"call:([A-Za-z0-9_.\-]+)")

_ADJECTIVES = ("careful", "brief", "plausible", "tentative", "clear", "measured", "cautious")
_NOUNS = ("review", "estimate", "summary", "assessment", "answer", "outline", "analysis")
_VERBS = ("supports", "questions", "refines", "confirms", "extends", "weighs", "qualifies")
_OBJECTS = ("request", "evidence", "proposal", "figures", "application", "record", "claim")


@dataclass(frozen=True, slots=True)
class LatencyProfile:
    """A lognormal latency distribution, given by its median and 99th percentile.

    Attributes:
        median_ms: half of the calls are faster than this.
        p99_ms: 99% of the calls are faster than this; equal to ``median_ms`` for a constant.
    """

    median_ms: float = 300.0
    p99_ms: float = 1500.0

    def __post_init__(self) -> None:
        if self.median_ms < 0 or self.p99_ms < self.median_ms:
            raise ConfigurationError(
                "latency needs 0 <= median_ms <= p99_ms",
                median_ms=self.median_ms,
                p99_ms=self.p99_ms,
            )

    def sample_ms(self, rng: random.Random) -> float:
        """Draw one latency in milliseconds."""
        if self.median_ms == 0 or self.p99_ms == self.median_ms:
            return self.median_ms
        sigma = math.log(self.p99_ms / self.median_ms) / _Z99
        return rng.lognormvariate(math.log(self.median_ms), sigma)


def _digest(*parts: object) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\x00")
    return h.digest()


def _rng(*parts: object) -> random.Random:
    return random.Random(int.from_bytes(_digest(*parts)[:8], "big"))


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else json.dumps(content, sort_keys=True)


class SimulatedProvider:
    """A :class:`~tenantflow.ports.ModelProvider` that makes its replies up, reproducibly.

    Args:
        name: the provider's name (endpoints refer to it).
        clock: where latency is awaited.
        seed: changes every reply and every per-call draw.
        latency_ms: a :class:`LatencyProfile` or ``(median_ms, p99_ms)``.
        failure_rate: share of calls failing with a retryable :class:`ProviderError`.
        throttle_rate: share of calls answered with :class:`ProviderThrottledError` (a 429).
        retry_after_s: the ``retry_after_s`` a throttled call carries.
        tokens_per_char: prompt and reply tokens per character (``ceil``).
        out_tokens: ``(low, high)`` reply-token range to draw from; by default the reply text's
            own length. Always capped at the request's ``max_tokens``.
        respond: a hook that may return the reply for a request (``None``: the default reply).
            Latency and injected failures still apply.

    A user message containing ``call:<tool>`` for a tool in ``request.tools`` is answered with a
    tool call (arguments from a JSON object right after the marker, else ``{}``).

    Attributes:
        calls: calls made, including failed and throttled ones.
        failed: calls that raised :class:`ProviderError` (not counting throttles).
        throttled: calls that raised :class:`ProviderThrottledError`.
    """

    def __init__(
        self,
        name: str = "sim",
        *,
        clock: Clock,
        seed: int = 0,
        latency_ms: LatencyProfile | tuple[float, float] = (300.0, 1500.0),
        failure_rate: float = 0.0,
        throttle_rate: float = 0.0,
        retry_after_s: float = 1.0,
        tokens_per_char: float = 0.25,
        out_tokens: tuple[int, int] | None = None,
        respond: Callable[[ModelRequest], ModelResponse | None] | None = None,
    ) -> None:
        if min(failure_rate, throttle_rate) < 0 or failure_rate + throttle_rate > 1:
            raise ConfigurationError(
                "failure_rate and throttle_rate must be >= 0 and sum to at most 1",
                failure_rate=failure_rate,
                throttle_rate=throttle_rate,
            )
        if tokens_per_char <= 0:
            raise ConfigurationError("tokens_per_char must be > 0", tokens_per_char=tokens_per_char)
        if out_tokens is not None and not 0 <= out_tokens[0] <= out_tokens[1]:
            raise ConfigurationError("out_tokens must be (low, high), 0 <= low <= high")
        self.name = name
        self.seed = seed
        self.latency = (
            latency_ms if isinstance(latency_ms, LatencyProfile) else LatencyProfile(*latency_ms)
        )
        self.failure_rate = failure_rate
        self.throttle_rate = throttle_rate
        self.retry_after_s = retry_after_s
        self.tokens_per_char = tokens_per_char
        self.out_tokens = out_tokens
        self._clock = clock
        self._respond = respond
        self._down = False
        self._forced: deque[bool] = deque()  # True: throttle, False: fail
        self.calls = 0
        self.failed = 0
        self.throttled = 0

    def set_down(self, down: bool = True) -> None:
        """Make every call fail (an endpoint outage) until ``set_down(False)``."""
        self._down = down

    def fail_next(self, n: int = 1, *, throttle: bool = False) -> None:
        """Make the next ``n`` calls fail (or be throttled), before any random draw."""
        self._forced.extend([throttle] * n)

    def tokens(self, text: str) -> int:
        """Tokens for ``text`` at this provider's ``tokens_per_char``."""
        return math.ceil(len(text) * self.tokens_per_char)

    def prompt_tokens(self, request: ModelRequest) -> int:
        """Prompt tokens: the message contents' characters times ``tokens_per_char``."""
        return self.tokens("".join(_content_text(m.get("content")) for m in request.messages))

    def reply(self, request: ModelRequest) -> ModelResponse:
        """The successful reply to ``request``: deterministic, no latency, no failures."""
        custom = self._respond(request) if self._respond is not None else None
        if custom is not None:
            return custom
        key = _digest(
            self.seed, request.model, request.messages, request.tools, request.idempotency_key
        )
        tokens_in = self.prompt_tokens(request)
        calls = self._tool_calls(request, key)
        if calls:
            return ModelResponse(
                text="",
                tokens_in=tokens_in,
                tokens_out=min(request.max_tokens, max(1, self.tokens(_calls_json(calls)))),
                model=request.model,
                finish_reason="tool_calls",
                tool_calls=calls,
            )
        text = self._text(request, key)
        if self.out_tokens is not None:
            wanted = _rng(key, "out").randint(*self.out_tokens)
        else:
            wanted = self.tokens(text)
        finish = "stop"
        if wanted > request.max_tokens:
            wanted, finish = request.max_tokens, "length"
            if self.out_tokens is None:
                text = text[: int(request.max_tokens / self.tokens_per_char)]
        return ModelResponse(
            text=text,
            tokens_in=tokens_in,
            tokens_out=wanted,
            model=request.model,
            finish_reason=finish,
        )

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Answer ``request`` after the drawn latency, or raise an injected failure.

        Raises:
            ProviderThrottledError: a 429 (injected), with ``retry_after_s``.
            ProviderError: an injected failure or an outage (``set_down``); retryable. A failed
                streaming call reports ``tokens_in`` and the partial ``tokens_out`` produced.
        """
        self.calls += 1
        rng = _rng(self.seed, "call", self.calls)
        latency_s = self.latency.sample_ms(rng) / 1000.0
        draw = rng.random()
        if self._down:
            self.failed += 1
            raise self._error(ProviderError, request, "the endpoint is down", status=503, down=True)
        throttle: bool | None = None  # None: succeed
        if self._forced:
            throttle = self._forced.popleft()
        elif draw < self.throttle_rate:
            throttle = True
        elif draw < self.throttle_rate + self.failure_rate:
            throttle = False
        if throttle:
            self.throttled += 1
            await self._clock.sleep(latency_s * 0.1)  # a 429 comes back fast
            message = f"throttled; retry after {self.retry_after_s}s"
            raise self._error(
                ProviderThrottledError,
                request,
                message,
                status=429,
                retry_after_s=self.retry_after_s,
            )
        if throttle is False:
            self.failed += 1
            if not request.stream:
                await self._clock.sleep(latency_s)
                raise self._error(ProviderError, request, "simulated server error", status=500)
            # The stream broke after a deterministic share of the reply had been produced.
            full = self.reply(request)
            share = rng.uniform(0.1, 0.9)
            produced = min(full.tokens_out, max(1, int(full.tokens_out * share)))
            await self._clock.sleep(latency_s * share)
            raise self._error(
                ProviderError,
                request,
                f"the stream was interrupted after {produced} tokens",
                interrupted=True,
                tokens_in=full.tokens_in,
                tokens_out=produced,
            )
        response = self.reply(request)
        await self._clock.sleep(latency_s)
        return response

    async def close(self) -> None:
        """Nothing to release."""

    def _error(
        self, cls: type[ProviderError], request: ModelRequest, message: str, **fields: Any
    ) -> ProviderError:
        fields = {"status": None, "tokens_in": 0, "tokens_out": 0, **fields}
        return cls(
            f"{self.name}: {message}",
            provider=self.name,
            model=request.model,
            retryable=True,
            **fields,
        )

    def _tool_calls(self, request: ModelRequest, key: bytes) -> tuple[ToolCall, ...]:
        if not request.tools or not request.messages:
            return ()
        last = request.messages[-1]
        if last.get("role") != "user":
            return ()
        content = _content_text(last.get("content"))
        names = {t.get("function", {}).get("name") for t in request.tools}
        calls: list[ToolCall] = []
        for i, match in enumerate(_CALL_RE.finditer(content)):
            if match.group(1) not in names:
                continue
            call_id = "call_" + _digest(key, i).hex()[:16]
            calls.append(ToolCall(call_id, match.group(1), _arguments(content[match.end() :])))
        return tuple(calls)

    def _text(self, request: ModelRequest, key: bytes) -> str:
        rng = _rng(key, "text")
        prompt = ""
        for message in reversed(request.messages):
            if message.get("role") == "user":
                prompt = " ".join(_content_text(message.get("content")).split())
                break
        topic = prompt if len(prompt) <= 48 else prompt[:45] + "..."
        return (
            f"A {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {rng.choice(_VERBS)} the "
            f"{rng.choice(_OBJECTS)} (ref {key.hex()[:6]}): {topic}"
        )


def _calls_json(calls: tuple[ToolCall, ...]) -> str:
    return json.dumps([{"name": c.name, "arguments": c.arguments} for c in calls])


def _arguments(rest: str) -> dict[str, Any]:
    """A JSON object right after a ``call:<tool>`` marker, or ``{}``."""
    stripped = rest.lstrip()
    if not stripped.startswith("{"):
        return {}
    try:
        value, _ = json.JSONDecoder().raw_decode(stripped)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
