"""Work items on JetStream, picked fairly across tenants (a ``ports.DeliveryQueue``).

JetStream has no fairness across subjects: one FIFO consumer serves a burster's backlog before
a quiet tenant's first item. So each (tenant, kind) has its own durable pull consumer on the
region's WorkQueue stream (filter ``tf.<r>.<t>.run.*.cmd.<kind>``: disjoint, as a work queue
requires), and this process picks among the tenants with the core's fair scheduler
(:class:`~tenantflow.domain.scheduler.FairScheduler`, by virtual time):

* **Discovery.** Whoever publishes a work item also publishes a beacon on
  ``tf.<r>._ready.<kind>.<t>`` (stream ``READY_<r>`` keeps the last per subject). The queue
  listens to the beacons and, at start, after a reconnect and every ``rescan_s``, lists the
  beacon subjects; a tenant it has no puller for gets one.
* **Consumers on demand, collected when idle.** A puller creates its consumer if missing
  (``max_ack_pending`` = the tenant's cap for that kind, enforced by the server across every
  agent process; ``inactive_threshold`` lets the server delete it once nobody pulls). A puller
  that found nothing for ``idle_s`` stops; the next beacon starts it again.
* **Fair pick.** Each puller keeps at most ``prefetch`` items fetched and not yet handed out;
  those wait in the scheduler, and :meth:`next` pops the tenant with the lowest virtual time.
  Settling a delivery (ack or nak) charges the tenant its actual service time.
* **Express slots.** A running step is never preempted, so while a burster holds every slot a
  quiet tenant's item would wait for one of them to end (with steps of similar length the
  slots end in waves: up to a whole step). ``express`` slots beyond ``slots`` take only the
  items of tenants with nothing running in this process, one each; the burster keeps every
  regular slot, so the work it gets is not reduced (work-conserving), and a quiet tenant's
  step starts at once. An express delivery is not charged to the tenant's virtual time.
* **Restartable.** A pull loop that fails (the connection dropped, the consumer vanished) waits
  a little and binds again; nothing is lost, the server redelivers what was not acked.
* **Publishing.** :meth:`publish` returns at once (the port is synchronous); the publish runs as
  a task with a ``Nats-Msg-Id`` kept across retries (the server drops a duplicate within its
  window). An ack waits for every publish started before it, so a step's successors are on the
  stream before its work item is gone.
* **Delays.** A delayed item carries ``not_before``; delivered early, it is nak'ed with the
  remaining delay.

Correlation ids ride in headers: ``Tf-Tenant``, ``Tf-Run``, ``Tf-Step``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tenantflow.adapters.nats.fabric import Fabric
from tenantflow.adapters.nats.subjects import Region, untoken
from tenantflow.domain.scheduler import FairScheduler, ReadyItem
from tenantflow.errors import ConfigurationError

__all__ = ["JetStreamDelivery", "JetStreamQueue", "QueueStats"]

log = logging.getLogger("tenantflow.mesh")


@dataclass(slots=True)
class QueueStats:
    published: int = 0
    publish_retries: int = 0
    delivered: int = 0
    express: int = 0
    redelivered: int = 0
    acked: int = 0
    naked: int = 0
    consumers_created: int = 0
    pullers_started: int = 0
    pullers_stopped: int = 0
    pull_errors: int = 0


class JetStreamDelivery:
    """One delivered work item (see :class:`~tenantflow.ports.Delivery`)."""

    def __init__(self, queue: JetStreamQueue, msg: Any, data: dict[str, Any], key: str) -> None:
        self._queue = queue
        self._msg = msg
        self._data = data
        self.key = key
        self.tenant = str(data["tenant"])
        self.puller: tuple[str, str, str] = ("", "", "")
        self.popped_at = 0.0
        self.settled = False
        self.express = False

    @property
    def data(self) -> dict[str, Any]:
        return self._data

    @property
    def deliveries(self) -> int:
        try:
            return int(self._msg.metadata.num_delivered)
        except Exception:
            return 1

    def ack(self) -> None:
        self._queue._settle(self, None)

    def nak(self, delay_s: float = 0.0) -> None:
        self._queue._settle(self, delay_s)

    def in_progress(self) -> None:
        self._queue._spawn(self._msg.in_progress())


@dataclass(slots=True)
class _Puller:
    region: Region
    tenant: str
    kind: str
    buffered: int = 0
    pending: int = 0
    """Items the server had left for the consumer after the last one fetched, less those a
    fetch in flight may take; 0 after a fetch that found nothing."""
    room: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class JetStreamQueue:
    """The mesh's :class:`~tenantflow.ports.DeliveryQueue` (see the module doc).

    Args:
        fabric: the connection (an agent's region user, or the admin).
        regions: the regions whose work this process takes (none: it only publishes).
        kinds: the step kinds it takes.
        slots: deliveries handed out at once by the fair scheduler.
        express: deliveries handed out at once beyond ``slots``, one to each tenant with nothing
            running here (see the module doc); the driver's concurrency is ``slots + express``.
        cap: the per-tenant ``max_ack_pending`` of a new consumer (tenant → cap; default 64).
        weight: the tenant's fair-share weight (tenant → weight; default 1).
        ack_wait_s: the server redelivers an item not acked (or marked in progress) this long.
        idle_s: a puller that fetched nothing this long stops.
        inactive_s: the server deletes a consumer nobody pulled from this long.
    """

    def __init__(
        self,
        fabric: Fabric,
        *,
        regions: Iterable[str] = (),
        kinds: Iterable[str] = ("function", "agent", "review"),
        slots: int = 8,
        express: int = 0,
        cap: Callable[[str], int] | None = None,
        weight: Callable[[str], float] | None = None,
        ack_wait_s: float = 30.0,
        prefetch: int = 1,
        poll_s: float = 2.0,
        idle_s: float = 30.0,
        inactive_s: float = 120.0,
        rescan_s: float = 5.0,
    ) -> None:
        self.fabric = fabric
        self.regions = {r: Region(r) for r in regions}
        self.kinds = tuple(kinds)
        self.ack_wait_s = ack_wait_s
        self.prefetch = max(1, prefetch)
        self.poll_s = poll_s
        self.idle_s = idle_s
        self.inactive_s = inactive_s
        self.rescan_s = rescan_s
        self._cap = cap or (lambda tenant: 64)
        self._weight = weight or (lambda tenant: 1.0)
        self.scheduler = FairScheduler(slots=slots)
        if express < 0:
            raise ConfigurationError("express must be >= 0", field="express", value=express)
        self.express = express
        self._express: set[str] = set()  # tenants with an express delivery not yet settled
        self._configured: set[str] = set()
        self._items: dict[str, JetStreamDelivery] = {}
        self._pullers: dict[tuple[str, str, str], _Puller] = {}
        self._ready = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._publishing: set[asyncio.Task[Any]] = set()
        self._subs: list[Any] = []
        self.closed = False
        self.stats = QueueStats()
        self.hop_s: list[float] = []
        """Publish → delivered seconds of work items (for the benchmark; bounded)."""

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for beacons and start pullers for the tenants that have work."""
        for region in self.regions.values():
            sub = await self.fabric.nc.subscribe(f"tf.{region.name}._ready.*.*", cb=self._on_beacon)
            self._subs.append(sub)
        if self.regions:
            self._spawn(self._rescan_forever())

    async def close(self) -> None:
        """Stop delivering: waiters get None; unsettled items are redelivered by the server."""
        self.closed = True
        self._ready.set()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await self.flush()
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def flush(self) -> None:
        """Wait until every publish started so far is on the stream."""
        while self._publishing:
            await asyncio.gather(*list(self._publishing), return_exceptions=True)

    def hold_acks(self, task: asyncio.Task[Any]) -> None:
        """Make every ack settled from now on wait for ``task`` too (as for a publish)."""
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    @property
    def backlogged(self) -> bool:
        """Whether work waits for this process: an item fetched and not handed out yet, or
        items the server had left for one of its consumers after the last one fetched."""
        return self.scheduler.total_queued > 0 or any(p.pending for p in self._pullers.values())

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, data: dict[str, Any], *, delay_s: float = 0.0) -> None:
        """Publish a work item (``data`` names ``tenant``, ``run``, ``key``, ``region`` and
        ``kind``), deliverable after ``delay_s``."""
        region = Region(str(data["region"]))
        kind = str(data.get("kind") or "function")
        tenant, run = str(data["tenant"]), str(data["run"])
        body = dict(data)
        body["published_at"] = time.time()
        if delay_s > 0:
            body["not_before"] = time.time() + delay_s
        headers = {
            "Nats-Msg-Id": str(data.get("msg_id") or secrets.token_hex(12)),
            "Tf-Tenant": tenant,
            "Tf-Run": run,
            "Tf-Step": str(data["key"]),
        }
        subject = region.cmd(tenant, run, kind)
        beacon = region.ready(kind, tenant)
        task = asyncio.get_running_loop().create_task(
            self._publish(subject, json.dumps(body).encode(), headers, beacon)
        )
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(
        self, subject: str, payload: bytes, headers: dict[str, str], beacon: str
    ) -> None:
        delay = 0.05
        while True:
            try:
                await self.fabric.js.publish(subject, payload, headers=headers, timeout=5.0)
                self.stats.published += 1
                await self.fabric.nc.publish(beacon, b"")
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # disconnected or timed out: retry, the id deduplicates
                self.stats.publish_retries += 1
                log.warning("publish to %s failed (%s); retrying", subject, exc)
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)

    # -- delivering ---------------------------------------------------------------------------

    async def next(self) -> JetStreamDelivery | None:
        """The next delivery by the fair scheduler, or on an express slot (see the module
        doc); None once closed."""
        while not self.closed:
            item = self.scheduler.pop(time.monotonic())
            delivery = self._items[str(item.key)] if item is not None else self._express_pick()
            if delivery is not None:
                delivery.popped_at = time.monotonic()
                puller = self._pullers.get(delivery.puller)
                if puller is not None:
                    puller.buffered -= 1
                    puller.room.set()
                return delivery
            self._ready.clear()
            await self._ready.wait()
        return None

    def _express_pick(self) -> JetStreamDelivery | None:
        """The oldest waiting item of a tenant with nothing running here (one express
        delivery a tenant), withdrawn from the scheduler, when an express slot is free and the
        regular ones are not."""
        if len(self._express) >= self.express:
            return None
        if self.scheduler.total_running < self.scheduler.slots:
            return None  # a regular slot is free: what waits is not eligible for it yet
        for key, delivery in self._items.items():
            tenant = delivery.tenant
            if delivery.popped_at or self.scheduler.running(tenant) or tenant in self._express:
                continue
            if not self.scheduler.remove(key):
                continue
            delivery.express = True
            self._express.add(tenant)
            self.stats.express += 1
            return delivery
        return None

    def _settle(self, delivery: JetStreamDelivery, nak_s: float | None) -> None:
        if delivery.settled:
            return
        delivery.settled = True
        now = time.monotonic()
        if delivery.express:
            self._express.discard(delivery.tenant)
        else:
            with contextlib.suppress(Exception):  # an item handed out is always running
                self.scheduler.done(
                    delivery.tenant, delivery.key, max(0.0, now - delivery.popped_at), now
                )
        self._items.pop(delivery.key, None)
        self._ready.set()
        pending = list(self._publishing)
        self._spawn(self._finish(delivery, nak_s, pending))

    async def _finish(
        self, delivery: JetStreamDelivery, nak_s: float | None, pending: list[asyncio.Task[Any]]
    ) -> None:
        if pending:  # the successors this delivery published go first
            await asyncio.gather(*pending, return_exceptions=True)
        try:
            if nak_s is None:
                await delivery._msg.ack()
                self.stats.acked += 1
            else:
                await delivery._msg.nak(delay=nak_s if nak_s > 0 else None)
                self.stats.naked += 1
        except Exception as exc:  # the server will redeliver it after ack_wait
            log.warning("settling %s failed: %s", delivery.key, exc)

    # -- pullers ------------------------------------------------------------------------------

    async def _on_beacon(self, msg: Any) -> None:
        parts = msg.subject.split(".")
        if len(parts) == 5:
            self._want(parts[1], parts[3], untoken(parts[4]))

    def _want(self, region: str, kind: str, tenant: str) -> None:
        if self.closed or region not in self.regions or kind not in self.kinds:
            return
        key = (region, tenant, kind)
        puller = self._pullers.get(key)
        if puller is not None and puller.task is not None and not puller.task.done():
            return
        if tenant not in self._configured:
            self.scheduler.configure_tenant(tenant, weight=self._weight(tenant))
            self._configured.add(tenant)
        puller = _Puller(self.regions[region], tenant, kind)
        self._pullers[key] = puller
        puller.task = self._spawn(self._pull(puller))
        self.stats.pullers_started += 1

    async def _rescan_forever(self) -> None:
        seen_reconnects = -1
        last = 0.0
        while not self.closed:
            if self.fabric.reconnects != seen_reconnects or time.monotonic() - last > self.rescan_s:
                try:
                    await self.rescan()
                    seen_reconnects = self.fabric.reconnects
                    last = time.monotonic()
                except Exception as exc:
                    log.debug("rescan failed: %s", exc)
            await asyncio.sleep(0.1)

    async def queued_runs(self, region: str, tenant: str) -> set[str]:
        """The runs of ``tenant`` with a work item on ``region``'s work stream, delivered or
        not (a work queue keeps an item until it is acked): one request, the stream's count
        per subject."""
        r = Region(region)
        info = await self.fabric.js.stream_info(r.work_stream, subjects_filter=r.cmd_any(tenant))
        runs: set[str] = set()
        for subject in info.state.subjects or {}:
            parts = subject.split(".")  # tf.<region>.<tenant>.run.<run>.cmd.<kind>
            if len(parts) == 7:
                runs.add(untoken(parts[4]))
        return runs

    async def rescan(self) -> None:
        """Start a puller for every tenant with a beacon (work may be waiting)."""
        for region in self.regions.values():
            info = await self.fabric.js.stream_info(
                region.ready_stream, subjects_filter=f"tf.{region.name}._ready.>"
            )
            for subject in info.state.subjects or {}:
                parts = subject.split(".")
                if len(parts) == 5:
                    self._want(parts[1], parts[3], untoken(parts[4]))

    async def _bind(self, p: _Puller) -> Any:
        from nats.js import api
        from nats.js.errors import NotFoundError

        name = p.region.consumer(p.tenant, p.kind)
        stream = p.region.work_stream
        try:
            await self.fabric.js.consumer_info(stream, name)
        except NotFoundError:
            await self.fabric.js.add_consumer(
                stream,
                api.ConsumerConfig(
                    durable_name=name,
                    filter_subject=p.region.cmd_filter(p.tenant, p.kind),
                    ack_policy=api.AckPolicy.EXPLICIT,
                    ack_wait=self.ack_wait_s,
                    max_ack_pending=max(1, self._cap(p.tenant)),
                    inactive_threshold=self.inactive_s,
                ),
            )
            self.stats.consumers_created += 1
        return await self.fabric.js.pull_subscribe_bind(name, stream=stream)

    async def _pull(self, p: _Puller) -> None:
        import nats.errors

        sub: Any = None
        idle_since = time.monotonic()
        try:
            while not self.closed:
                room = self.prefetch - p.buffered
                if room <= 0:
                    p.room.clear()
                    await p.room.wait()
                    continue
                try:
                    if sub is None:
                        sub = await self._bind(p)
                    # what this fetch may take of what the server had left: no longer left
                    p.pending = max(0, p.pending - room)
                    msgs = await sub.fetch(room, timeout=self.poll_s)
                except (TimeoutError, nats.errors.TimeoutError):
                    p.pending = 0  # nothing came (another agent's pull may have taken it)
                    if time.monotonic() - idle_since >= self.idle_s and p.buffered == 0:
                        return  # idle: stop; the next beacon starts a puller again
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # disconnected, or the consumer went away: bind again
                    p.pending = 0  # nothing known of what waits until a fetch says
                    self.stats.pull_errors += 1
                    log.debug("pull %s/%s failed: %s", p.tenant, p.kind, exc)
                    if sub is not None:
                        with contextlib.suppress(Exception):
                            await sub.unsubscribe()
                    sub = None
                    await asyncio.sleep(0.2)
                    continue
                idle_since = time.monotonic()
                for msg in msgs:
                    self._take(p, msg)
        finally:
            self.stats.pullers_stopped += 1
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    def _take(self, p: _Puller, msg: Any) -> None:
        try:
            data = json.loads(msg.data)
        except ValueError:
            log.error("dropping a malformed work item on %s", msg.subject)
            self._spawn(msg.term())
            return
        not_before = float(data.get("not_before") or 0.0)
        if not_before > time.time():  # early, even by a hair: the step is not due in the store
            self._spawn(msg.nak(delay=not_before - time.time()))
            return
        meta = msg.metadata
        p.pending = int(meta.num_pending or 0)
        key = f"{meta.stream}:{meta.sequence.stream}"
        delivery = JetStreamDelivery(self, msg, data, key)
        delivery.puller = (p.region.name, p.tenant, p.kind)
        self.stats.delivered += 1
        if meta.num_delivered > 1:
            self.stats.redelivered += 1
        published = data.get("published_at")
        if isinstance(published, int | float) and len(self.hop_s) < 100_000:
            self.hop_s.append(max(0.0, time.time() - float(not_before or published)))
        if key in self._items:  # redelivered while the first copy still waits here
            self._spawn(msg.in_progress())
            return
        self._items[key] = delivery
        p.buffered += 1
        self.scheduler.push(ReadyItem(tenant_id=p.tenant, key=key), time.monotonic())
        self._ready.set()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
