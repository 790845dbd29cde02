"""``tenantflow events publish EVENT``: start the workflows registered to an event.

A workflow declared with ``Workflow(..., on_event="invoice.paid")`` starts a run, with the
event's data as its input, whenever the tenant publishes that event (``Engine.publish``,
``POST /v1/events/{event}``). The event's id is its idempotency key: publishing the same id
again starts nothing new and answers with the runs the first one started.

On a server (``--url`` and the tenant's API key) the server's registered workflows answer. On
the store (``--db``) the workflows are registered in this process from ``--app``: the runs are
recorded in the store and carried on by the next process that executes it (``tenantflow serve
--db``) if this one stops before they end.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated

import typer

from tenantflow.cli import render
from tenantflow.cli.common import (
    ApiKeyOption,
    AppOption,
    DbOption,
    EngineBackend,
    JsonOption,
    TenantOption,
    UrlOption,
    connect,
    json_option,
    reporting_errors,
)
from tenantflow.errors import ConfigurationError

__all__ = ["app"]

app = typer.Typer(
    name="events",
    help="Events: publish one, starting the workflows registered to its name (on_event).",
    no_args_is_help=True,
)


@app.command("publish")
def publish(
    ctx: typer.Context,
    event: Annotated[str, typer.Argument(metavar="EVENT", help="The event's name.")],
    data: Annotated[
        str | None,
        typer.Option("--data", "-d", metavar="JSON", help="The event's data (JSON; default null)."),
    ] = None,
    data_file: Annotated[
        Path | None,
        typer.Option("--data-file", metavar="PATH", help="The event's data, from a JSON file."),
    ] = None,
    event_id: Annotated[
        str | None,
        typer.Option(
            "--id",
            metavar="ID",
            help="The event's id: publishing it again starts nothing new (default: a new one).",
        ),
    ] = None,
    app_ref: AppOption = None,
    tenant: TenantOption = None,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Publish EVENT for the tenant: a run of every workflow registered to it starts with the
    data as its input. On a server (--url) or on the store (--db, with the workflows from
    --app)."""
    from tenantflow.cli.serve import load_app

    with reporting_errors():
        payload = json_option(data, data_file, "data")
        key = event_id if event_id is not None else f"evt-{uuid.uuid4().hex}"
        setups = [load_app(ref) for ref in app_ref or ()]
    with connect(ctx, db, url, api_key, tenant=tenant, write=url is None) as backend:
        if isinstance(backend, EngineBackend):
            if not setups:
                raise ConfigurationError(
                    "on the store (--db) give --app MODULE:FUNCTION, the app that registers the"
                    " event's workflows (or publish to a server with --url)",
                    field="app",
                )
            backend.apply(setups)
        elif setups:
            raise ConfigurationError(
                "--app is for the store (--db): a server publishes to its own workflows",
                field="app",
            )
        receipt = backend.publish(event, key, payload)
    if json:
        render.print_json(
            {
                "name": receipt.name,
                "id": receipt.event_id,
                "runs": [
                    {"workflow": r.workflow, "run_id": r.run_id, "created": r.created}
                    for r in receipt.runs
                ],
            }
        )
        return
    out = render.console()
    if not receipt.runs:
        out.print(
            f"published event {receipt.name} ({receipt.event_id}): no workflow is registered to it",
            markup=False,
        )
        return
    out.print(f"published event {receipt.name} ({receipt.event_id})", markup=False)
    for r in receipt.runs:
        verb = "started" if r.created else "already started"
        out.print(f"  {verb} run {r.run_id} of workflow {r.workflow}", markup=False)
