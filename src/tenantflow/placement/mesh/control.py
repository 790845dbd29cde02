"""The control plane of a mesh deployment: what the REST API, the CLI and ``Client`` talk to.

:class:`MeshControl` is the :class:`~tenantflow.placement.control.ControlPlane` of the mesh. It
executes nothing: reads (runs, steps, timelines, state versions, usage, audit, reviews) and
tenant administration go to a centralized *front* engine on the deployment's PostgreSQL store,
which the agents write through the core's fenced ops; a submission is recorded and its first
steps published on JetStream by a publish-only :class:`~.driver.MeshDriver` (so it is on the
stream when the API answers). Intake backpressure: past ``max_queued`` work items waiting for a
tenant in its region, a submission is refused with
:class:`~tenantflow.errors.BackpressureError` (the API's 429 and ``Retry-After``).

Run control is the driver's, from the run as stored: an idempotency key on a submission, a
review decision (the waiting step moves on and what it readies is published for the agents),
cancelling a run (the core's saga, here) and resuming a paused one (see
:class:`~.driver.MeshDriver`).

**The read model.** With ``read_model`` (a SQLite or PostgreSQL URL), a
:class:`~.projector.Projector` in this process builds the runs, steps, timelines and state
versions from the execution log on JetStream into that store, and every read of runs answers
from it (a submission returns once its run is projected); tenants, keys, reviews, usage,
ledgers and the audit chain are not on the log and are read from the deployment's store.
Without it, every read goes to the deployment's store.

**The plane reads** the dashboard needs (load, placement, health with the agents as members of
kind ``agent``, their circuit breakers, run latency) come from the fabric: the agents'
heartbeats and the work consumers' pending counts (:class:`~.plane.MeshPlane`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

from tenantflow.adapters.nats.fabric import Credentials, Fabric, connect, provision
from tenantflow.adapters.nats.log import ExecutionLog
from tenantflow.adapters.nats.policy import PolicyBoard, check_intake
from tenantflow.adapters.nats.queue import JetStreamQueue
from tenantflow.adapters.nats.subjects import Region, token
from tenantflow.domain.ids import DEFAULT_STORE
from tenantflow.domain.records import TERMINAL_RUN, RunRecord
from tenantflow.domain.spec import WorkflowSpec
from tenantflow.engine.config import EngineConfig
from tenantflow.engine.engine import Engine
from tenantflow.engine.handle import RunHandle
from tenantflow.engine.history import RunHistory, RunReads
from tenantflow.engine.plane import (
    BreakerView,
    MemberHealth,
    PlacementInfo,
    PlaneLoad,
    TenantLatency,
    TenantLoad,
    VersionInfo,
)
from tenantflow.engine.regions import RegionRouter
from tenantflow.errors import BackpressureError, ConfigurationError
from tenantflow.placement.mesh.driver import MeshDriver
from tenantflow.placement.mesh.plane import MeshPlane
from tenantflow.placement.mesh.projector import Projector
from tenantflow.ports import Store

__all__ = ["MeshControl", "open_submitter"]

log = logging.getLogger("tenantflow.mesh")


async def open_submitter(
    url: str, fabric: Fabric, default_region: str, workflows: Sequence[WorkflowSpec]
) -> tuple[MeshDriver, Store]:
    """A started publish-only driver (it consumes nothing) on the store ``url``: it records
    runs and publishes their steps; and the store it opened (close both after use)."""
    engine = Engine.open(url, EngineConfig(execute=False))
    store = engine.store
    await store.open(execute=True)
    driver = MeshDriver(
        {DEFAULT_STORE: store},
        home=DEFAULT_STORE,
        bus=JetStreamQueue(fabric),
        clock=engine.clock,
        gateway=engine.gateway,
        workflows=workflows,
        default_region=default_region,
        owner="mesh-submitter",
    )
    await driver.start()
    return driver, store


class _PublishingTenants:
    """Tenants whose create and update also put the new policy on the fabric."""

    def __init__(self, inner: Any, publish: Any) -> None:
        self._inner = inner
        self._publish = publish

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def create(self, tenant_id: str, **options: Any) -> Any:
        info = await self._inner.create(tenant_id, **options)
        await self._publish(info)
        return info

    async def update(self, *args: Any, **options: Any) -> Any:
        info = await self._inner.update(*args, **options)
        await self._publish(info)
        return info


_ENDED = {s.value for s in TERMINAL_RUN}


class _ReadModel:
    """A router that sends every tenant's run reads to the projected read model."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def store_for_tenant(self, tenant: str) -> Store:
        return self.store


class _MeshReviews:
    """The front engine's review queues, whose decisions the mesh driver carries out."""

    def __init__(self, inner: Any, control: MeshControl) -> None:
        self._inner = inner
        self._control = control

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def decide(
        self,
        tenant: str,
        review_id: str,
        *,
        reviewer: str,
        approve: bool,
        comment: str | None = None,
        fail_step: bool = False,
    ) -> Any:
        """Approve or reject; the waiting step goes on in the same transaction, and what it
        readies is published (see :meth:`~.driver.MeshDriver.decide_review`)."""
        driver = self._control._started()
        return await driver.decide_review(
            tenant,
            review_id,
            reviewer=reviewer,
            approve=approve,
            comment=comment,
            fail_step=fail_step,
        )


class MeshControl(RunReads):
    """A mesh deployment's control plane (see the module doc).

    Args:
        engine: a front engine on the deployment's store (``placement.centralized.open_front``).
        nats_url, creds: the fabric, as an admin user (it publishes into every region).
        regions: the regions to provision at start.
        default_region: the region of tenants whose policy names none.
        max_queued: per tenant and region, work items waiting past which intake refuses.
        read_model: the store the projector writes and run reads answer from (a URL, or a
            store the caller opened); None: the deployment's store.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        nats_url: str,
        creds: Credentials | None,
        regions: Sequence[str],
        default_region: str,
        max_queued: int = 10_000,
        read_model: str | Store | None = None,
    ) -> None:
        self._engine = engine
        self._read_model_arg = read_model
        self.read_store: Store | None = None
        self.projector: Projector | None = None
        self.history: RunHistory = engine.history
        self.plane: MeshPlane | None = None
        self._ended: dict[str, None] = {}
        self.nats_url = nats_url
        self.creds = creds
        self.regions = list(regions)
        self.default_region = default_region
        self.max_queued = max_queued
        self.fabric: Fabric | None = None
        self.driver: MeshDriver | None = None

    def __getattr__(self, name: str) -> Any:  # everything else: the front engine
        return getattr(self._engine, name)

    @property
    def tenants(self) -> Any:
        """The front engine's tenants; a created or changed policy is also put on the region's
        policy bucket, which the agents watch."""
        return _PublishingTenants(self._engine.tenants, self._publish_policy)

    async def _publish_policy(self, info: Any) -> None:
        if self.fabric is None:
            return
        region = info.policy.region or self.default_region
        try:
            await PolicyBoard(self.fabric, region).put(
                info.id, info.policy_version, info.policy.model_dump(mode="json")
            )
        except Exception as exc:  # a region with no bucket: no agents to tell
            log.warning("policy of %s not put on %s: %s", info.id, region, exc)

    @property
    def reviews(self) -> Any:
        """The front engine's review queues; a decision is carried out by the mesh driver."""
        return _MeshReviews(self._engine.reviews, self)

    @property
    def engine(self) -> Engine:
        return self._engine

    def _started(self) -> MeshDriver:
        if self.driver is None or self.fabric is None:
            raise ConfigurationError("the mesh control plane is not started")
        return self.driver

    async def start(self) -> None:
        await self._engine.start()
        self.fabric = await connect(self.nats_url, self.creds, name="tenantflow-mesh-api")
        for region in {*self.regions, self.default_region}:
            await provision(self.fabric, region)
        self.driver = MeshDriver(
            self._engine.stores,
            home=DEFAULT_STORE,
            bus=JetStreamQueue(self.fabric),
            clock=self._engine.clock,
            gateway=self._engine.gateway,
            workflows=self._engine.registry.all(),
            default_region=self.default_region,
            owner=f"mesh-api:{self._engine.owner}",
        )
        await self.driver.start()
        self.plane = MeshPlane(
            self.fabric,
            [*self.regions, self.default_region],
            clock=self._engine.clock,
            process=self._engine.owner,
            stores=sorted(self._engine.stores),
            policy_of=self._engine.tenants.cached,
        )
        await self.plane.start()
        if self._read_model_arg is not None:
            await self._start_projector(self._read_model_arg)

    async def _start_projector(self, read_model: str | Store) -> None:
        assert self.fabric is not None
        if isinstance(read_model, str):
            from tenantflow.adapters import open_store

            store = open_store(read_model)
            await store.open(execute=True)
        else:
            store = read_model
        self.read_store = store
        regions = [*self.regions, self.default_region]
        self.projector = Projector(
            self.fabric, store, regions, durable="api_read_model", on_applied=self._applied
        )
        await self.projector.start()
        router = cast(RegionRouter, _ReadModel(store))
        self.history = RunHistory(router, self._engine.tenants.get)

    def _applied(self, tenant: str, run: dict[str, Any]) -> None:
        """A projected entry: a run seen ending for the first time feeds the latency."""
        if self.plane is None or run["status"] not in _ENDED or run["id"] in self._ended:
            return
        self._ended[run["id"]] = None
        if len(self._ended) > 20_000:
            del self._ended[next(iter(self._ended))]
        self.plane.finished(tenant, run)

    async def close(self) -> None:
        if self.plane is not None:
            await self.plane.close()
            self.plane = None
        if self.projector is not None:
            await self.projector.close()
            self.projector = None
        if self.read_store is not None and isinstance(self._read_model_arg, str):
            await self.read_store.close()
        self.read_store = None
        self.history = self._engine.history
        if self.driver is not None:
            await self.driver.queue.close()
            await self.driver.close()
            self.driver = None
        if self.fabric is not None:
            await self.fabric.close()
            self.fabric = None
        await self._engine.close()

    async def __aenter__(self) -> MeshControl:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- what the mesh changes ----------------------------------------------------------------

    async def submit(
        self,
        workflow: Any,
        *,
        tenant: str,
        input: Any,
        idempotency_key: str | None = None,
        lane: str | None = None,
        version: str | None = None,
    ) -> RunHandle:
        """Record a run and publish its first steps (see the module doc).

        Raises:
            NotFoundError: no such tenant or workflow (version).
            ContractError: ``input`` breaks the workflow's input contract.
            BackpressureError: the tenant's queue in its region is full.
            ResidencyError: no agents serve the tenant's region.
        """
        if self.driver is None or self.fabric is None:
            raise ConfigurationError("the mesh control plane is not started")
        name = getattr(workflow, "name", workflow)
        spec = self._engine.workflow(str(name), version)
        if spec.name not in self.driver.specs or self.driver.specs[spec.name] is not spec:
            self.driver.specs[spec.name] = spec
        known = await self._engine.tenants.get(tenant)  # NotFoundError for an unknown tenant
        await self.driver._tenant(tenant)
        region = Region(self.driver.region_of(tenant))
        await check_intake(self.fabric, region.name, tenant, known.policy.model_dump(mode="json"))
        info = await self.fabric.js.stream_info(
            region.work_stream, subjects_filter=f"tf.{region.name}.{token(tenant)}.run.*.cmd.*"
        )
        queued = sum((info.state.subjects or {}).values())
        if queued >= self.max_queued:
            raise BackpressureError(
                f"tenant {tenant!r} has {queued} work items waiting in {region.name}",
                retry_after_s=1.0,
                tenant=tenant,
            )
        run_id, created = await self.driver.record(
            tenant, spec.name, input, idempotency_key=idempotency_key
        )
        if created and self.plane is not None:
            self.plane.submitted(tenant, run_id, spec.name)
        if created and self.projector is not None and not await self.projector.wait_for(run_id):
            log.warning("run %s is not in the read model yet", run_id)
        return RunHandle(self._engine, tenant, run_id, created=created)

    async def cancel(
        self, tenant: str, run_id: str, reason: str = "cancelled by request"
    ) -> RunRecord:
        """Cancel a run: its steps stop, completed ones are compensated, it ends ``cancelled``.

        Raises:
            NotFoundError: the tenant has no such run.
            ConflictError: the run is not running.
        """
        return await self._started().cancel(tenant, run_id, reason)

    async def resume(self, tenant: str, run_id: str) -> RunRecord:
        """Resume a run the budget ladder paused (ConflictError: it is not paused)."""
        return await self._started().resume(tenant, run_id)

    async def log(self, tenant: str, run_id: str) -> list[dict[str, Any]]:
        """The run's facts and state versions as the stream holds them."""
        if self.fabric is None or self.driver is None:
            raise ConfigurationError("the mesh control plane is not started")
        await self.driver._tenant(tenant)
        return await ExecutionLog(self.fabric).timeline(
            self.driver.region_of(tenant), tenant, run_id
        )

    # -- run reads: the read model when there is one (get_run, list_runs, steps, timeline,
    # -- state history: RunReads over self.history) ----------------------------------------

    async def version_list(self, tenant: str, run_id: str) -> list[VersionInfo]:
        """The run's state versions without their states (NotFoundError: no such run)."""
        record = await self.get_run(tenant, run_id)
        store = self.read_store or self._engine.router.store_for_tenant(tenant)
        rows = await store.state_versions(tenant, run_id, upto=record.state_version)
        return [VersionInfo(v.version, v.parent, v.step, v.hash, v.created_at) for v in rows]

    # -- the plane reads: from the fabric ------------------------------------------------------

    def _plane(self) -> MeshPlane:
        if self.plane is None:
            raise ConfigurationError("the mesh control plane is not started")
        return self.plane

    def load(self) -> PlaneLoad:
        """Per tenant, steps running (delivered, not acked) and queued on the work streams."""
        return self._plane().load()

    def tenant_load(self, tenant: str) -> TenantLoad:
        return self._plane().tenant_load(tenant)

    def placement(self) -> PlacementInfo:
        return self._plane().placement()

    async def health(self) -> list[MemberHealth]:
        """This process and every agent heard (kind ``agent``), by their heartbeats."""
        return await self._plane().health()

    def breakers(self) -> list[BreakerView]:
        """Each agent's circuit breakers, as its last heartbeat reported them."""
        return self._plane().breakers()

    def latency(self, tenants: list[str] | None = None) -> list[TenantLatency]:
        return self._plane().latency(tenants)
