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
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import typer

from tenantflow.cli.common import AppOption, DbOption, observe, reporting_errors, settings_for
from tenantflow.errors import ConfigurationError

if TYPE_CHECKING:
    from tenantflow.placement import ControlPlane

__all__ = ["Banner", "load_app", "redact", "serve"]

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_WORKERS = ("embedded", "external")
_DASHBOARD: dict[str, bool | str] = {"on": True, "read-only": "read-only", "off": False}


def load_app(ref: str) -> Callable[[ControlPlane], Any]:
    """The function ``module:function`` names (modules in the current directory included).

    Raises:
        ConfigurationError: the module cannot be imported or has no such function.
    """
    module_name, _, attr = ref.partition(":")
    if module_name == "loan_platform" or module_name.startswith("loan_platform."):
        # The example was a top-level package before 0.x: the old references keep working.
        module_name = "tenantflow.examples." + module_name
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
        banner = Banner(
            apps=list(settings.apps),
            store=settings.database_url,
            placement=workers,
            slots=slots,
            base=f"http://{host}:{port}",
        )
        api = create_app(
            engine,
            registry=registry,
            setup=setups,
            max_body_bytes=max_body_bytes,
            dashboard=_DASHBOARD[dashboard],
            session_ttl=timedelta(minutes=session_minutes),
            started=[banner.show],  # once the apps registered and the engine is up
        )
        banner.routes = {getattr(r, "path", "") for r in api.routes}
        if not run(api, host=host, port=port, log_level=log_level.lower()):
            raise typer.Exit(1)


@dataclass
class Banner:
    """What ``serve`` says on start-up (on stderr): the app, the store, where runs execute, the
    workflows registered, where the docs are; and a warning when no ``--app`` registered any."""

    apps: list[str]
    store: str
    placement: str
    slots: int
    base: str
    routes: set[str] = field(default_factory=set)

    def lines(self, engine: ControlPlane) -> list[str]:
        specs = engine.workflows()
        where = (
            f"embedded (this process executes runs, {self.slots} slots)"
            if self.placement == "embedded"
            else "external (tenantflow worker processes execute runs; this one records them)"
        )
        out = [
            f"tenantflow serve: {self.base}",
            f"  app        {', '.join(self.apps) or '(none: --app MODULE:FUNCTION)'}",
            f"  store      {redact(self.store)}",
            f"  placement  {where}",
            f"  workflows  {', '.join(f'{s.name}@{s.version}' for s in specs) or '(none)'}",
            f"  docs       {self.base}/docs (OpenAPI: {self.base}/openapi.json)",
        ]
        if "/ui" in self.routes:
            out.append(f"  dashboard  {self.base}/ui")
        if not specs:
            out.append(
                "warning: no workflows are registered"
                + ("" if self.apps else " (no --app)")
                + ": every submission will be refused with 404. Register them with"
                " --app MODULE:FUNCTION (or TENANTFLOW_APP), e.g."
                " --app tenantflow.examples.loan_platform.service:setup"
            )
        return out

    def show(self, engine: ControlPlane) -> None:
        for line in self.lines(engine):
            typer.echo(line, err=True)


def redact(url: str) -> str:
    """``url`` without its password (``postgresql://user:***@host/db``)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
