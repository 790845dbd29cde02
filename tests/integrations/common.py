"""What the integration tests share: an engine whose one model endpoint is the local
OpenAI-compatible test server."""

from __future__ import annotations

import tenantflow as tf
from tenantflow.adapters.clock import SystemClock
from tenantflow.adapters.providers import OpenAIProvider
from tenantflow.domain.routing import Endpoint

PRICE_IN = 1_000  # micros per 1k tokens
PRICE_OUT = 2_000


def endpoint() -> Endpoint:
    return Endpoint(
        name="local",
        provider="openai",
        model="test-model",
        region="us-east-1",
        tier="large",
        price_in_per_1k_micros=PRICE_IN,
        price_out_per_1k_micros=PRICE_OUT,
        max_context=100_000,
    )


def open_engine(db: str, base_url: str, **options: object) -> tf.Engine:
    """An engine on SQLite file ``db`` whose model endpoint is the test server at ``base_url``."""
    engine = tf.Engine.open(f"sqlite:///{db}", clock=SystemClock(), **options)  # type: ignore[arg-type]
    engine.models.add(endpoint(), OpenAIProvider("local", base_url=base_url, timeout_s=30))
    return engine


def cost_micros(tokens_in: int, tokens_out: int) -> int:
    return endpoint().cost_micros(tokens_in, tokens_out)
