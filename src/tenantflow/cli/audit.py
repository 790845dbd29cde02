"""``tenantflow audit …``: read a tenant's hash-chained audit log and check that it is intact.

``verify`` exits 0 when the chain is intact and 1 when it is not, naming the first bad row's
``seq`` and why. Both commands only read, from the store or from a server (``--url``). On the
store, a deleted tenant's audit log (kept unless it was purged) can still be read and verified.
"""

from __future__ import annotations

import typer

from tenantflow.cli import render
from tenantflow.cli.common import (
    EXIT_FAILURE,
    ApiKeyOption,
    DbOption,
    JsonOption,
    TenantOption,
    UrlOption,
    connect,
)

__all__ = ["app"]

app = typer.Typer(
    name="audit",
    help="A tenant's hash-chained audit log: read it, verify it.",
    no_args_is_help=True,
)


@app.command("verify")
def verify(
    ctx: typer.Context,
    tenant: TenantOption = None,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Check the tenant's audit hash chain: exit 0 if intact, 1 naming the first bad row."""
    with connect(ctx, db, url, api_key, tenant=tenant) as backend:
        result, owner = backend.audit_verify(), backend.tenant_id
    if json:
        render.print_json(render.verify_dict(owner, result))
    else:
        render.console().print(render.verify_line(owner, result))
    if not result.ok:
        raise typer.Exit(EXIT_FAILURE)


@app.command("log")
def log(
    ctx: typer.Context,
    tenant: TenantOption = None,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Show the tenant's audit rows, oldest first: who did what to which subject."""
    with connect(ctx, db, url, api_key, tenant=tenant) as backend:
        rows = backend.audit_log()
    render.print_rows(
        rows, json=json, as_dict=render.audit_dict, table=render.audit_table, empty="no audit rows"
    )
