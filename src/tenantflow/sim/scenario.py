"""Load a scenario file into a checked, resolved :class:`Scenario`.

Loading happens in three passes, each reporting the first problem as one
:class:`~tenantflow.sim.source.ScenarioError` that names the file, the line and the field:

1. YAML to plain data, remembering lines (:func:`tenantflow.sim.source.read_yaml`);
2. the schema (:class:`~tenantflow.sim.spec.ScenarioSpec`): shapes, types and ranges;
3. resolution: every tenant group's policy is built from its tier preset and overrides with
   the real :func:`~tenantflow.domain.policy.validate_policy` (so a scenario accepts exactly
   what ``tenantflow tenants create`` accepts), endpoints become real
   :class:`~tenantflow.domain.routing.Endpoint` objects, and what spans sections is checked:
   names are unique, bursts name a group, every reviewer pool a tenant would use exists, and a
   tenant bound to a region has an endpoint there for each model-calling step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Any

from pydantic import ValidationError

from tenantflow.domain.policy import (
    DEFAULT_REGIONS,
    Lane,
    Policy,
    RateLimit,
    tier_preset,
    validate_policy,
)
from tenantflow.domain.routing import Endpoint
from tenantflow.errors import ConfigurationError
from tenantflow.sim.source import (
    Lines,
    Path,
    ScenarioError,
    configuration_error_path,
    read_yaml,
)
from tenantflow.sim.spec import EndpointSpec, ScenarioSpec, TenantGroupSpec

__all__ = [
    "Scenario",
    "ScenarioError",
    "SimEndpoint",
    "TenantGroup",
    "find_scenario",
    "load_scenario",
    "parse_scenario",
    "shipped_scenarios",
]


@dataclass(frozen=True, slots=True)
class TenantGroup:
    """A resolved tenant group.

    Attributes:
        name: The group's name.
        tenant_class: The report row its tenants count in.
        policy: The validated policy every tenant of the group has.
        tenant_ids: The tenants.
        rate_per_s: Steady arrivals per tenant per second (0: none).
        diurnal: 24 hourly weights normalised to mean 1, or None for a flat rate.
        lane: Lane of steady arrivals.
    """

    name: str
    tenant_class: str
    policy: Policy
    tenant_ids: tuple[str, ...]
    rate_per_s: float
    diurnal: tuple[float, ...] | None
    lane: Lane


@dataclass(frozen=True, slots=True)
class SimEndpoint:
    """A real endpoint plus what only the simulation needs: latency and outage windows."""

    endpoint: Endpoint
    latency_s: float
    outages: tuple[tuple[float, float], ...]

    def healthy(self, now_s: float) -> bool:
        """Whether the endpoint is up at ``now_s`` (outside every outage window)."""
        return not any(start <= now_s < end for start, end in self.outages)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A checked scenario, ready to simulate.

    Attributes:
        spec: The validated file contents.
        name: The scenario's name.
        source: The file it came from (for messages).
        seed: The seed in effect (the file's, or the one given on the command line).
        groups: Tenant groups with their policies.
        endpoints: Model endpoints.
        shared_limits: Platform-wide limits per resource (used with tenant controls off).
        known_regions: The deployment's regions.
    """

    spec: ScenarioSpec
    name: str
    source: str
    seed: int
    groups: tuple[TenantGroup, ...]
    endpoints: tuple[SimEndpoint, ...]
    shared_limits: Mapping[str, RateLimit]
    known_regions: frozenset[str]

    def with_seed(self, seed: int | None) -> Scenario:
        """The same scenario with another seed (None keeps the file's)."""
        return self if seed is None else dataclasses.replace(self, seed=seed)

    @property
    def tenant_count(self) -> int:
        """How many tenants the scenario has."""
        return sum(len(g.tenant_ids) for g in self.groups)


def shipped_scenarios() -> dict[str, FilePath]:
    """The scenarios that ship with the package, by name (``monday_morning``, ...)."""
    from importlib.resources import files

    folder = files("tenantflow") / "scenarios"
    return {
        item.name.removesuffix(".yaml"): FilePath(str(item))
        for item in folder.iterdir()
        if item.name.endswith(".yaml")
    }


def find_scenario(name: str) -> FilePath:
    """``name`` as a scenario file: a path that exists, else a shipped scenario by name (with or
    without ``.yaml``).

    Raises:
        ScenarioError: neither (the message lists the shipped scenarios).
    """
    path = FilePath(name)
    if path.exists() or path.parent != FilePath("."):
        return path  # a path: read as a file (a missing one is "cannot read", naming it)
    shipped = shipped_scenarios()
    key = path.name.removesuffix(".yaml")
    if key in shipped:
        return shipped[key]
    raise ScenarioError(
        f"{name}: no such scenario file, nor a shipped scenario ({', '.join(sorted(shipped))})",
        file=path.name,
        line=None,
        field="",
    )


def load_scenario(path: FilePath | str) -> Scenario:
    """Read, validate and resolve a scenario file.

    Raises:
        ScenarioError: the file cannot be read, or any part of it is invalid (the message names
            the file, the line and the field).
    """
    file = FilePath(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(
            f"{file.name}: cannot read the scenario: {exc}", file=file.name, line=None, field=""
        ) from None
    return parse_scenario(text, source=file.name)


def parse_scenario(text: str, source: str = "scenario.yaml") -> Scenario:
    """Validate and resolve a scenario given as YAML text (see :func:`load_scenario`)."""
    data, lines = read_yaml(text, source)
    if not isinstance(data, dict):
        raise lines.error((), "a scenario must be a mapping of fields", with_value=False)
    # Top-level ``x-...`` keys are extensions, ignored: a place to define YAML anchors.
    data = {key: value for key, value in data.items() if not key.startswith("x-")}
    spec = _validate(data, lines)
    return _Resolver(spec, lines, default_name=source.rsplit(".", 1)[0]).scenario()


def _validate(data: dict[str, Any], lines: Lines) -> ScenarioSpec:
    try:
        return ScenarioSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        path = tuple(part for part in first["loc"] if part != "[key]")
        message = first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if first["type"] == "extra_forbidden":
            message = "unknown field"
        missing = first["type"] == "missing"
        raise lines.error(path, message, value=first.get("input"), with_value=not missing) from None


class _Resolver:
    """Builds a :class:`Scenario` from a validated spec, citing lines for every problem."""

    def __init__(self, spec: ScenarioSpec, lines: Lines, default_name: str) -> None:
        self.spec = spec
        self.lines = lines
        self.default_name = default_name
        self.regions = frozenset(spec.regions) if spec.regions else DEFAULT_REGIONS

    def scenario(self) -> Scenario:
        spec = self.spec
        self._unique("workflow.steps", [s.name for s in spec.workflow.steps], ("workflow", "steps"))
        self._unique("reviewer_pools", [p.name for p in spec.reviewer_pools], ("reviewer_pools",))
        endpoints = tuple(self._endpoint(i, e) for i, e in enumerate(spec.endpoints))
        self._unique("endpoints", [e.name for e in spec.endpoints], ("endpoints",))
        shared = self._shared_limits()
        groups = tuple(self._group(i, g) for i, g in enumerate(spec.tenants))
        self._unique("tenants", [g.name for g in spec.tenants], ("tenants",))
        self._unique_tenants(groups)
        self._bursts(groups)
        for index, group in enumerate(groups):
            self._routable(index, group, endpoints)
            self._reviewable(index, group)
        return Scenario(
            spec=spec,
            name=spec.name or self.default_name,
            source=self.lines.source,
            seed=spec.seed,
            groups=groups,
            endpoints=endpoints,
            shared_limits=shared,
            known_regions=self.regions,
        )

    def _unique(self, what: str, names: Sequence[str], path: Path) -> None:
        seen: set[str] = set()
        for index, name in enumerate(names):
            if name in seen:
                raise self.lines.error((*path, index, "name"), f"{what}: duplicated name {name!r}")
            seen.add(name)

    def _endpoint(self, index: int, spec: EndpointSpec) -> SimEndpoint:
        path: Path = ("endpoints", index)
        if spec.region not in self.regions:
            raise self.lines.error(
                (*path, "region"),
                f"unknown region; known regions are {', '.join(sorted(self.regions))}",
                value=spec.region,
            )
        try:
            endpoint = Endpoint(
                name=spec.name,
                provider=spec.provider,
                model=spec.model,
                region=spec.region,
                tier=spec.tier,
                price_in_per_1k_micros=spec.price_in_per_1k,
                price_out_per_1k_micros=spec.price_out_per_1k,
                max_context=spec.max_context,
            )
        except ConfigurationError as exc:
            raise self.lines.error(path, exc.message, with_value=False) from None
        outages = tuple((o.at, o.at + o.lasting) for o in spec.outages)
        return SimEndpoint(endpoint, spec.latency, outages)

    def _shared_limits(self) -> dict[str, RateLimit]:
        limits: dict[str, RateLimit] = {}
        for resource, value in self.spec.shared_rate_limits.items():
            path: Path = ("shared_rate_limits", resource)
            if not resource or resource != resource.strip() or ":" not in resource:
                raise self.lines.error(
                    path,
                    "a resource is written 'tool:<name>' or 'model:<endpoint>'",
                    value=resource,
                )
            try:
                limits[resource] = RateLimit.model_validate(value)
            except ConfigurationError:
                raise self.lines.error(
                    path,
                    "write a limit as '<count>/<unit>' (e.g. '600/hour') or {rate:, burst:}",
                    value=value,
                ) from None
        return limits

    def _group(self, index: int, spec: TenantGroupSpec) -> TenantGroup:
        policy = self._policy(index, spec)
        if spec.count == 1:
            ids: tuple[str, ...] = (spec.name,)
        else:
            width = max(3, len(str(spec.count)))
            ids = tuple(f"{spec.name}-{n:0{width}d}" for n in range(1, spec.count + 1))
        arrivals = spec.arrivals
        diurnal = None
        if arrivals is not None and arrivals.diurnal is not None:
            mean = sum(arrivals.diurnal) / 24.0
            diurnal = tuple(w / mean for w in arrivals.diurnal)
        lane = (arrivals.lane if arrivals is not None else None) or policy.default_lane
        return TenantGroup(
            name=spec.name,
            tenant_class=spec.tenant_class or spec.name,
            policy=policy,
            tenant_ids=ids,
            rate_per_s=arrivals.rate if arrivals is not None else 0.0,
            diurnal=diurnal,
            lane=lane,
        )

    def _policy(self, index: int, spec: TenantGroupSpec) -> Policy:
        """The preset for the group's tier with its overrides, validated like the engine does."""
        path: Path = ("tenants", index, "policy")
        overrides = spec.policy
        if "tier" in overrides and overrides["tier"] != spec.tier:
            raise self.lines.error(
                (*path, "tier"),
                "set the tier with the group's 'tier' field",
                value=overrides["tier"],
            )
        data = tier_preset(spec.tier).model_dump()
        for key, value in overrides.items():
            if key == "budget" and isinstance(value, Mapping):
                data["budget"] = {**data["budget"], **value}
            else:
                data[key] = value
        try:
            return validate_policy(data, self.regions)
        except ConfigurationError as exc:
            field_path = configuration_error_path(exc)
            message = _policy_message(exc, field_path)
            raise self.lines.error(
                (*path, *field_path), message, value=exc.fields.get("value")
            ) from None
        except (TypeError, ValueError) as exc:  # a value of a shape policy validation trips on
            culprit = self._culprit(spec.tier, overrides)
            raise self.lines.error(
                (*path, culprit) if culprit else path,
                f"invalid value ({type(exc).__name__}: {exc})",
                value=overrides.get(culprit) if culprit else None,
            ) from None

    def _culprit(self, tier: str, overrides: Mapping[str, Any]) -> str | None:
        """The first override that fails validation on its own, to name it in the error."""
        for key, value in overrides.items():
            data = tier_preset(tier).model_dump()
            if key == "budget" and isinstance(value, Mapping):
                data["budget"] = {**data["budget"], **value}
            else:
                data[key] = value
            try:
                validate_policy(data, self.regions)
            except (ConfigurationError, TypeError, ValueError):
                return key
        return None

    def _unique_tenants(self, groups: Sequence[TenantGroup]) -> None:
        seen: dict[str, int] = {}
        for index, group in enumerate(groups):
            for tenant in group.tenant_ids:
                if tenant in seen:
                    raise self.lines.error(
                        ("tenants", index, "name"),
                        f"tenant id {tenant!r} is also made by tenants[{seen[tenant]}]",
                    )
                seen[tenant] = index

    def _bursts(self, groups: Sequence[TenantGroup]) -> None:
        names = {g.name for g in groups}
        for index, burst in enumerate(self.spec.bursts):
            if burst.group not in names:
                raise self.lines.error(
                    ("bursts", index, "group"),
                    f"no tenant group is called {burst.group!r}; groups are "
                    f"{', '.join(sorted(names))}",
                    with_value=False,
                )

    def _routable(self, index: int, group: TenantGroup, endpoints: Sequence[SimEndpoint]) -> None:
        """Every model-calling step must have an endpoint the group's policy may use."""
        if not any(step.model is not None for step in self.spec.workflow.steps):
            return
        region = group.policy.region
        usable = [
            e.endpoint
            for e in endpoints
            if (region is None or e.endpoint.region == region)
            and group.policy.allows_model(e.endpoint.model)
        ]
        if not usable:
            where = f"in region {region!r} " if region else ""
            raise self.lines.error(
                ("tenants", index, "policy"),
                f"the workflow calls a model but no endpoint {where}serves a model tenant "
                f"group {group.name!r} may use",
                with_value=False,
            )

    def _reviewable(self, index: int, group: TenantGroup) -> None:
        """Every reviewer pool the group's reviews could go to must be defined."""
        steps = self.spec.workflow.steps
        escalates = "escalate_to_human" in group.policy.degradation and any(
            s.model is not None or s.tool_cost for s in steps
        )
        if not escalates and not any(s.review and s.review.probability > 0 for s in steps):
            return
        policy = group.policy
        if policy.reviewer_pool is None and policy.dedicated_reviewers:
            if self.spec.dedicated_reviewers is None:
                raise self.lines.error(
                    ("tenants", index),
                    f"tenant group {group.name!r} has dedicated reviewers (its tier's preset) "
                    "but the scenario sets no 'dedicated_reviewers' team size",
                    with_value=False,
                )
            return
        pool = policy.review_pool_for(group.tenant_ids[0])
        if pool not in {p.name for p in self.spec.reviewer_pools}:
            raise self.lines.error(
                ("tenants", index, "policy"),
                f"tenant group {group.name!r} sends reviews to pool {pool!r}, which "
                "reviewer_pools does not define",
                with_value=False,
            )


def _policy_message(exc: ConfigurationError, field_path: tuple[str, ...]) -> str:
    """The policy error's reason without its ``invalid <field> = <value>:`` preamble."""
    message = exc.message
    if message.startswith("invalid ") and ": " in message:
        message = message.split(": ", 1)[1]
    if message == "Extra inputs are not permitted":
        return "unknown policy field"
    if message.startswith("Input should be greater than or equal to"):
        return "must be >= " + message.rsplit(" ", 1)[1]
    if message.startswith("Input should be greater than"):
        return "must be > " + message.rsplit(" ", 1)[1]
    return message if field_path else f"invalid policy: {message}"
