"""The tool and model gateway: every external call a step makes passes its gates (see
:mod:`tenantflow.engine.gateway.gateway`)."""

from tenantflow.engine.gateway.gateway import PLATFORM, Gateway
from tenantflow.engine.gateway.models import Models, human_response, response_from_json
from tenantflow.engine.gateway.tools import Tool, Tools

__all__ = [
    "PLATFORM",
    "Gateway",
    "Models",
    "Tool",
    "Tools",
    "human_response",
    "response_from_json",
]
