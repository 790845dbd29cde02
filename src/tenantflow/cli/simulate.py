"""``tenantflow simulate SCENARIO.yaml``: a workload in virtual time, with and without controls.

Loads a scenario file (``docs/scenarios.md``), simulates it against the real admission,
scheduling, rate-limit, budget and routing code (:mod:`tenantflow.sim`), and prints the same
comparison as ``tenantflow demo``; ``--json``, ``--html`` and ``--png`` write it to files. A
malformed scenario prints one line naming the file, the line and the field, and exits 2.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from tenantflow.cli.common import reporting_errors

if TYPE_CHECKING:
    from tenantflow.sim import SimResult
    from tenantflow.sim.scenario import Scenario

__all__ = ["Variant", "simulate"]


class Variant(enum.StrEnum):
    """Which variants to simulate."""

    on = "on"
    off = "off"
    both = "both"


def simulate(
    scenario: Annotated[
        Path,
        typer.Argument(metavar="SCENARIO.yaml", help="The scenario file (see docs/scenarios.md)."),
    ],
    json_path: Annotated[
        Path | None, typer.Option("--json", metavar="PATH", help="Write the report as JSON.")
    ] = None,
    html_path: Annotated[
        Path | None,
        typer.Option("--html", metavar="PATH", help="Write the report with plots as HTML."),
    ] = None,
    png_path: Annotated[
        Path | None, typer.Option("--png", metavar="PATH", help="Write the plots as PNG.")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(min=0, help="Override the scenario's seed (same seed, same result)."),
    ] = None,
    variants: Annotated[
        Variant,
        typer.Option(help="Tenant controls on, off, or both (compared side by side)."),
    ] = Variant.both,
    jobs: Annotated[
        int,
        typer.Option(
            min=0, help="Worker processes for the variants (0: parallel for large scenarios)."
        ),
    ] = 0,
) -> None:
    """Simulate a workload profile in virtual time against the real scheduler and policy code,
    with and without tenant controls, and print the comparison."""
    # Imported here, not with the module: the simulator and the plots are for this command
    # only, and every other command (and --help) starts without them.
    from tenantflow.report import build_report, print_report, write_html, write_json, write_png
    from tenantflow.sim import load_scenario, run_variants, variant_flags

    with reporting_errors():
        loaded = load_scenario(scenario).with_seed(seed)
        results = run_variants(loaded, variant_flags(variants.value), jobs=jobs)
        report = build_report(
            f"{loaded.name} (simulated)",
            _params(loaded, scenario, variants, results),
            [r.trace for r in results],
        )
        console = Console()
        print_report(report, console)
        writers = ((json_path, write_json), (html_path, write_html), (png_path, write_png))
        for path, write in writers:
            if path is not None:
                write(report, path)
                console.print(f"wrote {path}")


def _params(
    scenario: Scenario, path: Path, variants: Variant, results: list[SimResult]
) -> dict[str, Any]:
    spec = scenario.spec
    drain_s = spec.drain if spec.drain is not None else spec.duration
    params: dict[str, Any] = {
        "scenario": scenario.name,
        "file": str(path),
        "seed": scenario.seed,
        "tenants": scenario.tenant_count,
        "slots": spec.slots,
        "duration_s": spec.duration,
        "drain_s": drain_s,
        "start": spec.start.isoformat(),
        "variants": variants.value,
        "events": sum(r.stats.events for r in results),
        "simulated_in_s": round(sum(r.trace.wall_s for r in results), 3),
    }
    if spec.description:
        params["description"] = " ".join(spec.description.split())
    return params
