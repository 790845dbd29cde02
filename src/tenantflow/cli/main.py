"""The root ``tenantflow`` command: global options and the command groups.

Each group is a typer app in its own module, mounted here with ``add_typer``; new groups
(tenants, reviews, usage, audit, demo, serve, worker) are added the same way.

A usage error (an unknown command or option, a bad option value, a missing argument) is one line
on stderr, ``error: <what> (see '<command> --help')``, and exit code 2, like every other error
of the command line; ``--help`` and a group called without a command still print the help.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from tenantflow import __version__
from tenantflow.cli import (
    audit,
    db,
    demo,
    dev,
    events,
    federated,
    hybrid,
    keys,
    mcp,
    memory,
    mesh,
    operator,
    reviews,
    runs,
    schedules,
    selftest,
    serve,
    simulate,
    tenants,
    topology,
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


def _base(name: str) -> type[Exception]:
    # Click's error classes, found from one typer re-exports: whichever Click typer uses
    # (its own copy in recent versions, the click package before).
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


_CLICK_ERROR = _base("ClickException")
_USAGE_ERROR = _base("UsageError")


def _one_line(exc: Exception) -> str:
    message = " ".join(str(getattr(exc, "format_message", exc.__str__)()).split())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, _USAGE_ERROR) and ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    return f"error: {message}\n"


class _OneLineErrors(TyperGroup):
    """The root group: Click's usage box becomes one ``error:`` line (see the module doc)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            # Not standalone: Click raises its errors here instead of printing its box.
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except _CLICK_ERROR as exc:
            code = int(getattr(exc, "exit_code", 2))
            if type(exc).__name__ == "NoArgsIsHelpError":  # a group alone: the help is the answer
                sys.stderr.write(str(getattr(exc, "format_message", exc.__str__)()) + "\n")
            else:
                sys.stderr.write(_one_line(exc))
            sys.exit(code)
        except typer.Abort:
            sys.stderr.write("error: aborted\n")
            sys.exit(1)
        # An explicit exit's code; the commands themselves return None.
        sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)


app = typer.Typer(
    name="tenantflow",
    cls=_OneLineErrors,
    help="tenantflow: a multi-tenant control plane for AI-agent workflows.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.command("demo")(demo.demo)
app.command("simulate")(simulate.simulate)
app.add_typer(runs.app, name="runs")
app.add_typer(schedules.app, name="schedules")
app.add_typer(events.app, name="events")
app.add_typer(db.app, name="db")
app.add_typer(tenants.app, name="tenants")
app.add_typer(reviews.app, name="reviews")
app.command("usage")(usage.usage)
app.add_typer(audit.app, name="audit")
app.command("serve")(serve.serve)
app.command("dev")(dev.dev)
app.command("worker")(worker.worker)
app.add_typer(worker.workers_app, name="workers")
app.add_typer(operator.app, name="operator")
app.add_typer(keys.app, name="keys")
app.command("selftest")(selftest.selftest)
app.add_typer(memory.app, name="memory")
app.add_typer(mcp.app, name="mcp-servers")
app.command("agent")(mesh.agent)
app.add_typer(mesh.app, name="mesh")
app.command("plane")(federated.plane)
app.command("cell")(federated.cell)
app.add_typer(federated.app, name="federated")
app.add_typer(hybrid.hybrid_app, name="hybrid")
app.add_typer(topology.app, name="topology")

# The commands that can call a server (--url); the others work on the store only.
_REMOTE = (
    "runs",
    "tenants",
    "reviews",
    "usage",
    "audit",
    "memory",
    "workers",
    "operator",
    "keys",
)


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
