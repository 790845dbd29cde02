"""What every command shares: the ``--db`` option, settings, running the engine, errors.

A command builds its :class:`~tenantflow.settings.Settings` with :func:`settings_for`, and calls
the engine through :func:`read`, which opens it with ``execute=False``, runs the async
call with :func:`asyncio.run` and turns any :class:`~tenantflow.errors.TenantflowError` into one
line on stderr and an exit code: 2 for bad input or configuration, 1 for everything else.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, TypeVar

import typer

from tenantflow.engine.engine import Engine
from tenantflow.errors import ConfigurationError, ContractError, SpecError, TenantflowError
from tenantflow.settings import Settings

__all__ = [
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "CliState",
    "DbOption",
    "JsonOption",
    "TenantOption",
    "exit_code",
    "read",
    "reporting_errors",
    "settings_for",
]

T = TypeVar("T")

EXIT_FAILURE = 1
EXIT_USAGE = 2

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="URL",
        help="Store URL (default: $TENANTFLOW_DATABASE_URL, else sqlite:///tenantflow.db).",
        show_default=False,
    ),
]
TenantOption = Annotated[
    str, typer.Option("--tenant", "-t", metavar="TENANT", help="The tenant that owns the runs.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]


@dataclass(frozen=True, slots=True)
class CliState:
    """Options given before the command (``tenantflow --db URL runs …``)."""

    db: str | None = None


def settings_for(ctx: typer.Context, db: str | None) -> Settings:
    """The settings for one command: its ``--db``, else the global ``--db``, else the environment.

    Args:
        ctx: the command's context (carries the global options).
        db: the command's own ``--db`` value.

    Raises:
        ConfigurationError: a malformed URL or environment variable.
    """
    state = ctx.find_object(CliState)
    url = db if db is not None else (state.db if state is not None else None)
    return Settings.from_env(database_url=url)


def exit_code(error: TenantflowError) -> int:
    """The process exit code for ``error``: 2 for bad input or configuration, else 1."""
    if isinstance(error, ConfigurationError | ContractError | SpecError):
        return EXIT_USAGE
    return EXIT_FAILURE


@contextmanager
def reporting_errors() -> Iterator[None]:
    """Turn a :class:`TenantflowError` into ``error: <message>`` on stderr and an exit code."""
    try:
        yield
    except TenantflowError as exc:
        # Plain write, not rich: rich would wrap a long message over several lines at 80 columns
        # and read "[...]" in it as markup.
        message = " ".join(str(exc.message).split())
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
        raise typer.Exit(exit_code(exc)) from None


def read(ctx: typer.Context, db: str | None, call: Callable[[Engine], Awaitable[T]]) -> T:
    """Open the engine on the configured store, not executing runs, and run ``call`` on it.

    Args:
        ctx: the command's context.
        db: the command's own ``--db`` value.
        call: the async engine call, given the open engine.

    Returns:
        What ``call`` returned.

    Raises:
        typer.Exit: on any TenantflowError, after printing it (see :func:`reporting_errors`).
    """
    with reporting_errors():
        settings = settings_for(ctx, db)
        return asyncio.run(_read(settings.database_url, call))


async def _read(url: str, call: Callable[[Engine], Awaitable[T]]) -> T:
    async with Engine.open(url, execute=False) as engine:
        return await call(engine)
