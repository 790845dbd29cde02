"""The public API is exactly what __all__ says; a change here is a deliberate API change."""

import tenantflow

EXPECTED = {
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
    "Revision",
    "Retry",
    "ReviewDecision",
    "RunFailedError",
    "SignalTimeoutError",
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
}


def test_all_is_pinned() -> None:
    assert set(tenantflow.__all__) == EXPECTED
    for name in tenantflow.__all__:
        assert hasattr(tenantflow, name), name


def test_every_error_has_a_stable_code_and_structured_fields() -> None:
    errors = [getattr(tenantflow, n) for n in EXPECTED if n.endswith("Error")]
    codes = {e.code for e in errors}
    assert len(codes) == len(errors)  # one code per class
    err = tenantflow.ContractError("bad", step="verify", field="confidence")
    assert err.to_dict() == {
        "code": "contract_violation",
        "message": "bad",
        "step": "verify",
        "field": "confidence",
    }
    assert str(tenantflow.NotFoundError()) == "The requested object does not exist."
