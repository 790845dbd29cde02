"""Simulating the variants of a scenario: with tenant controls, without, or both.

The variants are independent simulations of the same workload, so on a machine with several
CPUs a large scenario runs them in parallel worker processes. Results do not depend on it:
each variant is deterministic given the scenario and seed, whichever process computes it.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Final, Literal

from tenantflow.sim.engine import SimResult, simulate
from tenantflow.sim.scenario import Scenario

__all__ = ["PARALLEL_FROM_RUNS", "Variants", "expected_runs", "run_variants", "variant_flags"]

Variants = Literal["on", "off", "both"]
"""Which variants to simulate: tenant controls ``on``, ``off``, or ``both``."""

PARALLEL_FROM_RUNS: Final = 50_000
"""With ``jobs=0`` (auto), variants run in parallel from this many expected runs; below it,
starting worker processes costs more than it saves."""


def variant_flags(variants: Variants) -> list[bool]:
    """The ``controls`` flag of each variant, in report order (without controls first)."""
    return {"on": [True], "off": [False], "both": [False, True]}[variants]


def expected_runs(scenario: Scenario) -> float:
    """Roughly how many runs the scenario submits (steady arrivals plus bursts)."""
    steady = sum(g.rate_per_s * len(g.tenant_ids) for g in scenario.groups)
    return steady * scenario.spec.duration + sum(b.count for b in scenario.spec.bursts)


def run_variants(scenario: Scenario, controls: Sequence[bool], *, jobs: int = 0) -> list[SimResult]:
    """Simulate each variant and return the results in the order asked.

    Args:
        scenario: The scenario (its ``seed`` applies to every variant).
        controls: One flag per variant: True with tenant controls, False without.
        jobs: Worker processes; 1 runs everything in this process, 0 decides: parallel when
            there are several variants, several CPUs and at least :data:`PARALLEL_FROM_RUNS`
            expected runs.
    """
    if jobs < 0:
        raise ValueError(f"jobs must be >= 0, got {jobs}")
    workers = min(len(controls), jobs or _auto_jobs(scenario, len(controls)))
    if workers <= 1:
        return [simulate(scenario, controls=flag) for flag in controls]
    context = multiprocessing.get_context("spawn")  # no fork of a possibly threaded parent
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(simulate, scenario, controls=flag) for flag in controls]
        return [future.result() for future in futures]


def _auto_jobs(scenario: Scenario, variants: int) -> int:
    if variants < 2 or expected_runs(scenario) < PARALLEL_FROM_RUNS:
        return 1
    return min(variants, os.cpu_count() or 1)
