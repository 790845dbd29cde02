"""tenantflow: a multi-tenant control plane for AI-agent workflows.

Define workflows as graphs of async steps, run them durably for many tenants, and keep every
tenant inside its boundary on state, compute, rate limits, review queues and budget.
"""

from typing import TYPE_CHECKING, Any

from tenantflow.errors import (
    AuthenticationError,
    BackpressureError,
    BudgetExceededError,
    CircuitOpenError,
    ConfigurationError,
    ConflictError,
    ContractError,
    NotAllowedError,
    NotFoundError,
    PermissionDeniedError,
    PolicyError,
    ProviderError,
    ProviderThrottledError,
    RateLimitedError,
    ResidencyError,
    RunFailedError,
    SignalTimeoutError,
    SpecError,
    StaleAttemptError,
    StepTimeoutError,
    StoreError,
    StoreUnavailableError,
    TenantflowError,
)

if TYPE_CHECKING:
    from tenantflow.adapters import open_store
    from tenantflow.domain.agent import Agent, AgentResult
    from tenantflow.domain.models import ModelRequest, ModelResponse, ToolCall
    from tenantflow.domain.policy import Policy, RateLimit
    from tenantflow.domain.records import EventRecord, RunRecord, RunStatus, StepRecord, StepStatus
    from tenantflow.domain.reviews import ReviewDecision
    from tenantflow.domain.revision import Failure, Revision
    from tenantflow.domain.routing import Endpoint
    from tenantflow.domain.spec import Retry
    from tenantflow.domain.state import Change
    from tenantflow.engine.config import EngineConfig
    from tenantflow.engine.context import StepContext
    from tenantflow.engine.engine import Engine, RunHandle, StateVersion
    from tenantflow.workflow import Workflow

# The rest of the public API is imported on first use (PEP 562): ``import tenantflow`` (and so
# every ``tenantflow.*`` module, the command line's included) does not load the engine, the
# agent models or pydantic until a name that needs them is asked for.
_LAZY = {
    "Agent": "tenantflow.domain.agent",
    "AgentResult": "tenantflow.domain.agent",
    "Change": "tenantflow.domain.state",
    "Endpoint": "tenantflow.domain.routing",
    "Engine": "tenantflow.engine.engine",
    "EngineConfig": "tenantflow.engine.config",
    "EventRecord": "tenantflow.domain.records",
    "Failure": "tenantflow.domain.revision",
    "ModelRequest": "tenantflow.domain.models",
    "ModelResponse": "tenantflow.domain.models",
    "Policy": "tenantflow.domain.policy",
    "RateLimit": "tenantflow.domain.policy",
    "Retry": "tenantflow.domain.spec",
    "ReviewDecision": "tenantflow.domain.reviews",
    "Revision": "tenantflow.domain.revision",
    "RunHandle": "tenantflow.engine.engine",
    "RunRecord": "tenantflow.domain.records",
    "RunStatus": "tenantflow.domain.records",
    "StateVersion": "tenantflow.engine.engine",
    "StepContext": "tenantflow.engine.context",
    "StepRecord": "tenantflow.domain.records",
    "StepStatus": "tenantflow.domain.records",
    "ToolCall": "tenantflow.domain.models",
    "Workflow": "tenantflow.workflow",
    "open_store": "tenantflow.adapters",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tenantflow' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentResult",
    "AuthenticationError",
    "BackpressureError",
    "BudgetExceededError",
    "Change",
    "CircuitOpenError",
    "ConfigurationError",
    "ConflictError",
    "ContractError",
    "Endpoint",
    "Engine",
    "EngineConfig",
    "EventRecord",
    "Failure",
    "ModelRequest",
    "ModelResponse",
    "NotAllowedError",
    "NotFoundError",
    "PermissionDeniedError",
    "Policy",
    "PolicyError",
    "ProviderError",
    "ProviderThrottledError",
    "RateLimit",
    "RateLimitedError",
    "ResidencyError",
    "Retry",
    "ReviewDecision",
    "Revision",
    "RunFailedError",
    "RunHandle",
    "RunRecord",
    "RunStatus",
    "SignalTimeoutError",
    "SpecError",
    "StaleAttemptError",
    "StateVersion",
    "StepContext",
    "StepRecord",
    "StepStatus",
    "StepTimeoutError",
    "StoreError",
    "StoreUnavailableError",
    "TenantflowError",
    "ToolCall",
    "Workflow",
    "__version__",
    "open_store",
]
