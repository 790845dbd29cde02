"""Shared pieces of the mesh tests: tenants, a submitter, agent processes, waiting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tenantflow as tf
from tenantflow.adapters.nats.fabric import Fabric, save_credentials
from tenantflow.adapters.nats.subjects import Region
from tenantflow.domain.records import TERMINAL_RUN
from tenantflow.placement.mesh.control import open_submitter
from tenantflow.placement.mesh.driver import MeshDriver
from tenantflow.placement.mesh.procs import AgentProcess
from tenantflow.selftest.workload import TENANTS, build


async def create_tenants(url: str, tenants: Sequence[str] = TENANTS, **policy: Any) -> None:
    async with tf.Engine.open(url) as control:
        for tenant in tenants:
            await control.tenants.create(tenant, **policy)


async def submitter(url: str, fabric: Fabric, region: str) -> tuple[MeshDriver, Any]:
    """A publish-only driver (it consumes nothing) that records runs and publishes them."""
    return await open_submitter(url, fabric, region, [build(None).spec])


def agents(
    n: int,
    server: Any,
    url: str,
    tmp: Path,
    *,
    region: str = "eu",
    exec_log: Path | None = None,
    step_ms: str = "5,20",
    ack_wait_s: float = 3.0,
    lease_s: float = 3.0,
    slots: int = 8,
) -> list[AgentProcess]:
    creds = save_credentials(server.creds[f"agent-{region}"], tmp / f"agent-{region}.json")
    env = {"TF_SELFTEST_STEP_MS": step_ms}
    if exec_log is not None:
        env["TF_SELFTEST_EXEC_LOG"] = str(exec_log)
    return [
        AgentProcess(
            url,
            server.url,
            creds,
            [region],
            ["tenantflow.selftest.workload:setup"],
            default_region=region,
            ack_wait_s=ack_wait_s,
            lease_s=lease_s,
            slots=slots,
            env=env,
            log_file=tmp / f"agent-{i}.log",
        ).start()
        for i in range(n)
    ]


async def wait_all(
    store: Any, runs: Sequence[tuple[str, str]], timeout_s: float = 60.0
) -> list[tf.RunRecord]:
    """Poll the store until every run ended (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = [await store.get_run(t, r) for t, r in runs]
        if all(rec.status in TERMINAL_RUN for rec in records):
            return records
        if time.monotonic() > deadline:
            stuck = [
                (rec.id, rec.status.value) for rec in records if rec.status not in TERMINAL_RUN
            ]
            raise AssertionError(f"{len(stuck)} runs did not end: {stuck[:5]}")
        await asyncio.sleep(0.1)


async def completion_records(fabric: Fabric, region: str) -> dict[str, int]:
    """The keys of ``region``'s bucket of completion records, each with its number of
    messages, from the bucket's stream state. (``KeyValue.keys()`` can come back short or
    raise NoKeysError when its watcher signals the end of the initial replay before the
    replay's messages were handled: nats-io/nats.py#842.)"""
    bucket = Region(region).done_bucket
    info = await fabric.js.stream_info(f"KV_{bucket}", subjects_filter=">")
    prefix = f"$KV.{bucket}."
    return {s.removeprefix(prefix): n for s, n in (info.state.subjects or {}).items()}


async def wait_log(log: Any, region: str, tenant: str, run: str, timeout_s: float = 20.0) -> Any:
    """The run's timeline once its last fact says the run ended (shipping trails the store)."""
    deadline = time.monotonic() + timeout_s
    while True:
        timeline = await log.timeline(region, tenant, run)
        facts = [e["fact"] for e in timeline if "fact" in e]
        states = [e for e in timeline if e["subject"].endswith(".state")]
        ended = facts and facts[-1] in ("run.completed", "run.failed", "run.compensated")
        if ended and states and states[-1]["status"] != "running":
            return timeline
        assert time.monotonic() < deadline, f"the log of {run} did not end: {facts[-3:]}"
        await asyncio.sleep(0.1)
