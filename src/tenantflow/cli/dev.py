"""``tenantflow dev``: a local server to develop against, in one command.

It creates (or upgrades) a SQLite database, makes an admin key and a demo tenant with its own
key, prints them with a first ``curl`` to try, then runs ``tenantflow serve`` with embedded
execution — and, unless ``--no-reload``, restarts it whenever a ``.py`` file of the app's
package changes. The keys are new on every start (a key is shown once); the database, and what
was submitted, is kept between starts. Not for production: docs/deploy.md is.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from tenantflow.cli.common import reporting_errors
from tenantflow.errors import ConfigurationError

__all__ = ["dev", "watched_files"]

DEMO_TENANT = "demo"
_POLL_S = 0.5  # how often files are checked for changes


def dev(
    app: Annotated[
        str,
        typer.Option("--app", metavar="MODULE:FUNCTION", help="Registers your workflows."),
    ] = "tenantflow.examples.loan_platform.service:setup",
    db: Annotated[
        str, typer.Option("--db", metavar="URL", help="The development database.")
    ] = "sqlite:///tenantflow-dev.db",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    tenant: Annotated[
        str, typer.Option("--tenant", help="The demo tenant (created if missing).")
    ] = DEMO_TENANT,
    reload: Annotated[
        bool, typer.Option("--reload/--no-reload", help="Restart when the app's code changes.")
    ] = True,
) -> None:
    """A local server with embedded execution, reload on change, an admin key and a demo
    tenant printed: the quickest way to try the API."""
    with reporting_errors():
        if not db.startswith("sqlite:"):
            raise ConfigurationError(
                "tenantflow dev runs on SQLite (--db sqlite:///PATH); for PostgreSQL and workers"
                " see docs/deploy.md",
                field="db",
            )
        module = app.partition(":")[0]
        if importlib.util.find_spec(module) is None:
            raise ConfigurationError(f"--app {app}: no module {module!r}", field="app")
        admin, tenant_key = asyncio.run(_prepare(db, tenant))
    base = f"http://127.0.0.1:{port}"
    for line in (
        f"tenantflow dev: {base} (docs: {base}/docs), database {db}",
        f"admin key        {admin}",
        f"tenant {tenant:<9} {tenant_key}",
        "keys are shown once and made anew on every start; try:",
        f"  curl -H 'Authorization: Bearer {tenant_key}' {base}/v1/workflows",
        "",
    ):
        typer.echo(line)
    command = [
        sys.executable,
        *("-m", "tenantflow.cli.main", "serve", "--db", db, "--app", app, "--port", str(port)),
    ]
    sys.exit(_serve(command, watched_files(module) if reload else None))


async def _prepare(db: str, tenant: str) -> tuple[str, str]:
    """Schema, an admin key and the demo tenant with a key (the tenant only if missing)."""
    from tenantflow.engine.engine import Engine  # here: the CLI starts without the engine

    async with Engine.open(db) as engine:
        _, admin = await engine.keys.create(None, name="dev", actor="dev")
        if engine.tenants.cached(tenant) is None:
            await engine.tenants.create(tenant, tier="standard", actor="dev")
        _, key = await engine.keys.create(tenant, name="dev", actor="dev")
    return admin, key


def watched_files(module: str) -> list[Path]:
    """The ``.py`` files of ``module``'s package (or the module itself, if it is not one)."""
    spec = importlib.util.find_spec(module.split(".")[0])
    if spec is None or spec.origin is None:
        return []
    origin = Path(spec.origin)
    if origin.name == "__init__.py":
        return sorted(origin.parent.rglob("*.py"))
    return [origin]


def _stamp(files: list[Path]) -> dict[Path, float]:
    out = {}
    for path in files:
        try:
            out[path] = path.stat().st_mtime
        except OSError:
            out[path] = -1.0
    return out


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _serve(command: list[str], files: list[Path] | None) -> int:
    """Run ``command``; with ``files``, restart it when one of them changes. Ctrl-C or SIGTERM
    stop it (and the server with it)."""
    signal.signal(signal.SIGTERM, _interrupt)
    while True:
        child = subprocess.Popen(command)
        seen = _stamp(files) if files else {}
        try:
            while child.poll() is None:
                time.sleep(_POLL_S)
                if files and _stamp(files) != seen:
                    typer.echo("tenantflow dev: code changed, restarting", err=True)
                    child.send_signal(signal.SIGTERM)
                    child.wait()
                    break
            else:
                return child.returncode
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT if os.name != "nt" else signal.SIGTERM)
            return child.wait()
