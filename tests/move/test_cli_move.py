"""``tenantflow tenants move TENANT --from URL --to URL``: a tenant at rest, with its runs and
audit chain, from one store to another; bad input ends in one error line and writes nothing."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tenantflow as tf
from tenantflow.adapters import open_store
from tenantflow.adapters.tenant_transfer import tenant_rows
from tenantflow.cli.main import app

pytestmark = pytest.mark.timeout(60)


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    return {**env, "TENANTFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'unused.db'}"}


def _cli(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env=_env(tmp_path))
    return result.exit_code, result.stdout, result.stderr


async def _seed(url: str) -> list[str]:
    wf = tf.Workflow("double", input=int)

    @wf.step
    async def double(ctx: tf.StepContext, input: int) -> int:
        return input * 2

    async with tf.Engine.open(url) as engine:
        engine.register(wf)
        await engine.tenants.create("acme", tier="standard")
        await engine.tenants.create("other", tier="standard")
        runs = [await engine.submit("double", tenant="acme", input=i) for i in range(5)]
        for run in runs:
            await run.result()
        return [run.id for run in runs]


async def _rows(url: str, tenant: str) -> dict[str, int]:
    store = open_store(url)
    await store.open(execute=False)
    try:
        return await tenant_rows(store, tenant)
    finally:
        await store.close()


def test_a_tenant_moves_between_sqlite_files_and_its_chain_verifies(tmp_path: Path) -> None:
    a, b = f"sqlite:///{tmp_path / 'pool.db'}", f"sqlite:///{tmp_path / 'cell.db'}"
    runs = asyncio.run(_seed(a))
    code, out, err = _cli(tmp_path, "tenants", "move", "acme", "--from", a, "--to", b, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["runs"] == 5 and report["in_flight"] == 0
    assert set(report["left"].values()) == {0} and report["rows"]["runs"] == 5
    assert set(asyncio.run(_rows(a, "acme")).values()) == {0}
    assert asyncio.run(_rows(a, "other"))["tenants"] == 1  # the neighbour stays
    code, out, err = _cli(tmp_path, "audit", "verify", "--tenant", "acme", "--db", b)
    assert code == 0, (out, err)
    code, out, err = _cli(tmp_path, "runs", "list", "--tenant", "acme", "--db", b, "--json")
    assert code == 0 and {r["id"] for r in json.loads(out)} == set(runs)


@pytest.mark.parametrize(
    ("tenant", "source", "target", "says"),
    [
        ("ghost", "pool.db", "cell.db", "tenant 'ghost' not found"),
        ("acme", "pool.db", "pool.db", "the same store"),
        ("acme", "pool.db", "other.db", "already at the target"),
        ("acme", "missing.db", "cell.db", "no tenantflow database"),
        ("bad id!", "pool.db", "cell.db", "invalid tenant id"),
    ],
)
def test_bad_moves_end_in_one_error_line_and_write_nothing(
    tmp_path: Path, tenant: str, source: str, target: str, says: str
) -> None:
    pool, other = f"sqlite:///{tmp_path / 'pool.db'}", f"sqlite:///{tmp_path / 'other.db'}"
    asyncio.run(_seed(pool))
    asyncio.run(_seed(other))
    before = asyncio.run(_rows(pool, "acme")), asyncio.run(_rows(other, "acme"))
    code, out, err = _cli(
        tmp_path,
        "tenants",
        "move",
        tenant,
        "--from",
        f"sqlite:///{tmp_path / source}",
        "--to",
        f"sqlite:///{tmp_path / target}",
    )
    assert code != 0 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], err
    assert (asyncio.run(_rows(pool, "acme")), asyncio.run(_rows(other, "acme"))) == before
    assert not (tmp_path / "cell.db").exists()  # nothing created for a refused move


@pytest.mark.postgres
def test_a_tenant_moves_from_postgresql_to_a_sqlite_cell_and_back(
    tmp_path: Path, postgres_url: str
) -> None:
    cell = f"sqlite:///{tmp_path / 'cell.db'}"
    runs = asyncio.run(_seed(postgres_url))
    for source, target in ((postgres_url, cell), (cell, postgres_url)):
        code, out, err = _cli(tmp_path, "tenants", "move", "acme", "--from", source, "--to", target)
        assert code == 0, err
        assert "0 rows left at the source" in out
        assert set(asyncio.run(_rows(source, "acme")).values()) == {0}
    code, out, err = _cli(tmp_path, "audit", "verify", "--tenant", "acme", "--db", postgres_url)
    assert code == 0, (out, err)
    code, out, err = _cli(
        tmp_path, "runs", "list", "--tenant", "acme", "--db", postgres_url, "--json"
    )
    assert code == 0 and {r["id"] for r in json.loads(out)} == set(runs)
