"""``tenantflow runs …``: list runs and read one run's steps, execution log and state history.

Every command here only reads: it opens the engine with ``execute=False``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from tenantflow.cli import render
from tenantflow.cli.common import DbOption, JsonOption, TenantOption, read
from tenantflow.domain.records import RunRecord, RunStatus, StepRecord
from tenantflow.engine.engine import Engine

__all__ = ["app"]

app = typer.Typer(
    name="runs",
    help="Read runs: list them, show one, its timeline, its state and state diffs.",
    no_args_is_help=True,
)

RunIdArgument = Annotated[str, typer.Argument(metavar="RUN_ID", help="The run's id.")]


@app.command("list")
def list_runs(
    ctx: typer.Context,
    tenant: TenantOption,
    status: Annotated[
        RunStatus | None,
        typer.Option("--status", "-s", case_sensitive=False, help="Only runs in this status."),
    ] = None,
    workflow: Annotated[
        str | None, typer.Option("--workflow", "-w", help="Only runs of this workflow.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many (1..1000).")] = 50,
    before: Annotated[
        str | None,
        typer.Option("--before", metavar="RUN_ID", help="Only runs older than this one (paging)."),
    ] = None,
    json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """List a tenant's runs, newest first."""
    runs = read(
        ctx,
        db,
        lambda engine: engine.list_runs(
            tenant, status=status, workflow=workflow, limit=limit, before=before
        ),
    )
    if json:
        render.print_json([render.run_dict(r) for r in runs])
        return
    out = render.console()
    if not runs:
        out.print("no runs")
        return
    out.print(render.runs_table(runs))
    if len(runs) == limit:
        out.print(f"more: --before {runs[-1].id}", style="dim", markup=False)


@app.command("show")
def show(
    ctx: typer.Context,
    run_id: RunIdArgument,
    tenant: TenantOption,
    json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Show a run and its steps (status, attempt, state version)."""

    async def fetch(engine: Engine) -> tuple[RunRecord, list[StepRecord]]:
        return await engine.get_run(tenant, run_id), await engine.steps(tenant, run_id)

    run, steps = read(ctx, db, fetch)
    # The store returns steps by key; people read a DAG in the order it ran.
    steps.sort(key=lambda s: (s.started_at is None, s.started_at or 0.0, s.key))
    if json:
        render.print_json({**render.run_dict(run), "steps": [render.step_dict(s) for s in steps]})
        return
    out = render.console()
    out.print(render.run_detail(run))
    out.print(render.steps_table(steps))


@app.command("timeline")
def timeline(
    ctx: typer.Context,
    run_id: RunIdArgument,
    tenant: TenantOption,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON array.")] = False,
    jsonl: Annotated[
        bool, typer.Option("--jsonl", help="Print JSON Lines, one event each.")
    ] = False,
    db: DbOption = None,
) -> None:
    """Show a run's execution log, oldest first: time, event, step, attempt, data."""
    events = read(ctx, db, lambda engine: engine.timeline(tenant, run_id))
    if jsonl:
        render.print_json_lines(render.event_dict(e) for e in events)
    elif json:
        render.print_json([render.event_dict(e) for e in events])
    else:
        render.console().print(render.events_table(events))


@app.command("state")
def state(
    ctx: typer.Context,
    run_id: RunIdArgument,
    tenant: TenantOption,
    version: Annotated[
        int | None,
        typer.Option("--version", help="The state version (default: the latest)."),
    ] = None,
    json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Show a run's state at one version: its input plus every step output so far."""
    found = read(ctx, db, lambda engine: engine.state(tenant, run_id, version))
    if json:
        render.print_json(render.state_dict(found))
        return
    header, body = render.state_view(found)
    out = render.console()
    out.print(header)
    out.print(body)


@app.command("diff")
def diff(
    ctx: typer.Context,
    run_id: RunIdArgument,
    a: Annotated[int, typer.Argument(metavar="A", help="The earlier state version.")],
    b: Annotated[int, typer.Argument(metavar="B", help="The later state version.")],
    tenant: TenantOption,
    json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Show what changed in a run's state between versions A and B."""
    changes = read(ctx, db, lambda engine: engine.diff(tenant, run_id, a, b))
    if json:
        render.print_json([render.change_dict(c) for c in changes])
        return
    out = render.console()
    if not changes:
        out.print(f"no changes between versions {a} and {b}")
        return
    out.print(render.changes_table(changes))
