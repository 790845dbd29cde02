"""``tenantflow hybrid``: the processes of the hybrid placement (see docs/hybrid.md).

* ``hybrid worker`` — a centralized worker (PostgreSQL) that choreographs side effects, with
  the relay and outcome recorder of its store;
* ``hybrid relay`` — only the relay and outcome recorder of a store;
* ``hybrid agent`` — a side-effect agent: runs the app's side-effect steps from JetStream.

SIGTERM or SIGINT stop each gracefully; SIGKILL loses nothing (unacknowledged messages are
delivered again, unmarked outbox rows published again under the same message id).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Annotated, Any, cast

import typer

from tenantflow.cli.common import AppOption, DbOption, reporting_errors, settings_for
from tenantflow.cli.serve import load_app

__all__ = ["hybrid_app"]

hybrid_app = typer.Typer(
    help="The hybrid placement: side effects choreographed over NATS JetStream."
)

NatsOption = Annotated[
    str, typer.Option("--nats", help="The NATS JetStream server (nats-server >= 2.10).")
]
RegionOption = Annotated[str, typer.Option("--region", help="The store's region.")]


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _apply(setups: Sequence[Callable[[Any], Any]], engine: Any) -> None:
    for setup in setups:
        result = setup(engine)
        if inspect.isawaitable(result):
            await result


@hybrid_app.command("agent")
def agent(
    ctx: typer.Context,
    nats: NatsOption,
    app: AppOption = None,
    region: RegionOption = "default",
    tenant: Annotated[
        list[str] | None, typer.Option("--tenant", help="Only this tenant's (repeatable).")
    ] = None,
    max_deliveries: Annotated[
        int, typer.Option("--max-deliveries", min=1, help="Failures before dead-lettering.")
    ] = 5,
    ack_wait: Annotated[
        float,
        typer.Option("--ack-wait", min=0.5, help="Seconds before a dead agent's message returns."),
    ] = 30.0,
    backoff: Annotated[
        float, typer.Option("--backoff", min=0.0, help="The first redelivery delay, seconds.")
    ] = 0.2,
) -> None:
    """Run side-effect steps of the app's workflows from JetStream."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with reporting_errors():
        from tenantflow.engine.engine import Engine
        from tenantflow.placement.hybrid.agent import FxAgent

        settings = settings_for(ctx, None, app)
        holder = Engine.open("memory://")  # holds the app's registrations; never started
        setups = [load_app(ref) for ref in settings.apps]
        fx = FxAgent(
            nats,
            holder.workflow,
            region=region,
            tenants=tenant or None,
            max_deliveries=max_deliveries,
            ack_wait_s=ack_wait,
            backoff_base_s=backoff,
        )

        async def main() -> None:
            stop = _stop_event()
            await _apply(setups, holder)
            try:
                await fx.run(stop)
            finally:
                await fx.close()

        asyncio.run(main())


@hybrid_app.command("relay")
def relay(
    ctx: typer.Context, nats: NatsOption, db: DbOption = None, region: RegionOption = "default"
) -> None:
    """Publish a store's outbox to JetStream and record the agents' outcomes."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with reporting_errors():
        from tenantflow.adapters import open_store
        from tenantflow.placement.hybrid.relay import OutboxRelay, OutboxStore, OutcomeRecorder

        settings = settings_for(ctx, db, None)
        store = open_store(settings.database_url)

        async def main() -> None:
            stop = _stop_event()
            await store.open()
            keeper = cast(OutboxStore, store)  # the SQL stores keep the outbox
            workers: list[OutboxRelay | OutcomeRecorder] = [
                OutboxRelay(keeper, nats, region=region),
                OutcomeRecorder(keeper, nats, region=region),
            ]
            try:
                await asyncio.gather(*(w.run(stop) for w in workers))
            finally:
                for w in workers:
                    await w.close()
                await store.close()

        asyncio.run(main())


@hybrid_app.command("worker")
def worker(
    ctx: typer.Context,
    nats: NatsOption,
    app: AppOption = None,
    db: DbOption = None,
    slots: Annotated[int, typer.Option("--slots", min=1, help="Attempts at once.")] = 64,
    lease: Annotated[
        float,
        typer.Option(
            "--lease",
            min=0.5,
            help="Seconds a step or tenant lease lasts without renewal: how soon a dead"
            " worker's work is taken over.",
        ),
    ] = 10.0,
) -> None:
    """A centralized worker (PostgreSQL) that hands side effects to the outbox and relays it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with reporting_errors():
        from tenantflow.placement.centralized import open_worker
        from tenantflow.placement.hybrid import Hybrid

        settings = settings_for(ctx, db, app)
        engine = open_worker(settings.database_url, slots=slots, lease=timedelta(seconds=lease))
        setups = [load_app(ref) for ref in settings.apps]

        async def main() -> None:
            stop = _stop_event()
            await _apply(setups, engine)
            hybrid = Hybrid(engine, nats)
            async with hybrid:
                await stop.wait()

        asyncio.run(main())
