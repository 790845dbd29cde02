"""The whole tenantflow error tree.

Every error the library raises on purpose derives from :class:`TenantflowError`, carries a stable
machine-readable ``code`` and structured fields (``err.fields``), and its class docstring is the
default message::

    TenantflowError
    ├── ConfigurationError          bad settings, URL or option
    ├── AuthenticationError         no API key, or an unknown, malformed or revoked one
    ├── PermissionDeniedError       the key is valid but may not do this (tenant key on admin API)
    ├── SpecError                   an invalid WorkflowSpec (cycle, unknown step, bad parameter)
    │   └── SideEffectSpecError     a side-effect step whose output would feed a later step
    ├── ContractError               a value broke a step's or a workflow's data contract
    ├── NotFoundError               no such run / workflow / tenant / version (for *this* tenant)
    ├── ConflictError               the write lost a race or contradicts what is stored
    │   ├── StaleAttemptError       a step attempt whose lease was lost tried to commit (fencing)
    │   └── TenantMovedError        the tenant is moving, or has moved, to another placement
    ├── PolicyError                 refused by the tenant's policy
    │   ├── BudgetExceededError     the money or token budget cannot cover the work
    │   ├── RateLimitedError        a per-tenant rate limit is exhausted (carries retry_after_s)
    │   ├── ResidencyError          the work would leave the tenant's residency region
    │   └── NotAllowedError         a tool or model is not on the tenant's allow list, or is denied
    ├── BackpressureError           the platform is over capacity; retry later (retry_after_s)
    ├── CircuitOpenError            a dependency's circuit breaker is open; fails fast
    ├── ProviderError               a model provider failed (carries tokens used so far)
    │   └── ProviderThrottledError  the provider answered 429 (carries retry_after_s)
    ├── StepTimeoutError            a step attempt ran past its timeout and was cancelled
    ├── RunFailedError              a run ended failed, compensated or cancelled
    └── StoreError                  the store failed
        └── StoreUnavailableError   the store cannot be reached or opened

Driver errors are translated at the adapter boundary (``raise StoreError(...) from exc``).

``to_dict()`` is safe for any field value: infinities and NaN become strings, integers past the
64-bit range and other objects their (shortened) text, and no string is echoed past
:data:`MAX_ECHO` characters — a refused value is named, never returned in full.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Final

__all__ = [
    "AuthenticationError",
    "BackpressureError",
    "BudgetExceededError",
    "CircuitOpenError",
    "ConfigurationError",
    "ConflictError",
    "ContractError",
    "NotAllowedError",
    "NotFoundError",
    "PermissionDeniedError",
    "PolicyError",
    "ProviderError",
    "ProviderThrottledError",
    "RateLimitedError",
    "ResidencyError",
    "RunFailedError",
    "SideEffectSpecError",
    "SignalTimeoutError",
    "SpecError",
    "StaleAttemptError",
    "StepTimeoutError",
    "StoreError",
    "StoreUnavailableError",
    "TenantMovedError",
    "TenantflowError",
    "brief",
    "json_ready",
]

MAX_ECHO: Final[int] = 200
"""At most this many characters of a refused value are echoed in an error (then a marker)."""

_INT64: Final[int] = 2**63
_ITEMS: Final[int] = 50  # of a list or mapping echoed in an error


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…(+{len(text) - limit} chars)"


def brief(value: Any, limit: int = MAX_ECHO) -> str:
    """``repr(value)``, shortened to ``limit`` characters with a marker; never raises.

    A huge integer (too long for ``repr``) is described by its size instead.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 512:
        digits = int(value.bit_length() * math.log10(2)) + 1
        return f"<an integer of about {digits} digits>"
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__, or a structure too deep to print
        text = f"<{type(value).__name__}>"
    return _cut(text, limit)


def json_ready(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON any encoder accepts (see the module docstring)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else brief(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # 'inf', '-inf', 'nan'
    if isinstance(value, str):
        return _cut(value, MAX_ECHO)
    if depth < 4 and isinstance(value, list | tuple):
        out = [json_ready(v, depth + 1) for v in value[:_ITEMS]]
        return out if len(value) <= _ITEMS else [*out, f"…(+{len(value) - _ITEMS} items)"]
    if depth < 4 and isinstance(value, dict):
        items = list(value.items())[:_ITEMS]
        return {_cut(str(k), MAX_ECHO): json_ready(v, depth + 1) for k, v in items}
    return brief(value)


class TenantflowError(Exception):
    """A tenantflow operation failed."""

    code: ClassVar[str] = "tenantflow_error"

    def __init__(self, message: str | None = None, **fields: Any) -> None:
        self.message = message or (self.__class__.__doc__ or self.code).strip().splitlines()[0]
        self.fields: dict[str, Any] = fields
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view: ``{"code", "message", **fields}``."""
        out: dict[str, Any] = {"code": self.code, "message": _cut(self.message, 4 * MAX_ECHO)}
        for key, value in self.fields.items():
            out[key] = json_ready(value)
        return out

    def __reduce__(self) -> tuple[Any, ...]:  # keep fields across pickling (process pools)
        return (_rebuild, (self.__class__, self.message, self.fields))


def _rebuild(cls: type[TenantflowError], message: str, fields: dict[str, Any]) -> TenantflowError:
    return cls(message, **fields)


class ConfigurationError(TenantflowError):
    """The configuration is invalid."""

    code = "configuration_invalid"


class AuthenticationError(TenantflowError):
    """The request carries no valid API key."""

    code = "unauthenticated"


class PermissionDeniedError(TenantflowError):
    """The API key may not perform this operation."""

    code = "permission_denied"


class SpecError(TenantflowError):
    """The workflow specification is invalid."""

    code = "spec_invalid"


class SideEffectSpecError(SpecError):
    """A step marked ``side_effect=True`` is used as if the critical path waited for it: a later
    step reads its output or comes after it, or it is a kind that cannot be choreographed."""

    code = "side_effect_invalid"


class ContractError(TenantflowError):
    """A value broke a data contract."""

    code = "contract_violation"

    @property
    def step(self) -> str | None:
        return self.fields.get("step")

    @property
    def field(self) -> str | None:
        return self.fields.get("field")


class NotFoundError(TenantflowError):
    """The requested object does not exist."""

    code = "not_found"


class ConflictError(TenantflowError):
    """The write conflicts with the stored state."""

    code = "conflict"


class StaleAttemptError(ConflictError):
    """The step attempt lost its lease; its result was refused."""

    code = "stale_attempt"


class TenantMovedError(ConflictError):
    """The tenant is not served here: it is moving, or has moved, to another placement.

    Fields: ``tenant``; ``location`` (where it went: a store URL, a cell's name or an API URL,
    as the move was told); ``state`` (``"moving"``: retry after ``retry_after_s``, here or at
    ``location``; ``"moved"``: ask ``location``). An API answers it as a redirect or a 409.
    """

    code = "tenant_moved"

    @property
    def location(self) -> str | None:
        value = self.fields.get("location")
        return None if value is None else str(value)


class PolicyError(TenantflowError):
    """The tenant's policy refuses this."""

    code = "policy_violation"


class BudgetExceededError(PolicyError):
    """The budget cannot cover this work."""

    code = "budget_exceeded"


class RateLimitedError(PolicyError):
    """The tenant's rate limit for this resource is exhausted."""

    code = "rate_limited"

    @property
    def retry_after_s(self) -> float:
        return float(self.fields.get("retry_after_s", 1.0))


class ResidencyError(PolicyError):
    """The work would leave the tenant's residency region."""

    code = "residency_violation"


class NotAllowedError(PolicyError):
    """The tool or model is not allowed for this tenant."""

    code = "not_allowed"


class BackpressureError(TenantflowError):
    """The platform is over capacity; retry later."""

    code = "backpressure"

    @property
    def retry_after_s(self) -> float:
        return float(self.fields.get("retry_after_s", 1.0))


class CircuitOpenError(TenantflowError):
    """The dependency's circuit breaker is open."""

    code = "circuit_open"


class ProviderError(TenantflowError):
    """The model provider failed."""

    code = "provider_error"

    @property
    def retryable(self) -> bool:
        return bool(self.fields.get("retryable", True))


class ProviderThrottledError(ProviderError):
    """The model provider is throttling this caller."""

    code = "provider_throttled"

    @property
    def retry_after_s(self) -> float:
        return float(self.fields.get("retry_after_s", 1.0))


class StepTimeoutError(TenantflowError):
    """The step attempt timed out."""

    code = "step_timeout"


class SignalTimeoutError(TenantflowError):
    """A step waited for a signal (``ctx.wait_for_signal``) past its timeout."""

    code = "signal_timeout"


class RunFailedError(TenantflowError):
    """The run did not complete."""

    code = "run_failed"


class StoreError(TenantflowError):
    """The store failed."""

    code = "store_error"


class StoreUnavailableError(StoreError):
    """The store cannot be reached or opened."""

    code = "store_unavailable"
