"""The reliability suite, short profile: every scenario of ``tenantflow selftest`` once, each
judged against its bounds (``docs/reliability.md``). The row's figures are printed
(``pytest -s``); a failed scenario keeps its files under the test's ``tmp_path``.

Scenarios on PostgreSQL fail in CI when the server is not reachable and skip elsewhere, like
every PostgreSQL test (``tests/conftest.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer

from tenantflow.cli.main import app
from tenantflow.cli.selftest import in_process
from tenantflow.selftest import SCENARIOS, SHORT, Context, Scenario, run_scenario
from tenantflow.selftest.table import COLUMNS, cells

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
SERVER = os.environ.get("TENANTFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.mark.parametrize(
    "scenario",
    [
        pytest.param(s, id=s.name, marks=[pytest.mark.postgres] if "postgres" in s.needs else [])
        for s in SCENARIOS
    ],
)
def test_scenario_holds_its_bounds(scenario: Scenario, tmp_path: Path) -> None:
    ctx = Context(
        SHORT,
        seed=1,
        pg_url=SERVER,
        in_ci=IN_CI,
        workdir=tmp_path,
        progress=print,
        command_line=in_process(typer.main.get_command(app)),  # as `tenantflow selftest` runs
    )
    row = run_scenario(scenario, ctx)
    print("\n".join(f"  {c}: {v}" for c, v in zip(COLUMNS, cells(row), strict=True)))
    print("\n".join(f"  {note}" for note in row.notes))
    if row.status == "skip":
        pytest.skip(row.reason)
    assert row.status == "pass", row.reason
