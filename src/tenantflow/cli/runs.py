"""``tenantflow runs …``: list runs and read one run's steps, execution log and state history;
submit, cancel and resume runs.

The reading commands work on the store (opened with ``execute=False``) or a server with
``--url`` (see :func:`tenantflow.cli.common.connect`). ``submit``, ``cancel`` and ``resume`` act
on runs that execute where the workflows are registered — a server — so they need ``--url``
(or ``TENANTFLOW_URL``) and the tenant's API key.
"""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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

if TYPE_CHECKING:
    from tenantflow.client import Client

__all__ = ["app"]

app = typer.Typer(
    name="runs",
    help="Runs: list them, show one, its timeline, state and diffs; submit, cancel, resume.",
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


def _server(backend: object, command: str) -> Client:
    from tenantflow.client import Client  # here: the CLI starts without the HTTP client

    if isinstance(backend, Client):
        return backend
    raise ConfigurationError(
        f"runs {command} acts on runs where they execute, on a server: give --url (or"
        " TENANTFLOW_URL) and the tenant's --api-key (or TENANTFLOW_API_KEY)",
        field="url",
    )


def _input(text: str | None, path: Path | None) -> Any:
    if text is not None and path is not None:
        raise ConfigurationError("give --input or --input-file, not both", field="input")
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read --input-file {path}: {exc.strerror}", field="input_file"
            ) from None
    if text is None:
        return None
    try:
        return jsonlib.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"--input is not JSON: {exc}", field="input") from None


def _print_run(run: Any, json: bool, verb: str) -> None:
    if json:
        render.print_json(render.run_dict(run))
    else:
        render.console().print(f"{verb} run {run.id} ({run.status.value})", markup=False)


@app.command("submit")
def submit(
    ctx: typer.Context,
    workflow: Annotated[str, typer.Argument(metavar="WORKFLOW", help="A registered workflow.")],
    input_text: Annotated[
        str | None, typer.Option("--input", "-i", metavar="JSON", help="The run's input.")
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option("--input-file", metavar="PATH", help="The run's input, from a JSON file."),
    ] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="The workflow version (default: latest).")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="Submitting again with it returns the same run."),
    ] = None,
    tenant: TenantOption = None,
    json: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Submit a run to a server (--url); prints its id and status."""
    with reporting_errors():
        value = _input(input_text, input_file)
    with connect(ctx, None, url, api_key, tenant=tenant) as backend:
        run = _server(backend, "submit").submit(
            workflow, value, version=version, idempotency_key=idempotency_key
        )
    _print_run(run, json, "submitted")


@app.command("cancel")
def cancel(
    ctx: typer.Context,
    run_id: RunIdArgument,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Recorded in the run's log.")
    ] = None,
    tenant: TenantOption = None,
    json: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Cancel a run on a server (--url): its steps stop, completed ones are compensated."""
    with connect(ctx, None, url, api_key, tenant=tenant) as backend:
        run = _server(backend, "cancel").cancel(run_id, reason=reason)
    _print_run(run, json, "cancelled")


@app.command("resume")
def resume(
    ctx: typer.Context,
    run_id: RunIdArgument,
    tenant: TenantOption = None,
    json: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Resume a run the budget ladder paused, on a server (--url)."""
    with connect(ctx, None, url, api_key, tenant=tenant) as backend:
        run = _server(backend, "resume").resume(run_id)
    _print_run(run, json, "resumed")
