"""Running the app with uvicorn: one process, graceful shutdown on SIGTERM and SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

__all__ = ["run"]


class _Server(uvicorn.Server):
    """uvicorn's server, except that the signal that stopped it is not raised again once the
    graceful shutdown is done: the process then ends with 0, as a service stopped on purpose."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def run(app: FastAPI, *, host: str, port: int, log_level: str = "info") -> bool:
    """Serve ``app`` until SIGTERM or SIGINT; False if the server failed to start.

    The app's lifespan (which starts and closes the engine) runs around the server rather than
    inside uvicorn, so that an error starting it — the store's file locked by another engine,
    say — is raised here as itself, for the command line to report in one line.

    Access logs are off (one line per request costs more than answering it); ``/metrics``
    counts requests instead. In-flight requests get 10 seconds to finish at shutdown.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=10,
    )
    server = _Server(config)

    async def serve() -> None:
        async with app.router.lifespan_context(app):
            await server.serve()

    asyncio.run(serve())
    return bool(server.started)
