"""A worker's membership in a cluster of workers sharing one database.

``EngineConfig(cluster="worker")`` (what ``tenantflow worker`` runs) drives only the tenants it
owns (:mod:`tenantflow.domain.cluster`: one owner per tenant, spread in equal shares over the
live workers by rendezvous hashing with bounded loads, held as a lease). Each beat — a third
of the lease — a worker:

1. records its heartbeat and reads the live workers;
2. works out which tenants it should own, hands over those it should not (stops their attempts,
   returns their step leases at once, releases the tenant lease) and takes or renews the leases
   of the others; a tenant it finds taken (it stalled past its lease) it drops without writing;
3. takes over each new tenant: loads its unfinished runs, re-admits them, re-arms review timers;
4. runs the commands other processes posted for its tenants (cancel a run, decide a review).

Between beats it reacts to wake-ups (``LISTEN``): a new run of an owned tenant is loaded and
admitted at once, a posted command is run at once, a tenant changed by another process is
re-read. Every so often it also sweeps the tables for what a lost wake-up would have told it.

``EngineConfig(cluster="front")`` (what ``tenantflow serve --workers external`` runs) executes
nothing: a submission is written ``queued`` and announced; cancel and review decisions become
commands that the owning worker runs, waited for up to ``command_timeout``.

:class:`ClusterDriver` is what the engine does for the cluster (adopt and release tenants,
post and run commands); :class:`Membership` decides when. :mod:`tenantflow.placement.centralized`
composes the front and the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Literal, Protocol

from tenantflow.domain.cluster import Command, Notice, assign
from tenantflow.domain.records import RecoverOrphans
from tenantflow.domain.tenancy import ReviewRecord
from tenantflow.engine.admission import AdmissionGate
from tenantflow.engine.execution.driver import RunDriver as Runtime
from tenantflow.engine.tenants import Tenants
from tenantflow.errors import (
    ConfigurationError,
    ConflictError,
    StoreUnavailableError,
    TenantflowError,
)
from tenantflow.ports import Clock, Coordinator, Store

__all__ = ["ClusterDriver", "Membership", "Ownership", "error_from_dict"]

log = logging.getLogger("tenantflow.cluster")


def error_from_dict(data: dict[str, Any]) -> TenantflowError:
    """A :class:`TenantflowError` of the right class from its ``to_dict()`` (a command's error)."""
    code = str(data.get("code", ""))
    fields = {k: v for k, v in data.items() if k not in ("code", "message")}
    pending: list[type[TenantflowError]] = [TenantflowError]
    while pending:
        cls = pending.pop()
        if cls.code == code:
            return cls(str(data.get("message", "")), **fields)
        pending.extend(cls.__subclasses__())
    return TenantflowError(str(data.get("message", code)), **fields)


class Ownership:
    """Which tenants this process drives: every tenant (embedded), the tenants it owns (a
    worker), or none (a front).

    Args:
        role: None (embedded), ``"worker"`` or ``"front"``.
    """

    def __init__(self, role: Literal["worker", "front"] | None) -> None:
        self.role = role
        self.owned: set[str] = set()

    def drives(self, tenant: str) -> bool:
        """Whether this process drives ``tenant``'s runs (always, unless in a cluster)."""
        if self.role is None:
            return True
        return self.role == "worker" and tenant in self.owned


class _Reviews(Protocol):
    async def get(self, tenant: str, review_id: str) -> ReviewRecord: ...

    async def decide(
        self,
        tenant: str,
        review_id: str,
        *,
        reviewer: str,
        approve: bool,
        comment: str | None = None,
        fail_step: bool = False,
    ) -> Any: ...


class ClusterDriver:
    """What an engine does as one process of a cluster: take tenants over and hand them back,
    post commands for the worker that drives a tenant, and run the commands posted for its own.

    Args:
        ownership: which tenants this process drives.
        gate: admission and the runs held here.
        tenants: the tenant registry.
        runtime: the default store's runtime (for background tasks).
        clock: the engine's clock.
        owner: this process's id (on its claims, leases and heartbeat).
        coordinator: the database's coordination, or None outside a cluster.
        slots: this process's step slots (told to the other workers).
        command_timeout_s: how long :meth:`command` waits for the worker's result.
        reviews: the review service (to decide a review on command).
        cancel: cancels a run (``tenant, run_id, reason``) on command.
        review_opened: re-arms an open review's SLA timer when a tenant is taken over.
    """

    def __init__(
        self,
        ownership: Ownership,
        gate: AdmissionGate,
        tenants: Tenants,
        runtime: Runtime,
        clock: Clock,
        owner: str,
        coordinator: Coordinator | None,
        *,
        slots: int,
        command_timeout_s: float,
        reviews: _Reviews,
        cancel: Callable[[str, str, str], Awaitable[Any]],
        review_opened: Callable[[ReviewRecord], None],
    ) -> None:
        self.ownership = ownership
        self.gate = gate
        self.tenants = tenants
        self.runtime = runtime
        self.clock = clock
        self.owner = owner
        self.coordinator = coordinator
        self.slots = slots
        self.command_timeout_s = command_timeout_s
        self._reviews = reviews
        self._cancel = cancel
        self._review_opened = review_opened

    def drives(self, tenant: str) -> bool:
        """Whether this process drives ``tenant``'s runs."""
        return self.ownership.drives(tenant)

    def holds_run(self, tenant: str, run_id: str) -> bool:
        """Whether the run is in this process's memory."""
        return self.gate.holds_run(tenant, run_id)

    async def load_runs(self, tenant: str, run_ids: Collection[str]) -> None:
        """Take over those of ``run_ids`` that are unfinished runs of an owned tenant."""
        await self.gate.load_runs(tenant, run_ids)

    async def adopt_tenant(self, tenant: str) -> None:
        """This worker now owns ``tenant``: load its unfinished runs, re-arm its review timers."""
        runtime = self.gate.runtime_for_tenant(tenant)
        for record, steps in await runtime.store.active_runs(tenant):
            if not self.gate.holds_run(tenant, record.id):
                self.gate.take_over(runtime, record, steps)
        pending = await runtime.store.list_reviews(
            tenant, statuses=["pending", "claimed"], limit=100_000
        )
        for review in pending:
            self._review_opened(review)

    async def release_tenant(self, tenant: str) -> None:
        """Stop driving ``tenant``'s runs here: their attempts and timers stop (as at shutdown)
        and their step leases are handed back at once for the next owner."""
        await self.gate.release(tenant, self.owner)

    async def hand_back(self, stores: Collection[Store]) -> None:
        """At shutdown: hand this process's attempts and tenants back now, rather than when
        their leases lapse."""
        for st in stores:
            with contextlib.suppress(TenantflowError):  # down: the leases lapse instead
                await st.apply([RecoverOrphans(self.clock.now(), owners=(self.owner,))])

    async def command(
        self, tenant: str, kind: str, target: str, payload: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Pass a run command to the worker that drives the tenant and wait for its result
        (None if none came within ``command_timeout``: it stays queued).

        Raises:
            TenantflowError: the error the command ended with on the worker.
        """
        if self.coordinator is None:
            raise ConfigurationError("run commands are for engines in a cluster")
        posted = await self.coordinator.post(tenant, kind, target, payload, self.clock.now())
        deadline = self.clock.now() + self.command_timeout_s
        delay = 0.005
        while self.clock.now() < deadline:
            result = await self.coordinator.result(tenant, posted)
            if result is not None:
                if "error" in result:
                    raise error_from_dict(result["error"])
                return result
            await self.clock.sleep(delay)  # the engine's time: a FakeClock moves it in tests
            delay = min(0.1, delay * 2)
        return None

    async def apply_command(self, command: Command) -> None:
        """Run a command another process posted for a tenant this worker drives."""
        tenant, payload = command.tenant_id, command.payload
        if not self.drives(tenant):
            raise ConflictError(f"tenant {tenant!r} is not driven here", tenant=tenant)
        if command.kind == "cancel":
            await self.gate.load_run(tenant, command.target)
            await self._cancel(tenant, command.target, str(payload.get("reason") or "cancelled"))
        elif command.kind == "decide":
            review = await self._reviews.get(tenant, command.target)
            await self.gate.load_run(tenant, review.run_id)
            await self._reviews.decide(
                tenant,
                command.target,
                reviewer=str(payload.get("reviewer", "")),
                approve=bool(payload.get("approve")),
                comment=payload.get("comment"),
                fail_step=bool(payload.get("fail_step", False)),
            )
        else:
            raise ConfigurationError(f"unknown command {command.kind!r}", kind=command.kind)


class Membership:
    """The worker side of a cluster: heartbeat, tenant leases, wake-ups, sweeps, commands.

    Args:
        driver: what the worker's engine does for the cluster (``cluster="worker"``).
        coordinator: the database's coordination (see :class:`~tenantflow.ports.Coordinator`).
        lease_s: how long a tenant lease (and a worker's liveness) lasts without a beat.
        sweep_s: how often to sweep the tables for runs and commands a lost wake-up hid.
    """

    def __init__(
        self,
        driver: ClusterDriver,
        coordinator: Coordinator,
        *,
        lease_s: float,
        sweep_s: float = 5.0,
    ) -> None:
        self.driver = driver
        self.coordinator = coordinator
        self.id = driver.owner
        self.lease_s = lease_s
        self.beat_s = max(0.05, lease_s / 3.0)
        self.sweep_s = sweep_s
        self.workers: list[str] = []
        self.beats = 0
        self._commands = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_sweep = float("-inf")
        self._held_until = float("-inf")
        self._to_load: dict[str, set[str]] = {}
        self._loader: asyncio.Task[None] | None = None
        self._tick_lock = asyncio.Lock()

    @property
    def owned(self) -> set[str]:
        """The tenants this worker owns (and drives)."""
        return self.driver.ownership.owned

    @owned.setter
    def owned(self, tenants: set[str]) -> None:
        self.driver.ownership.owned = tenants

    async def start(self) -> None:
        """Join: beat once (taking this worker's tenants), then keep beating and listening."""
        await self.tick()
        self._tasks = [
            asyncio.create_task(self._beat_loop(), name="tenantflow-beat"),
            asyncio.create_task(self._listen_loop(), name="tenantflow-listen"),
            asyncio.create_task(self._command_loop(), name="tenantflow-commands"),
        ]

    async def close(self) -> None:
        """Stop beating and listening (the engine then hands its tenants back: see leave)."""
        if self._loader is not None:
            self._tasks.append(self._loader)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def leave(self) -> None:
        """Give every tenant lease back at once, so that the others take over without waiting
        for the leases to lapse."""
        self.owned.clear()
        try:
            await self.coordinator.release(self.id)
        except TenantflowError as exc:
            log.warning("could not release tenant leases (they will lapse): %s", exc)

    # -- the beat ---------------------------------------------------------------------------

    async def _beat_loop(self) -> None:
        while True:
            await self.driver.clock.sleep(self.beat_s)
            try:
                await self.tick()
            except Exception as exc:  # the database is down, say: keep trying
                log.warning(
                    "cluster beat failed: %s", exc, exc_info=not isinstance(exc, TenantflowError)
                )
                if self.owned and self.driver.clock.now() > self._held_until:
                    await self._stop_driving()

    async def _stop_driving(self) -> None:
        """Our tenant leases have lapsed without a renewal: others may own them now."""
        tenants, self.owned = sorted(self.owned), set()
        log.warning("tenant leases lapsed; stopped driving %d tenants", len(tenants))
        for tenant in tenants:
            with contextlib.suppress(Exception):
                await self.driver.release_tenant(tenant)

    async def tick(self) -> None:
        """One beat (see the module docstring)."""
        async with self._tick_lock:
            await self._tick()

    async def _tick(self) -> None:
        driver, c = self.driver, self.coordinator
        now = driver.clock.now()
        self.beats += 1
        if self.beats % 20 == 0:
            await driver.tenants.load()  # tenants created or changed while a wake-up was lost
        info = {"slots": driver.slots}
        self.workers = await c.beat(self.id, now, self.lease_s, info)
        tenants = sorted(info.id for info in driver.tenants.list())
        desired = assign(tenants, self.workers, self.id)
        handed = sorted(self.owned.difference(desired))
        self.owned.difference_update(handed)  # first: nothing new of theirs is loaded here
        for tenant in handed:
            await driver.release_tenant(tenant)
        if handed:
            await c.release(self.id, handed)
            log.info("handed %d tenants to other workers: %s", len(handed), ", ".join(handed))
        now = driver.clock.now()
        held = await c.hold(self.id, desired, now, now + self.lease_s)
        self._held_until = now + self.lease_s
        lost = self.owned.difference(held)
        new = [t for t in held if t not in self.owned]
        self.owned = set(held)
        for tenant in lost:  # taken while we stalled
            log.warning("lost the lease on tenant %s; dropping its runs", tenant)
            await driver.release_tenant(tenant)
        for tenant in new:
            await driver.adopt_tenant(tenant)
        if new:
            log.info("now driving %d more tenants: %s", len(new), ", ".join(new))
            self._commands.set()
        if driver.clock.now() - self._last_sweep >= self.sweep_s:
            await self.sweep()

    async def sweep(self) -> None:
        """Load the owned tenants' unfinished runs that are not in memory; run pending commands."""
        self._last_sweep = self.driver.clock.now()
        missing: dict[str, list[str]] = {}
        for tenant, run_id in await self.coordinator.active_runs():
            if tenant in self.owned and not self.driver.holds_run(tenant, run_id):
                missing.setdefault(tenant, []).append(run_id)
        for tenant, run_ids in missing.items():
            await self.driver.load_runs(tenant, run_ids)
        self._commands.set()

    # -- wake-ups ---------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        while True:
            try:
                async for notice in self.coordinator.listen():
                    self._on_notice(notice)
            except StoreUnavailableError as exc:
                log.warning("wake-ups interrupted (%s); sweeping", exc)
            await self.driver.clock.sleep(self.beat_s)
            try:
                await self.sweep()
            except TenantflowError as exc:
                log.warning("sweep failed: %s", exc)

    def _on_notice(self, notice: Notice) -> None:
        driver = self.driver
        runtime = driver.runtime
        if notice.kind == "tenant":
            runtime.spawn(self._tenant_changed(notice.tenant_id), f"tenant:{notice.tenant_id}")
        elif notice.tenant_id not in self.owned:
            return
        elif notice.kind == "run":  # loaded in batches, a read per tenant for many runs
            self._to_load.setdefault(notice.tenant_id, set()).add(notice.target)
            if self._loader is None or self._loader.done():
                self._loader = asyncio.create_task(self._load(), name="tenantflow-load")
        elif notice.kind == "command":
            self._commands.set()

    async def _load(self) -> None:
        while self._to_load:
            batch, self._to_load = self._to_load, {}
            for tenant, run_ids in batch.items():
                try:
                    await self.driver.load_runs(tenant, run_ids)
                except TenantflowError as exc:  # the sweep loads them later
                    log.warning("could not load %d runs of %s: %s", len(run_ids), tenant, exc)

    async def _tenant_changed(self, tenant: str) -> None:
        try:
            await self.driver.tenants.refresh(tenant)
        except TenantflowError as exc:
            log.warning("could not re-read tenant %s: %s", tenant, exc)
            return
        if self.driver.tenants.cached(tenant) is None or tenant not in self.owned:
            await self.tick()  # a tenant appeared or went: the assignment changed

    # -- commands ---------------------------------------------------------------------------

    async def _command_loop(self) -> None:
        while True:
            await self._commands.wait()
            self._commands.clear()
            try:
                await self.run_commands()
            except Exception as exc:
                log.warning(
                    "running commands failed: %s",
                    exc,
                    exc_info=not isinstance(exc, TenantflowError),
                )

    async def run_commands(self) -> int:
        """Run the pending commands of the owned tenants; how many ran."""
        driver = self.driver
        done = 0
        while True:
            now = driver.clock.now()
            batch = await self.coordinator.take(
                self.id, sorted(self.owned), now, now + self.lease_s
            )
            if not batch:
                return done
            for command in batch:
                if command.tenant_id not in self.owned:
                    continue  # handed over meanwhile: its lease lapses and the owner takes it
                result = await self._run(command)
                await self.coordinator.finish(command, result, driver.clock.now())
                done += 1

    async def _run(self, command: Command) -> dict[str, Any]:
        try:
            await self.driver.apply_command(command)
        except TenantflowError as exc:
            return {"error": exc.to_dict()}
        return {"ok": True}
