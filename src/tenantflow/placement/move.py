"""Tenant graduation: move one tenant, live, from one placement's store to another's.

``await move_tenant(source, target, "bank-a")`` takes a tenant from the engine that drives it
(``source``: say the shared pool on PostgreSQL) to another engine (``target``: a dedicated cell
on its own SQLite file), and back the same way. In order:

1. **Check** (nothing written on a refusal): the tenant is known at the source and has no row
   in the target's store, the two are different stores, both engines are started, executing
   and not processes of a cluster, and the tenant's data lives in each one's default store.
2. **Fence**: new submissions at the source are refused with
   :class:`~tenantflow.errors.TenantMovedError` (``state="moving"``, ``retry_after_s``, and the
   ``location`` it is going to), so an API can answer a retry or a redirect.
3. **Quiesce**: the tenant's running-step cap at the source drops to 0, so no attempt starts;
   the attempts already running finish and commit there (up to ``drain_timeout``; any still
   running then are stopped, exactly as at a shutdown, and run again at the target — see
   :attr:`MoveReport.stopped`). Then the source stops driving the tenant's runs
   (:meth:`~tenantflow.engine.admission.AdmissionGate.release`): timers stop, queues forget them.
4. **Copy**: every row of the tenant is exported from the source store in one transaction (after
   a ``tenant.moving`` audit row), imported into the target store in one transaction (read back
   and compared, a ``run.moved`` event on each unfinished run, a ``tenant.moved`` audit row that
   continues the copied chain), and purged from the source in one transaction that commits only
   if what it deletes is exactly what was copied and nothing is left (see
   :mod:`~tenantflow.adapters.tenant_transfer`). Runs move with their steps, state versions,
   events, reviews, recorded calls, budget holds and ledgers, rate buckets, usage and memory;
   the tenant with its policy versions, API keys and audit chain.
5. **Resume** at the target: it loads the tenant and its unfinished runs (as a worker taking a
   tenant over does) and re-arms review timers; the source keeps a redirect marker in memory:
   submissions there are refused with ``TenantMovedError(state="moved", location=…)``.

If anything fails before the purge commits, the move is undone: rows imported into the target
are removed, the source lifts the fence, takes its runs back and appends a
``tenant.move_aborted`` audit row. Nothing is lost either way: the tenant's rows are in exactly
one store once a move returns or raises (barring a target that fails while its import is being
undone; its rows then block a retry until removed, see :func:`~tenantflow.adapters.
tenant_transfer.remove_tenant`).

No run completes twice: a step completes where its attempt committed, the copy carries that
commit, and an attempt that did not commit before the source let the run go is run again at
the target (step code stays at-least-once, as after a crash; completions are exactly once).

**Engines in other processes** (cells and a pool under a plane): the same move in four calls,
each where its part lives — :func:`release_tenant` in the source's process (fence, quiesce,
stop driving), :func:`copy_tenant` in any process that opens both stores (a SQLite file an
engine executes from opens beside it with ``execute=False``), then :func:`finish_release` at
the source and :func:`adopt_tenant` at the target; or :func:`cancel_release` at the source if
the copy raised (it undid its import itself).

:func:`move_stored_tenant` is the same copy between two store URLs with no engine in this
process (``tenantflow tenants move TENANT --from URL --to URL``): for a tenant at rest. It
refuses while any of the tenant's attempts holds a live lease, and its purge refuses if an
engine elsewhere changed the tenant meanwhile (the import is then undone).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from tenantflow.adapters.tenant_transfer import (
    TenantExport,
    export_tenant,
    import_tenant,
    live_attempts,
    purge_tenant,
    remove_tenant,
)
from tenantflow.domain.ids import DEFAULT_STORE, check_tenant
from tenantflow.domain.records import Transition
from tenantflow.domain.tenancy import AuditEntry
from tenantflow.errors import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    StoreUnavailableError,
    TenantflowError,
    TenantMovedError,
)
from tenantflow.ports import Store

if TYPE_CHECKING:
    from tenantflow.engine.engine import Engine

__all__ = [
    "Copied",
    "MoveReport",
    "Released",
    "adopt_tenant",
    "cancel_release",
    "copy_tenant",
    "finish_release",
    "move_stored_tenant",
    "move_tenant",
    "moved_to",
    "release_tenant",
]

_POLL_S = 0.005


@dataclass(frozen=True, slots=True)
class MoveReport:
    """What a move did.

    Attributes:
        tenant: the tenant moved.
        source: the URL of the store it left (passwords redacted).
        target: the URL of the store it is in now.
        location: where the source now sends the tenant's callers (``TenantMovedError``).
        runs: the tenant's runs moved (all of them, finished ones included).
        in_flight: of those, the unfinished ones (moved with their state, resumed at the target).
        drained: every attempt running when the fence went up finished at the source.
        stopped: attempts still running at ``drain_timeout``, stopped at the source without
            committing; they run again at the target (0 when ``drained``).
        rows: rows copied, per table.
        left: the tenant's rows left in the source store, per table (all zero: the proof).
        fingerprint: the SHA-256 of every copied row (the same in both stores).
        audit_seq: the sequence number of the ``tenant.moved`` row in the target's audit chain.
        fenced_s: how long submissions were refused at the source before the tenant resumed
            at the target (the source engine's clock).
        api_keys: the ids of the tenant's API keys, which moved with it (never a secret): the
            source no longer authenticates them, so a router that redirects by key needs them.
    """

    tenant: str
    source: str
    target: str
    location: str
    runs: int
    in_flight: int
    drained: bool
    stopped: int
    rows: dict[str, int] = field(default_factory=dict)
    left: dict[str, int] = field(default_factory=dict)
    fingerprint: str = ""
    audit_seq: int = 0
    fenced_s: float = 0.0
    api_keys: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def moved_to(engine: Engine, tenant: str) -> TenantMovedError | None:
    """The redirect marker of ``tenant`` at ``engine``: the error its submissions get there
    (moving or moved away), or None while it is served there."""
    fence = engine.submitter.fences.get(tenant)
    return fence if isinstance(fence, TenantMovedError) else None


async def move_tenant(
    source: Engine,
    target: Engine,
    tenant: str,
    *,
    location: str | None = None,
    actor: str = "library",
    drain_timeout: timedelta = timedelta(seconds=30),
) -> MoveReport:
    """Move ``tenant``, live, from the engine ``source`` drives it in to ``target`` (see the
    module docstring for the steps; it composes :func:`release_tenant`, :func:`copy_tenant`,
    :func:`finish_release` and :func:`adopt_tenant`, which a placement whose engines are in
    other processes calls one by one).

    Args:
        source: the started, executing engine that holds and drives the tenant.
        target: the started, executing engine to hold and drive it from now on.
        tenant: the tenant (from the caller: an admin's request, never a request body).
        location: where callers are sent afterwards (a cell's name, an API URL); the target
            store's URL when None.
        actor: who moves it (on the audit rows).
        drain_timeout: how long running attempts may take to finish at the source before they
            are stopped (and run again at the target).

    Returns:
        What was moved, with the proof that nothing is left at the source.

    Raises:
        ConfigurationError: a bad tenant id, the same store twice, an engine not started or
            not executing, an engine of a cluster, or a tenant whose data is in a region store.
        NotFoundError: the source does not hold the tenant.
        ConflictError: the tenant is already at the target (or a move of it is under way), or
            its rows changed at the source during the copy (the move was undone).
        ResidencyError: the target has no store for the tenant's region.
    """
    tenant = check_tenant(tenant)
    _check_engines(source, target)
    _check_engine(source, "source")
    _check_engine(target, "target")
    info = await source.tenants.get(tenant)
    if target.router.store_key_for(info.policy.region) != DEFAULT_STORE:
        raise ConfigurationError(
            f"the target keeps region {info.policy.region!r} in a region store; only tenants"
            " of the default store move",
            tenant=tenant,
        )
    await _refuse_present(target.store, tenant, target.tenants.cached(tenant) is not None)
    where = location or target.store.url
    released = await release_tenant(source, tenant, location=where, drain_timeout=drain_timeout)
    try:
        copied = await copy_tenant(
            released.store,
            target.store,
            tenant,
            actor=actor,
            location=where,
            source_now=source.clock.now(),
            target_now=target.clock.now(),
        )
    except BaseException as exc:
        await cancel_release(source, tenant, actor=actor, reason=exc)
        raise
    await finish_release(source, tenant)
    await adopt_tenant(target, tenant)
    return copied.report(released, fenced_s=max(0.0, source.clock.now() - released.fenced_at))


@dataclass(frozen=True, slots=True)
class Released:
    """A tenant an engine has stopped driving for a move (:func:`release_tenant`): fenced,
    quiet, its rows at rest in ``store``."""

    tenant: str
    location: str
    store: Store
    drained: bool
    stopped: int
    fenced_at: float


async def release_tenant(
    engine: Engine,
    tenant: str,
    *,
    location: str,
    drain_timeout: timedelta = timedelta(seconds=30),
) -> Released:
    """The source's half, before the copy: fence ``tenant``'s submissions at ``engine``
    (``TenantMovedError(state="moving")``), let its running attempts finish (none starts; those
    still running after ``drain_timeout`` are stopped) and stop driving its runs. Its rows are
    then at rest in :attr:`Released.store`, for :func:`copy_tenant`. Follow with
    :func:`finish_release` once the copy committed, or :func:`cancel_release` if it did not.

    Raises:
        ConfigurationError: a bad tenant id, an engine not started, not executing or of a
            cluster, or a tenant whose data is in a region store.
        NotFoundError: the engine does not hold the tenant.
        ConflictError: a move of the tenant is under way already.
    """
    tenant = check_tenant(tenant)
    _check_engine(engine, "source")
    fence = moved_to(engine, tenant)
    if fence is not None and fence.fields.get("state") == "moving":
        raise ConflictError(f"tenant {tenant!r} is being moved already", tenant=tenant)
    info = await engine.tenants.get(tenant)
    if info.store != DEFAULT_STORE:
        raise ConfigurationError(
            f"tenant {tenant!r} keeps its data in the region store {info.store!r}; only"
            " tenants of the default store move",
            tenant=tenant,
        )
    fenced_at = engine.clock.now()
    engine.submitter.fences[tenant] = TenantMovedError(
        f"tenant {tenant!r} is moving to {location}; retry in a moment",
        tenant=tenant,
        location=location,
        state="moving",
        retry_after_s=1.0,
    )
    try:
        drained, stopped = await _quiesce(engine, tenant, drain_timeout)
    except BaseException as exc:
        await cancel_release(engine, tenant, actor="engine", reason=exc)
        raise
    store = engine.router.stores[info.store]
    return Released(tenant, location, store, drained, stopped, fenced_at)


async def finish_release(engine: Engine, tenant: str) -> None:
    """The source's half, after the copy committed: ``engine`` forgets ``tenant`` and keeps
    the redirect marker (``TenantMovedError(state="moved", location=…)``)."""
    fence = moved_to(engine, tenant)
    where = fence.location if fence is not None else None
    engine.submitter.fences[tenant] = TenantMovedError(
        f"tenant {tenant!r} has moved to {where}", tenant=tenant, location=where, state="moved"
    )
    await engine.tenants.refresh(tenant)  # gone from the engine's stores: forgotten


async def cancel_release(
    engine: Engine, tenant: str, *, actor: str = "library", reason: BaseException | str = ""
) -> None:
    """The source's half of a move that did not finish (the copy failed and was undone):
    ``engine`` lifts the fence and its caps, takes the tenant's runs back and appends
    ``tenant.move_aborted`` (with the reason) to its audit chain."""
    fence = engine.submitter.fences.pop(tenant, None)
    where = fence.fields.get("location") if fence is not None else None
    info = engine.tenants.cached(tenant)
    if info is not None:
        engine.configure_tenant(info)  # the tenant's own caps again
    with contextlib.suppress(TenantflowError):
        await engine.clustering.adopt_tenant(tenant)
        why = reason.message if isinstance(reason, TenantflowError) else reason
        if isinstance(why, BaseException):
            why = type(why).__name__
        entry = AuditEntry(
            actor, "tenant.move_aborted", f"tenant:{tenant}", {"to": where, "reason": why}
        )
        runtime = engine.runtime_for_tenant(tenant)
        await runtime.writer.write(Transition(tenant, "", engine.clock.now(), audit=[entry]))


async def adopt_tenant(engine: Engine, tenant: str) -> None:
    """The target's half, after the copy committed into ``engine``'s store: ``engine`` loads
    ``tenant`` (policy, caps), its unfinished runs and its open reviews, and takes its
    submissions (a redirect marker left by an earlier move away is lifted)."""
    tenant = check_tenant(tenant)
    _check_engine(engine, "target")
    if await engine.tenants.refresh(tenant) is None:
        raise NotFoundError(
            f"tenant {tenant!r} is not in this engine's stores", kind="tenant", id=tenant
        )
    engine.submitter.fences.pop(tenant, None)
    await engine.clustering.adopt_tenant(tenant)


@dataclass(frozen=True, slots=True)
class Copied:
    """What :func:`copy_tenant` did."""

    export: TenantExport
    source: str
    target: str
    location: str
    rows: dict[str, int]
    left: dict[str, int]

    def report(self, released: Released | None = None, *, fenced_s: float = 0.0) -> MoveReport:
        head = self.export.audit_head()
        return MoveReport(
            tenant=self.export.tenant_id,
            source=self.source,
            target=self.target,
            location=self.location,
            runs=len(self.export.rows.get("runs", [])),
            in_flight=len(self.export.unfinished_runs()),
            drained=released.drained if released is not None else True,
            stopped=released.stopped if released is not None else 0,
            rows=self.rows,
            left=self.left,
            fingerprint=self.export.fingerprint,
            audit_seq=(head[0] if head else 0) + 1,
            fenced_s=fenced_s,
            api_keys=self.export.api_key_ids(),
        )


async def move_stored_tenant(
    source_url: str,
    target_url: str,
    tenant: str,
    *,
    location: str | None = None,
    actor: str = "cli",
) -> MoveReport:
    """Move ``tenant`` at rest from the store at ``source_url`` to the store at ``target_url``
    (created and migrated when new), with no engine in this process.

    Raises:
        ConfigurationError: a bad tenant id or URL, the same URL twice, or ``memory://``.
        StoreUnavailableError: a store cannot be opened (a SQLite file another engine is
            executing from is refused: move a served tenant through its engine).
        NotFoundError: the source store has no such tenant.
        ConflictError: the target store already holds the tenant, an attempt of it holds a live
            lease at the source, or the tenant changed at the source during the copy (the
            import is undone).
    """
    from tenantflow.adapters import open_store, system_clock  # composition

    tenant = check_tenant(tenant)
    if source_url == target_url:
        raise ConfigurationError(
            "the source and the target are the same store: nothing to move", field="to"
        )
    for url in (source_url, target_url):
        if url.startswith("memory:"):
            raise ConfigurationError(
                "memory:// stores live in one process: a move needs a SQLite or PostgreSQL URL",
                field="url",
            )
    source, target = open_store(source_url), open_store(target_url)
    await source.open(execute=False)  # an existing store only: refuses a missing SQLite file
    await source.close()
    await source.open(execute=True)  # SQLite: the file's lock, refused while served
    try:
        clock = system_clock()
        await source.get_tenant(tenant)
        if (live := await live_attempts(source, tenant, clock.now())) > 0:
            raise ConflictError(
                f"{live} attempt(s) of tenant {tenant!r} are running at the source: move it"
                " through the engine that drives it, or stop that engine first",
                tenant=tenant,
                running=live,
            )
        await _refuse_present_at(target_url, tenant)  # before a new target is created
        await target.open(execute=True)
        try:
            copied = await copy_tenant(
                source,
                target,
                tenant,
                actor=actor,
                location=location or target.url,
                source_now=clock.now(),
                target_now=clock.now(),
            )
        finally:
            await target.close()
    finally:
        await source.close()
    return copied.report()


# -- the steps --------------------------------------------------------------------------------


def _check_engines(source: Engine, target: Engine) -> None:
    same_url = source.store.url == target.store.url and not source.store.url.startswith("memory:")
    if source is target or source.store is target.store or same_url:
        raise ConfigurationError(
            "the source and the target are the same store: nothing to move", field="target"
        )


def _check_engine(engine: Engine, role: str) -> None:
    if not (engine.execute and engine.gate.started):
        raise ConfigurationError(
            f"the {role} engine must be started and executing runs to move a tenant live",
            field=role,
        )
    if engine.cluster is not None:
        raise ConfigurationError(
            f"the {role} engine is a {engine.cluster} of a cluster: move a tenant between"
            " engines that drive it alone (or at rest: tenantflow tenants move --from --to)",
            field=role,
        )


async def _refuse_present(store: Store, tenant: str, known: bool) -> None:
    """ConflictError if ``store`` holds the tenant already."""
    if not known:
        try:
            await store.get_tenant(tenant)
        except NotFoundError:
            return
    raise ConflictError(
        f"tenant {tenant!r} is already at the target ({store.url})", tenant=tenant, target=store.url
    )


async def _refuse_present_at(url: str, tenant: str) -> None:
    """ConflictError if the existing store at ``url`` holds the tenant (a store that does not
    exist yet, or is not migrated, holds nothing: it is not created here)."""
    from tenantflow.adapters import open_store  # composition

    store = open_store(url)
    try:
        await store.open(execute=False)
    except StoreUnavailableError:
        return
    try:
        await _refuse_present(store, tenant, False)
    finally:
        await store.close()


def _attempts(engine: Engine, tenant: str) -> int:
    """The tenant's attempts alive in ``engine``: holding a slot, executing, or committing."""
    alive: set[tuple[str, str]] = set()
    for runtime in engine.runtimes.values():
        for run in runtime.active.values():
            if run.tenant_id == tenant:
                alive.update((run.id, key) for key in run.tasks.keys() | run.executing.keys())
    return max(len(alive), engine.dispatcher.running_by.get(tenant, 0))


async def _quiesce(engine: Engine, tenant: str, drain_timeout: timedelta) -> tuple[bool, int]:
    """Let the tenant's running attempts finish (none starts), then stop driving its runs;
    whether all finished, and how many were stopped instead."""
    deadline = engine.clock.now() + drain_timeout.total_seconds()
    info = engine.tenants.cached(tenant)
    weight = info.policy.weight if info is not None else 1.0
    while True:
        # Re-applied each time round: a policy change meanwhile would lift it.
        engine.dispatcher.configure(tenant, weight=weight, running_cap=0)
        live = _attempts(engine, tenant)
        if live == 0 or engine.clock.now() >= deadline:
            break
        await asyncio.sleep(_POLL_S)
    runtime = engine.runtime_for_tenant(tenant)
    await runtime.writer.flush()
    await engine.gate.release(tenant, engine.owner)
    await runtime.writer.flush()
    return live == 0, live


async def copy_tenant(
    source: Store,
    target: Store,
    tenant: str,
    *,
    actor: str,
    location: str,
    source_now: float,
    target_now: float,
) -> Copied:
    """Export ``tenant`` from ``source``, import it into ``target``, purge it from ``source``
    (three transactions, see :mod:`~tenantflow.adapters.tenant_transfer`); the import is undone
    if the purge does not commit. Any process with both stores open may run it (a SQLite store
    an engine executes from can be opened with ``execute=False`` beside it).

    Raises:
        NotFoundError: ``source`` has no such tenant.
        ConflictError: ``target`` holds rows of the tenant, or the tenant changed at ``source``
            after the export (the import is undone; nothing is deleted at the source).
    """
    route = {"from": source.url, "to": location}
    subject = f"tenant:{tenant}"
    departure = AuditEntry(actor, "tenant.moving", subject, dict(route))
    export = await export_tenant(source, tenant, now=source_now, departure=departure)
    arrival = AuditEntry(
        actor,
        "tenant.moved",
        subject,
        {
            **route,
            "target": target.url,
            "runs_in_flight": len(export.unfinished_runs()),
            "rows": export.counts(),
            "fingerprint": export.fingerprint,
        },
    )
    copied = await import_tenant(target, export, now=target_now, arrival=arrival, moved=route)
    try:
        purged = await purge_tenant(source, tenant, expect=export.fingerprint)
    except BaseException:
        with contextlib.suppress(TenantflowError):
            await remove_tenant(target, tenant)
        raise
    return Copied(export, source.url, target.url, location, copied, purged["left"])
