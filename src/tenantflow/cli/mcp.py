"""``tenantflow mcp-servers …``: register, list and remove one tenant's own MCP servers.

A server registered here exists for that tenant alone: its tools (``<server>__<tool>``) are
listed to and callable by that tenant's steps only, and only those its policy's
``allowed_tools`` names (see :mod:`tenantflow.integrations.mcp_tenants`). The server is listed
when it is added: one that cannot be reached is refused and nothing is written. Each change is
audited in the tenant's chain (actor ``cli``).

The commands work on the store (``--db``), like ``keys``: writes go straight to it, so they
work while a server or worker runs on the same database (which sees the change within a few
seconds). Through a server, use the admin API: ``/v1/admin/tenants/{tenant}/mcp-servers``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from tenantflow.cli import render
from tenantflow.cli.common import DbOption, JsonOption, read, reporting_errors
from tenantflow.domain.ids import check_tenant
from tenantflow.errors import ConfigurationError

if TYPE_CHECKING:
    from tenantflow.placement import ControlPlane

__all__ = ["ACTOR", "app"]

ACTOR = "cli"
"""Who the audit log names for a change made from the command line."""

app = typer.Typer(
    name="mcp-servers",
    help="One tenant's own MCP servers: add (stdio or streamable HTTP), list, remove.",
    no_args_is_help=True,
)

TenantArgument = Annotated[str, typer.Argument(metavar="TENANT", help="The tenant's id.")]
NameArgument = Annotated[
    str, typer.Argument(metavar="NAME", help="The server's name: the prefix of its tools' names.")
]


def _pairs(values: list[str] | None, option: str) -> dict[str, str] | None:
    if not values:
        return None
    out: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"{option} takes KEY=VALUE, not {value!r}", field=option)
        out[key] = rest
    return out


def _registry(engine: ControlPlane) -> Any:
    from tenantflow.integrations.mcp_tenants import TenantMCPServers

    return TenantMCPServers.of(engine)  # type: ignore[arg-type]


@app.command("add")
def add(
    ctx: typer.Context,
    tenant: TenantArgument,
    name: NameArgument,
    command: Annotated[
        str | None, typer.Option("--command", help="A program speaking MCP on stdio.")
    ] = None,
    arg: Annotated[
        list[str] | None, typer.Option("--arg", help="An argument of --command. Repeatable.")
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", metavar="KEY=VALUE", help="The stdio server's environment."),
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="A streamable HTTP endpoint (…/mcp).")
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option("--header", metavar="KEY=VALUE", help="An HTTP header. Repeatable."),
    ] = None,
    expose: Annotated[
        list[str] | None,
        typer.Option("--expose", metavar="TOOL", help="Give the tenant this tool (default all)."),
    ] = None,
    cost_usd: Annotated[float, typer.Option("--cost-usd", help="The price of one call.")] = 0.0,
    pool_size: Annotated[
        int, typer.Option("--pool-size", help="Open sessions at most (0: one per call).")
    ] = 4,
    json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Add (or replace) a server for one tenant."""
    from tenantflow.integrations.mcp_tenants import spec_from_json

    with reporting_errors():
        tenant = check_tenant(tenant)
        spec = spec_from_json(
            {
                "name": name,
                "command": command,
                "args": list(arg or []),
                "env": _pairs(env, "--env"),
                "url": url,
                "headers": _pairs(header, "--header"),
                "cost_usd": cost_usd,
                "pool_size": pool_size,
            }
        )

    async def register(engine: ControlPlane) -> list[str]:
        names: list[str] = await _registry(engine).register(
            tenant, spec, expose=expose, actor=ACTOR
        )
        return names

    tools = read(ctx, db, register)
    if json:
        render.print_json({"tenant": tenant, "name": name, "tools": tools})
    else:
        typer.echo(f"MCP server {name} added for tenant {tenant}: {', '.join(tools)}")


@app.command("list")
def list_servers(
    ctx: typer.Context, tenant: TenantArgument, json: JsonOption = False, db: DbOption = None
) -> None:
    """List a tenant's servers and their tools (never the values of env or headers)."""
    with reporting_errors():
        tenant = check_tenant(tenant)

    async def fetch(engine: ControlPlane) -> list[dict[str, Any]]:
        servers: list[dict[str, Any]] = await _registry(engine).list_servers(tenant)
        return servers

    servers = read(ctx, db, fetch)
    if json:
        render.print_json(servers)
        return
    if not servers:
        typer.echo("no MCP servers")
    for s in servers:
        where = s["url"] or " ".join([s["command"], *s["args"]])
        typer.echo(f"{s['name']}  {where}  tools: {', '.join(s['tools'])}")


@app.command("remove")
def remove(
    ctx: typer.Context, tenant: TenantArgument, name: NameArgument, db: DbOption = None
) -> None:
    """Remove a tenant's server."""
    with reporting_errors():
        tenant = check_tenant(tenant)

    async def drop(engine: ControlPlane) -> None:
        await _registry(engine).remove(tenant, name, actor=ACTOR)

    read(ctx, db, drop)
    typer.echo(f"MCP server {name} removed for tenant {tenant}")
