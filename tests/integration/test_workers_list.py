"""``tenantflow workers list`` and ``GET /v1/workers``: the workers sharing a PostgreSQL database,
live or not, and the tenants each holds a lease on, read from the coordination tables."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

import tenantflow as tf
from tenantflow.engine.workers import WorkerInfo
from tenantflow.errors import ConfigurationError
from tenantflow.placement.centralized import open_worker

pytest.importorskip("psycopg", reason="the postgres extra is not installed")

pytestmark = [pytest.mark.timeout(120), pytest.mark.postgres]

TENANTS = ("bank-a", "bank-b", "bank-c", "bank-d")


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


async def _settled(engine: tf.Engine, live: int) -> list[WorkerInfo]:
    """The workers once ``live`` are live, every tenant is leased and each live worker holds
    some (the tenants are shared out; bounded wait)."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        found = await engine.workers()
        leased = sorted(t.tenant_id for w in found if w.live for t in w.tenants)
        alive = [w for w in found if w.live]
        if len(alive) == live and leased == sorted(TENANTS) and all(w.tenants for w in alive):
            return found
        assert asyncio.get_running_loop().time() < deadline, found
        await asyncio.sleep(0.1)


async def test_workers_list_shows_live_workers_and_the_tenants_they_drive(
    postgres_url: str,
) -> None:
    lease = timedelta(seconds=1)
    async with open_worker(postgres_url, lease=lease, slots=3) as w1:
        for tenant in TENANTS:
            await w1.tenants.create(tenant, tier="standard")
        async with open_worker(postgres_url, lease=lease, slots=5) as w2:
            both = await _settled(w1, live=2)
            by_id = {w.id: w for w in both}
            assert {w1.owner, w2.owner} <= set(by_id)
            assert (by_id[w1.owner].slots, by_id[w2.owner].slots) == (3, 5)
            assert by_id[w1.owner].tenants and by_id[w2.owner].tenants  # shared out
            # The command line reads the same tables (a process of its own, on the store).
            proc = _cli("workers", "list", "--db", postgres_url, "--json")
            assert proc.returncode == 0, proc.stderr
            listed = {w["id"]: w for w in json.loads(proc.stdout)}
            assert listed[w2.owner]["live"] and listed[w2.owner]["slots"] == 5
            assert sorted(t["tenant_id"] for w in listed.values() for t in w["tenants"]) == sorted(
                TENANTS
            )
            assert all(t["expires_at"].endswith("Z") for t in listed[w1.owner]["tenants"])
            table = _cli("workers", "list", "--db", postgres_url)
            assert table.returncode == 0, table.stderr
            assert w1.owner in table.stdout and "workers live; 4 tenants leased" in table.stdout
        # w2 left gracefully: its tenants were handed back and w1 took them all.
        alone = await _settled(w1, live=1)
        (mine,) = [w for w in alone if w.live]
        assert mine.id == w1.owner and len(mine.tenants) == len(TENANTS)


async def test_an_embedded_store_has_no_workers(tmp_path: Path) -> None:
    assert _cli("db", "upgrade", "--db", f"sqlite:///{tmp_path / 'one.db'}").returncode == 0
    async with tf.Engine.open(f"sqlite:///{tmp_path / 'one.db'}", execute=False) as engine:
        with pytest.raises(ConfigurationError, match="no workers"):
            await engine.workers()
    proc = _cli("workers", "list", "--db", f"sqlite:///{tmp_path / 'one.db'}")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and "no workers" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1


async def test_worker_logs_say_when_tenants_move(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tenantflow.cluster")
    lease = timedelta(seconds=1)
    async with open_worker(postgres_url, lease=lease, slots=2) as w1:
        for tenant in TENANTS:
            await w1.tenants.create(tenant, tier="standard")
        await _settled(w1, live=1)
        async with open_worker(postgres_url, lease=lease, slots=2) as w2:
            await _settled(w1, live=2)
            assert w2.owner  # it took some over
    lines = [r.getMessage() for r in caplog.records if r.name == "tenantflow.cluster"]
    assert any(m.startswith("handed ") and "to other workers" in m for m in lines), lines
    assert any(m.startswith("now driving ") for m in lines), lines
