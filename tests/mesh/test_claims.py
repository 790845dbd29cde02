"""A delivery that fails after claiming its step gives the claim back.

The lease keeper renews every lease of the agent's owner, whether an attempt still runs behind
it or not. These tests make one delivery fail after its claim, in the two ways a NATS outage
makes it fail (the completion record's create applied by the server but its answer lost, and a
request that nats-py cancels when the connection drops), and check that the run still completes
while the agent lives on, with one completion record per step. Without the release, the step
stayed RUNNING under a lease renewed for ever, every redelivery waited for it, and the run never
ended (or, for the cancelled request, the step was decided as cancelled in a running run)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.adapters.nats.subjects import Region
from tenantflow.placement.mesh.agent import AgentOptions, close_agent, open_agent
from tenantflow.selftest.workload import STEPS, WORKFLOW, expected_outputs, setup

from .helpers import completion_records, create_tenants, submitter, wait_all

pytestmark = pytest.mark.timeout(90)


async def _once_failing(driver: Any, fault: str) -> dict[str, int]:
    """Make the first completion record of step ``c`` fail after the server applied it."""
    real = driver.log.complete
    seen = {"faults": 0}

    async def complete(region: str, tenant: str, run: str, step: str, *args: Any) -> Any:
        result = await real(region, tenant, run, step, *args)
        if step == "c" and seen["faults"] == 0:
            seen["faults"] += 1
            if fault == "timeout":
                import nats.errors

                raise nats.errors.TimeoutError
            raise asyncio.CancelledError  # as nats-py cancels a request when it disconnects
        return result

    driver.log.complete = complete
    return seen


@pytest.mark.parametrize("fault", ["timeout", "cancelled"])
async def test_failed_delivery_releases_its_claim(
    fault: str, mesh_server: Any, admin: Any, postgres_url: str, monkeypatch: Any
) -> None:
    monkeypatch.setenv("TF_SELFTEST_STEP_MS", "1,5")
    await create_tenants(postgres_url, ("t0",))
    driver, store = await submitter(postgres_url, admin, "eu")
    options = AgentOptions(
        postgres_url,
        mesh_server.url,
        mesh_server.creds["agent-eu"],
        ["eu"],
        default_region="eu",
        lease_s=1.5,  # renewed every 0.5 s while the agent lives
        ack_wait_s=3.0,
        sweep=False,  # the nak'ed item alone must carry the step
        setups=(setup,),
    )
    agent, engine, fabric = await open_agent(options)
    seen = await _once_failing(agent, fault)
    try:
        run = await driver.submit("t0", WORKFLOW, {"i": 0})
        [record] = await wait_all(store, [("t0", run)], timeout_s=30.0)
        assert seen["faults"] == 1
        assert record.status == tf.RunStatus.COMPLETED, record.error
        steps = {s.key: s for s in await store.get_steps("t0", run)}
        assert {k: int(steps[k].output_json or b"0") for k in STEPS} == expected_outputs(0)
        assert agent.released == 1  # the failed delivery's claim, parked back to ready
        assert agent.guard.reused == 1  # its redelivery found the record the server kept
        expected = {Region.done_key("t0", run, k) for k in STEPS}
        assert await completion_records(admin, "eu") == dict.fromkeys(expected, 1)
    finally:
        await close_agent(agent, engine, fabric)
        await driver.queue.close()
        await driver.close()
        await store.close()
