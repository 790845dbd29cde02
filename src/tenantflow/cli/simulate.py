"""``tenantflow simulate SCENARIO.yaml``: a workload in virtual time, with and without controls.

Loads a scenario file (``docs/scenarios.md``), simulates it against the real admission,
scheduling, rate-limit, budget and routing code (:mod:`tenantflow.sim`), and prints the same
comparison as ``tenantflow demo``; ``--json``, ``--html`` and ``--png`` write it to files. A
malformed scenario prints one line naming the file, the line and the field, and exits 2.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from tenantflow.cli.common import reporting_errors
from tenantflow.tables import output_console

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
        str,
        typer.Argument(
            metavar="SCENARIO",
            help="A scenario file (see docs/scenarios.md), or the name of one that ships with"
            " tenantflow: monday_morning, month, quick.",
        ),
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
    placements: Annotated[
        Path | None,
        typer.Option(
            "--placements",
            metavar="COMPARE.json",
            help="Also project the placements measured by `tenantflow topology compare --json`"
            " from 10 to 1,000 tenants at this scenario's mean step rate (sim/placements.py).",
        ),
    ] = None,
) -> None:
    """Simulate a workload profile in virtual time against the real scheduler and policy code,
    with and without tenant controls, and print the comparison."""
    # Imported here, not with the module: the simulator and the plots are for this command
    # only, and every other command (and --help) starts without them.
    from tenantflow.report import (
        build_report,
        print_report,
        require_plots,
        write_html,
        write_json,
        write_png,
    )
    from tenantflow.sim import find_scenario, load_scenario, run_variants, variant_flags

    with reporting_errors():
        if html_path is not None or png_path is not None:
            require_plots()  # before the run, not after it
        path = find_scenario(scenario)
        loaded = load_scenario(path).with_seed(seed)
        flags = variant_flags(variants.value)
        with _progress(flags) as (bars, tasks):

            def advance(controls: bool, now_s: float, end_s: float) -> None:
                bars.update(tasks[controls], completed=now_s, total=end_s)

            results = run_variants(loaded, flags, jobs=jobs, progress=advance)
        report = build_report(
            f"{loaded.name} (simulated)",
            _params(loaded, path, variants, results),
            [r.trace for r in results],
        )
        console = output_console()
        print_report(report, console)
        writers = ((json_path, write_json), (html_path, write_html), (png_path, write_png))
        for out, write in writers:
            if out is not None:
                write(report, out)
                console.print(f"wrote {out}")
        if placements is not None:
            from tenantflow.sim.placements import print_projection

            print_projection(placements, loaded, console)


@contextmanager
def _progress(flags: list[bool]) -> Iterator[tuple[Progress, dict[bool, TaskID]]]:
    """A progress bar per variant on stderr, in simulated time, shown on a terminal only (a
    pipe or a file gets the report alone) and cleared when the run ends."""
    err = Console(stderr=True)
    bars = Progress(
        TextColumn("{task.description:<17}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}% of the simulated time"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    names = {False: "without controls", True: "with controls"}
    with bars:
        yield bars, {flag: bars.add_task(names[flag], total=None) for flag in flags}


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
