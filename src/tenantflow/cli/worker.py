"""``tenantflow worker``: one of any number of worker processes sharing a PostgreSQL database.

Each worker drives the runs of the tenants it owns (see :mod:`tenantflow.engine.cluster`): start
as many as the load needs, on any machines that reach the database, next to a
``tenantflow serve --workers external`` front (or any engine opened with ``cluster="front"``).
SIGTERM or SIGINT stop it gracefully: its attempts stop, and its tenants and step leases are
handed back at once, so the others take over without waiting for the leases to lapse. A worker
that dies without that (SIGKILL, a lost machine) is taken over when its leases lapse.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tenantflow.cli.common import (
    ApiKeyOption,
    AppOption,
    DbOption,
    JsonOption,
    UrlOption,
    observe,
    reporting_errors,
    settings_for,
)
from tenantflow.cli.serve import load_app
from tenantflow.errors import ConfigurationError

if TYPE_CHECKING:
    from tenantflow.engine.engine import Engine

__all__ = ["worker", "workers_app"]

workers_app = typer.Typer(
    name="workers",
    help="The cluster's workers: who is live, and which tenants each drives.",
    no_args_is_help=True,
)

log = logging.getLogger("tenantflow.worker")


def worker(
    ctx: typer.Context,
    app: AppOption = None,
    slots: Annotated[
        int, typer.Option("--slots", min=1, help="Step attempts executing at once.")
    ] = 64,
    lease: Annotated[
        float,
        typer.Option(
            "--lease",
            min=0.5,
            help="Seconds a step or tenant lease lasts without renewal: how soon a dead"
            " worker's work is taken over.",
        ),
    ] = 10.0,
    traces: Annotated[
        str,
        typer.Option(
            "--traces",
            help="Export spans: none, console or otlp (OTEL_EXPORTER_OTLP_* set the endpoint).",
        ),
    ] = "none",
    metrics_port: Annotated[
        int,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve Prometheus metrics on this port at /metrics (0: off).",
        ),
    ] = 0,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="The address the metrics port listens on.")
    ] = "127.0.0.1",
    db: DbOption = None,
) -> None:
    """Run a worker: drive the runs of this worker's share of the tenants (PostgreSQL)."""
    stopping: list[int] = []  # a signal that comes while starting up stops it once started
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    with reporting_errors():
        from tenantflow.placement.centralized import open_worker

        settings = settings_for(ctx, db, app)
        setups = [load_app(ref) for ref in settings.apps]
        engine = open_worker(settings.database_url, slots=slots, lease=timedelta(seconds=lease))
        registry = metrics_registry() if metrics_port else None
        observe(engine, traces, registry)
        if registry is not None:  # served only once every collector is in it
            serve_metrics(registry, metrics_port, metrics_host)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        asyncio.run(_run(engine, setups, stopping))


def metrics_registry() -> Any:
    """A registry of its own for the worker's collectors."""
    try:
        from prometheus_client import CollectorRegistry
    except ImportError as exc:
        raise ConfigurationError(
            f"--metrics-port needs the server extra: pip install 'tenantflow[server]' ({exc})"
        ) from None
    return CollectorRegistry()


def serve_metrics(registry: Any, port: int, host: str) -> None:
    """Serve ``registry`` at ``http://host:port/metrics`` from a thread of its own."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host, registry=registry)


async def _run(
    engine: Engine, setups: Sequence[Callable[[Engine], Any]], stopping: list[int]
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if stopping:
        stop.set()
    from tenantflow.placement.centralized import run_worker

    await run_worker(engine, setups, stop)


@workers_app.command("list")
def list_workers(
    ctx: typer.Context,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List the workers sharing the PostgreSQL database: live or not, last heartbeat, slots,
    and the tenants each holds a lease on (until when)."""
    from tenantflow.cli import render
    from tenantflow.cli.common import connect_admin

    with connect_admin(ctx, db, url, api_key) as backend:
        found = backend.workers()
    if json:
        render.print_json([_worker_dict(w) for w in found])
        return
    out = render.console()
    if not found:
        out.print("no workers: none has beaten on this database yet", markup=False)
        return
    out.print(_workers_table(found))
    live = sum(1 for w in found if w.live)
    tenants = sum(len(w.tenants) for w in found)
    out.print(f"{live} of {len(found)} workers live; {tenants} tenants leased", markup=False)


def _worker_dict(w: Any) -> dict[str, Any]:
    from tenantflow.domain.timefmt import iso

    return {
        "id": w.id,
        "live": w.live,
        "started_at": iso(w.started_at),
        "beat_at": iso(w.beat_at),
        "slots": w.slots,
        "tenants": [{"tenant_id": t.tenant_id, "expires_at": iso(t.expires_at)} for t in w.tenants],
    }


def _workers_table(found: Sequence[Any]) -> Any:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from tenantflow.domain.timefmt import iso
    from tenantflow.tables import Fitted

    table = Table(box=box.SIMPLE_HEAD)
    for name in ("worker", "live", "slots", "last beat", "tenants (lease until)"):
        table.add_column(name)
    for w in found:
        leases = ", ".join(
            f"{t.tenant_id} ({iso(t.expires_at, timespec='seconds')})" for t in w.tenants
        )
        table.add_row(
            Text(w.id),
            "yes" if w.live else "no",
            "" if w.slots is None else str(w.slots),
            Text(iso(w.beat_at, timespec="milliseconds") or "gone"),
            Text(leases or "none"),
        )
    return Fitted(table, text=frozenset({"tenants (lease until)"}))
