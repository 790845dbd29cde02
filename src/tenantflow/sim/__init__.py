"""Virtual-time simulation of workload profiles against the real control-plane decisions.

A scenario file (:mod:`tenantflow.sim.scenario`, documented in ``docs/scenarios.md``) describes
tenants and tiers, arrival processes, bursts, the workflow's steps, model endpoints and reviewer
pools. :func:`simulate` runs it as a discrete-event simulation (:mod:`tenantflow.sim.engine`)
through the real admission controller, fair scheduler, GCRA rate limiter, budget ledgers and
endpoint routing, with tenant controls or without, and records a
:class:`~tenantflow.report.trace.Trace` for the report. ``tenantflow simulate`` is the command.
"""

from tenantflow.sim.engine import SimResult, SimStats, simulate
from tenantflow.sim.runner import Variants, expected_runs, run_variants, variant_flags
from tenantflow.sim.scenario import (
    Scenario,
    find_scenario,
    load_scenario,
    parse_scenario,
    shipped_scenarios,
)
from tenantflow.sim.source import ScenarioError

__all__ = [
    "Scenario",
    "ScenarioError",
    "SimResult",
    "SimStats",
    "Variants",
    "expected_runs",
    "find_scenario",
    "load_scenario",
    "parse_scenario",
    "run_variants",
    "shipped_scenarios",
    "simulate",
    "variant_flags",
]
