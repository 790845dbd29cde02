"""The centralized placement: one front and many workers sharing one PostgreSQL database.

* The **front** (``tenantflow serve --workers external``) serves the REST API and executes
  nothing: a submission is recorded ``queued`` and announced; a cancel or a review decision
  becomes a command that the worker driving the run carries out.
* Each **worker** (``tenantflow worker``) drives the runs of its share of the tenants: one owner
  per tenant, spread over the live workers and held as a lease (see
  :mod:`tenantflow.engine.cluster`; the database's side is
  :mod:`tenantflow.adapters.postgres_cluster`).

Both are engines with a cluster role; the front is the :class:`~.control.ControlPlane` the API
is given, exactly as an embedded engine would be.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

from tenantflow.engine.config import EngineConfig
from tenantflow.engine.engine import Engine

__all__ = ["open_front", "open_worker", "run_worker"]

log = logging.getLogger("tenantflow.worker")


def open_front(url: str, config: EngineConfig | None = None, **options: Any) -> Engine:
    """The front of a cluster on the PostgreSQL database ``url``: it records and serves, and
    its workers execute.

    Raises:
        ConfigurationError: ``url`` is not a PostgreSQL database, or a bad setting.
    """
    settings = (config or EngineConfig()).with_options(**options)
    return Engine.open(url, settings.with_options(cluster="front", execute=True))


def open_worker(url: str, config: EngineConfig | None = None, **options: Any) -> Engine:
    """A worker of a cluster on the PostgreSQL database ``url``: it drives the runs of the
    tenants it owns.

    Raises:
        ConfigurationError: ``url`` is not a PostgreSQL database, or a bad setting.
    """
    settings = (config or EngineConfig()).with_options(**options)
    return Engine.open(url, settings.with_options(cluster="worker", execute=True))


async def run_worker(
    engine: Engine, setups: Sequence[Callable[[Engine], Any]], stop: asyncio.Event
) -> None:
    """Run a worker until ``stop`` is set: apply the app's setups (workflows, tools, models),
    join the cluster, and hand its tenants back on the way out."""
    for setup in setups:
        result = setup(engine)
        if inspect.isawaitable(result):
            await result
    async with engine:
        membership = engine.membership
        assert membership is not None
        log.info(
            "worker %s started: %d live workers, owns %d tenants",
            engine.owner,
            len(membership.workers),
            len(membership.owned),
        )
        await stop.wait()
        log.info("worker %s stopping: handing back %d tenants", engine.owner, len(membership.owned))
