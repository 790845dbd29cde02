"""The control plane of a mesh deployment: what the REST API, the CLI and ``Client`` talk to.

:class:`MeshControl` is the :class:`~tenantflow.placement.control.ControlPlane` of the mesh. It
executes nothing: reads (runs, steps, timelines, state versions, usage, audit, reviews) and
tenant administration go to a centralized *front* engine on the deployment's PostgreSQL store,
which the agents write through the core's fenced ops; a submission is recorded and its first
steps published on JetStream by a publish-only :class:`~.driver.MeshDriver` (so it is on the
stream when the API answers). Intake backpressure: past ``max_queued`` work items waiting for a
tenant in its region, a submission is refused with
:class:`~tenantflow.errors.BackpressureError` (the API's 429 and ``Retry-After``).

Not on the mesh yet (refused with a :class:`~tenantflow.errors.ConfigurationError`, the API's
4xx): idempotency keys, cancelling and resuming runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tenantflow.adapters.nats.fabric import Credentials, Fabric, connect, provision
from tenantflow.adapters.nats.log import ExecutionLog
from tenantflow.adapters.nats.policy import PolicyBoard, check_intake
from tenantflow.adapters.nats.queue import JetStreamQueue
from tenantflow.adapters.nats.subjects import Region, token
from tenantflow.domain.ids import DEFAULT_STORE
from tenantflow.domain.records import RunRecord
from tenantflow.domain.spec import WorkflowSpec
from tenantflow.engine.config import EngineConfig
from tenantflow.engine.engine import Engine
from tenantflow.engine.handle import RunHandle
from tenantflow.errors import BackpressureError, ConfigurationError
from tenantflow.placement.mesh.driver import MeshDriver
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


class MeshControl:
    """A mesh deployment's control plane (see the module doc).

    Args:
        engine: a front engine on the deployment's store (``placement.centralized.open_front``).
        nats_url, creds: the fabric, as an admin user (it publishes into every region).
        regions: the regions to provision at start.
        default_region: the region of tenants whose policy names none.
        max_queued: per tenant and region, work items waiting past which intake refuses.
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
    ) -> None:
        self._engine = engine
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
    def engine(self) -> Engine:
        return self._engine

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

    async def close(self) -> None:
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
            ConfigurationError: an idempotency key or a lane (not on the mesh yet).
        """
        if self.driver is None or self.fabric is None:
            raise ConfigurationError("the mesh control plane is not started")
        if idempotency_key is not None:
            raise ConfigurationError(
                "idempotency keys are not supported on the mesh placement yet",
                field="idempotency_key",
            )
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
        run_id = await self.driver.submit(tenant, spec.name, input)
        return RunHandle(self._engine, tenant, run_id, created=True)

    async def cancel(
        self, tenant: str, run_id: str, reason: str = "cancelled by request"
    ) -> RunRecord:
        raise ConfigurationError("cancelling runs is not supported on the mesh placement yet")

    async def resume(self, tenant: str, run_id: str) -> RunRecord:
        raise ConfigurationError("resuming runs is not supported on the mesh placement yet")

    async def log(self, tenant: str, run_id: str) -> list[dict[str, Any]]:
        """The run's facts and state versions as the stream holds them."""
        if self.fabric is None or self.driver is None:
            raise ConfigurationError("the mesh control plane is not started")
        await self.driver._tenant(tenant)
        return await ExecutionLog(self.fabric).timeline(
            self.driver.region_of(tenant), tenant, run_id
        )
