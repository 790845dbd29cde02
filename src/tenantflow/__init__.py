"""tenantflow: a multi-tenant control plane for AI-agent workflows.

Define workflows as graphs of async steps, run them durably for many tenants, and keep every
tenant inside its boundary on state, compute, rate limits, review queues and budget.
"""

from tenantflow.adapters import open_store
from tenantflow.domain.agent import Agent, AgentResult
from tenantflow.domain.models import ModelRequest, ModelResponse, ToolCall
from tenantflow.domain.policy import Policy, RateLimit
from tenantflow.domain.records import EventRecord, RunRecord, RunStatus, StepRecord, StepStatus
from tenantflow.domain.replan import Failure, Revision
from tenantflow.domain.reviews import ReviewDecision
from tenantflow.domain.routing import Endpoint
from tenantflow.domain.spec import Retry
from tenantflow.domain.state import Change
from tenantflow.engine.config import EngineConfig
from tenantflow.engine.context import StepContext
from tenantflow.engine.engine import Engine, RunHandle, StateVersion
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
    SpecError,
    StaleAttemptError,
    StepTimeoutError,
    StoreError,
    StoreUnavailableError,
    TenantflowError,
)
from tenantflow.workflow import Workflow

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
