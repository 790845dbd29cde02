"""Running the app with uvicorn: one process, graceful shutdown on SIGTERM and SIGINT.

uvicorn's h11 protocol is used (whatever else is installed), with a header buffer of
:data:`MAX_INCOMPLETE_EVENT_BYTES`: request headers up to it reach the app, which refuses those
over its own limit (16 KiB) with a JSON 431; past the buffer the request cannot be parsed and
uvicorn answers ``400 Invalid HTTP request received.`` (plain text) and closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

__all__ = ["MAX_INCOMPLETE_EVENT_BYTES", "config", "run"]

MAX_INCOMPLETE_EVENT_BYTES = 1024 * 1024 + 64 * 1024
"""How much of a request's head uvicorn buffers (a 1 MB header still gets the JSON 431)."""


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


def config(app: FastAPI, *, host: str, port: int, log_level: str = "info") -> uvicorn.Config:
    """uvicorn's configuration for ``app`` (see :func:`run` and the module docstring)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=10,
        http="h11",
        h11_max_incomplete_event_size=MAX_INCOMPLETE_EVENT_BYTES,
    )


def run(app: FastAPI, *, host: str, port: int, log_level: str = "info") -> bool:
    """Serve ``app`` until SIGTERM or SIGINT; False if the server failed to start.

    The app's lifespan (which starts and closes the engine) runs around the server rather than
    inside uvicorn, so that an error starting it — the store's file locked by another engine,
    say — is raised here as itself, for the command line to report in one line.

    Access logs are off (one line per request costs more than answering it); ``/metrics``
    counts requests instead. In-flight requests get 10 seconds to finish at shutdown.
    """
    server = _Server(config(app, host=host, port=port, log_level=log_level))

    async def serve() -> None:
        async with app.router.lifespan_context(app):
            await server.serve()

    asyncio.run(serve())
    return bool(server.started)
