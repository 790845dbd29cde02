"""Model endpoints and their providers, and the recorded form of a model's response."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from tenantflow.domain.models import ModelResponse, ToolCall
from tenantflow.domain.routing import Endpoint
from tenantflow.errors import ConfigurationError
from tenantflow.ports import ModelProvider

__all__ = ["Models", "human_response", "response_from_json", "response_to_json"]


@dataclass
class Models:
    """Model endpoints and the providers that serve them."""

    endpoints: list[Endpoint] = field(default_factory=list)
    providers: dict[str, ModelProvider] = field(default_factory=dict)

    def add(self, endpoint: Endpoint, provider: ModelProvider) -> None:
        """Serve ``endpoint`` through ``provider`` (one provider may serve many endpoints)."""
        if any(e.name == endpoint.name for e in self.endpoints):
            raise ConfigurationError(f"endpoint {endpoint.name!r} is already registered")
        self.endpoints.append(endpoint)
        self.providers[endpoint.name] = provider

    async def close(self) -> None:
        seen: set[int] = set()
        for provider in self.providers.values():
            if id(provider) not in seen:
                seen.add(id(provider))
                await provider.close()


def response_to_json(response: ModelResponse) -> str:
    data = asdict(response)
    return json.dumps(data)


def response_from_json(text: str) -> ModelResponse:
    data = json.loads(text)
    calls = tuple(ToolCall(**c) for c in data.pop("tool_calls", []))
    return ModelResponse(tool_calls=calls, **data)


def human_response(text: str) -> str:
    """The recorded 'model' answer a human reviewer gave in place of a model."""
    return response_to_json(
        ModelResponse(text=text, tokens_in=0, tokens_out=0, model="human", finish_reason="human")
    )
