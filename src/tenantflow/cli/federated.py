"""``tenantflow plane``, ``tenantflow cell`` and ``tenantflow federated up``: the federated
placement's processes (docs/federated.md).

* ``tenantflow cell`` — one process: the embedded engine and the REST API of the tenants the
  plane placed on it, its own store, heartbeating to the plane. The plane's supervisor starts
  cells; starting one by hand is for development.
* ``tenantflow plane`` — the thin global plane: tenant registry and map, provisioning (durable
  runs), policy versions, global quotas as leases, health, and the supervisor of the cells.
* ``tenantflow federated up --tenants N`` — a plane and N tenants' cells as processes on this
  machine, each tenant with a key, written to ``DIR/federation.json``; Ctrl-C stops them all.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from tenantflow.cli.common import AppOption, reporting_errors
from tenantflow.errors import ConfigurationError, StoreUnavailableError

__all__ = ["app", "cell", "plane"]

app = typer.Typer(
    name="federated",
    help="The federated placement on this machine (docs/federated.md).",
    no_args_is_help=True,
)

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")

HostOption = Annotated[str, typer.Option("--host", help="The address to listen on.")]
LogOption = Annotated[str, typer.Option("--log-level", help=f"One of {', '.join(_LOG_LEVELS)}.")]


def _log_level(value: str) -> str:
    if value.lower() not in _LOG_LEVELS:
        raise ConfigurationError(
            f"--log-level must be one of {', '.join(_LOG_LEVELS)}", field="log_level"
        )
    return value.lower()


def _server_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f"this command needs the server extra: pip install 'tenantflow[server]' ({exc})"
        ) from None


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")


def cell(
    cell_id: Annotated[str, typer.Option("--id", help="The cell's id.")],
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="The cell's local files (policies, leases).")
    ],
    app_: AppOption = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="The cell's store (default: sqlite:///STATE_DIR/cell.db; a PostgreSQL URL"
            " with its own database or ?options=-csearch_path=... schema works too).",
        ),
    ] = None,
    host: HostOption = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8100,
    plane: Annotated[
        str | None, typer.Option("--plane", help="The plane's URL (heartbeats, leases).")
    ] = None,
    max_tenants: Annotated[
        int, typer.Option("--max-tenants", min=1, max=10_000, help="The cell's size.")
    ] = 1,
    slots: Annotated[int, typer.Option("--slots", min=1, help="Step attempts at once.")] = 16,
    heartbeat_s: Annotated[
        float, typer.Option("--heartbeat-s", min=0.05, max=60, help="Seconds between beats.")
    ] = 1.0,
    log_level: LogOption = "info",
) -> None:
    """Run a cell: the embedded engine and the REST API of the tenants placed on it."""
    with reporting_errors():
        level = _log_level(log_level)
        _server_extra()
        from prometheus_client import CollectorRegistry

        from tenantflow.api.server import run
        from tenantflow.cli.common import observe
        from tenantflow.cli.serve import load_app
        from tenantflow.placement.embedded import open_embedded
        from tenantflow.placement.federated.cell import (
            ADMIN_KEY_ENV,
            QUOTAS_ENV,
            CellOptions,
            build_cell_app,
        )
        from tenantflow.placement.federated.plane import new_key

        refs = list(app_ or [r for r in os.environ.get("TENANTFLOW_APP", "").split(",") if r])
        setups = [load_app(ref) for ref in refs]
        state_dir = state_dir.resolve()
        admin_key = os.environ.get(ADMIN_KEY_ENV)
        if not admin_key:
            key_file = state_dir / "admin.key"
            if key_file.exists():
                admin_key = key_file.read_text(encoding="utf-8").strip()
            else:
                admin_key = new_key()
                _write_secret(key_file, admin_key)
                typer.echo(f"tenantflow cell: admin key written to {key_file}", err=True)
        quotas = tuple(r for r in os.environ.get(QUOTAS_ENV, "").split(",") if r)
        url = db or f"sqlite:///{state_dir / 'cell.db'}"
        engine = open_embedded(url, execute=True, slots=slots)
        registry = CollectorRegistry()
        observe(engine, "none", registry)
        options = CellOptions(
            cell_id=cell_id,
            url=f"http://{host}:{port}",
            state_dir=state_dir,
            max_tenants=max_tenants,
            plane_url=plane.rstrip("/") if plane else None,
            heartbeat_s=heartbeat_s,
            quota_resources=quotas,
        )
        api = build_cell_app(engine, options, admin_key=admin_key, setups=setups, registry=registry)
        if not run(api, host=host, port=port, log_level=level):
            raise typer.Exit(1)


def plane(
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="The plane's store and the cells' directories.")
    ] = Path("tenantflow-federated"),
    app_: AppOption = None,
    host: HostOption = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8090,
    cell_size: Annotated[
        int,
        typer.Option(
            "--cell-size", min=1, max=10_000, help="Tenants per cell (1: a dedicated cell each)."
        ),
    ] = 1,
    cell_slots: Annotated[int, typer.Option("--cell-slots", min=1)] = 16,
    heartbeat_s: Annotated[float, typer.Option("--heartbeat-s", min=0.05, max=60)] = 1.0,
    drain_timeout_s: Annotated[float, typer.Option("--drain-timeout-s", min=0, max=86400)] = 60,
    cell_store: Annotated[
        str | None,
        typer.Option(
            "--cell-store",
            metavar="URL",
            help="Each cell's store, {cell} standing for its id, e.g."
            " postgresql://host/db?schema=tf_{cell} (default: a SQLite file per cell).",
        ),
    ] = None,
    hung_after_s: Annotated[
        float,
        typer.Option(
            "--hung-after-s",
            min=0.5,
            max=86400,
            help="A cell whose heartbeats stop for this long (its process alive) is killed and"
            " restarted.",
        ),
    ] = 30.0,
    shared_size: Annotated[
        int,
        typer.Option(
            "--shared-size",
            min=1,
            max=100_000,
            help="Tenants the shared pool (the cell 'shared', started on first use) holds.",
        ),
    ] = 100,
    place_new: Annotated[
        str,
        typer.Option(
            "--place-new",
            metavar="cell|shared",
            help="Where new tenants go: cell (per --cell-size) or shared (the shared pool);"
            " `tenantflow tenants move T --to cell|shared` moves one later.",
        ),
    ] = "cell",
    log_level: LogOption = "info",
) -> None:
    """Run the global plane: tenant registry and map, provisioning, policies, quotas, health,
    and the supervisor that starts and restarts the cells."""
    with reporting_errors():
        level = _log_level(log_level)
        _server_extra()
        from tenantflow.api.server import run
        from tenantflow.placement.federated.plane import Plane, PlaneOptions
        from tenantflow.placement.federated.plane_api import build_plane_app

        refs = list(app_ or [r for r in os.environ.get("TENANTFLOW_APP", "").split(",") if r])
        state_dir = state_dir.resolve()
        if cell_store is not None and "{cell}" not in cell_store:
            raise ConfigurationError(
                "--cell-store must contain {cell} (each cell needs a store of its own)",
                field="cell_store",
                value=cell_store,
            )
        if place_new not in ("cell", "shared"):
            raise ConfigurationError(
                f"--place-new {place_new!r}: cell or shared", field="place_new", value=place_new
            )
        options = PlaneOptions(
            state_dir=state_dir,
            shared_size=shared_size,
            place_new=place_new,
            url=f"http://{host}:{port}",
            apps=tuple(refs),
            cell_size=cell_size,
            cell_slots=cell_slots,
            cell_host=host,
            heartbeat_s=heartbeat_s,
            drain_timeout_s=drain_timeout_s,
            cell_store=cell_store,
            hung_after_s=hung_after_s,
        )
        the_plane = Plane(options)

        async def started(p: Plane) -> None:
            secret = await p.admin_key()
            if secret is not None:
                _write_secret(state_dir / "admin.key", secret)
                typer.echo(
                    f"tenantflow plane: admin key written to {state_dir / 'admin.key'}", err=True
                )
            typer.echo(
                f"tenantflow plane: {options.url} ({len(p.registry.cells)} cells,"
                f" cell size {cell_size})",
                err=True,
            )

        api = build_plane_app(the_plane, started=started)
        if not run(api, host=host, port=port, log_level=level):
            raise typer.Exit(1)


@app.command("up")
def up(
    tenants: Annotated[int, typer.Option("--tenants", min=0, max=10_000)] = 3,
    directory: Annotated[Path, typer.Option("--dir", help="Where everything is kept.")] = Path(
        "tenantflow-federated"
    ),
    app_: AppOption = None,
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8090,
    cell_size: Annotated[int, typer.Option("--cell-size", min=1, max=10_000)] = 1,
    cell_slots: Annotated[int, typer.Option("--cell-slots", min=1)] = 16,
    detach: Annotated[
        bool, typer.Option("--detach", help="Start, print, and leave everything running.")
    ] = False,
) -> None:
    """Start a plane and N tenants (each in its cell, or pooled by --cell-size) as processes on
    this machine; their keys go to DIR/federation.json. Ctrl-C stops them all."""
    with reporting_errors():
        import httpx

        from tenantflow.client import Client

        directory = directory.resolve()
        refs = list(app_ or [r for r in os.environ.get("TENANTFLOW_APP", "").split(",") if r])
        command = [
            sys.executable,
            "-m",
            "tenantflow.cli.main",
            "plane",
            "--state-dir",
            str(directory),
            "--port",
            str(port),
            "--cell-size",
            str(cell_size),
            "--cell-slots",
            str(cell_slots),
            "--log-level",
            "warning",
        ]
        for ref in refs:
            command += ["--app", ref]
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "plane.log", "ab") as log:
            proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise StoreUnavailableError(
                    f"the plane exited (see {directory / 'plane.log'})", url=url
                )
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise StoreUnavailableError("the plane was not ready within 60 s", url=url)
            time.sleep(0.1)
        admin_key = (directory / "admin.key").read_text(encoding="utf-8").strip()
        started = time.monotonic()
        keys: dict[str, str] = {}
        with Client(url, admin_key, timeout=__import__("datetime").timedelta(seconds=120)) as c:
            existing = {t.id for t in c.list_tenants()}
            for i in range(1, tenants + 1):
                tenant = f"t{i}"
                if tenant not in existing:
                    c.create_tenant(tenant, tier="standard")
                keys[tenant] = _tenant_key(url, admin_key, tenant)
        took = time.monotonic() - started
        manifest: dict[str, Any] = {
            "plane": url,
            "plane_pid": proc.pid,
            "admin_key": admin_key,
            "tenants": keys,
        }
        _write_secret(directory / "federation.json", json.dumps(manifest, indent=2))
        typer.echo(f"plane    {url} (pid {proc.pid})")
        typer.echo(
            f"tenants  {tenants} provisioned in {took:.1f} s; keys in"
            f" {directory / 'federation.json'}"
        )
        typer.echo(f"try      tenantflow --url {url} --api-key <a tenant's key> runs list")
        if detach:
            return
        stop = {"now": False}

        def _stop(signum: int, frame: Any) -> None:
            stop["now"] = True

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        while not stop["now"] and proc.poll() is None:
            time.sleep(0.2)
        _shutdown(url, admin_key, proc)


def _tenant_key(url: str, admin_key: str, tenant: str) -> str:
    import httpx

    answer = httpx.post(
        f"{url}/v1/tenants/{tenant}/keys",
        json={"name": f"up-{secrets.token_hex(3)}"},
        headers={"Authorization": f"Bearer {admin_key}"},
        timeout=60,
    )
    if answer.status_code != 201:
        raise StoreUnavailableError(f"could not make a key for {tenant}: {answer.text}")
    secret: str = answer.json()["secret"]
    return secret


def _shutdown(url: str, admin_key: str, proc: subprocess.Popen[bytes]) -> None:
    """Stop the cells (SIGTERM each), then the plane."""
    import httpx

    pids: list[int] = []
    try:
        cells = httpx.get(
            f"{url}/plane/v1/cells", headers={"Authorization": f"Bearer {admin_key}"}, timeout=5
        ).json()["items"]
        pids = [int(c["pid"]) for c in cells if c.get("pid")]
    except (httpx.HTTPError, ValueError, KeyError):
        pass
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    typer.echo(f"stopped the plane and {len(pids)} cells", err=True)


@app.command("selftest")
def selftest(
    workdir: Annotated[
        Path | None, typer.Option("--workdir", help="Where the scenario keeps its files.")
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", metavar="PATH", help="Write the row as JSON.")
    ] = None,
) -> None:
    """The selftest against a federated deployment (plane and cells as processes): a cell
    SIGKILLed under load, the plane SIGKILLed under load, a global quota across cells, a policy
    change to every cell, isolation and audit. Exit 1 when a check fails."""
    with reporting_errors():
        from rich.console import Console

        from tenantflow.selftest.core import SHORT, Context, Scenario, run_scenario
        from tenantflow.selftest.federated import run_federated
        from tenantflow.selftest.table import Header, print_rows, write_json

        console = Console(stderr=True, soft_wrap=True)
        context = Context(
            SHORT,
            workdir=workdir,
            progress=lambda text: console.print(text, markup=False, highlight=False),
        )
        from datetime import UTC, datetime

        started = datetime.now(UTC)
        row = run_scenario(
            Scenario("federated", "the federated placement under faults", run_federated),
            context,
        )
        header = Header("short", 1, started)
        print_rows([row], header, Console(width=160))
        if json_path is not None:
            write_json([row], header, json_path)
    if row.status != "pass":
        raise typer.Exit(1)
