"""``tenantflow demo``: seed 001's loan platform on a Monday morning, with and without controls.

Runs the example platform (:mod:`tenantflow.examples.loan_platform`, which ships with the
package) embedded, time-compressed, twice, with live progress, then prints the comparison and
optionally writes it as JSON, HTML or PNG.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tenantflow.cli.common import reporting_errors
from tenantflow.errors import ConfigurationError

if TYPE_CHECKING:
    from tenantflow.examples.loan_platform.demo import DemoConfig
    from tenantflow.examples.loan_platform.demo import Progress as DemoProgress
    from tenantflow.report import Report

__all__ = ["demo", "main"]

_BURST_AT_MIN = 8.0
_OPTIONS = {
    "institutions": "--institutions",
    "slots": "--slots",
    "burst": "--burst",
    "speed": "--speed",
    "minutes": "--minutes",
    "burst_at_min": "--burst-at",
    "drain_min": "--drain",
}


def demo(
    institutions: Annotated[
        int, typer.Option(min=6, help="Institutions on the platform (5 named, the rest ordinary).")
    ] = 40,
    slots: Annotated[int, typer.Option(min=5, help="Worker slots shared by everyone.")] = 40,
    burst: Annotated[
        int, typer.Option(min=0, help="Applications Institution X submits at once.")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="The same seed gives the same workload.")] = 1,
    speed: Annotated[
        float, typer.Option(min=1, max=2000, help="Time compression: scenario s per real s.")
    ] = 120.0,
    minutes: Annotated[
        float, typer.Option(min=1, max=1440, help="Minutes (scenario time) of arrivals.")
    ] = 30.0,
    drain: Annotated[
        float, typer.Option(min=0, max=1440, help="Minutes the platform runs on after them.")
    ] = 8.0,
    burst_at: Annotated[
        float | None,
        typer.Option(
            min=0, help="Minute the burst starts (default 8, or a quarter of --minutes if shorter)."
        ),
    ] = None,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Keep the SQLite stores here (default: a temporary dir)."),
    ] = None,
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
    quiet: Annotated[bool, typer.Option("--quiet", help="No live progress.")] = False,
) -> None:
    """Seed 001's loan platform on a Monday morning: one institution bursts, with and without
    tenant controls, on the real engine (embedded, no server)."""
    with reporting_errors():
        try:
            from tenantflow.examples.loan_platform.demo import DemoConfig
        except ImportError as exc:
            raise ConfigurationError(
                "the loan platform example is not installed (it ships with tenantflow:"
                f" reinstall the package): {exc}",
                field="loan_platform",
            ) from None
        if burst_at is None:
            burst_at = min(_BURST_AT_MIN, minutes / 4)
        elif burst_at >= minutes:
            raise ConfigurationError(
                f"--burst-at {burst_at:g} is not within the {minutes:g} minutes of arrivals"
                f" (--minutes): give a --burst-at below {minutes:g}, or leave it out",
                field="burst_at",
            )
        # Imported here, not with the module: the report (and its plots) are for this command
        # only, and every other command (and --help) starts without them.
        from tenantflow.report import print_report, require_plots
        from tenantflow.tables import output_console

        if html_path is not None or png_path is not None:
            require_plots()  # before the run, not after it
        try:
            cfg = DemoConfig(
                institutions=institutions,
                slots=slots,
                burst=burst,
                seed=seed,
                speed=speed,
                minutes=minutes,
                drain_min=drain,
                burst_at_min=burst_at,
            )
        except ConfigurationError as exc:  # in the command's terms: its option, not the field
            option = _OPTIONS.get(str(exc.fields.get("field")), "an option")
            raise ConfigurationError(
                f"{option} is out of range: {exc.message}", field=option
            ) from None
        console = output_console()
        report = asyncio.run(_run(cfg, directory, console, live=not quiet and console.is_terminal))
        print_report(report, console)
        _write(report, json_path, html_path, png_path, console)


async def _run(cfg: DemoConfig, directory: Path | None, console: Console, *, live: bool) -> Report:
    from tenantflow.examples.loan_platform.demo import run_demo

    if not live:
        return await run_demo(cfg, directory=directory)
    bars = Progress(
        TextColumn("{task.description:<17}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    )
    ids = {
        name: bars.add_task(name, total=cfg.duration_s, detail="")
        for name in ("without controls", "with controls")
    }
    slots = Table.grid(padding=(0, 1))
    view = _SlotsView(cfg.slots)
    with Live(Group(bars, slots), console=console, refresh_per_second=8) as screen:

        def update(p: DemoProgress) -> None:
            bars.update(
                ids[p.scenario],
                completed=min(p.t_s, p.duration_s),
                detail=f"min {p.t_s / 60:4.1f}  submitted {p.submitted}"
                f"  refused {p.refused}  open reviews {p.reviews_open}",
            )
            screen.update(Group(bars, view.render(p)))

        return await run_demo(cfg, directory=directory, on_progress=update)


class _SlotsView:
    """Who holds the worker slots right now, one bar per tenant class."""

    def __init__(self, slots: int) -> None:
        self.slots = slots

    def render(self, p: DemoProgress) -> Table:
        table = Table.grid(padding=(0, 1))
        table.add_column(width=26)
        table.add_column()
        for name, n in sorted(p.running.items(), key=lambda kv: -kv[1]):
            width = round(40 * n / max(1, self.slots))
            table.add_row(f"  {name}", f"[cyan]{'█' * width}[/] {n}")
        return table


def _write(
    report: Report,
    json_path: Path | None,
    html_path: Path | None,
    png_path: Path | None,
    console: Console,
) -> None:
    from tenantflow.report import write_html, write_json, write_png

    for path, writer in ((json_path, write_json), (html_path, write_html), (png_path, write_png)):
        if path is not None:
            writer(report, path)
            console.print(f"wrote {path}")


def main() -> None:
    """``python -m tenantflow.examples.loan_platform``: the demo command on its own."""
    typer.run(demo)
