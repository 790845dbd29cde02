"""The FastAPI application: :func:`create_app` wires the engine, routers, errors and metrics.

The engine runs inside the server process: the app's lifespan runs the setup functions
(registering workflows, tools and models), starts the engine — which resumes every unfinished
run — and closes it on shutdown, after the last request.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.routing import Route

from tenantflow import __version__
from tenantflow.api.docs import install_docs
from tenantflow.api.errors import install_error_handlers
from tenantflow.api.metrics import HttpMetrics, MetricsMiddleware
from tenantflow.api.middleware import RequestGuard
from tenantflow.api.routes import (
    events,
    health,
    memory,
    operator,
    reviews,
    runs,
    schedules,
    signals,
    tenant,
    tenants,
    triggers,
    workers,
    workflows,
)
from tenantflow.api.routes.mcp import mcp_endpoint, servers_router
from tenantflow.api.routes.runs import SubmissionGate
from tenantflow.placement import ControlPlane

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_SUBMISSIONS", "create_app"]

_DURATION = (
    "An ISO 8601 duration as pydantic writes it: PT30S, PT2H, P30D, P7Y7D (a year is 365 days)."
)

DEFAULT_MAX_BODY_BYTES = 1_048_576
DEFAULT_MAX_SUBMISSIONS = 512

Setup = Callable[[Any], Any]
"""A function the app calls with its control plane before starting it (it registers workflows,
tools and models); it may be async."""


def create_app(
    engine: ControlPlane,
    *,
    registry: CollectorRegistry | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_submissions: int = DEFAULT_MAX_SUBMISSIONS,
    setup: Sequence[Setup] = (),
    manage_engine: bool = True,
    started: Sequence[Callable[[ControlPlane], None]] = (),
    dashboard: bool | str = True,
    session_ttl: timedelta = timedelta(minutes=30),
) -> FastAPI:
    """The REST API of ``engine``.

    Args:
        engine: the control plane to serve, however it is placed (see
            :mod:`tenantflow.placement`): an embedded engine opened with ``execute=True`` runs
            submitted runs itself, a centralized front passes them to its workers.
        registry: where the HTTP and engine metrics are registered (a new one when None);
            ``/metrics`` serves it.
        max_body_bytes: request bodies over this size are refused with 413.
        max_submissions: at most this many submissions are recorded at once by this process;
            more are refused with 429 and ``Retry-After`` (see ``SubmissionGate``).
        setup: functions called with the engine before it starts (``function(engine)``, may
            be async): they register workflows, tools and models.
        manage_engine: start the engine with the app and close it at shutdown (False when the
            caller starts and closes it).
        started: functions called with the engine once it has started (``serve``'s banner).
        dashboard: serve the web dashboard at ``/ui`` (``app.state.dashboard``; docs/dashboard.md);
            ``"read-only"`` serves it without any action that changes something.
        session_ttl: how long a dashboard sign-in lasts.

    Returns:
        The app; serve it with any ASGI server (``tenantflow serve`` uses uvicorn).
    """
    if max_body_bytes < 0:
        raise ValueError("max_body_bytes must not be negative")
    if max_submissions < 1:
        raise ValueError("max_submissions must be at least 1")
    registry = registry if registry is not None else CollectorRegistry()
    metrics = HttpMetrics(registry)
    mcp = mcp_endpoint(engine)  # /mcp, when the mcp extra is installed

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for function in setup:
            result = function(engine)
            if inspect.isawaitable(result):
                await result
        if manage_engine:
            await engine.start()
        for announce in started:  # e.g. serve's banner: only once the engine is up
            announce(engine)
        try:
            async with AsyncExitStack() as stack:
                if mcp is not None:
                    await stack.enter_async_context(mcp.lifespan())
                yield
        finally:
            if manage_engine:
                await engine.close()

    app = FastAPI(
        title="tenantflow",
        version=__version__,
        summary="A multi-tenant control plane for durable AI-agent workflows.",
        lifespan=lifespan,
        docs_url=None,  # /docs is served from the package, not a CDN: see api/docs.py
        redoc_url=None,
    )
    install_docs(app)
    app.state.engine = engine
    app.state.registry = registry
    app.state.submissions = SubmissionGate(max_submissions, metrics)
    install_error_handlers(app)
    # Routes are matched in order: the busiest first.
    for module in (
        runs,
        events,
        reviews,
        memory,
        tenant,
        tenants,
        workflows,
        schedules,
        signals,
        triggers,
        workers,
        operator,
        health,
    ):
        app.include_router(module.router)
    if mcp is not None:
        app.include_router(servers_router)  # the admin's per-tenant MCP servers
        # An ASGI endpoint (not a Mount): /mcp itself answers, with no redirect to /mcp/.
        app.router.routes.append(
            Route("/mcp", mcp, methods=["GET", "POST", "DELETE"], include_in_schema=False)
        )
    if dashboard not in (True, False, "read-only"):
        raise ValueError("dashboard must be True, False or 'read-only'")
    if dashboard:
        from tenantflow.dashboard import create_dashboard

        app.state.dashboard = create_dashboard(
            engine, read_only=dashboard == "read-only", session_ttl=session_ttl
        )
        app.mount("/ui", app.state.dashboard)
    _describe_durations(app)
    # Added last = outermost: metrics see every answer, the guard's included.
    app.add_middleware(RequestGuard, max_body_bytes=max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _describe_durations(app: FastAPI) -> None:
    """Policy durations are written as pydantic writes them (``P7Y7D``: years then days), which
    RFC 3339's stricter ``duration`` format does not allow: the document says what is sent."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            for schema in document.get("components", {}).get("schemas", {}).values():
                for prop in schema.get("properties", {}).values():
                    for variant in [prop, *prop.get("anyOf", ())]:
                        if variant.get("format") == "duration":
                            del variant["format"]
                            variant.setdefault("description", _DURATION)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
