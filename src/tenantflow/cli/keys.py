"""``tenantflow keys …``: create, list, revoke and rotate API keys of a tenant or admin keys.

Every command names whose keys it means: ``--tenant TENANT`` or ``--admin`` (the control
plane's keys), exactly one of them. ``create`` and ``rotate`` print the new key string once; it
is not stored (only its SHA-256 digest is) and cannot be shown again.

The commands open the engine with ``execute=False``: key writes go straight to the store, so they
work while a server or worker is running on the same database (a running server sees a
revocation made here within its key cache TTL, a few seconds). With ``--url`` (or
``TENANTFLOW_URL``) and an admin key they manage a tenant's keys through the server's API
instead; admin keys themselves are made on the store only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from tenantflow.cli import render
from tenantflow.cli.common import (
    ApiKeyOption,
    DbOption,
    JsonOption,
    UrlOption,
    read,
    reporting_errors,
    target_for,
)
from tenantflow.domain.ids import check_tenant
from tenantflow.errors import ConfigurationError

if TYPE_CHECKING:
    from tenantflow.client import Client
    from tenantflow.placement import ApiKeyInfo, ControlPlane

T = TypeVar("T")

__all__ = ["ACTOR", "app"]

ACTOR = "cli"
"""Who the audit log names for a key change made from the command line."""

NOT_SHOWN_AGAIN = "This key is shown once: it is not stored and cannot be shown again."

app = typer.Typer(
    name="keys",
    help="API keys of a tenant (--tenant) or admin keys (--admin): create, list, revoke, rotate.",
    no_args_is_help=True,
)

KeyTenantOption = Annotated[
    str | None,
    typer.Option(
        "--tenant",
        "-t",
        metavar="TENANT",
        help="The tenant whose keys these are.",
        show_default=False,
    ),
]
AdminOption = Annotated[
    bool, typer.Option("--admin", help="Admin (control-plane) keys instead of a tenant's.")
]
KeyArgument = Annotated[str, typer.Argument(metavar="KEY_ID", help="The key's id (key_…).")]


def _owner(tenant: str | None, admin: bool) -> str | None:
    """The tenant id, or None for ``--admin``; exactly one of them must be given."""
    if admin == (tenant is not None):
        raise ConfigurationError("give exactly one of --tenant TENANT or --admin", field="tenant")
    return None if tenant is None else check_tenant(tenant)


def _act(
    ctx: typer.Context,
    db: str | None,
    url: str | None,
    api_key: str | None,
    owner: str | None,
    local: Callable[[ControlPlane], Any],
    remote: Callable[[Client, str], T],
) -> T:
    """On a server (``--url``): ``remote(client, tenant)`` with an admin key; else ``local``
    on the store."""
    with reporting_errors():
        settings = target_for(ctx, db, url, api_key)
        if settings.url is not None:
            if owner is None:
                raise ConfigurationError(
                    "admin keys are made on the store (--db), not over --url: the API"
                    " manages tenants' keys",
                    field="admin",
                )
            from tenantflow.client import Client

            assert settings.api_key is not None  # target_for insists
            with Client(settings.url, settings.api_key) as client:
                return remote(client, owner)
    result: T = read(ctx, db, local)
    return result


def _described(info: ApiKeyInfo) -> str:
    """``admin API key key_…`` or ``API key key_… of tenant acme``."""
    if info.tenant_id is None:
        return f"admin API key {info.id}"
    return f"API key {info.id} of tenant {info.tenant_id}"


def _key_dict(info: ApiKeyInfo) -> dict[str, Any]:
    """A key, JSON-ready, with ISO-8601 times like every other command's output."""
    return {
        **info.to_dict(),
        "created_at": render.iso(info.created_at),
        "revoked_at": render.iso(info.revoked_at),
    }


def _print_secret(info: ApiKeyInfo, secret: str, verb: str, json: bool) -> None:
    if json:
        render.print_json({**_key_dict(info), "secret": secret, "notice": NOT_SHOWN_AGAIN})
        return
    typer.echo(f"{verb} {_described(info)} (name {info.name}):")
    typer.echo(secret)
    typer.echo(NOT_SHOWN_AGAIN)


@app.command("create")
def create(
    ctx: typer.Context,
    tenant: KeyTenantOption = None,
    admin: AdminOption = False,
    name: Annotated[
        str, typer.Option("--name", "-n", metavar="NAME", help="A label for the key.")
    ] = "default",
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Create an API key and print it once (it is not stored and cannot be shown again)."""
    with reporting_errors():
        owner = _owner(tenant, admin)
    info, secret = _act(
        ctx,
        db,
        url,
        api_key,
        owner,
        lambda engine: engine.keys.create(owner, name=name, actor=ACTOR),
        lambda client, t: client.create_key(t, name=name),
    )
    _print_secret(info, secret, "created", json)


@app.command("list")
def list_keys(
    ctx: typer.Context,
    tenant: KeyTenantOption = None,
    admin: AdminOption = False,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List a tenant's keys, or the admin keys, revoked ones included (never their secrets)."""
    with reporting_errors():
        owner = _owner(tenant, admin)

    async def fetch(engine: ControlPlane) -> list[ApiKeyInfo]:
        return await engine.keys.list(owner)

    keys = _act(ctx, db, url, api_key, owner, fetch, lambda client, t: client.list_keys(t))
    render.print_rows(keys, json=json, as_dict=_key_dict, table=_keys_table, empty="no keys")


def _keys_table(keys: Sequence[ApiKeyInfo]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("id", "name", "prefix", "created", "revoked"):
        table.add_column(column, overflow="fold")
    for k in keys:
        table.add_row(
            Text(k.id),
            Text(k.name),
            Text(f"{k.prefix}…"),
            render.iso(k.created_at, timespec="seconds") or "",
            Text(
                render.iso(k.revoked_at, timespec="seconds") or "active",
                style="" if k.revoked_at else "green",
            ),
        )
    return table


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    key_id: KeyArgument,
    tenant: KeyTenantOption = None,
    admin: AdminOption = False,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Revoke a key: it never authenticates again.

    A server running on the same database stops accepting it within its key cache TTL (a few
    seconds). Revoking a revoked key changes nothing.
    """
    with reporting_errors():
        owner = _owner(tenant, admin)
    info = _act(
        ctx,
        db,
        url,
        api_key,
        owner,
        lambda engine: engine.keys.revoke(owner, key_id, actor=ACTOR),
        lambda client, t: client.revoke_key(t, key_id),
    )
    if json:
        render.print_json(_key_dict(info))
        return
    typer.echo(f"revoked {_described(info)} at {render.iso(info.revoked_at)}")


@app.command("rotate")
def rotate(
    ctx: typer.Context,
    key_id: KeyArgument,
    tenant: KeyTenantOption = None,
    admin: AdminOption = False,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Replace a key: revoke it and create a new one, same name, in one transaction.

    The new key is printed once; it is not stored and cannot be shown again.
    """
    with reporting_errors():
        owner = _owner(tenant, admin)
    info, secret = _act(
        ctx,
        db,
        url,
        api_key,
        owner,
        lambda engine: engine.keys.rotate(owner, key_id, actor=ACTOR),
        lambda client, t: client.rotate_key(t, key_id),
    )
    if json:
        render.print_json(
            {**_key_dict(info), "replaces": key_id, "secret": secret, "notice": NOT_SHOWN_AGAIN}
        )
        return
    typer.echo(f"revoked {key_id}; its replacement:")
    _print_secret(info, secret, "created", json=False)
