"""A worker's membership in a cluster of workers sharing one database.

``Engine(..., cluster="worker")`` (what ``tenantflow worker`` runs) drives only the tenants it
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

``Engine(..., cluster="front")`` (what ``tenantflow serve --workers external`` runs) executes
nothing: a submission is written ``queued`` and announced; cancel and review decisions become
commands that the owning worker runs, waited for up to ``command_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from tenantflow.domain.cluster import Command, Notice, assign
from tenantflow.errors import StoreUnavailableError, TenantflowError
from tenantflow.ports import Coordinator

if TYPE_CHECKING:
    from tenantflow.engine.engine import Engine

__all__ = ["Membership", "error_from_dict"]

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


class Membership:
    """The worker side of a cluster: heartbeat, tenant leases, wake-ups, sweeps, commands.

    Args:
        engine: the worker's engine (``cluster="worker"``).
        coordinator: the database's coordination (see :class:`~tenantflow.ports.Coordinator`).
        lease_s: how long a tenant lease (and a worker's liveness) lasts without a beat.
        sweep_s: how often to sweep the tables for runs and commands a lost wake-up hid.
    """

    def __init__(
        self, engine: Engine, coordinator: Coordinator, *, lease_s: float, sweep_s: float = 5.0
    ) -> None:
        self.engine = engine
        self.coordinator = coordinator
        self.id = engine.owner
        self.lease_s = lease_s
        self.beat_s = max(0.05, lease_s / 3.0)
        self.sweep_s = sweep_s
        self.owned: set[str] = set()
        self.workers: list[str] = []
        self.beats = 0
        self._commands = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_sweep = float("-inf")
        self._held_until = float("-inf")
        self._to_load: dict[str, set[str]] = {}
        self._loader: asyncio.Task[None] | None = None
        self._tick_lock = asyncio.Lock()

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
            await self.engine.clock.sleep(self.beat_s)
            try:
                await self.tick()
            except Exception as exc:  # the database is down, say: keep trying
                log.warning(
                    "cluster beat failed: %s", exc, exc_info=not isinstance(exc, TenantflowError)
                )
                if self.owned and self.engine.clock.now() > self._held_until:
                    await self._stop_driving()

    async def _stop_driving(self) -> None:
        """Our tenant leases have lapsed without a renewal: others may own them now."""
        tenants, self.owned = sorted(self.owned), set()
        log.warning("tenant leases lapsed; stopped driving %d tenants", len(tenants))
        for tenant in tenants:
            with contextlib.suppress(Exception):
                await self.engine.release_tenant(tenant)

    async def tick(self) -> None:
        """One beat (see the module docstring)."""
        async with self._tick_lock:
            await self._tick()

    async def _tick(self) -> None:
        engine, c = self.engine, self.coordinator
        now = engine.clock.now()
        self.beats += 1
        if self.beats % 20 == 0:
            await engine.tenants.load()  # tenants created or changed while a wake-up was lost
        info = {"slots": engine.dispatcher.scheduler.slots}
        self.workers = await c.beat(self.id, now, self.lease_s, info)
        tenants = sorted(info.id for info in engine.tenants.list())
        desired = assign(tenants, self.workers, self.id)
        handed = sorted(self.owned.difference(desired))
        self.owned.difference_update(handed)  # first: nothing new of theirs is loaded here
        for tenant in handed:
            await engine.release_tenant(tenant)
        if handed:
            await c.release(self.id, handed)
        now = engine.clock.now()
        held = await c.hold(self.id, desired, now, now + self.lease_s)
        self._held_until = now + self.lease_s
        lost = self.owned.difference(held)
        new = [t for t in held if t not in self.owned]
        self.owned = set(held)
        for tenant in lost:  # taken while we stalled
            log.warning("lost the lease on tenant %s; dropping its runs", tenant)
            await engine.release_tenant(tenant)
        for tenant in new:
            await engine.adopt_tenant(tenant)
        if new:
            self._commands.set()
        if engine.clock.now() - self._last_sweep >= self.sweep_s:
            await self.sweep()

    async def sweep(self) -> None:
        """Load the owned tenants' unfinished runs that are not in memory; run pending commands."""
        self._last_sweep = self.engine.clock.now()
        missing: dict[str, list[str]] = {}
        for tenant, run_id in await self.coordinator.active_runs():
            if tenant in self.owned and not self.engine.holds_run(tenant, run_id):
                missing.setdefault(tenant, []).append(run_id)
        for tenant, run_ids in missing.items():
            await self.engine.load_runs(tenant, run_ids)
        self._commands.set()

    # -- wake-ups ---------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        while True:
            try:
                async for notice in self.coordinator.listen():
                    self._on_notice(notice)
            except StoreUnavailableError as exc:
                log.warning("wake-ups interrupted (%s); sweeping", exc)
            await self.engine.clock.sleep(self.beat_s)
            try:
                await self.sweep()
            except TenantflowError as exc:
                log.warning("sweep failed: %s", exc)

    def _on_notice(self, notice: Notice) -> None:
        engine = self.engine
        runtime = engine.runtime
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
                    await self.engine.load_runs(tenant, run_ids)
                except TenantflowError as exc:  # the sweep loads them later
                    log.warning("could not load %d runs of %s: %s", len(run_ids), tenant, exc)

    async def _tenant_changed(self, tenant: str) -> None:
        try:
            await self.engine.tenants.refresh(tenant)
        except TenantflowError as exc:
            log.warning("could not re-read tenant %s: %s", tenant, exc)
            return
        if self.engine.tenants.cached(tenant) is None or tenant not in self.owned:
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
        engine = self.engine
        done = 0
        while True:
            now = engine.clock.now()
            batch = await self.coordinator.take(
                self.id, sorted(self.owned), now, now + self.lease_s
            )
            if not batch:
                return done
            for command in batch:
                if command.tenant_id not in self.owned:
                    continue  # handed over meanwhile: its lease lapses and the owner takes it
                result = await self._run(command)
                await self.coordinator.finish(command, result, engine.clock.now())
                done += 1

    async def _run(self, command: Command) -> dict[str, Any]:
        try:
            await self.engine.apply_command(command)
        except TenantflowError as exc:
            return {"error": exc.to_dict()}
        return {"ok": True}
