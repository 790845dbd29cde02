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
    slots: Annotated[
        int, typer.Option("--slots", min=1, help="Steps executing at once (regular slots).")
    ] = 8,
    express_slots: Annotated[
        int | None,
        typer.Option(
            "--express-slots",
            min=0,
            help="Slots beyond --slots, only for tenants with no step running in this agent"
            " (default: half of --slots, at least 1; 0: none).",
        ),
    ] = None,
    eager_log: Annotated[
        bool,
        typer.Option(
            "--eager-log",
            help="Ship every decision's log entry at once, even while this agent has a backlog"
            " (by default a decision that hands its run on leaves it to a later one then).",
        ),
    ] = False,
    log_lag: Annotated[
        float,
        typer.Option(
            "--log-lag",
            min=0.01,
            help="The longest, in seconds, a run's log is left to a later decision under a"
            " backlog before this agent ships it.",
        ),
    ] = 10.0,
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
            express_slots=express_slots,
            defer_log=not eager_log,
            log_lag_s=log_lag,
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


@app.command("up")
def up(
    ctx: typer.Context,
    app_ref: AppOption = None,
    agents: Annotated[int, typer.Option("--agents", min=1, help="Agent processes per region.")] = 2,
    regions: Annotated[
        str, typer.Option("--regions", help="The mesh regions (comma-separated).")
    ] = "global",
    default_region: Annotated[
        str, typer.Option("--default-region", help="The region of tenants that name none.")
    ] = "global",
    host: Annotated[str, typer.Option("--host", help="The API's address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="The API's port.")] = 8000,
    nats_port: Annotated[
        int, typer.Option("--nats-port", min=0, max=65535, help="NATS's port (0: a free one).")
    ] = 0,
    directory: Annotated[
        Path,
        typer.Option("--dir", help="The NATS store, credentials and agent logs."),
    ] = Path(".tenantflow-mesh"),
    slots: Annotated[int, typer.Option("--slots", min=1, help="Steps per agent at once.")] = 8,
    lease: Annotated[
        float, typer.Option("--lease", min=0.5, help="Seconds a step lease lasts.")
    ] = 30.0,
    ack_wait: Annotated[
        float,
        typer.Option("--ack-wait", min=0.5, help="Seconds before an unacked item is redelivered."),
    ] = 30.0,
    read_model: Annotated[
        str | None,
        typer.Option(
            "--read-model",
            metavar="URL",
            help="Project the API's read model (runs, steps, timelines, state versions) from"
            " the execution log into this store (sqlite:///FILE or postgresql://...).",
        ),
    ] = None,
    db: DbOption = None,
) -> None:
    """Start a NATS server, agents and the REST API on this machine (PostgreSQL store)."""
    with reporting_errors():
        from tenantflow.api.app import create_app
        from tenantflow.api.server import run
        from tenantflow.cli.serve import load_app
        from tenantflow.placement.centralized import open_front
        from tenantflow.placement.mesh.agent import Region
        from tenantflow.placement.mesh.control import MeshControl
        from tenantflow.placement.mesh.up import MeshUp, find_nats_server, require_postgres

        settings = settings_for(ctx, db, app_ref)
        require_postgres(settings.database_url)
        names = _names(regions, "regions")
        for r in [*names, default_region]:
            Region(r)
        find_nats_server()  # refuses a missing or too old server before anything starts
        mesh = MeshUp(
            settings.database_url,
            settings.apps,
            directory,
            regions=names,
            default_region=default_region,
            agents=agents,
            slots=slots,
            lease_s=lease,
            ack_wait_s=ack_wait,
            nats_port=nats_port,
        )
        asyncio.run(mesh.start())
        try:
            assert mesh.server is not None
            control = MeshControl(
                open_front(settings.database_url),
                nats_url=mesh.server.url,
                creds=mesh.admin,
                regions=names,
                default_region=default_region,
                read_model=read_model,
            )

            def started(_: object) -> None:
                mesh.start_agents()
                typer.echo(
                    f"tenantflow mesh up: API http://{host}:{port}, NATS {mesh.server.url}"
                    if mesh.server is not None
                    else "tenantflow mesh up",
                    err=True,
                )
                where = ", ".join(dict.fromkeys([*names, default_region]))
                typer.echo(
                    f"  {len(mesh.procs)} agents ({where}); credentials and logs in {directory}",
                    err=True,
                )

            application = create_app(
                control,  # a ControlPlane by delegation
                setup=[load_app(ref) for ref in settings.apps],
                started=[started],
            )
            logging.basicConfig(level=logging.WARNING)
            run(application, host=host, port=port, log_level="warning")
        finally:
            mesh.stop()
