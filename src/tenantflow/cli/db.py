"""``tenantflow db …``: manage the store's schema."""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable

import typer

from tenantflow.cli.common import DbOption, reporting_errors, settings_for
from tenantflow.errors import ConfigurationError

__all__ = ["app"]

app = typer.Typer(name="db", help="Manage the store's schema.", no_args_is_help=True)


@runtime_checkable
class _Versioned(Protocol):
    """A store with a schema (SQLite, PostgreSQL)."""

    async def open(self, *, execute: bool = True) -> None: ...

    async def close(self) -> None: ...

    async def schema_version(self) -> int: ...


@app.command("upgrade")
def upgrade(ctx: typer.Context, db: DbOption = None) -> None:
    """Apply pending schema migrations and print the schema version."""
    with reporting_errors():
        settings = settings_for(ctx, db)
        version = asyncio.run(_upgrade(settings.database_url))
    typer.echo(f"schema version {version}")


async def _upgrade(url: str) -> int:
    from tenantflow.adapters import open_store

    store = open_store(url)
    if not isinstance(store, _Versioned):
        raise ConfigurationError(
            f"{url!r} has no schema to upgrade: db upgrade needs a SQL store", field="url"
        )
    # Opening to execute applies every pending migration in one transaction (and refuses a
    # database written by a newer release); SQLite also refuses while an engine is running on it.
    await store.open(execute=True)
    try:
        return await store.schema_version()
    finally:
        await store.close()
