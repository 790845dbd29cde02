"""Subjects, streams and the server's users: residency and tenant isolation fail closed at the
server (a refused publish times out and the server reports a permissions violation)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tenantflow.adapters.nats.subjects import Region, token, untoken

pytestmark = pytest.mark.timeout(60)


def test_tokens_are_reversible_and_valid_everywhere() -> None:
    for value in ("acme", "acme.eu", "fetch[12]", "a-b_c", "x=y"):
        escaped = token(value)
        assert untoken(escaped) == value
        assert all(c.isalnum() or c in "_-=" for c in escaped)
    assert token("acme.eu") != token("acme_eu")
    region = Region("eu")
    assert region.cmd("acme.eu", "run_1", "function") == "tf.eu.acme=2Eeu.run.run_1.cmd.function"
    assert region.consumer("acme", "agent") == "w_acme_agent"


async def _refused(fabric: Any, subject: str) -> bool:
    """Publish to JetStream on ``subject``: True when the server refused it."""
    import nats.errors

    before = len(fabric.errors)
    try:
        await fabric.js.publish(subject, b"x", timeout=0.5)
    except nats.errors.TimeoutError:
        await asyncio.sleep(0.1)
        return any("permissions violation" in e.lower() for e in fabric.errors[before:])
    return False


async def test_streams_and_buckets_are_provisioned(admin: Any) -> None:
    names = {s.config.name for s in await admin.js.streams_info()}
    for region in ("eu", "us"):
        assert set(Region(region).streams) <= names
    # Work items land in the work queue, facts and state versions in the log.
    ack = await admin.js.publish(Region("eu").cmd("acme", "r1", "function"), b"{}")
    assert ack.stream == "WORK_eu"
    ack = await admin.js.publish(Region("eu").evt("acme", "r1", "step.succeeded"), b"{}")
    assert ack.stream == "EVT_eu"


async def test_a_region_user_cannot_touch_another_region(mesh_server: Any, admin: Any) -> None:
    from tenantflow.adapters.nats.fabric import connect

    eu = await connect(mesh_server.url, mesh_server.creds["agent-eu"], api_timeout_s=0.5)
    try:
        ok = await eu.js.publish(Region("eu").cmd("acme", "r1", "function"), b"{}")
        assert ok.stream == "WORK_eu"
        assert await _refused(eu, Region("us").cmd("acme", "r1", "function"))
        # Nor read the other region's work stream: the JetStream API call is refused.
        with pytest.raises(asyncio.TimeoutError):
            await eu.js.stream_info("WORK_us")
        with pytest.raises(asyncio.TimeoutError):
            await eu.js.key_value("DONE_us")
        assert (await eu.js.key_value("DONE_eu")) is not None
    finally:
        await eu.close()


async def test_a_tenant_user_cannot_touch_another_tenant(mesh_server: Any, admin: Any) -> None:
    from nats.js import api

    from tenantflow.adapters.nats.fabric import connect

    region = Region("eu")
    # Work for both tenants, and a consumer for each (made by the admin).
    for tenant in ("acme", "globex"):
        await admin.js.publish(region.cmd(tenant, "r1", "function"), tenant.encode())
        await admin.js.add_consumer(
            region.work_stream,
            api.ConsumerConfig(
                durable_name=region.consumer(tenant, "function"),
                filter_subject=region.cmd_filter(tenant, "function"),
                ack_policy=api.AckPolicy.EXPLICIT,
            ),
        )
    acme = await connect(mesh_server.url, mesh_server.creds["tenant-eu-acme"])
    try:
        assert await _refused(acme, region.cmd("globex", "r2", "function"))
        assert await _refused(acme, Region("us").cmd("acme", "r2", "function"))
        ok = await acme.js.publish(region.cmd("acme", "r2", "function"), b"acme")
        assert ok.stream == "WORK_eu"
        mine = await acme.js.pull_subscribe_bind(
            region.consumer("acme", "function"), stream=region.work_stream
        )
        msgs = await mine.fetch(1, timeout=2.0)
        assert msgs[0].data == b"acme"
        await msgs[0].ack()
        theirs = await acme.js.pull_subscribe_bind(
            region.consumer("globex", "function"), stream=region.work_stream
        )
        with pytest.raises(asyncio.TimeoutError):  # the fetch is refused: nothing comes
            await theirs.fetch(1, timeout=0.5)
        await asyncio.sleep(0.1)
        assert any("permissions violation" in e.lower() for e in acme.errors)
        # Subscribing to another tenant's subjects is refused too.
        before = len(acme.errors)
        await acme.nc.subscribe(region.tenant_root("globex"))
        await acme.nc.flush()
        await asyncio.sleep(0.2)
        assert any("subscription" in e.lower() for e in acme.errors[before:])
    finally:
        await acme.close()
    # globex's work item is still there, untouched.
    info = await admin.js.consumer_info(region.work_stream, region.consumer("globex", "function"))
    assert info.num_pending == 1
