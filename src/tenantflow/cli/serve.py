"""``tenantflow serve``: the REST API, with the engine running in the same process.

The user's workflows, tools and models come from ``--app module:function`` (repeatable, or
``$TENANTFLOW_APP``, comma-separated): each function is called with the engine before it starts
(``function(engine)``, possibly async) and registers what the runs need. The engine starts with
the server — resuming every unfinished run — and stops after the last request; SIGTERM or
SIGINT shut the server down gracefully and the process exits 0.

With ``--workers external`` the process executes nothing itself: it is a front for
``tenantflow worker`` processes sharing a PostgreSQL database (see docs/workers.md). The
engine's metrics (``tenantflow.observability.metrics``) and the API's own are served at
``/metrics``; ``--traces`` exports OpenTelemetry spans.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tenantflow.cli.common import AppOption, DbOption, observe, reporting_errors, settings_for
from tenantflow.errors import ConfigurationError

if TYPE_CHECKING:
    from tenantflow.engine.engine import Engine

__all__ = ["load_app", "serve"]

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_WORKERS = ("embedded", "external")
_DASHBOARD: dict[str, bool | str] = {"on": True, "read-only": "read-only", "off": False}


def load_app(ref: str) -> Callable[[Engine], Any]:
    """The function ``module:function`` names (modules in the current directory included).

    Raises:
        ConfigurationError: the module cannot be imported or has no such function.
    """
    module_name, _, attr = ref.partition(":")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"cannot import app module {module_name!r}: {exc}", field="app", value=ref
        ) from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise ConfigurationError(
            f"app {ref!r}: module {module_name!r} has no function {attr!r}",
            field="app",
            value=ref,
        )
    return function  # type: ignore[no-any-return]


def serve(
    ctx: typer.Context,
    app: AppOption = None,
    host: Annotated[str, typer.Option("--host", help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="The TCP port.")] = 8000,
    slots: Annotated[
        int, typer.Option("--slots", min=1, help="Step attempts executing at once.")
    ] = 64,
    max_body_bytes: Annotated[
        int, typer.Option("--max-body-bytes", min=0, help="Larger request bodies get 413.")
    ] = 1_048_576,
    workers: Annotated[
        str,
        typer.Option(
            "--workers",
            metavar="embedded|external",
            help="embedded: this process executes the runs. external: `tenantflow worker`"
            " processes on the same PostgreSQL database do (docs/workers.md).",
        ),
    ] = "embedded",
    traces: Annotated[
        str,
        typer.Option(
            "--traces",
            metavar="none|console|otlp",
            help="Export OpenTelemetry traces (docs/observability.md).",
        ),
    ] = "none",
    log_level: Annotated[
        str, typer.Option("--log-level", help=f"One of {', '.join(_LOG_LEVELS)}.")
    ] = "info",
    dashboard: Annotated[
        str,
        typer.Option(
            "--dashboard",
            metavar="on|read-only|off",
            help="The web dashboard at /ui (docs/dashboard.md); read-only: no actions.",
        ),
    ] = "on",
    session_minutes: Annotated[
        float,
        typer.Option(
            "--session-minutes",
            min=0.05,
            max=1440,
            help="How long a dashboard sign-in lasts, in minutes.",
        ),
    ] = 30,
    db: DbOption = None,
) -> None:
    """Serve the REST API (docs/api.md) with the engine executing runs in this process."""
    with reporting_errors():
        if log_level.lower() not in _LOG_LEVELS:
            raise ConfigurationError(
                f"--log-level must be one of {', '.join(_LOG_LEVELS)}", field="log_level"
            )
        if dashboard not in _DASHBOARD:
            raise ConfigurationError(
                f"--dashboard must be one of {', '.join(_DASHBOARD)}",
                field="dashboard",
                value=dashboard,
            )
        if workers not in _WORKERS:
            raise ConfigurationError(
                f"--workers must be one of {', '.join(_WORKERS)}", field="workers", value=workers
            )
        try:
            from prometheus_client import CollectorRegistry

            from tenantflow.api import create_app
            from tenantflow.api.server import run
        except ImportError as exc:
            raise ConfigurationError(
                f"tenantflow serve needs the server extra: pip install 'tenantflow[server]' ({exc})"
            ) from None
        from tenantflow.placement.centralized import open_front
        from tenantflow.placement.embedded import open_embedded

        settings = settings_for(ctx, db, app)
        setups = [load_app(ref) for ref in settings.apps]
        # Where runs execute is the placement's business; the API is given a control plane.
        place = open_front if workers == "external" else open_embedded
        engine = place(settings.database_url, execute=True, slots=slots)
        registry = CollectorRegistry()
        observe(engine, traces, registry)
        api = create_app(
            engine,
            registry=registry,
            setup=setups,
            max_body_bytes=max_body_bytes,
            dashboard=_DASHBOARD[dashboard],
            session_ttl=timedelta(minutes=session_minutes),
        )
        if not run(api, host=host, port=port, log_level=log_level.lower()):
            raise typer.Exit(1)
