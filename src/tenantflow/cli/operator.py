"""``tenantflow operator overview``: an operator's view across tenants — runs by status, the top
tenants by queue depth, today's spend and rate-limit waits, and stuck runs with what holds them.

On the store (``--db``) or a server (``--url`` with an admin key); see
:mod:`tenantflow.engine.operator`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

import typer

from tenantflow.cli import render
from tenantflow.cli.common import (
    ApiKeyOption,
    DbOption,
    JsonOption,
    UrlOption,
    connect_admin,
    reporting_errors,
)
from tenantflow.domain.timefmt import iso
from tenantflow.errors import ConfigurationError

__all__ = ["app"]

app = typer.Typer(
    name="operator",
    help="An operator's view across tenants: runs by status, top tenants, stuck runs.",
    no_args_is_help=True,
)

_AGE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _age(value: str) -> timedelta:
    found = _AGE.match(value.strip())
    if not found or int(found.group(1)) == 0:
        raise ConfigurationError(
            f"--stuck-after {value!r} is not an age such as 30m, 2h or 1d", field="stuck_after"
        )
    return timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})


def _usd(micros: int) -> str:
    return f"${micros / 1_000_000:,.4f}"


def _as_dict(view: Any) -> dict[str, Any]:
    return {
        "at": iso(view.at),
        "by_status": view.by_status,
        "capped": view.capped,
        "top_queued": view.top_queued,
        "top_spend": view.top_spend,
        "top_rate_limited": view.top_rate_limited,
        "tenants": [
            {
                "tenant_id": t.tenant_id,
                "runs": t.runs,
                "spend_micros": t.spend_micros,
                "rate_limit_waits": t.rate_limit_waits,
            }
            for t in view.tenants
        ],
        "stuck_after_s": view.stuck_after_s,
        "stuck": [
            {
                "tenant_id": s.tenant_id,
                "run_id": s.run_id,
                "workflow": s.workflow,
                "status": s.status,
                "updated_at": iso(s.updated_at),
                "idle_s": round(s.idle_s, 3),
                "reasons": [
                    {"step": r.step, "kind": r.kind, "message": r.message, "detail": r.detail}
                    for r in s.reasons
                ],
            }
            for s in view.stuck
        ],
    }


@app.command("overview")
def overview(
    ctx: typer.Context,
    stuck_after: Annotated[
        str,
        typer.Option(
            "--stuck-after", metavar="AGE", help="A run idle this long is stuck (30m, 2h, 1d)."
        ),
    ] = "1h",
    top: Annotated[int, typer.Option("--top", help="Tenants per ranking (1..100).")] = 10,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Runs by status over every tenant, the tenants with the deepest queues, the most spend
    and the most rate-limit waits today, and unfinished runs idle for --stuck-after."""
    with reporting_errors():
        age = _age(stuck_after)
        if not 1 <= top <= 100:
            raise ConfigurationError("--top must be within 1..100", field="top", value=top)
    with connect_admin(ctx, db, url, api_key) as backend:
        view = backend.overview(stuck_after=age, top=top)
    if json:
        render.print_json(_as_dict(view))
        return
    out = render.console()
    counts = ", ".join(f"{n} {status}" for status, n in view.by_status.items() if n) or "none"
    out.print(f"runs across tenants: {counts}" + (" (counts capped)" if view.capped else ""))
    loads = {t.tenant_id: t for t in view.tenants}
    rankings: list[tuple[str, list[str], Callable[[Any], str]]] = [
        ("deepest queues", view.top_queued, lambda t: f"{t.queued} queued"),
        ("most spend today", view.top_spend, lambda t: _usd(t.spend_micros)),
        ("most rate-limit waits today", view.top_rate_limited, lambda t: str(t.rate_limit_waits)),
    ]
    for title, ids, show in rankings:
        if ids:
            out.print(f"{title}: " + ", ".join(f"{i} ({show(loads[i])})" for i in ids))
    if not view.stuck:
        out.print(f"no run idle for {stuck_after} or longer", markup=False)
        return
    out.print(f"idle for {stuck_after} or longer:", markup=False)
    for s in view.stuck:
        first = s.reasons[0].message if s.reasons else "no reason found"
        out.print(
            f"  {s.tenant_id} {s.run_id} ({s.workflow}, {s.status}, idle {s.idle_s:,.0f}s):"
            f" {first}",
            markup=False,
            soft_wrap=True,
        )
