"""``tenantflow audit …``: read a tenant's hash-chained audit log and check that it is intact.

``verify`` exits 0 when the chain is intact and 1 when it is not, naming the first bad row's
``seq`` and why. Both commands only read. A deleted tenant's audit log (kept unless it was purged)
can still be read and verified.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import typer

from tenantflow.cli import render
from tenantflow.cli.common import EXIT_FAILURE, DbOption, JsonOption, TenantOption, read
from tenantflow.domain.audit import AuditRecord, VerifyResult
from tenantflow.engine.engine import Engine
from tenantflow.errors import NotFoundError, StoreError

__all__ = ["app"]

T = TypeVar("T")

app = typer.Typer(
    name="audit",
    help="A tenant's hash-chained audit log: read it, verify it.",
    no_args_is_help=True,
)


async def _guarded(tenant: str, call: Awaitable[T]) -> T:
    """Run ``call``; a row the store cannot even parse (a tampered ``detail`` that is no longer
    JSON, a ``seq`` out of range) is reported as an unreadable audit log, not a traceback."""
    try:
        return await call
    except ValueError as exc:  # json.JSONDecodeError, pydantic.ValidationError
        reason = " ".join(str(exc).split())
        raise StoreError(
            f"the audit log of tenant {tenant!r} holds a row that cannot be read"
            f" (tampered?): {reason}",
            tenant=tenant,
        ) from None


def _known(engine: Engine, tenant: str, rows: int) -> None:
    # No rows and no such tenant: most likely a typo, not an empty chain.
    if rows == 0 and engine.tenants.cached(tenant) is None:
        raise NotFoundError(
            f"tenant {tenant!r} not found and has no audit log", kind="tenant", id=tenant
        )


@app.command("verify")
def verify(
    ctx: typer.Context, tenant: TenantOption, json: JsonOption = False, db: DbOption = None
) -> None:
    """Check the tenant's audit hash chain: exit 0 if intact, 1 naming the first bad row."""

    async def check(engine: Engine) -> VerifyResult:
        result = await _guarded(tenant, engine.audit_verify(tenant))
        _known(engine, tenant, result.checked if result.ok else 1)
        return result

    result = read(ctx, db, check)
    if json:
        render.print_json(render.verify_dict(tenant, result))
    else:
        render.console().print(render.verify_line(tenant, result))
    if not result.ok:
        raise typer.Exit(EXIT_FAILURE)


@app.command("log")
def log(
    ctx: typer.Context, tenant: TenantOption, json: JsonOption = False, db: DbOption = None
) -> None:
    """Show the tenant's audit rows, oldest first: who did what to which subject."""

    async def fetch(engine: Engine) -> list[AuditRecord]:
        rows: list[AuditRecord] = await _guarded(tenant, engine.audit_log(tenant))
        _known(engine, tenant, len(rows))
        return rows

    rows = read(ctx, db, fetch)
    if json:
        render.print_json([render.audit_dict(r) for r in rows])
        return
    out = render.console()
    if not rows:
        out.print("no audit rows")
        return
    out.print(render.audit_table(rows))
