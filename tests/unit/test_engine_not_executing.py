"""An engine that does not execute (``EngineConfig(execute=False)``) still manages tenants.

Such an engine starts no group-commit writer, and the tenant registry wrote through the writers:
``tenants.create`` waited for a commit that never came. Its writes are now each a transaction of
their own, as agent memory's, schedules' and API keys' already were.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import tenantflow as tf
from tenantflow.testing import FakeClock, MemoryStore

pytestmark = pytest.mark.timeout(30)  # a hang fails here instead of stalling the suite


async def test_a_non_executing_engine_creates_and_updates_tenants() -> None:
    async with tf.Engine(
        MemoryStore(), tf.EngineConfig(execute=False), clock=FakeClock()
    ) as engine:
        made = await engine.tenants.create("bank-a", tier="standard", actor="ops")
        assert (made.id, made.policy_version) == ("bank-a", 1)
        changed = await engine.tenants.update("bank-a", weight=3.0, actor="ops")
        assert (changed.policy.weight, changed.policy_version) == (3.0, 2)
        assert (await engine.tenants.get("bank-a")).policy.weight == 3.0
        with pytest.raises(tf.ConflictError):  # refused by the store, raised at once
            await engine.tenants.create("bank-a", tier="standard")
        actions = [row.action for row in await engine.audit_log("bank-a")]
        assert actions == ["tenant.created", "policy.updated"], actions
        with pytest.raises(tf.ConfigurationError):  # runs still need an executing engine
            await engine.submit("anything", tenant="bank-a", input=None)


async def test_tenants_it_creates_are_durable_for_an_executing_engine(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tf.db'}"
    async with tf.Engine.open(url, execute=True) as first:  # makes the database
        assert first.tenants.list() == []
    async with tf.Engine.open(url, execute=False) as admin:
        await admin.tenants.create("bank-b", tier="enterprise", actor="ops")
    async with tf.Engine.open(url) as engine:
        info = await engine.tenants.get("bank-b")
        assert (info.policy.tier, info.policy_version) == ("enterprise", 1)
