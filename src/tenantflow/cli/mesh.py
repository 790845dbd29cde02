"""``tenantflow agent`` and ``tenantflow mesh up``: the mesh placement on NATS JetStream.

* ``tenantflow agent --app MODULE:FUNCTION --db URL --nats URL --nats-creds FILE --region R``
  runs one agent (see :mod:`tenantflow.placement.mesh.agent`).
* ``tenantflow mesh up --agents N --app MODULE:FUNCTION`` starts a NATS server (2.10 or newer;
  the ``mesh`` extra installs 2.15), N agents per region and an API on one machine (see
  :mod:`tenantflow.placement.mesh.up`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from tenantflow.cli.common import AppOption, DbOption, reporting_errors, settings_for
from tenantflow.errors import ConfigurationError

__all__ = ["agent", "app"]

app = typer.Typer(help="The mesh placement on NATS JetStream.", no_args_is_help=True)


def _names(value: str, what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise ConfigurationError(f"--{what} names nothing", field=what, value=value)
    return names


def agent(
    ctx: typer.Context,
    app_ref: AppOption = None,
    nats: Annotated[
        str, typer.Option("--nats", metavar="URL", help="The NATS server.")
    ] = "nats://127.0.0.1:4222",
    nats_creds: Annotated[
        Path | None,
        typer.Option(
            "--nats-creds",
            metavar="FILE",
            help="This agent's NATS user (written by 'tenantflow mesh up').",
        ),
    ] = None,
    region: Annotated[
        str, typer.Option("--region", help="The regions whose work it takes (comma-separated).")
    ] = "global",
    kinds: Annotated[
        str, typer.Option("--kinds", help="The step kinds it takes (function, agent, review).")
    ] = "function,agent,review",
    slots: Annotated[int, typer.Option("--slots", min=1, help="Steps executing at once.")] = 8,
    lease: Annotated[
        float, typer.Option("--lease", min=0.5, help="Seconds a step lease lasts.")
    ] = 30.0,
    ack_wait: Annotated[
        float,
        typer.Option("--ack-wait", min=0.5, help="Seconds before an unacked item is redelivered."),
    ] = 30.0,
    default_region: Annotated[
        str, typer.Option("--default-region", help="The region of tenants that name none.")
    ] = "global",
    db: DbOption = None,
) -> None:
    """Run a mesh agent: pull this region's work from JetStream and run it."""
    stop = asyncio.Event()
    with reporting_errors():
        from tenantflow.cli.serve import load_app
        from tenantflow.placement.mesh.agent import (
            KINDS,
            AgentOptions,
            Region,
            load_credentials,
            run_agent,
        )

        settings = settings_for(ctx, db, app_ref)
        regions = _names(region, "region")
        for r in [*regions, default_region]:
            Region(r)
        wanted = _names(kinds, "kinds")
        unknown = sorted(set(wanted) - set(KINDS))
        if unknown:
            raise ConfigurationError(
                f"--kinds: unknown kind {', '.join(unknown)} (known: {', '.join(KINDS)})",
                field="kinds",
            )
        options = AgentOptions(
            store_url=settings.database_url,
            nats_url=nats,
            creds=load_credentials(nats_creds) if nats_creds is not None else None,
            regions=regions,
            kinds=wanted,
            slots=slots,
            lease_s=lease,
            ack_wait_s=ack_wait,
            default_region=default_region,
            setups=[load_app(ref) for ref in settings.apps],
        )
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await run_agent(options, stop)

        asyncio.run(main())
