"""Model calls as data: what a step asks a model, and what comes back.

Providers (``tenantflow.adapters.providers``) turn a :class:`ModelRequest` into a
:class:`ModelResponse`; the gateway around them picks the endpoint, enforces the tenant's rate
limit, reserves and settles the budget, and records usage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelRequest", "ModelResponse", "ToolCall"]


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One chat-completion request, OpenAI-shaped.

    Attributes:
        model: the endpoint's model name.
        messages: ``[{"role": "system"|"user"|"assistant"|"tool", "content": "..."}]``.
        max_tokens: the completion cap (also the budget's worst case).
        tools: OpenAI tool-calling schemas the model may call.
        idempotency_key: stable across retries of the same logical call.
        stream: ask the provider to stream; an interrupted stream still reports the tokens it
            produced (in the error's ``tokens_in``/``tokens_out`` fields) so they are priced.
    """

    model: str
    messages: tuple[dict[str, Any], ...]
    max_tokens: int = 256
    temperature: float = 0.0
    tools: tuple[dict[str, Any], ...] = ()
    idempotency_key: str | None = None
    stream: bool = False


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool the model asked to call, with its JSON arguments."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ModelResponse:
    """What the model produced and what it cost in tokens."""

    text: str
    tokens_in: int
    tokens_out: int
    model: str
    finish_reason: str = "stop"
    tool_calls: tuple[ToolCall, ...] = field(default=())
