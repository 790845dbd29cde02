"""``tenantflow runs …``: list runs and read one run's steps, execution log and state history;
submit, cancel, resume and retry runs.

The reading commands work on the store (opened with ``execute=False``) or a server with
``--url`` (see :func:`tenantflow.cli.common.connect`). ``submit``, ``cancel``, ``resume`` and
``retry`` act on runs that execute where the workflows are registered — a server — so they need
``--url`` (or ``TENANTFLOW_URL``) and the tenant's API key.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
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
    json_option,
    reporting_errors,
)
from tenantflow.domain.records import TERMINAL_RUN, RunStatus
from tenantflow.errors import ConfigurationError

if TYPE_CHECKING:
    from tenantflow.client import Client

__all__ = ["app"]

app = typer.Typer(
    name="runs",
    help="Runs: list them, show one, why it waits, its timeline, state and diffs; submit, cancel,"
    " resume, retry, signal; schedules.",
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
        # What holds an unfinished run (runs why has the figures).
        reasons = None if json or run.status in TERMINAL_RUN else backend.why(run_id)
    # The store returns steps by key; people read a DAG in the order it ran.
    steps.sort(key=lambda s: (s.started_at is None, s.started_at or 0.0, s.key))
    if json:
        render.print_json({**render.run_dict(run), "steps": [render.step_dict(s) for s in steps]})
        return
    out = render.console()
    out.print(render.run_detail(run))
    out.print(render.steps_table(steps))
    if reasons is not None:
        _print_reasons(reasons)


def _reason_dict(reason: Any) -> dict[str, Any]:
    return {
        "step": reason.step,
        "kind": reason.kind,
        "message": reason.message,
        "detail": reason.detail,
    }


def _print_reasons(reasons: list[Any]) -> None:
    out = render.console()
    if not reasons:
        out.print("nothing holds it: it is progressing", markup=False)
        return
    out.print("waiting:", markup=False)
    for r in reasons:
        where = "run" if r.step is None else f"step {r.step}"
        out.print(f"  {where}: {r.message}", markup=False, soft_wrap=True)


@app.command("why")
def why(
    ctx: typer.Context,
    run_id: RunIdArgument,
    tenant: TenantOption = None,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Why a run is waiting: its place in the admission queue and the cap that binds, a budget
    pause, a rate-limit bucket and when it refills, a backoff, a review, a child run, a lease."""
    with connect(ctx, db, url, api_key, tenant=tenant) as backend:
        run = backend.get_run(run_id)
        reasons = backend.why(run_id)
    if json:
        render.print_json(
            {
                "run_id": run.id,
                "status": run.status.value,
                "reasons": [_reason_dict(r) for r in reasons],
            }
        )
        return
    render.console().print(f"run {run.id} is {run.status.value}", markup=False)
    _print_reasons(reasons)


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
    start_at: Annotated[
        str | None,
        typer.Option("--at", metavar="ISO", help="Start later, at this time (with a zone)."),
    ] = None,
    start_in: Annotated[
        str | None,
        typer.Option("--in", metavar="DURATION", help="Start later, in 90s, 10m, 2h or 1d."),
    ] = None,
    tenant: TenantOption = None,
    json: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Submit a run to a server (--url); prints its id and status. With --at or --in, a delayed
    start: a durable one-shot schedule submits it then (prints the schedule's name)."""
    with reporting_errors():
        value = json_option(input_text, input_file, "input")
        later = _later(start_at, start_in)
    with connect(ctx, None, url, api_key, tenant=tenant) as backend:
        client = _server(backend, "submit")
        if later is not None:
            found = client.submit_later(
                workflow, value, version=version, idempotency_key=idempotency_key, **later
            )
            if "schedule" in found:
                _print_delayed(found, json)
                return
            run = client.get_run(str(found["id"]))  # the time had come: submitted now
        else:
            run = client.submit(workflow, value, version=version, idempotency_key=idempotency_key)
    _print_run(run, json, "submitted")


def _later(start_at: str | None, start_in: str | None) -> dict[str, Any] | None:
    from tenantflow.cli.schedules import parse_duration, parse_time

    if start_at is not None and start_in is not None:
        raise ConfigurationError("give --at or --in, not both", field="at")
    if start_at is not None:
        return {"start_at": parse_time(start_at, field="at")}
    if start_in is not None:
        return {"delay_s": parse_duration(start_in, field="in")}
    return None


def _print_delayed(found: dict[str, Any], json: bool) -> None:
    if json:
        render.print_json(found)
        return
    render.console().print(
        f"delayed start {found['schedule']}: {found['workflow']} at {found['start_at']}"
        " (tenantflow schedules list shows it until it fires)",
        markup=False,
        soft_wrap=True,
    )


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


@app.command("signal")
def signal(
    ctx: typer.Context,
    run_id: RunIdArgument,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The signal's name.")],
    data: Annotated[
        str | None,
        typer.Option("--data", "-d", metavar="JSON", help="The payload (JSON; default null)."),
    ] = None,
    data_file: Annotated[
        Path | None,
        typer.Option("--data-file", metavar="PATH", help="The payload, from a JSON file."),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="Sending again with it records nothing new."),
    ] = None,
    tenant: TenantOption = None,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Send signal NAME into a run: its step waiting for it (ctx.wait_for_signal) resumes with
    the payload; sent before a step waits, it is kept until one does. On the store (--db) or a
    server (--url)."""
    with reporting_errors():
        payload = json_option(data, data_file, "data")
    with connect(ctx, db, url, api_key, tenant=tenant, write=url is None) as backend:
        receipt = backend.signal(run_id, name, payload, idempotency_key=idempotency_key)
    if json:
        render.print_json(
            {
                "run_id": receipt.run_id,
                "name": receipt.name,
                "signal_id": receipt.signal_id,
                "duplicate": receipt.duplicate,
                "woke": list(receipt.woke),
            }
        )
        return
    verb = "already sent" if receipt.duplicate else "sent"
    render.console().print(
        f"{verb} signal {receipt.name} ({receipt.signal_id}) to run {receipt.run_id}",
        markup=False,
    )


_AGO = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _when(option: str, value: str | None, now: datetime) -> datetime | None:
    """``--since``/``--until``: an ISO-8601 time (UTC unless it says) or an age (``30m``,
    ``2h``, ``7d``: that long before now)."""
    if value is None:
        return None
    ago = _AGO.match(value.strip())
    if ago:
        return now - timedelta(**{_UNITS[ago.group(2)]: int(ago.group(1))})
    try:
        found = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigurationError(
            f"{option} {value!r} is neither an ISO-8601 time (2026-12-06T09:00Z) nor an age"
            " (30m, 2h, 7d)",
            field=option.lstrip("-"),
        ) from None
    return found if found.tzinfo is not None else found.replace(tzinfo=UTC)


def _retry_dict(result: Any) -> dict[str, Any]:
    return {
        "run_id": result.run_id,
        "ok": result.ok,
        "mode": result.mode,
        "run": None if result.run is None else render.run_dict(result.run),
        "error": result.error,
    }


def _retry_line(result: Any) -> str:
    run = result.run
    if result.mode == "from_start":
        return f"retried run {result.run_id} from the start as run {run.id} ({run.status.value})"
    return f"retried run {result.run_id} from its failed step ({run.status.value})"


def _retries_table(results: list[Any]) -> Any:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from tenantflow.tables import Fitted

    table = Table(box=box.SIMPLE_HEAD)
    for name in ("run", "retried", "now", "status", "why not"):
        table.add_column(name)
    for r in results:
        if r.ok:
            now = r.run.id if r.mode == "from_start" else "same run"
            table.add_row(Text(r.run_id), Text(r.mode), Text(now), Text(r.run.status.value), "")
        else:
            error = r.error or {}
            table.add_row(Text(r.run_id), Text("no"), "", "", Text(str(error.get("message", ""))))
    return Fitted(table, text=frozenset({"why not"}), optional=("why not",))


@app.command("retry")
def retry(
    ctx: typer.Context,
    run_id: Annotated[
        str | None,
        typer.Argument(metavar="[RUN_ID]", help="The run (or a filter: --failed, --status)."),
    ] = None,
    from_start: Annotated[
        bool,
        typer.Option(
            "--from-start",
            help="Submit a new run with the same input instead of reopening the run at its"
            " failed step.",
        ),
    ] = False,
    failed: Annotated[
        bool, typer.Option("--failed", help="Every failed run that matches the filter.")
    ] = False,
    status: Annotated[
        RunStatus | None,
        typer.Option(
            "--status",
            "-s",
            case_sensitive=False,
            help="Every run that ended so (failed, cancelled, compensated) and matches.",
        ),
    ] = None,
    workflow: Annotated[
        str | None, typer.Option("--workflow", "-w", help="Only runs of this workflow.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", metavar="TIME", help="Only runs that ended since (ISO or 2h)."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", metavar="TIME", help="Only runs that ended before (ISO or 2h)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many (1..500).")] = 100,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Recorded in the run's log and audit log.")
    ] = None,
    tenant: TenantOption = None,
    json: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Retry a failed, cancelled or compensated run on a server (--url): from its failed step
    (completed steps' outputs kept), or --from-start as a new run; or every run matching
    --failed/--status, --workflow, --since, --until."""
    bulk = failed or status is not None
    with reporting_errors():
        if run_id is not None and (bulk or workflow or since or until):
            raise ConfigurationError(
                "give a RUN_ID, or a filter (--failed or --status, with --workflow, --since,"
                " --until), not both",
                field="run_id",
            )
        if run_id is None and not bulk:
            raise ConfigurationError(
                "give a RUN_ID, or --failed (or --status) to retry every run that matches",
                field="run_id",
            )
        if failed and status not in (None, RunStatus.FAILED):
            raise ConfigurationError("give --failed or --status, not both", field="status")
        now = datetime.now(UTC)
        first, last = _when("--since", since, now), _when("--until", until, now)
    with connect(ctx, None, url, api_key, tenant=tenant) as backend:
        client = _server(backend, "retry")
        if run_id is not None:
            one = client.retry(run_id, from_start=from_start, reason=reason)
            if json:
                render.print_json(_retry_dict(one))
            else:
                render.console().print(_retry_line(one), markup=False)
            return
        results = client.retry_many(
            status=status or RunStatus.FAILED,
            workflow=workflow,
            since=first,
            until=last,
            limit=limit,
            from_start=from_start,
            reason=reason,
        )
    if json:
        render.print_json([_retry_dict(r) for r in results])
        return
    out = render.console()
    if not results:
        out.print("no runs match", markup=False)
        return
    out.print(_retries_table(results))
    done = sum(1 for r in results if r.ok)
    out.print(f"retried {done} of {len(results)} runs", markup=False)
    if done < len(results):
        raise typer.Exit(1)


@app.command("schedules")
def schedules(
    ctx: typer.Context,
    tenant: TenantOption = None,
    json: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """The tenant's schedules on a server (--url): when each fires next, what it submitted last."""
    with connect(ctx, None, url, api_key, tenant=tenant) as backend:
        found = _server(backend, "schedules").schedules()
    if json:
        render.print_json(found)
        return
    out = render.console()
    if not found:
        out.print("no schedules", markup=False)
        return
    from tenantflow.cli.schedules import schedule_line

    for s in found:
        out.print(schedule_line(s), markup=False, soft_wrap=True)
