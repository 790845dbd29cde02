"""Simulating the variants of a scenario: with tenant controls, without, or both.

The variants are independent simulations of the same workload, so on a machine with several
CPUs a large scenario runs them in parallel worker processes. Results do not depend on it:
each variant is deterministic given the scenario and seed, whichever process computes it.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any, Final, Literal

from tenantflow.sim.engine import SimResult, simulate
from tenantflow.sim.scenario import Scenario

__all__ = [
    "PARALLEL_FROM_RUNS",
    "Progress",
    "Variants",
    "expected_runs",
    "run_variants",
    "variant_flags",
]

Progress = Callable[[bool, float, float], None]
"""``progress(controls, now_s, end_s)``: the variant with ``controls`` reached ``now_s`` of
``end_s`` simulated seconds."""

_PROGRESS_WALL_S: Final = 0.2  # a worker process reports at most this often

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


def run_variants(
    scenario: Scenario,
    controls: Sequence[bool],
    *,
    jobs: int = 0,
    progress: Progress | None = None,
) -> list[SimResult]:
    """Simulate each variant and return the results in the order asked.

    Args:
        scenario: The scenario (its ``seed`` applies to every variant).
        controls: One flag per variant: True with tenant controls, False without.
        jobs: Worker processes; 1 runs everything in this process, 0 decides: parallel when
            there are several variants, several CPUs and at least :data:`PARALLEL_FROM_RUNS`
            expected runs.
        progress: Called (in this process) as each variant advances, and once at its end.
    """
    if jobs < 0:
        raise ValueError(f"jobs must be >= 0, got {jobs}")
    workers = min(len(controls), jobs or _auto_jobs(scenario, len(controls)))
    if workers <= 1:
        return [
            simulate(scenario, controls=flag, progress=_local(progress, flag)) for flag in controls
        ]
    context = multiprocessing.get_context("spawn")  # no fork of a possibly threaded parent
    with context.Manager() as manager, ProcessPoolExecutor(workers, mp_context=context) as pool:
        updates: Any = manager.Queue() if progress is not None else None
        futures = [pool.submit(_simulate_reporting, scenario, flag, updates) for flag in controls]
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=_PROGRESS_WALL_S, return_when=FIRST_EXCEPTION)
            _drain(updates, progress)
            if any(f.done() and f.exception() is not None for f in futures):
                break
        _drain(updates, progress)
        return [future.result() for future in futures]


def _local(progress: Progress | None, flag: bool) -> Callable[[float, float], None] | None:
    if progress is None:
        return None
    return lambda now_s, end_s: progress(flag, now_s, end_s)


def _simulate_reporting(scenario: Scenario, flag: bool, updates: Any) -> SimResult:
    """In a worker process: simulate, sending progress to the parent at most every 0.2 s."""
    if updates is None:
        return simulate(scenario, controls=flag)
    last = 0.0

    def report(now_s: float, end_s: float) -> None:
        nonlocal last
        wall = time.monotonic()
        if wall - last >= _PROGRESS_WALL_S or now_s >= end_s:
            last = wall
            updates.put((flag, now_s, end_s))

    return simulate(scenario, controls=flag, progress=report)


def _drain(updates: Any, progress: Progress | None) -> None:
    if updates is None or progress is None:
        return
    while True:
        try:
            flag, now_s, end_s = updates.get_nowait()
        except queue.Empty:
            return
        progress(flag, now_s, end_s)


def _auto_jobs(scenario: Scenario, variants: int) -> int:
    if variants < 2 or expected_runs(scenario) < PARALLEL_FROM_RUNS:
        return 1
    return min(variants, os.cpu_count() or 1)
