"""The workload ``tenantflow topology compare`` drives: a scenario with a ``topology:`` section.

The file is the one ``tenantflow simulate`` reads (``docs/scenarios.md``): its tenants (tiers,
policy overrides, weights, regions), its workflow (steps with durations, tool calls and model
calls), its endpoints and its burst. The ``topology:`` section (ignored by the simulator) says
how to play it on this machine, in real time and real processes:

* ``time_scale``: scenario seconds to real seconds (``0.002``: a 5 s step sleeps 10 ms), so that
  CPU measures orchestration overhead, not the work a step stands for;
* the phases' lengths and loads (``quiet_rate`` per tenant, the burster's ``burst``, the
  ``saturation_runs`` every tenant queues at once), the faults' timing (``fault_window``,
  ``sigstop_for``), the ``sla`` a run must meet not to count as affected, the stricter
  ``policy_cap`` written during the policy phase, the centralized placement's ``workers``;
* ``quick:``: overrides for the ``--quick`` profile (CI), including ``tenants:``, how many of
  the scenario's tenants (in file order) take part.

The same file is read by the server and worker processes (``tenantflow.topology.app``) to build
the same workflow, tools and endpoints; the path and profile reach them through the environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from tenantflow.errors import ConfigurationError
from tenantflow.sim.scenario import Scenario, find_scenario, load_scenario
from tenantflow.sim.values import Distribution, RatePerSecond, Seconds, SpecModel

COMPONENT_KINDS = ("api", "worker", "engine", "database", "cell", "plane", "agent", "broker")
"""The kinds of :class:`~tenantflow.topology.runner.Component` a placement has."""
PLACEMENT_NAMES = ("embedded", "centralized", "federated", "mesh", "hybrid")

__all__ = [
    "COMPONENT_KINDS",
    "EndpointPlan",
    "StepPlan",
    "TenantPlan",
    "TopologySpec",
    "Workload",
    "load_workload",
]


class TopologySpec(SpecModel):
    """The ``topology:`` section (see the module docstring); every field has a default.

    Attributes:
        time_scale: Real seconds per scenario second for step durations and model latency.
        quiet_rate: Runs per second each tenant submits in the quiet, burst and fault phases.
        phase: How long the quiet and the burst phases submit.
        burst: Runs the burster submits at once (default: the scenario's first burst).
        saturation_runs: Runs every tenant submits at once in the saturation phase.
        fault_before: Steady load before a fault is injected.
        fault_window: How long the steady load goes on after the faulted component is back
            (restarted, or continued): a tenant with a failed or slow run (or a submission
            refused) from the fault to the end of this window counts as affected, and the
            per-second p99 must be back within 1.1x of the steady one inside it.
        sigstop_for: How long a SIGSTOPped component stays stopped.
        sla: A run whose submission-to-finish time exceeds this is SLA-breaking.
        policy_cap: The burster's stricter ``max_running_steps`` written in the policy phase.
        workers: Worker processes of the centralized placement.
        agents: Agent processes per region of the mesh placement.
        cells: Cells of the federated placement (the tenants pooled evenly over them).
        slots: Worker slots per process (default: the scenario's ``slots``).
        lease: The workers' lease (how soon a dead worker's tenants are taken over).
        drain_timeout: The longest wait for a phase's runs to end.
        timeline_samples: Runs whose timeline is fetched to time its assembly.
        tenants: Use only the first N tenants of the scenario (file order; default: all).
        faults: The faults to inject, as ``kind:fault`` (``cell:kill``, ``broker:stop``) or
            ``placement/kind:fault`` (``centralized/api:kill``: that placement's only);
            default: every fault. A placement without a listed kind skips it.
        quick: Overrides of the fields above for ``--quick``.
    """

    time_scale: float = Field(default=0.002, gt=0.0, le=1.0)
    quiet_rate: RatePerSecond = 0.5
    phase: Seconds = Field(default=12.0, gt=0.0, le=600.0)
    burst: int | None = Field(default=None, ge=1, le=100_000)
    saturation_runs: int = Field(default=40, ge=1, le=100_000)
    fault_before: Seconds = Field(default=2.0, ge=0.0, le=600.0)
    fault_window: Seconds = Field(default=10.0, gt=0.0, le=600.0)
    sigstop_for: Seconds = Field(default=5.0, gt=0.0, le=600.0)
    sla: Seconds = Field(default=2.0, gt=0.0, le=3600.0)
    policy_cap: int = Field(default=1, ge=1, le=10_000)
    workers: int = Field(default=2, ge=1, le=64)
    cells: int = Field(default=3, ge=1, le=1000)
    agents: int = Field(default=1, ge=1, le=64)
    slots: int | None = Field(default=None, ge=1, le=10_000)
    lease: Seconds = Field(default=2.0, ge=0.5, le=600.0)
    drain_timeout: Seconds = Field(default=90.0, gt=0.0, le=3600.0)
    timeline_samples: int = Field(default=20, ge=1, le=10_000)
    tenants: int | None = Field(default=None, ge=2, le=10_000)
    faults: list[str] | None = None
    quick: dict[str, Any] = Field(default_factory=dict)

    def profile(self, quick: bool) -> TopologySpec:
        """This section, with the ``quick:`` overrides applied when ``quick``."""
        if not quick:
            return self
        data = self.model_dump()
        data.update(self.quick)
        data["quick"] = {}
        return TopologySpec.model_validate(data)

    @field_validator("faults")
    @classmethod
    def _faults(cls, value: list[str] | None) -> list[str] | None:
        for item in value or []:
            placement, _, rest = item.rpartition("/")
            kind, _, fault = rest.partition(":")
            if (
                kind not in COMPONENT_KINDS
                or fault not in ("kill", "stop")
                or (placement and placement not in PLACEMENT_NAMES)
            ):
                raise ValueError(
                    f"{item!r}: expected [PLACEMENT/]KIND:FAULT, KIND one of"
                    f" {', '.join(COMPONENT_KINDS)} and FAULT kill or stop"
                )
        return value

    def wants(self, placement: str, kind: str, fault: str) -> bool:
        """Whether the placement's fault ``fault`` of components of ``kind`` is injected."""
        if self.faults is None:
            return True
        return f"{kind}:{fault}" in self.faults or f"{placement}/{kind}:{fault}" in self.faults


@dataclass(frozen=True, slots=True)
class TenantPlan:
    """One tenant as the comparison creates it over the API."""

    id: str
    tier: str
    tenant_class: str
    policy: dict[str, Any]
    """The scenario's overrides of the tier preset, sent as they are written."""
    weight: float
    region: str | None
    max_running_steps: int
    guaranteed_slots: int
    burst_slots: int
    burster: bool


@dataclass(frozen=True, slots=True)
class StepPlan:
    """One workflow step: how long it works (scenario seconds), what it calls."""

    name: str
    duration: Distribution
    tool: str | None
    tool_cost_micros: int
    prompt_tokens: int
    max_tokens: int
    completion_tokens: int
    model_tier: str | None
    calls_model: bool


@dataclass(frozen=True, slots=True)
class EndpointPlan:
    """A model endpoint (its model name identifies it in the executions log)."""

    name: str
    model: str
    region: str
    tier: str
    price_in_per_1k_micros: int
    price_out_per_1k_micros: int
    max_context: int
    latency_s: float
    """Scenario seconds; multiplied by ``time_scale`` when served."""


@dataclass(frozen=True, slots=True)
class Workload:
    """A loaded workload file and the profile it is played in."""

    path: Path
    name: str
    seed: int
    quick: bool
    workflow: str
    steps: tuple[StepPlan, ...]
    endpoints: tuple[EndpointPlan, ...]
    tenants: tuple[TenantPlan, ...]
    settings: TopologySpec
    scenario: Scenario

    @property
    def burster(self) -> TenantPlan:
        return next(t for t in self.tenants if t.burster)

    @property
    def quiet(self) -> tuple[TenantPlan, ...]:
        return tuple(t for t in self.tenants if not t.burster)

    @property
    def slots(self) -> int:
        return self.settings.slots or self.scenario.spec.slots

    @property
    def burst(self) -> int:
        if self.settings.burst is not None:
            return self.settings.burst
        return self.scenario.spec.bursts[0].count

    def region_of_model(self, model: str) -> str | None:
        for endpoint in self.endpoints:
            if endpoint.model == model:
                return endpoint.region
        return None

    def endpoint_of_model(self, model: str) -> EndpointPlan | None:
        return next((e for e in self.endpoints if e.model == model), None)

    def tenant(self, tenant_id: str) -> TenantPlan:
        return next(t for t in self.tenants if t.id == tenant_id)


def load_workload(name: str | Path, *, quick: bool = False) -> Workload:
    """Load a workload file (a scenario with a ``topology:`` section; a shipped scenario's name
    works too).

    Raises:
        ConfigurationError: the file is malformed (as ``tenantflow simulate`` reports it), has
            no burst, its ``topology:`` section is malformed, or its models are not one per
            endpoint.
    """
    path = find_scenario(str(name))
    scenario = load_scenario(path)
    spec = scenario.spec
    try:
        settings = TopologySpec.model_validate(spec.topology or {}).profile(quick)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigurationError(
            f"{path}: topology.{where}: {first['msg']}", field=f"topology.{where}"
        ) from None
    if not spec.bursts:
        raise ConfigurationError(
            f"{path}: the topology comparison needs a burst (bursts: [{{group: …, count: …}}])",
            field="bursts",
        )
    models = [e.endpoint.model for e in scenario.endpoints]
    if len(set(models)) != len(models):
        raise ConfigurationError(
            f"{path}: every endpoint needs a model name of its own (the executions log names"
            " the endpoint by its model)",
            field="endpoints",
        )
    burst_group = spec.bursts[0].group
    raw_policy = {g.name: dict(g.policy) for g in spec.tenants}
    tenants: list[TenantPlan] = []
    for group in scenario.groups:
        for tenant_id in group.tenant_ids:
            tenants.append(
                TenantPlan(
                    id=tenant_id,
                    tier=group.policy.tier,
                    tenant_class=group.tenant_class,
                    policy=raw_policy[group.name],
                    weight=group.policy.weight,
                    region=group.policy.region,
                    max_running_steps=group.policy.max_running_steps,
                    guaranteed_slots=group.policy.guaranteed_slots,
                    burst_slots=group.policy.burst_slots,
                    burster=group.name == burst_group,
                )
            )
    if settings.tenants is not None:
        burster = [t for t in tenants if t.burster][:1]
        others = [t for t in tenants if not t.burster][: settings.tenants - len(burster)]
        tenants = [t for t in tenants if t in burster or t in others]
    steps = tuple(
        StepPlan(
            name=s.name,
            duration=s.duration,
            tool=s.tool,
            tool_cost_micros=s.tool_cost,
            prompt_tokens=s.model.prompt_tokens if s.model else 0,
            max_tokens=s.model.max_tokens if s.model else 0,
            completion_tokens=s.model.completion_tokens if s.model else 0,
            model_tier=s.model.tier if s.model else None,
            calls_model=s.model is not None,
        )
        for s in spec.workflow.steps
    )
    endpoints = tuple(
        EndpointPlan(
            name=e.endpoint.name,
            model=e.endpoint.model,
            region=e.endpoint.region,
            tier=e.endpoint.tier,
            price_in_per_1k_micros=e.endpoint.price_in_per_1k_micros,
            price_out_per_1k_micros=e.endpoint.price_out_per_1k_micros,
            max_context=e.endpoint.max_context,
            latency_s=e.latency_s,
        )
        for e in scenario.endpoints
    )
    return Workload(
        path=Path(path).resolve(),
        name=scenario.name,
        seed=scenario.seed,
        quick=quick,
        workflow=spec.workflow.name,
        steps=steps,
        endpoints=endpoints,
        tenants=tuple(tenants),
        settings=settings,
        scenario=scenario,
    )


def poisson_times(rate_per_s: float, duration_s: float, seed: int) -> list[float]:
    """Arrival offsets of a Poisson process of ``rate_per_s`` over ``duration_s`` (seeded)."""
    import random

    if rate_per_s <= 0 or duration_s <= 0:
        return []
    rng = random.Random(seed)
    out: list[float] = []
    t = rng.expovariate(rate_per_s)
    while t < duration_s:
        out.append(t)
        t += rng.expovariate(rate_per_s)
    return out


def expected_steps(workload: Workload) -> int:
    """Steps one run executes (every step runs once on the happy path)."""
    return len(workload.steps)
