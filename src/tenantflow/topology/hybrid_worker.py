"""``tenantflow hybrid worker`` with a step and tenant lease of the comparison's choosing.

The comparison kills workers and measures how soon their tenants make progress again, which
the lease bounds; ``tenantflow hybrid worker`` keeps the engine's default lease, so the hybrid
runner starts this instead, with the centralized placement's ``--lease``::

    python -m tenantflow.topology.hybrid_worker --db URL --nats URL --app M:F --slots N --lease S

It is the same worker: :func:`~tenantflow.placement.centralized.open_worker` under
:class:`~tenantflow.placement.hybrid.Hybrid` (outbox relay and outcome recorder included).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import signal
import sys
from datetime import timedelta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tenantflow.topology.hybrid_worker")
    parser.add_argument("--db", required=True)
    parser.add_argument("--nats", required=True)
    parser.add_argument("--app", action="append", default=[])
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--lease", type=float, default=30.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from tenantflow.cli.serve import load_app
    from tenantflow.placement.centralized import open_worker
    from tenantflow.placement.hybrid import Hybrid

    engine = open_worker(args.db, slots=args.slots, lease=timedelta(seconds=args.lease))
    setups = [load_app(ref) for ref in args.app]

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        for setup in setups:
            result = setup(engine)
            if inspect.isawaitable(result):
                await result
        async with Hybrid(engine, args.nats):
            await stop.wait()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
