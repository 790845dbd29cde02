"""Tenant policy: the seed's ``tenant_context`` as one frozen, validated value.

A :class:`Policy` says what a tenant may do and how much of it: tier and fair-share weight,
residency region, allowed and denied tools and models, concurrency caps, per-resource rate limits,
money and token budgets, the degradation ladder, reviewer pool and review SLA, run SLA, retention
and burst credit. The tenant id is not part of it (the tenant record holds it), so one policy
value can be shared and compared across tenants; the store versions policies, and a snapshot is
injected into each run at admission.

Every invalid policy is refused with :class:`~tenantflow.errors.ConfigurationError` whose fields
name the offending ``field`` and ``value`` — never with a pydantic ``ValidationError``.

Money is integer micro-dollars (``1 USD == 1_000_000``) everywhere; floats never enter a ledger.
Durations are :class:`~datetime.timedelta`; in YAML/JSON they may also be written ``"4h"``,
``"30d"``, ``"7 years"`` or ISO 8601 (``"PT4H"``). Money fields accept ``"$2.00"`` strings. The
units (``usd_to_micros``, ``parse_duration``, ...) live in :mod:`tenantflow.domain.units` and are
re-exported here.

Every integer is range-checked for the store's 64-bit columns (see
:mod:`tenantflow.domain.limits`), every float must be finite, and durations must fit a
:class:`~datetime.timedelta`: a value that would break the tenant later is refused here.

Regions are checked against ``known_regions`` from the pydantic validation context (see
:func:`validate_policy`) or, when none is given, :data:`DEFAULT_REGIONS`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tenantflow.domain.limits import within
from tenantflow.domain.units import (
    MICROS_PER_USD,
    UNIT_SECONDS,
    micros_to_usd,
    parse_duration,
    usd_to_micros,
)
from tenantflow.errors import ConfigurationError, brief

__all__ = [
    "DEFAULT_REGIONS",
    "MICROS_PER_USD",
    "TIERS",
    "Budget",
    "DegradationAction",
    "ModelTier",
    "Period",
    "Policy",
    "RateLimit",
    "Tier",
    "micros_to_usd",
    "parse_duration",
    "policy_overrides",
    "tier_preset",
    "usd_to_micros",
    "validate_policy",
]

Tier = Literal["enterprise", "standard", "free"]
ModelTier = Literal["large", "small"]
# Same literal as scheduler.Lane; kept local so the scheduler may import policy without a cycle.
Lane = Literal["urgent", "normal", "background"]
Period = Literal["daily", "monthly"]
DegradationAction = Literal["cheaper_model", "skip_optional", "escalate_to_human", "pause"]

TIERS: Final[tuple[str, ...]] = ("enterprise", "standard", "free")
DEFAULT_REGIONS: Final[frozenset[str]] = frozenset(
    {"us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-1"}
)
"""Regions accepted when the caller passes no ``known_regions`` (a deployment overrides it)."""

MAX_WEIGHT: Final[float] = 1_000_000.0
"""A fair-share weight above this is refused (weights are compared and summed)."""

# A count, cap or amount: 0 .. 2**63-1 (the Field's bound first, for its own message).
_Count = Annotated[int, Field(ge=0), within(0)]
_Positive = Annotated[int, Field(gt=0), within(1)]

_RATE_RE: Final = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-zA-Z]+)\s*$")
_BREACH_RE: Final = re.compile(r"^(escalate:[A-Za-z0-9_.\-]+|auto_reject|fail)$")


def _config_error(label: str, exc: ValidationError) -> ConfigurationError:
    first = exc.errors()[0]
    path = ".".join(str(part) for part in first["loc"])
    field = f"{label}.{path}" if label and path else (label or path)
    value = first.get("input")
    message = first["msg"].removeprefix("Value error, ")
    bounds = {k: v for k, v in (first.get("ctx") or {}).items() if k in ("minimum", "maximum")}
    return ConfigurationError(
        f"invalid {field or 'value'} = {brief(value)}: {message}",
        field=field,
        value=value,
        errors=exc.error_count(),
        **bounds,
    )


class _ConfigModel(BaseModel):
    """Frozen model whose validation failures surface as ConfigurationError."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    _label: ClassVar[str] = ""

    @model_validator(mode="wrap")
    @classmethod
    def _as_configuration_error(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        try:
            return handler(data)
        except ValidationError as exc:
            raise _config_error(cls._label, exc) from exc


def _money(value: object) -> object:
    # Only "$"-prefixed strings are dollars, so "2000000" stays unambiguously micro-dollars.
    if isinstance(value, str) and value.strip().startswith("$"):
        try:
            return usd_to_micros(value)
        except ConfigurationError as exc:  # a ValueError is reported by pydantic, naming the field
            raise ValueError(exc.message) from None
    return value


class RateLimit(_ConfigModel):
    """``count`` calls per ``window_s`` seconds, with up to ``burst`` calls at once.

    Written in policies as ``"500/hour"``, ``"10/minute"``, ``"5/second"``, ``"100/15min"``, or
    ``{"rate": "500/hour", "burst": 20}``. ``burst`` defaults to ``count``: a tenant may spend a
    whole window's quota at once (the seed's bank uses its 500 bureau calls in 25 minutes), and then
    waits for the steady rate to refill it.
    """

    _label: ClassVar[str] = "rate_limit"

    count: _Positive
    window_s: float = Field(gt=0)
    burst: _Positive

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"rate": data}
        if isinstance(data, Mapping) and "rate" in data:
            rest = {k: v for k, v in data.items() if k != "rate"}
            data = {**_parse_rate(data["rate"]), **rest}
        if isinstance(data, Mapping) and data.get("burst") is None and "count" in data:
            data = {**data, "burst": data["count"]}
        return data

    @classmethod
    def parse(cls, text: str, burst: int | None = None) -> RateLimit:
        """Parse ``"500/hour"`` (and an optional burst) into a RateLimit.

        Raises:
            ConfigurationError: the string is not ``<count>/[<n>]<unit>`` or a number is invalid.
        """
        return cls.model_validate({"rate": text, "burst": burst})

    @property
    def rate_per_s(self) -> float:
        """The steady rate in calls per second."""
        return self.count / self.window_s

    @property
    def emission_interval_s(self) -> float:
        """Seconds between calls at the steady rate (GCRA's ``T``)."""
        return self.window_s / self.count


def _parse_rate(text: object) -> dict[str, Any]:
    match = _RATE_RE.match(text) if isinstance(text, str) else None
    unit = UNIT_SECONDS.get(match.group(3).lower()) if match else None
    if match is None or unit is None:
        raise ConfigurationError(
            f"invalid rate limit {brief(text)}: write '<count>/<unit>' such as '500/hour', "
            "'10/minute' or '5/second'",
            field="rate_limit",
            value=text,
        )
    span = float(match.group(2)) if match.group(2) else 1.0
    return {"count": int(match.group(1)), "window_s": span * unit}


class Budget(_ConfigModel):
    """Money (micro-dollars) and token limits per run and per period; ``None`` is unlimited.

    Money fields take integer micro-dollars or a dollar string such as ``"$2.00"``.
    """

    _label: ClassVar[str] = "budget"

    run_micros: _Count | None = None
    run_tokens: _Count | None = None
    period: Period = "monthly"
    period_micros: _Count | None = None
    period_tokens: _Count | None = None

    @field_validator("run_micros", "period_micros", mode="before")
    @classmethod
    def _dollars(cls, value: Any) -> Any:
        return _money(value)


def _names(value: Any, field: str) -> Any:
    if value is None or isinstance(value, str):
        return value  # a bare string is refused by pydantic: it would be read letter by letter
    if isinstance(value, Iterable):
        items = list(value)
        if any(not isinstance(v, str) or not v.strip() for v in items):
            raise ConfigurationError(
                f"invalid {field} = {brief(items)}: names must be non-empty strings",
                field=field,
                value=items,
            )
        return tuple(sorted({v.strip() for v in items}))
    return value


class Policy(_ConfigModel):
    """Everything a tenant may do and how much of it (the seed's ``tenant_context``).

    Build one from a tier preset with :meth:`for_tier` and override any field; change one with
    :meth:`with_overrides` (``model_copy`` would skip validation).

    Attributes:
        org_id: The parent organisation, for reporting across a holding's tenants.
        tier: ``enterprise``, ``standard`` or ``free``.
        budget_class: A label for cost reporting (the seed's ``"high-volume"``).
        weight: The tenant's share of slots under weighted fair dispatch.
        region: The residency region for state and model calls; ``None`` is unconstrained.
        allowed_tools: Tools the tenant may call; ``None`` allows every tool not denied.
        denied_tools: Tools never called, whatever the allow list says.
        allowed_models: Models the tenant may call; ``None`` allows every model not denied.
        denied_models: Models never called.
        model_tier: The preferred endpoint tier, ``large`` or ``small``.
        max_active_runs: Runs admitted at once (0 suspends admission).
        max_running_steps: Steps holding a slot at once.
        rate_limits: Per resource (``"tool:credit_bureau"``, ``"model:gpt-4"``, ``"tool:*"``).
        budget: Money and token limits per run and per period.
        degradation: The ladder tried, in order, when a step's worst case does not fit.
        reviewer_pool: An explicit pool name (see :meth:`review_pool_for`).
        dedicated_reviewers: Whether the tenant has its own reviewer team.
        review_sla: How long a review may wait before ``review_breach_action``.
        review_breach_action: ``"escalate:<pool>"``, ``"auto_reject"`` or ``"fail"``.
        review_lane: Priority of the tenant's reviews in a shared pool.
        run_sla: Latency target for a run, counted for SLA violations; ``None`` is best effort.
        audit_retention: How long audit rows are kept.
        data_retention: How long run state is kept after the run ends; ``None`` keeps it.
        memory_retention: How long agent memory (entries and documents) is kept after it is
            written; ``None`` keeps it until it is deleted.
        default_lane: The lane a run gets when the submitter names none.
        guaranteed_slots: Slots reserved for the tenant even under contention.
        burst_slots: Extra slots above the fair share the tenant may borrow while idle capacity
            exists, for at most ``burst_window``.
        burst_window: How long borrowed burst slots may be held before they are repaid.
    """

    org_id: str | None = None
    tier: Tier
    budget_class: str | None = None
    weight: float = Field(gt=0, le=MAX_WEIGHT)
    region: str | None = None
    allowed_tools: tuple[str, ...] | None = None
    denied_tools: tuple[str, ...] = ()
    allowed_models: tuple[str, ...] | None = None
    denied_models: tuple[str, ...] = ()
    model_tier: ModelTier = "small"
    max_active_runs: _Count
    max_running_steps: _Count
    rate_limits: dict[str, RateLimit] = Field(default_factory=dict)
    budget: Budget = Field(default_factory=Budget)
    degradation: tuple[DegradationAction, ...] = (
        "cheaper_model",
        "skip_optional",
        "escalate_to_human",
        "pause",
    )
    reviewer_pool: str | None = None
    dedicated_reviewers: bool = False
    review_sla: timedelta | None = None
    review_breach_action: str = "fail"
    review_lane: Lane = "normal"
    run_sla: timedelta | None = None
    audit_retention: timedelta = timedelta(days=7 * 366)
    data_retention: timedelta | None = None
    memory_retention: timedelta | None = None
    default_lane: Lane = "normal"
    guaranteed_slots: _Count = 0
    burst_slots: _Count = 0
    burst_window: timedelta = timedelta(minutes=5)

    @field_validator(
        "review_sla",
        "run_sla",
        "audit_retention",
        "data_retention",
        "memory_retention",
        "burst_window",
        mode="before",
    )
    @classmethod
    def _durations(cls, value: Any) -> Any:
        return parse_duration(value)

    @field_validator(
        "review_sla",
        "run_sla",
        "audit_retention",
        "data_retention",
        "memory_retention",
        "burst_window",
    )
    @classmethod
    def _positive(cls, value: timedelta | None, info: ValidationInfo) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ConfigurationError(
                f"invalid {info.field_name} = {brief(value)}: a duration must be positive",
                field=info.field_name,
                value=str(value),
            )
        return value

    @field_validator(
        "allowed_tools", "denied_tools", "allowed_models", "denied_models", mode="before"
    )
    @classmethod
    def _name_sets(cls, value: Any, info: ValidationInfo) -> Any:
        return _names(value, info.field_name or "names")

    @field_validator("region", mode="before")
    @classmethod
    def _region(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "any")):
            return None
        known = (info.context or {}).get("known_regions", DEFAULT_REGIONS)
        if not isinstance(value, str) or value not in known:
            raise ConfigurationError(
                f"invalid region = {brief(value)}: unknown region; known regions are "
                f"{', '.join(sorted(known))}",
                field="region",
                value=value,
                known_regions=sorted(known),
            )
        return value

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _resources(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        limits: dict[str, RateLimit] = {}
        for resource, spec in value.items():
            if not isinstance(resource, str) or not resource or resource != resource.strip():
                raise ConfigurationError(
                    f"invalid rate_limits key {brief(resource)}: use e.g. 'tool:credit_bureau'",
                    field="rate_limits",
                    value=resource,
                )
            try:
                limits[resource] = RateLimit.model_validate(spec)
            except ConfigurationError as exc:
                # Re-raised so the error names the resource, not just "rate_limit".
                raise ConfigurationError(
                    f"invalid rate_limits[{brief(resource)}] = {brief(spec)}: {exc.message}",
                    field=f"rate_limits.{resource}",
                    value=spec,
                ) from exc
        return limits

    @field_validator("degradation")
    @classmethod
    def _ladder(cls, value: tuple[DegradationAction, ...]) -> tuple[DegradationAction, ...]:
        if len(set(value)) != len(value):
            raise ConfigurationError(
                f"invalid degradation = {list(value)!r}: a rung appears twice",
                field="degradation",
                value=list(value),
            )
        return value

    @field_validator("review_breach_action")
    @classmethod
    def _breach(cls, value: str) -> str:
        if not _BREACH_RE.match(value):
            raise ConfigurationError(
                f"invalid review_breach_action = {brief(value)}: use 'escalate:<pool>', "
                "'auto_reject' or 'fail'",
                field="review_breach_action",
                value=value,
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for kind in ("tools", "models"):
            allowed: tuple[str, ...] | None = getattr(self, f"allowed_{kind}")
            denied: tuple[str, ...] = getattr(self, f"denied_{kind}")
            both = sorted(set(allowed or ()) & set(denied))
            if both:
                raise ConfigurationError(
                    f"invalid allowed_{kind}: {both!r} are both allowed and denied",
                    field=f"allowed_{kind}",
                    value=both,
                )
        if self.guaranteed_slots > self.max_running_steps:
            raise ConfigurationError(
                f"invalid guaranteed_slots = {self.guaranteed_slots}: exceeds "
                f"max_running_steps = {self.max_running_steps}",
                field="guaranteed_slots",
                value=self.guaranteed_slots,
            )
        return self

    @classmethod
    def for_tier(
        cls, tier: str, /, *, known_regions: Iterable[str] | None = None, **overrides: Any
    ) -> Policy:
        """Build a policy from a tier preset, overriding any field.

        Overrides replace fields whole, except a mapping given for ``budget``, which is merged
        into the preset's budget (so ``budget={"period_micros": ...}`` keeps the per-run limit).

        Raises:
            ConfigurationError: unknown tier, unknown field, or an invalid value.
        """
        if "tier" in overrides and overrides["tier"] != tier:
            raise ConfigurationError(
                "invalid tier override: pick the preset by the tier argument instead",
                field="tier",
                value=overrides["tier"],
            )
        return tier_preset(tier).with_overrides(known_regions=known_regions, **overrides)

    def with_overrides(
        self, *, known_regions: Iterable[str] | None = None, **overrides: Any
    ) -> Policy:
        """Return a validated copy with some fields replaced (see :meth:`for_tier`)."""
        data = self.model_dump()
        for key, value in overrides.items():
            if key == "budget" and isinstance(value, Mapping):
                data["budget"] = {**data["budget"], **value}
            else:
                data[key] = value
        return type(self).model_validate(data, context=_context(known_regions))

    def allows_tool(self, name: str) -> bool:
        """Whether the tenant may call tool ``name`` (denied wins over allowed)."""
        return name not in self.denied_tools and (
            self.allowed_tools is None or name in self.allowed_tools
        )

    def allows_model(self, name: str) -> bool:
        """Whether the tenant may call model ``name`` (denied wins over allowed)."""
        return name not in self.denied_models and (
            self.allowed_models is None or name in self.allowed_models
        )

    def rate_limit_for(self, resource: str) -> RateLimit | None:
        """The limit for ``resource`` (``"tool:credit_bureau"``), or ``None`` if unlimited.

        Looks up the exact key, then the kind's wildcard (``"tool:*"``), then ``"*"``.
        """
        kind, sep, _ = resource.partition(":")
        for key in (resource, f"{kind}:*" if sep else None, "*"):
            if key is not None and key in self.rate_limits:
                return self.rate_limits[key]
        return None

    @property
    def review_breach(self) -> tuple[Literal["escalate", "auto_reject", "fail"], str | None]:
        """``review_breach_action`` split into the action and, for ``escalate``, its pool."""
        if self.review_breach_action.startswith("escalate:"):
            return "escalate", self.review_breach_action.removeprefix("escalate:")
        return ("auto_reject" if self.review_breach_action == "auto_reject" else "fail"), None

    def review_pool_for(self, tenant_id: str) -> str:
        """The reviewer pool name: the explicit pool, the tenant's own, or ``"shared"``."""
        if self.reviewer_pool is not None:
            return self.reviewer_pool
        return f"{tenant_id}-reviewers" if self.dedicated_reviewers else "shared"


def _context(known_regions: Iterable[str] | None) -> dict[str, Any] | None:
    return None if known_regions is None else {"known_regions": frozenset(known_regions)}


def validate_policy(policy: Policy | Mapping[str, Any], known_regions: Iterable[str]) -> Policy:
    """Validate a policy (or its mapping form) against a deployment's region set.

    Args:
        policy: A policy, or the mapping read from YAML/JSON/the store.
        known_regions: The regions this deployment has stores and endpoints in.

    Returns:
        The validated policy.

    Raises:
        ConfigurationError: any field is invalid, including a region not in ``known_regions``.
    """
    data = policy.model_dump() if isinstance(policy, Policy) else dict(policy)
    return Policy.model_validate(data, context=_context(known_regions))


_PRESETS: Final[dict[str, Policy]] = {
    "enterprise": Policy(
        tier="enterprise",
        budget_class="high-volume",
        weight=5.0,
        region="us-east-1",
        model_tier="large",
        max_active_runs=50,
        max_running_steps=100,
        budget=Budget(run_micros=2_000_000),
        dedicated_reviewers=True,
        # Half the run SLA, so an escalated review can still land inside the 4 h decision SLA.
        review_sla=timedelta(hours=2),
        review_breach_action="escalate:shared",
        review_lane="normal",
        run_sla=timedelta(hours=4),
        guaranteed_slots=10,
        burst_slots=10,
    ),
    "standard": Policy(
        tier="standard",
        budget_class="standard",
        weight=2.0,
        model_tier="small",
        max_active_runs=10,
        max_running_steps=20,
        budget=Budget(run_micros=500_000),
        review_sla=timedelta(hours=12),
        review_breach_action="fail",
        review_lane="normal",
        run_sla=timedelta(hours=24),
        guaranteed_slots=2,
        burst_slots=2,
    ),
    "free": Policy(
        tier="free",
        budget_class="constrained",
        weight=1.0,
        model_tier="small",
        max_active_runs=3,
        max_running_steps=3,
        budget=Budget(run_micros=100_000),
        # Human review is a shared, scarce pool; the best-effort tier pauses instead.
        degradation=("cheaper_model", "skip_optional", "pause"),
        review_lane="background",
        run_sla=None,
    ),
}


def tier_preset(name: str) -> Policy:
    """The preset policy for tier ``name`` (``enterprise``, ``standard`` or ``free``).

    Raises:
        ConfigurationError: ``name`` is not a known tier.
    """
    try:
        # A deep copy: ``rate_limits`` is a dict, and a caller mutating it must not alter the
        # preset every other tenant is built from.
        return _PRESETS[name].model_copy(deep=True)
    except KeyError:
        raise ConfigurationError(
            f"invalid tier = {brief(name)}: known tiers are {', '.join(TIERS)}",
            field="tier",
            value=name,
        ) from None


def policy_overrides(fields: Mapping[str, Any], *, top_level: Iterable[str] = ()) -> dict[str, Any]:
    """Policy fields from outside (a request body, a command line), checked before they become
    keyword arguments of ``Tenants.create`` or ``update``: a key that is no policy field
    (``actor``, say, would name the call's own argument) or one given apart from the policy
    (``top_level``: a body's ``tier``) is refused, naming it."""
    apart = set(top_level)
    for key in fields:
        if key in apart:
            raise ConfigurationError(f"{key} is given apart from the policy fields", field=key)
        if key not in Policy.model_fields:
            raise ConfigurationError(f"{key!r} is not a policy field", field=key)
    return dict(fields)
