"""``tenantflow selftest``: run the reliability suite and print its table.

Crashes, pauses, database restarts, load and hostile input against a real tenantflow — the
scenarios of :mod:`tenantflow.selftest`, judged against stated bounds (``docs/reliability.md``).
Exit status: 0 when every scenario run passed (a skipped one — PostgreSQL not reachable on a
developer's machine — does not fail it; under ``--ci`` it does), 1 when any failed, 2 for bad
input.
"""

from __future__ import annotations

import enum
import shlex
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import typer.core
from rich.console import Console
from typer.testing import CliRunner

from tenantflow.cli.common import EXIT_FAILURE, reporting_errors
from tenantflow.errors import ConfigurationError

if TYPE_CHECKING:
    from tenantflow.selftest.core import Scenario

EXIT_SKIPPED = 3
"""Nothing failed, but a scenario could not run (a missing server or extra): not a pass."""

__all__ = ["PlacementName", "ProfileName", "selftest"]

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


class PlacementName(enum.StrEnum):
    """Which placement's scenarios run (``--placement``)."""

    centralized = "centralized"
    mesh = "mesh"
    federated = "federated"


def placement_scenarios(placement: PlacementName) -> tuple[Scenario, ...]:
    """The scenarios of ``placement``: the default suite, or a placement's own."""
    if placement is PlacementName.federated:
        from tenantflow.selftest.federated import FEDERATED_SCENARIOS

        return FEDERATED_SCENARIOS
    if placement is PlacementName.mesh:
        from tenantflow.selftest import MESH_SCENARIOS

        return MESH_SCENARIOS
    from tenantflow.selftest import SCENARIOS

    return SCENARIOS


class ProfileName(enum.StrEnum):
    """The suite's size."""

    short = "short"
    long = "long"


def selftest(
    ctx: typer.Context,
    profile: Annotated[
        ProfileName,
        typer.Option(help="short: a few minutes (CI); long: bigger, with seeded repeats."),
    ] = ProfileName.short,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only", metavar="SCENARIO", help="Run only this scenario (repeatable); see --list."
        ),
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the scenarios and exit.")] = False,
    placement: Annotated[
        PlacementName,
        typer.Option(
            "--placement",
            help="Whose scenarios: centralized (the default suite), mesh (docs/mesh.md) or"
            " federated (a plane and cells as processes: cell and plane SIGKILLed under load,"
            " a global quota, a policy change, isolation, audit; docs/federated.md).",
        ),
    ] = PlacementName.centralized,
    json_path: Annotated[
        Path | None, typer.Option("--json", metavar="PATH", help="Write the rows as JSON.")
    ] = None,
    markdown_path: Annotated[
        Path | None,
        typer.Option("--markdown", metavar="PATH", help="Write the table as Markdown."),
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seeds every random choice.")] = 1,
    pg_dsn: Annotated[
        str,
        typer.Option(
            "--pg-dsn",
            metavar="URL",
            envvar="TENANTFLOW_SELFTEST_PG_DSN",
            help="The PostgreSQL server of the PostgreSQL scenarios (a schema of their own is"
            " created and dropped).",
        ),
    ] = DEFAULT_PG,
    pg_restart: Annotated[
        str | None,
        typer.Option(
            "--pg-restart",
            metavar="COMMAND",
            envvar="TENANTFLOW_SELFTEST_PG_RESTART",
            help="The command that restarts that server (default: pg_ctlcluster, when the"
            " machine has one cluster).",
        ),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR", help="Where scenarios keep their files (a failed one's are kept)."
        ),
    ] = None,
    ci: Annotated[
        bool,
        typer.Option(
            "--ci/--no-ci",
            envvar="CI",
            help="Missing servers fail their scenarios instead of skipping them.",
        ),
    ] = False,
) -> None:
    """Run the reliability suite — crashes, pauses, database restarts, load and hostile input
    against a real tenantflow — and print a table of what was lost, duplicated, leaked or
    overspent, judged against stated bounds."""
    from tenantflow.selftest import PROFILES, Context, choose, run_selftest
    from tenantflow.selftest.table import Header, print_rows, write_json, write_markdown

    console = Console(stderr=True, soft_wrap=True)
    if list_:
        out = Console()
        for scenario in placement_scenarios(placement):
            out.print(f"{scenario.name:15} {scenario.summary}", markup=False, highlight=False)
        return
    with reporting_errors():
        if placement is PlacementName.federated:
            chosen = choose_from(placement_scenarios(placement), only, placement)
        elif placement is PlacementName.mesh:
            chosen = choose(only, "mesh")
        else:
            chosen = choose(only)
        started = datetime.now(UTC)
        context = Context(
            PROFILES[profile.value],
            seed=seed,
            pg_url=pg_dsn,
            in_ci=ci,
            workdir=workdir,
            progress=lambda text: console.print(text, markup=False, highlight=False),
            pg_restart=shlex.split(pg_restart) if pg_restart else None,
            command_line=in_process(ctx.find_root().command),
        )
        rows = run_selftest(chosen, context)
        header = Header(profile.value, seed, started)
        print_rows(rows, header, Console(width=max(Console().width, 160)))
        if json_path is not None:
            write_json(rows, header, json_path)
        if markdown_path is not None:
            write_markdown(rows, header, markdown_path)
    if any(r.status == "fail" for r in rows):
        raise typer.Exit(EXIT_FAILURE)
    skipped = [r.scenario for r in rows if r.status == "skip"]
    if skipped:  # not run is not passed: say so, and exit non-zero
        console.print(
            f"skipped, not passed: {', '.join(skipped)} (exit {EXIT_SKIPPED})",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(EXIT_SKIPPED)


def choose_from(
    pool: Sequence[Scenario], names: Sequence[str] | None, placement: PlacementName
) -> list[Scenario]:
    """The scenarios of ``pool`` named (all of them when none is).

    Raises:
        ConfigurationError: a name that is not one of the placement's scenarios.
    """
    wanted = list(names or ())
    known = [s.name for s in pool]
    for name in wanted:
        if name not in known:
            raise ConfigurationError(
                f"unknown scenario {name!r} for --placement {placement.value}: one of"
                f" {', '.join(known)}",
                field="only",
                value=name,
            )
    return [s for s in pool if not wanted or s.name in wanted]


def in_process(command: object) -> Callable[[Sequence[str]], str]:
    """The command line ``command`` (the ``tenantflow`` root, as the running command's
    context has it) run in this process with its output captured, for the selftest's
    :attr:`~tenantflow.selftest.core.Context.command_line`: the output, or RuntimeError on a
    non-zero exit. (The selftest cannot import the CLI, which imports it.)"""
    if not isinstance(command, typer.core.TyperGroup):
        raise TypeError(f"not the tenantflow command line: {command!r}")
    root = command

    def run(args: Sequence[str]) -> str:
        with CliRunner().isolation() as (_, _, mixed):  # stdout and stderr, as a terminal shows
            try:
                root.main(args=list(args), prog_name="tenantflow")
                code: object = 0
            except SystemExit as exit_:
                code = exit_.code
            output = mixed.getvalue().decode()
        if code not in (0, None):
            raise RuntimeError(f"tenantflow {' '.join(args)}: {output[-300:]}")
        return output

    return run
