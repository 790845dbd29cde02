"""An operator's overview across tenants: runs by status, the deepest queues, stuck runs with
what holds them; on the engine and through ``tenantflow operator overview``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

import tenantflow as tf
from tenantflow.adapters.sqlite import SqliteStore
from tenantflow.errors import ConfigurationError
from tenantflow.testing import FakeClock


def _blocked(release: asyncio.Event) -> tf.Workflow:
    wf = tf.Workflow("blocked", input=int)

    @wf.step(retry=tf.Retry(max_attempts=1))
    async def only(ctx: tf.StepContext, input: int) -> int:
        if input < 0:
            raise RuntimeError("negative")
        await release.wait()
        return input

    return wf


async def test_overview_counts_runs_ranks_queues_and_explains_stuck_runs(tmp_path: Path) -> None:
    release = asyncio.Event()
    db = tmp_path / "ops.db"
    clock = FakeClock()
    async with tf.Engine(clock.watch(SqliteStore(db)), clock=clock) as engine:
        await engine.tenants.create("t1", tier="standard", max_active_runs=1)
        await engine.tenants.create("t2", tier="standard")
        await engine.tenants.create("t3", tier="standard")
        engine.register(_blocked(release))
        running = await engine.submit("blocked", tenant="t1", input=1)
        for i in range(3):
            await engine.submit("blocked", tenant="t1", input=i)
        await engine.submit("blocked", tenant="t2", input=5)
        failed = await engine.submit("blocked", tenant="t3", input=-1)
        assert (await engine.wait("t3", failed.id)).status == tf.RunStatus.FAILED
        fresh = await engine.overview(stuck_after=timedelta(hours=1))
        assert fresh.by_status["queued"] == 3 and fresh.by_status["running"] == 2
        assert fresh.by_status["failed_24h"] == 1
        assert fresh.top_queued == ["t1"] and fresh.stuck == []
        assert {t.tenant_id for t in fresh.tenants} == {"t1", "t2", "t3"}
        clock.advance(2 * 3600.0)  # two hours with nothing moving
        view = await engine.overview(stuck_after=timedelta(hours=1), top=1)
        stuck = {s.run_id: s for s in view.stuck}
        assert running.id in stuck and stuck[running.id].tenant_id == "t1"
        assert stuck[running.id].idle_s >= 3600
        assert stuck[running.id].reasons[0].kind in ("leased", "lease_lapsed")
        with pytest.raises(ConfigurationError):
            await engine.overview(top=0)
        release.set()
    # The command line reads the same from the store (an admin view: no --tenant).
    proc = _cli("operator", "overview", "--json", "--stuck-after", "30m", "--db", f"sqlite:///{db}")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["top_queued"] == ["t1"] and shown["by_status"]["queued"] == 3
    bad = _cli("operator", "overview", "--stuck-after", "soon", "--db", f"sqlite:///{db}")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --stuck-after")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "tenantflow.cli.main", *args],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
        timeout=60,
        check=False,
    )
