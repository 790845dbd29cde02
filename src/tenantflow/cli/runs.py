"""``tenantflow runs …``: list runs and read one run's steps, execution log and state history.

Every command here only reads: from the store (opened with ``execute=False``), or from a server
with ``--url`` (see :func:`tenantflow.cli.common.connect`).
"""

from __future__ import annotations

from typing import Annotated

import typer

from tenantflow.cli import render
from tenantflow.cli.common import (
    ApiKeyOption,
    DbOption,
    JsonOption,
    TenantOption,
    UrlOption,
    connect,
    reporting_errors,
)
from tenantflow.domain.records import RunStatus
from tenantflow.errors import ConfigurationError

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
    tenant: TenantOption = None,
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
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List a tenant's runs, newest first."""
    with reporting_errors():
        if not 1 <= limit <= 1000:
            raise ConfigurationError("limit must be within 1..1000", field="limit", value=limit)
    with connect(ctx, db, url, api_key, tenant=tenant) as backend:
        runs = backend.list_runs(status=status, workflow=workflow, limit=limit, before=before)
    shown = render.print_rows(
        runs, json=json, as_dict=render.run_dict, table=render.runs_table, empty="no runs"
    )
    if shown and len(runs) == limit:
        render.console().print(f"more: --before {runs[-1].id}", style="dim", markup=False)


@app.command("show")
def show(
    ctx: typer.Context,
    run_id: RunIdArgument,
    tenant: TenantOption = None,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Show a run and its steps (status, attempt, state version)."""
    with connect(ctx, db, url, api_key, tenant=tenant) as backend:
        run, steps = backend.get_run(run_id), backend.steps(run_id)
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
    tenant: TenantOption = None,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON array.")] = False,
    jsonl: Annotated[
        bool, typer.Option("--jsonl", help="Print JSON Lines, one event each.")
    ] = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Show a run's execution log, oldest first: time, event, step, attempt, data."""
    with connect(ctx, db, url, api_key, tenant=tenant) as backend:
        events = backend.timeline(run_id)
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
    tenant: TenantOption = None,
    version: Annotated[
        int | None,
        typer.Option("--version", help="The state version (default: the latest)."),
    ] = None,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Show a run's state at one version: its input plus every step output so far."""
    with connect(ctx, db, url, api_key, tenant=tenant) as backend:
        found = backend.state(run_id, version)
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
    tenant: TenantOption = None,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Show what changed in a run's state between versions A and B."""
    with connect(ctx, db, url, api_key, tenant=tenant) as backend:
        changes = backend.diff(run_id, a, b)
    if json:
        render.print_json([render.change_dict(c) for c in changes])
        return
    out = render.console()
    if not changes:
        out.print(f"no changes between versions {a} and {b}")
        return
    out.print(render.changes_table(changes))
