"""Speed of ``tenantflow simulate``: seed 001's Monday morning and a month of steady traffic.

    .venv/bin/python benchmarks/simulate.py            # both scenarios
    .venv/bin/python benchmarks/simulate.py --quick    # Monday morning only
    .venv/bin/python benchmarks/simulate.py --scenario my.yaml

For each scenario it simulates each variant (tenant controls off, then on) in this process and
prints events, step attempts, runs, wall time and events per second; then both variants the
way the command runs them (:func:`tenantflow.sim.run_variants` with ``jobs=0``: in parallel
worker processes for large scenarios), with the wall time of the whole. Loading the scenario
and building the report are not timed. Figures depend on the machine and on what else runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

try:
    from tenantflow.sim import expected_runs, load_scenario, run_variants, simulate
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from tenantflow.sim import expected_runs, load_scenario, run_variants, simulate

ROOT = Path(__file__).resolve().parents[1]
MONDAY = ROOT / "scenarios" / "monday_morning.yaml"
MONTH = ROOT / "scenarios" / "month.yaml"


def bench(path: Path) -> None:
    """Print the figures for one scenario file."""
    scenario = load_scenario(path)
    print(
        f"\n{scenario.name}: {scenario.tenant_count} tenants, {scenario.spec.slots} slots, "
        f"{scenario.spec.duration / 3600:.0f} h of arrivals, ~{expected_runs(scenario):,.0f} runs"
    )
    print(f"  {'variant':<18}{'events':>12}{'steps':>12}{'runs':>10}{'wall':>9}{'events/s':>12}")
    for controls in (False, True):
        started = time.perf_counter()
        result = simulate(scenario, controls=controls)
        wall = time.perf_counter() - started
        stats = result.stats
        print(
            f"  {result.trace.scenario:<18}{stats.events:>12,}{stats.steps:>12,}"
            f"{len(result.trace.runs):>10,}{wall:>8.2f}s{stats.events / wall:>12,.0f}"
        )
    started = time.perf_counter()
    results = run_variants(scenario, [False, True], jobs=0)
    wall = time.perf_counter() - started
    events = sum(r.stats.events for r in results)
    print(f"  both, as the command runs them: {wall:.2f}s wall ({events / wall:,.0f} events/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Monday morning only")
    parser.add_argument("--scenario", type=Path, help="benchmark this scenario file instead")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    if args.scenario is not None:
        bench(args.scenario)
        return
    bench(MONDAY)
    if not args.quick:
        bench(MONTH)


if __name__ == "__main__":
    main()
