"""What every command shares: the ``--db``/``--url`` options, settings, the backend, errors.

A command that reads or changes tenant data opens a *backend* with :func:`connect` (a tenant's
data) or :func:`connect_admin` (the tenant registry): the store opened in this process (an
:class:`EngineBackend`, ``--db URL``), or a server called over HTTP (a
:class:`~tenantflow.client.Client`, ``--url URL --api-key KEY``). Both have the same methods and
return the same records, so each command has one code path and prints the same either way.
Which one is used: ``--url`` (or ``TENANTFLOW_URL``) names a server; ``--db`` given as a flag
wins over ``TENANTFLOW_URL``; both as flags is an error.

Any :class:`~tenantflow.errors.TenantflowError` is printed as one line on stderr with an exit
code (see :func:`reporting_errors`): 2 for bad input, configuration or credentials, 1 for
everything else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias, TypeVar

import typer

from tenantflow.domain.audit import AuditRecord, VerifyResult
from tenantflow.domain.ids import check_tenant
from tenantflow.domain.memory import DEFAULT_NAMESPACE, MemoryEntry, SearchHit
from tenantflow.domain.records import EventRecord, RunRecord, RunStatus, StepRecord
from tenantflow.domain.state import Change
from tenantflow.domain.tenancy import ReviewRecord, ReviewStatus
from tenantflow.domain.why import Reason
from tenantflow.errors import (
    AuthenticationError,
    ConfigurationError,
    ContractError,
    NotFoundError,
    PermissionDeniedError,
    SpecError,
    StoreError,
    TenantflowError,
)
from tenantflow.settings import Settings

if TYPE_CHECKING:
    from tenantflow.client import Client
    from tenantflow.engine.engine import Engine
    from tenantflow.engine.operator import Overview
    from tenantflow.engine.run_signals import EventReceipt, SignalReceipt
    from tenantflow.engine.workers import WorkerInfo
    from tenantflow.placement import ControlPlane, StateVersion, TenantInfo

__all__ = [
    "ACTOR",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "ApiKeyOption",
    "AppOption",
    "Backend",
    "CliState",
    "DbOption",
    "EngineBackend",
    "JsonOption",
    "TenantOption",
    "UrlOption",
    "connect",
    "connect_admin",
    "exit_code",
    "json_option",
    "observe",
    "read",
    "reporting_errors",
    "settings_for",
    "target_for",
]

T = TypeVar("T")

EXIT_FAILURE = 1
EXIT_USAGE = 2

ACTOR = "cli"
"""Who the audit log names for a change made from the command line on the store (a change made
through a server names the API key)."""

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="URL",
        help="Store URL (default: $TENANTFLOW_DATABASE_URL, else sqlite:///tenantflow.db).",
        show_default=False,
    ),
]
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        metavar="URL",
        help="Talk to this tenantflow server instead of opening the store (default: "
        "$TENANTFLOW_URL).",
        show_default=False,
    ),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        metavar="KEY",
        help="The API key for --url (default: $TENANTFLOW_API_KEY, which keeps it out of the "
        "process list).",
        show_default=False,
    ),
]
AppOption = Annotated[
    list[str] | None,
    typer.Option(
        "--app",
        metavar="MODULE:FUNCTION",
        help="A function(engine) that registers workflows, tools and models. Repeatable"
        " (default: $TENANTFLOW_APP, comma-separated).",
        show_default=False,
    ),
]
TenantOption = Annotated[
    str | None,
    typer.Option(
        "--tenant",
        "-t",
        metavar="TENANT",
        help="The tenant that owns the data (with --url: the API key's tenant).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]


@dataclass(frozen=True, slots=True)
class CliState:
    """Options given before the command (``tenantflow --db URL runs …``)."""

    db: str | None = None
    url: str | None = None
    api_key: str | None = field(default=None, repr=False)


def observe(engine: Engine, traces: str, registry: Any | None) -> None:
    """Attach what ``--traces`` asks for and, with a Prometheus ``registry``, the engine's
    metrics (``serve`` and ``worker``; see ``tenantflow.observability``).

    Raises:
        ConfigurationError: an unknown exporter, or the ``server`` extra is missing.
    """
    from tenantflow.observability.tracing import configure_tracing, install_tracing

    provider = configure_tracing(traces)
    if provider is not None:
        install_tracing(engine, provider)
    if registry is not None:
        from tenantflow.observability.metrics import install_metrics

        install_metrics(engine, registry)


def settings_for(ctx: typer.Context, db: str | None, app: Sequence[str] | None = None) -> Settings:
    """The settings for one command: its ``--db``, else the global ``--db``, else the environment.

    Args:
        ctx: the command's context (carries the global options).
        db: the command's own ``--db`` value.
        app: its ``--app`` values (``serve``, ``worker``), which win over ``$TENANTFLOW_APP``.

    Raises:
        ConfigurationError: a malformed URL or environment variable.
    """
    state = ctx.find_object(CliState)
    url = db if db is not None else (state.db if state is not None else None)
    return Settings.from_env(database_url=url, app=",".join(app) if app else None)


def target_for(
    ctx: typer.Context, db: str | None, url: str | None, api_key: str | None
) -> Settings:
    """The settings for a command that works on the store or a server: ``settings.url`` is
    the server to call, or None to open ``settings.database_url``.

    Each value is the command's own option, else the global one, else the environment; a
    ``--db`` flag wins over ``TENANTFLOW_URL``.

    Raises:
        ConfigurationError: ``--db`` and ``--url`` both given, a malformed value, or a server
            URL without an API key.
    """
    state = ctx.find_object(CliState) or CliState()
    db = db if db is not None else state.db
    url = url if url is not None else state.url
    api_key = api_key if api_key is not None else state.api_key
    if db is not None and url is not None:
        raise ConfigurationError(
            "give --db URL (open the store) or --url URL (call a server), not both", field="url"
        )
    settings = Settings.from_env(database_url=db, url=url, api_key=api_key)
    if db is not None:
        return dataclasses.replace(settings, url=None)
    if settings.url is not None and settings.api_key is None:
        raise ConfigurationError(
            f"the server at {settings.url} needs an API key: give --api-key KEY or set"
            f" {Settings.env_var('api_key')}",
            field="api_key",
        )
    return settings


def exit_code(error: TenantflowError) -> int:
    """The process exit code for ``error``: 2 for bad input, configuration or credentials,
    else 1."""
    usage = (
        ConfigurationError,
        ContractError,
        SpecError,
        AuthenticationError,
        PermissionDeniedError,
    )
    return EXIT_USAGE if isinstance(error, usage) else EXIT_FAILURE


@contextmanager
def reporting_errors() -> Iterator[None]:
    """Turn a :class:`TenantflowError` into ``error: <message>`` on stderr and an exit code."""
    try:
        yield
    except TenantflowError as exc:
        # Plain write, not rich: rich would wrap a long message over several lines at 80 columns
        # and read "[...]" in it as markup.
        message = " ".join(str(exc.message).split())
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
        raise typer.Exit(exit_code(exc)) from None


def json_option(text: str | None, path: Path | None, name: str) -> Any:
    """The JSON given as ``--NAME`` text or in the file ``--NAME-file`` (None: neither)."""
    if text is not None and path is not None:
        raise ConfigurationError(f"give --{name} or --{name}-file, not both", field=name)
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read --{name}-file {path}: {exc.strerror}", field=f"{name}_file"
            ) from None
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"--{name} is not JSON: {exc}", field=name) from None


def read(ctx: typer.Context, db: str | None, call: Callable[[ControlPlane], Awaitable[T]]) -> T:
    """Open the engine on the configured store, not executing runs, and run ``call`` on it.

    For commands that only work on the store (``keys``); the others use :func:`connect`.

    Args:
        ctx: the command's context.
        db: the command's own ``--db`` value.
        call: the async engine call, given the open engine.

    Returns:
        What ``call`` returned.

    Raises:
        typer.Exit: on any TenantflowError, after printing it (see :func:`reporting_errors`).
    """
    with reporting_errors():
        settings = settings_for(ctx, db)
        return asyncio.run(_read(settings.database_url, call))


async def _read(url: str, call: Callable[[ControlPlane], Awaitable[T]]) -> T:
    from tenantflow.placement.embedded import open_embedded

    engine = open_embedded(url, execute=False)
    async with engine:
        return await call(engine)


# -- backends -----------------------------------------------------------------------------------


class EngineBackend:
    """The engine opened in this process on the store, with the methods of
    :class:`~tenantflow.client.Client`: tenant methods act on the tenant given with
    ``--tenant``, and writes name :data:`ACTOR` in the audit log.

    Args:
        engine: the started engine.
        runner: the event loop the engine runs on; each call runs on it to completion.
        tenant: the tenant of the tenant methods (None for the registry commands).
    """

    def __init__(self, engine: ControlPlane, runner: asyncio.Runner, tenant: str | None) -> None:
        self._engine = engine
        self._runner = runner
        self._tenant = tenant

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(call)

    @property
    def tenant_id(self) -> str:
        """The tenant given with ``--tenant``."""
        if self._tenant is None:
            raise ConfigurationError("give the tenant: --tenant TENANT", field="tenant")
        return self._tenant

    def signal(
        self, run_id: str, name: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> SignalReceipt:
        """Send signal ``name`` into one of the tenant's runs (see ``Engine.signal``)."""
        return self._run(
            self._engine.signal(
                self._registered(), run_id, name, payload, idempotency_key=idempotency_key
            )
        )

    def publish(self, name: str, event_id: str, data: Any = None) -> EventReceipt:
        """Send event ``name`` for the tenant: a run of every workflow registered to it here
        (by :meth:`apply`) starts with ``data`` (see ``Engine.publish``)."""
        return self._run(self._engine.publish(self._registered(), name, event_id, data))

    def apply(self, setups: Sequence[Callable[[Any], Any]]) -> None:
        """Register an app's workflows, tools and models on the engine (``--app``)."""

        async def apply() -> None:  # on the engine's loop: registering may start parked runs
            for setup in setups:
                result = setup(self._engine)
                if inspect.isawaitable(result):
                    await result

        self._run(apply())

    def _registered(self) -> str:
        """The tenant, checked: a well-formed id of a registered tenant."""
        self._run(self._engine.tenants.get(check_tenant(self.tenant_id)))
        return self.tenant_id

    # schedules (durable ones are written to the store; the server's process fires them)

    def schedules(self) -> list[dict[str, Any]]:
        found = self._engine.schedules
        return [found.describe(s) for s in self._run(found.read(self._registered()))]

    def create_schedule(
        self, name: str, workflow: str, input: Any = None, **options: Any
    ) -> dict[str, Any]:
        from tenantflow.engine.schedules import Schedule

        every_s, at = options.pop("every_s", None), options.pop("at", None)
        schedule = Schedule(
            name=name,
            tenant=self._registered(),
            workflow=workflow,
            input=input,
            every=None if every_s is None else timedelta(seconds=every_s),
            at=None if at is None else at.timestamp(),
            **{k: v for k, v in options.items() if v is not None},
        )
        found = self._engine.schedules
        # Without --app no workflow is registered here: the serving process checks it.
        check = bool(self._engine.workflows())
        return found.describe(self._run(found.create(schedule, check=check)))

    def pause_schedule(self, name: str) -> dict[str, Any]:
        found = self._engine.schedules
        return found.describe(self._run(found.pause(self._registered(), name)))

    def resume_schedule(self, name: str) -> dict[str, Any]:
        found = self._engine.schedules
        return found.describe(self._run(found.resume(self._registered(), name)))

    def delete_schedule(self, name: str) -> None:
        self._run(self._engine.schedules.delete(self._registered(), name))

    # runs

    def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[RunRecord]:
        return self._run(
            self._engine.list_runs(
                self.tenant_id, status=status, workflow=workflow, limit=limit, before=before
            )
        )

    def get_run(self, run_id: str) -> RunRecord:
        return self._run(self._engine.get_run(self.tenant_id, run_id))

    def why(self, run_id: str) -> list[Reason]:
        return self._run(self._engine.why(self.tenant_id, run_id))

    def steps(self, run_id: str) -> list[StepRecord]:
        return self._run(self._engine.steps(self.tenant_id, run_id))

    def timeline(self, run_id: str) -> list[EventRecord]:
        return self._run(self._engine.timeline(self.tenant_id, run_id))

    def state(self, run_id: str, version: int | None = None) -> StateVersion:
        return self._run(self._engine.state(self.tenant_id, run_id, version))

    def diff(self, run_id: str, a: int, b: int) -> list[Change]:
        return self._run(self._engine.diff(self.tenant_id, run_id, a, b))

    # reviews

    def list_reviews(
        self,
        *,
        pool: str | None = None,
        statuses: Sequence[ReviewStatus] | None = None,
        limit: int = 100,
    ) -> list[ReviewRecord]:
        tenant, reviews = self._registered(), self._engine.reviews
        if statuses is None:
            return self._run(reviews.list(tenant, pool=pool, limit=limit))
        wanted = tuple(s.value for s in statuses)
        return self._run(reviews.list(tenant, pool=pool, status=wanted, limit=limit))

    def get_review(self, review_id: str) -> ReviewRecord:
        return self._run(self._engine.reviews.get(self._registered(), review_id))

    def claim_review(self, review_id: str, *, reviewer: str) -> ReviewRecord:
        return self._run(
            self._engine.reviews.claim(self._registered(), review_id, reviewer=reviewer)
        )

    def decide_review(
        self, review_id: str, *, reviewer: str, approve: bool, comment: str | None = None
    ) -> ReviewRecord:
        return self._run(
            self._engine.reviews.decide(
                self._registered(), review_id, reviewer=reviewer, approve=approve, comment=comment
            )
        )

    # usage, budget, audit

    def usage(self, *, since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
        return self._run(self._engine.usage(self.tenant_id, since=since, until=until))

    def budget(self) -> list[dict[str, Any]]:
        return self._run(self._engine.budget(self.tenant_id))

    def audit_log(self) -> list[AuditRecord]:
        rows: list[AuditRecord] = self._audit(self._engine.audit_log(self.tenant_id))
        self._known(len(rows))
        return rows

    def audit_verify(self) -> VerifyResult:
        result: VerifyResult = self._audit(self._engine.audit_verify(self.tenant_id))
        self._known(result.checked if result.ok else 1)
        return result

    def _audit(self, call: Coroutine[Any, Any, T]) -> T:
        """Run ``call``; a row the store cannot even parse (a tampered ``detail`` that is no
        longer JSON, a ``seq`` out of range) is an unreadable audit log, not a traceback."""
        try:
            return self._run(call)
        except ValueError as exc:  # json.JSONDecodeError, pydantic.ValidationError
            reason = " ".join(str(exc).split())
            raise StoreError(
                f"the audit log of tenant {self.tenant_id!r} holds a row that cannot be read"
                f" (tampered?): {reason}",
                tenant=self.tenant_id,
            ) from None

    def _known(self, rows: int) -> None:
        # No rows and no such tenant: most likely a typo, not an empty chain. (A deleted
        # tenant's kept audit log can still be read.)
        tenant = self.tenant_id
        if rows == 0 and self._engine.tenants.cached(tenant) is None:
            raise NotFoundError(
                f"tenant {tenant!r} not found and has no audit log", kind="tenant", id=tenant
            )

    # agent memory

    def memory_get(self, key: str, *, namespace: str = DEFAULT_NAMESPACE) -> MemoryEntry:
        return self._run(self._engine.memory.get(self.tenant_id, key, namespace=namespace))

    def memory_put(
        self, key: str, value: Any, *, namespace: str = DEFAULT_NAMESPACE
    ) -> MemoryEntry:
        return self._run(self._engine.memory.put(self.tenant_id, key, value, namespace=namespace))

    def memory_delete(self, key: str, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._run(self._engine.memory.delete(self.tenant_id, key, namespace=namespace))

    def memory_list(
        self,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        prefix: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[MemoryEntry]:
        return self._run(
            self._engine.memory.list(
                self.tenant_id, namespace=namespace, prefix=prefix, after=after, limit=limit
            )
        )

    def memory_add_document(
        self,
        text: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        id: str | None = None,
    ) -> str:
        return self._run(
            self._engine.memory.add_document(
                self.tenant_id, text, metadata=metadata, namespace=namespace, id=id
            )
        )

    def memory_delete_document(self, id: str, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._run(self._engine.memory.delete_document(self.tenant_id, id, namespace=namespace))

    def memory_search(
        self, query: str, *, namespace: str = DEFAULT_NAMESPACE, limit: int = 5
    ) -> list[SearchHit]:
        return self._run(
            self._engine.memory.search(self.tenant_id, query, namespace=namespace, limit=limit)
        )

    # tenants

    def list_tenants(self) -> list[TenantInfo]:
        return self._engine.tenants.list()

    def workers(self) -> list[WorkerInfo]:
        return self._run(self._engine.workers())

    def overview(self, *, stuck_after: timedelta, top: int) -> Overview:
        return self._run(self._engine.overview(stuck_after=stuck_after, top=top))

    def get_tenant(self, tenant_id: str) -> TenantInfo:
        return self._run(self._engine.tenants.get(check_tenant(tenant_id)))

    def create_tenant(
        self,
        tenant_id: str,
        *,
        tier: str,
        org_id: str | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> TenantInfo:
        return self._run(
            self._engine.tenants.create(
                tenant_id, tier=tier, org_id=org_id, actor=ACTOR, **dict(policy or {})
            )
        )

    def update_tenant(self, tenant_id: str, policy: Mapping[str, Any]) -> TenantInfo:
        return self._run(self._engine.tenants.update(tenant_id, actor=ACTOR, **dict(policy)))

    def delete_tenant(self, tenant_id: str, *, purge_audit: bool = False) -> dict[str, Any]:
        return self._run(
            self._engine.tenants.delete(tenant_id, actor=ACTOR, purge_audit=purge_audit)
        )


# A string: the HTTP client (httpx) is imported only by the commands that call a server.
Backend: TypeAlias = "Client | EngineBackend"
"""What a command talks to: the store opened in this process, or a server over HTTP."""


@contextmanager
def connect(
    ctx: typer.Context,
    db: str | None,
    url: str | None,
    api_key: str | None,
    *,
    tenant: str | None,
    write: bool = False,
) -> Iterator[Backend]:
    """A backend for one tenant's data, errors reported as one line (see
    :func:`reporting_errors`).

    On the store the tenant is ``--tenant`` (required). On a server it is the API key's
    tenant; ``--tenant``, when given, must name it.

    Args:
        ctx: the command's context (carries the global options).
        db: the command's ``--db``.
        url: the command's ``--url``.
        api_key: the command's ``--api-key``.
        tenant: the command's ``--tenant``.
        write: whether the command changes the store (it is then opened executing, the only
            mode with a writer; see ``tenantflow tenants``).

    Raises:
        typer.Exit: on any TenantflowError, after printing it.
    """
    with reporting_errors():
        settings = target_for(ctx, db, url, api_key)
        if settings.url is None and tenant is None:
            raise ConfigurationError(
                "give the tenant: --tenant TENANT (or call a server with --url and the"
                " tenant's --api-key)",
                field="tenant",
            )
        with _open(settings, tenant, write=write) as backend:
            if not isinstance(backend, EngineBackend):  # a server: the key names the tenant
                owner = backend.tenant().id
                if tenant is not None and tenant != owner:
                    raise ConfigurationError(
                        f"--tenant {tenant} does not match the API key, which belongs to tenant"
                        f" {owner}: drop --tenant or use {tenant}'s key",
                        field="tenant",
                        value=tenant,
                    )
            yield backend


@contextmanager
def connect_admin(
    ctx: typer.Context,
    db: str | None,
    url: str | None,
    api_key: str | None,
    *,
    write: bool = False,
) -> Iterator[Backend]:
    """A backend for the tenant registry (on a server: needs an admin key), errors reported
    as one line; the arguments are those of :func:`connect`."""
    with reporting_errors():
        settings = target_for(ctx, db, url, api_key)
        with _open(settings, None, write=write) as backend:
            yield backend


@contextmanager
def _open(settings: Settings, tenant: str | None, *, write: bool) -> Iterator[Backend]:
    if settings.url is not None:
        from tenantflow.client import Client

        assert settings.api_key is not None  # target_for insists
        with Client(settings.url, settings.api_key) as client:
            yield client
        return
    # One event loop for the whole command, so that the engine stays open between calls.
    with asyncio.Runner() as runner:
        engine = runner.run(_started(settings.database_url, write))
        try:
            yield EngineBackend(engine, runner, tenant)
        finally:
            runner.run(engine.close())


async def _started(url: str, write: bool) -> ControlPlane:
    from tenantflow.placement.embedded import open_embedded

    engine = open_embedded(url, execute=write)
    await engine.start()
    return engine
