"""``tenantflow schedules …``: a tenant's schedules — list them, add, pause, resume and delete
the durable ones (kept in the tenant's store; the serving process fires them through
admission). On the store with ``--tenant`` (and ``--app`` to check the workflow), or on a server
with ``--url`` and the tenant's API key."""

from __future__ import annotations

import json as jsonlib
import re
from datetime import datetime
from typing import Annotated, Any, Literal

import typer

from tenantflow.cli import render
from tenantflow.cli.common import (
    ApiKeyOption,
    AppOption,
    DbOption,
    EngineBackend,
    JsonOption,
    TenantOption,
    UrlOption,
    connect,
    reporting_errors,
)
from tenantflow.errors import ConfigurationError

__all__ = ["app", "parse_duration", "schedule_line"]

app = typer.Typer(
    name="schedules",
    help="A tenant's schedules: list, add (every, cron or at), pause, resume, delete.",
    no_args_is_help=True,
)

NameArgument = Annotated[str, typer.Argument(metavar="NAME", help="The schedule's name.")]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, *, field: str) -> float:
    """Seconds in ``10m``, ``90s``, ``1.5h``, ``2d`` or a bare number of seconds (> 0)."""
    found = _DURATION.match(text)
    if found is None:
        raise ConfigurationError(
            f"{field} {text!r}: give a duration like 90s, 10m, 2h or 1d", field=field
        )
    seconds = float(found.group(1)) * _UNIT_S[found.group(2) or "s"]
    if not seconds > 0:
        raise ConfigurationError(f"{field} must be more than zero", field=field)
    return seconds


def parse_time(text: str, *, field: str) -> datetime:
    """An ISO-8601 time with a zone (``Z`` or ``+02:00``)."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            f"{field} {text!r}: give an ISO-8601 time, e.g. 2026-12-06T12:00:00Z", field=field
        ) from None
    if at.tzinfo is None:
        raise ConfigurationError(
            f"{field} {text!r}: give a time zone, e.g. 2026-12-06T12:00:00Z", field=field
        )
    return at


def schedule_line(s: dict[str, Any]) -> str:
    """One line about a schedule (as the API lists it)."""
    if s.get("cron"):
        when = f"cron {s['cron']!r}"
    elif s.get("every_s") is not None:
        when = f"every {s['every_s']:g}s"
    else:
        when = f"once at {s.get('at')}"
    state = "paused" if s.get("paused") else f"next {s.get('next_at')}"
    kind = "" if s.get("durable") else " (in code)"
    last = f"; last {s['last_at']} ({s['last_run_id']})" if s.get("last_run_id") else ""
    return f"{s['name']}: {s['workflow']} {when}, overlap {s['overlap']}, {state}{kind}{last}"


def _load(backend: object, apps: list[str] | None) -> None:
    if not apps:
        return
    if not isinstance(backend, EngineBackend):
        raise ConfigurationError(
            "--app is for the store: the server has its workflows", field="app"
        )
    from tenantflow.cli.serve import load_app

    for ref in apps:
        load_app(ref)(backend._engine)


@app.command("list")
def list_schedules(
    ctx: typer.Context,
    tenant: TenantOption = None,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """The tenant's schedules: when each fires next, what it submitted last (on a server)."""
    with connect(ctx, db, url, api_key, tenant=tenant) as backend:
        found = backend.schedules()
    if json:
        render.print_json(found)
        return
    out = render.console()
    if not found:
        out.print("no schedules", markup=False)
    for s in found:
        out.print(schedule_line(s), markup=False, soft_wrap=True)


@app.command("add")
def add(
    ctx: typer.Context,
    name: NameArgument,
    workflow: Annotated[str, typer.Argument(metavar="WORKFLOW", help="A registered workflow.")],
    every: Annotated[
        str | None, typer.Option("--every", metavar="DURATION", help="An interval: 90s, 10m, 1h.")
    ] = None,
    cron: Annotated[
        str | None, typer.Option("--cron", metavar="EXPR", help="Five cron fields, UTC.")
    ] = None,
    at: Annotated[
        str | None, typer.Option("--at", metavar="ISO", help="Once, at this time (with a zone).")
    ] = None,
    input_text: Annotated[
        str | None, typer.Option("--input", "-i", metavar="JSON", help="Every run's input.")
    ] = None,
    overlap: Annotated[
        str,
        typer.Option("--overlap", help="While the previous run goes on: skip, queue or cancel it."),
    ] = "skip",
    catchup: Annotated[
        int, typer.Option("--catchup", help="Missed times fired after downtime (0..100).")
    ] = 1,
    lane: Annotated[str | None, typer.Option("--lane", help="The runs' lane.")] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="The workflow version (default: latest).")
    ] = None,
    tenant: TenantOption = None,
    json: JsonOption = False,
    apps: AppOption = None,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Add a durable schedule: --every, --cron or --at (exactly one)."""
    with reporting_errors():
        if sum(x is not None for x in (every, cron, at)) != 1:
            raise ConfigurationError("give exactly one of --every, --cron and --at", field="every")
        if overlap not in ("skip", "queue", "cancel"):
            raise ConfigurationError(
                f"--overlap {overlap!r}: give skip, queue or cancel", field="overlap"
            )
        every_s = None if every is None else parse_duration(every, field="every")
        at_time = None if at is None else parse_time(at, field="at")
        try:
            value = None if input_text is None else jsonlib.loads(input_text)
        except ValueError as exc:
            raise ConfigurationError(f"--input is not JSON: {exc}", field="input") from None
    mode: Literal["skip", "queue", "cancel"] = overlap  # type: ignore[assignment]
    with connect(ctx, db, url, api_key, tenant=tenant, write=False) as backend:
        _load(backend, apps)
        made = backend.create_schedule(
            name,
            workflow,
            value,
            every_s=every_s,
            cron=cron,
            at=at_time,
            overlap=mode,
            catchup=catchup,
            lane=lane,
            version=version,
        )
    if json:
        render.print_json(made)
        return
    render.console().print("added " + schedule_line(made), markup=False, soft_wrap=True)


def _change(ctx: typer.Context, verb: str, name: str, args: tuple[Any, ...], json: bool) -> None:
    tenant, db, url, api_key = args
    with connect(ctx, db, url, api_key, tenant=tenant) as backend:
        change = backend.pause_schedule if verb == "paused" else backend.resume_schedule
        found = change(name)
    if json:
        render.print_json(found)
        return
    render.console().print(f"{verb} " + schedule_line(found), markup=False, soft_wrap=True)


@app.command("pause")
def pause(
    ctx: typer.Context,
    name: NameArgument,
    tenant: TenantOption = None,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Pause a durable schedule: it fires nothing until resumed."""
    _change(ctx, "paused", name, (tenant, db, url, api_key), json)


@app.command("resume")
def resume(
    ctx: typer.Context,
    name: NameArgument,
    tenant: TenantOption = None,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Resume a paused schedule (it makes up what it missed, bounded by its catch-up)."""
    _change(ctx, "resumed", name, (tenant, db, url, api_key), json)


@app.command("delete")
def delete(
    ctx: typer.Context,
    name: NameArgument,
    tenant: TenantOption = None,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Delete a durable schedule (its runs are left as they are)."""
    with connect(ctx, db, url, api_key, tenant=tenant) as backend:
        backend.delete_schedule(name)
    render.console().print(f"deleted schedule {name}", markup=False)
