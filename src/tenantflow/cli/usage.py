"""``tenantflow usage``: a tenant's usage counters per day, and its budget ledgers.

Rows are ``day, metric, dim, value``: steps and slot_seconds per step, tokens_in/out, cost_micros,
tool_calls and model_calls per tool or model, rate-limit waits, degradations and reviews. The
human view adds the tenant's budget ledgers (limit, spent, reserved, overrun). Only reads, from
the store or from a server (``--url``).
"""

from __future__ import annotations

import csv as csvlib
import re
import sys
from datetime import date
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
from tenantflow.errors import ConfigurationError

__all__ = ["usage"]

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_COLUMNS = ("day", "metric", "dim", "value")


def _day(option: str, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        if not _DAY.match(value):
            raise ValueError(value)
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise ConfigurationError(
            f"invalid {option} {value!r}: write a day as YYYY-MM-DD", field=option, value=value
        ) from None


def usage(
    ctx: typer.Context,
    tenant: TenantOption = None,
    since: Annotated[
        str | None,
        typer.Option("--since", metavar="YYYY-MM-DD", help="From this day (UTC), inclusive."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", metavar="YYYY-MM-DD", help="To this day (UTC), inclusive."),
    ] = None,
    json: JsonOption = False,
    csv: Annotated[bool, typer.Option("--csv", help="Print CSV: day,metric,dim,value.")] = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Show a tenant's usage per day (steps, slot seconds, tokens, cost, calls) and budget."""
    with reporting_errors():
        if json and csv:
            raise ConfigurationError("give at most one of --json and --csv", field="json")
        first, last = _day("--since", since), _day("--until", until)
        if first is not None and last is not None and first > last:
            raise ConfigurationError(
                f"--since {first} is after --until {last}", field="since", value=first
            )

    with connect(ctx, db, url, api_key, tenant=tenant) as backend:
        rows = backend.usage(since=first, until=last)
        ledgers = [] if json or csv else backend.budget()
        owner = backend.tenant_id
    if json:
        render.print_json([render.usage_dict(r) for r in rows])
        return
    if csv:
        writer = csvlib.writer(sys.stdout, lineterminator="\n")
        writer.writerow(_COLUMNS)
        for row in rows:
            writer.writerow(render.usage_dict(row)[c] for c in _COLUMNS)
        return
    out = render.console()
    span = f"{first or 'the start'} to {last or 'today'}"
    out.print(f"usage of tenant {owner}, {span} (UTC days)", style="bold", markup=False)
    if rows:
        out.print(render.usage_table(rows))
    else:
        out.print("no usage", style="dim")
    out.print(f"budget of tenant {owner}", style="bold", markup=False)
    if ledgers:
        out.print(render.budget_table(ledgers))
    else:
        out.print("no budget ledgers yet", style="dim")
