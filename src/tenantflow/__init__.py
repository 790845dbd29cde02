"""tenantflow: a multi-tenant control plane for AI-agent workflows.

Define workflows as graphs of async steps, run them durably for many tenants, and keep every
tenant inside its boundary on state, compute, rate limits, review queues and budget.
"""

from tenantflow.domain.records import EventRecord, RunRecord, RunStatus, StepRecord, StepStatus
from tenantflow.domain.spec import Retry
from tenantflow.domain.state import Change
from tenantflow.engine.context import StepContext
from tenantflow.engine.engine import Engine, RunHandle, StateVersion, open_store
from tenantflow.errors import (
    BackpressureError,
    BudgetExceededError,
    CircuitOpenError,
    ConfigurationError,
    ConflictError,
    ContractError,
    NotAllowedError,
    NotFoundError,
    PolicyError,
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
    "BackpressureError",
    "BudgetExceededError",
    "Change",
    "CircuitOpenError",
    "ConfigurationError",
    "ConflictError",
    "ContractError",
    "Engine",
    "EventRecord",
    "NotAllowedError",
    "NotFoundError",
    "PolicyError",
    "RateLimitedError",
    "ResidencyError",
    "Retry",
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
    "Workflow",
    "__version__",
    "open_store",
]
