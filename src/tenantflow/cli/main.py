"""The root ``tenantflow`` command: global options and the command groups.

Each group is a typer app in its own module, mounted here with ``add_typer``; new groups
(tenants, reviews, usage, audit, demo, serve, worker) are added the same way.
"""

from __future__ import annotations

from typing import Annotated

import typer

from tenantflow import __version__
from tenantflow.cli import (
    audit,
    db,
    demo,
    dev,
    keys,
    memory,
    reviews,
    runs,
    selftest,
    serve,
    simulate,
    tenants,
    usage,
    worker,
)
from tenantflow.cli.common import (
    ApiKeyOption,
    CliState,
    DbOption,
    UrlOption,
    reporting_errors,
)
from tenantflow.errors import ConfigurationError

__all__ = ["app", "main"]

app = typer.Typer(
    name="tenantflow",
    help="tenantflow: a multi-tenant control plane for AI-agent workflows.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.command("demo")(demo.demo)
app.command("simulate")(simulate.simulate)
app.add_typer(runs.app, name="runs")
app.add_typer(db.app, name="db")
app.add_typer(tenants.app, name="tenants")
app.add_typer(reviews.app, name="reviews")
app.command("usage")(usage.usage)
app.add_typer(audit.app, name="audit")
app.command("serve")(serve.serve)
app.command("dev")(dev.dev)
app.command("worker")(worker.worker)
app.add_typer(keys.app, name="keys")
app.command("selftest")(selftest.selftest)
app.add_typer(memory.app, name="memory")

# The commands that can call a server (--url); the others work on the store only.
_REMOTE = ("runs", "tenants", "reviews", "usage", "audit", "memory")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"tenantflow {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """tenantflow: a multi-tenant control plane for AI-agent workflows."""
    command = ctx.invoked_subcommand
    if (url is not None or api_key is not None) and command not in _REMOTE:
        with reporting_errors():
            raise ConfigurationError(
                f"tenantflow {command} works on the store only (--db): --url and --api-key"
                f" apply to {', '.join(_REMOTE)}",
                field="url",
            )
    ctx.obj = CliState(db=db, url=url, api_key=api_key)


def main() -> None:
    """Run the ``tenantflow`` command line (the console script's entry point)."""
    app()


if __name__ == "__main__":
    main()
