"""Model providers: the :class:`~tenantflow.ports.ModelProvider` adapters.

``OpenAIProvider`` speaks to any OpenAI-compatible HTTP API; ``SimulatedProvider`` makes up
deterministic replies with realistic latency, token counts, failures and 429s for tests, demos
and load. ``tenantflow.adapters.providers.testserver`` holds a local OpenAI-compatible server.
"""

from tenantflow.adapters.providers.openai import OpenAIProvider
from tenantflow.adapters.providers.simulated import LatencyProfile, SimulatedProvider

__all__ = ["LatencyProfile", "OpenAIProvider", "SimulatedProvider"]
