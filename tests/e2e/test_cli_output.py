"""What the CLI prints is whole: ids and numbers are never cut, at 80 columns or through a pipe.

The run ids are longer than an 80-column terminal leaves for them next to two timestamps, so
the table has to choose: it keeps the ids in one piece and leaves columns out with a note.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

import pytest

import tenantflow as tf

pytestmark = pytest.mark.timeout(60)

flow = tf.Workflow("loan-approval-with-a-long-name")


@flow.step
async def verify(ctx: tf.StepContext, input: dict[str, int]) -> int:
    return input["amount"] * 1_000_003


async def _populate(url: str) -> list[str]:
    async with tf.Engine.open(url, seed=1, auto_tenant="enterprise") as engine:
        engine.register(flow)
        ids = []
        for amount in (5004, 12, 77):
            run = await engine.submit(flow.name, tenant="bank-a", input={"amount": amount})
            await run.result()
            ids.append(run.id)
    return ids


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    root = tmp_path_factory.mktemp("output")
    url = f"sqlite:///{root / 'flow.db'}"
    return url, asyncio.run(_populate(url))


def _run(*args: str, columns: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env = {k: v for k, v in env.items() if not k.startswith("TENANTFLOW_")}
    if columns is not None:
        env["COLUMNS"] = columns
    proc = subprocess.run(
        [sys.executable, "-m", "tenantflow.cli.main", *args],
        capture_output=True,  # stdout is a pipe
        text=True,
        env={**env, "PYTHONIOENCODING": "utf-8"},
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _cells(text: str) -> list[str]:
    return [c.strip() for line in text.splitlines() for c in re.split(r"\s{2,}", line.strip())]


def test_runs_list_at_80_columns_keeps_ids_whole_and_says_what_it_left_out(
    store: tuple[str, list[str]],
) -> None:
    url, ids = store
    text = _run("runs", "list", "--tenant", "bank-a", "--db", url, columns="80")
    assert "…" not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    for run_id in ids:
        assert run_id in text.split(), f"{run_id} not in one piece:\n{text}"
    assert "not shown at 80 columns" in text and "--json" in text


def test_through_a_pipe_nothing_is_squeezed(store: tuple[str, list[str]]) -> None:
    url, ids = store
    text = _run("runs", "list", "--tenant", "bank-a", "--db", url, columns=None)
    assert "…" not in text and "not shown" not in text
    for run_id in ids:
        assert run_id in text.split()
    assert "loan-approval-with-a-long-name@1" in text.split()
    assert len(re.findall(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text)) == 6  # both times


def test_run_state_numbers_survive_80_columns(store: tuple[str, list[str]]) -> None:
    url, ids = store
    text = _run("runs", "show", ids[0], "--tenant", "bank-a", "--db", url, columns="80")
    assert "…" not in text
    assert ids[0] in text.split()
    assert str(5004 * 1_000_003) in text.split()  # the result, whole
    text = _run("runs", "timeline", ids[0], "--tenant", "bank-a", "--db", url, columns="80")
    assert "…" not in text
    assert "step.succeeded" in text
