"""The sweep publishes again what was lost, not what waits: a run recorded whose first step was
never published (its submitter died between the commit and the publish) gets it published; a
run whose work item waits on the stream (a backlog) gets nothing more."""

from __future__ import annotations

from typing import Any

import pytest

from tenantflow.selftest.workload import WORKFLOW

from .helpers import create_tenants, submitter

pytestmark = pytest.mark.timeout(60)


async def test_the_sweep_republishes_lost_steps_only(admin: Any, postgres_url: str) -> None:
    await create_tenants(postgres_url, ("t0",))
    driver, store = await submitter(postgres_url, admin, "eu")
    try:
        waiting = await driver.submit("t0", WORKFLOW, {"i": 1})
        publish = driver._publish
        driver._publish = lambda *args, **kwargs: None  # the submitter dies after the commit
        try:
            lost = await driver.submit("t0", WORKFLOW, {"i": 2})
        finally:
            driver._publish = publish
        await driver.queue.flush()
        assert await driver.queue.queued_runs("eu", "t0") == {waiting}

        assert await driver.sweep(quiet_s=0.0) == 1  # the lost run's first step, only
        await driver.queue.flush()
        assert await driver.queue.queued_runs("eu", "t0") == {waiting, lost}
        assert await driver.sweep(quiet_s=0.0) == 0  # both wait on the stream now
        assert driver.republished == 1
    finally:
        await driver.queue.close()
        await driver.close()
        await store.close()
