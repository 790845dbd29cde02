"""``tenantflow selftest --placement federated``: the federated scenarios through the selftest
command (their run is ``tenantflow federated selftest``'s; here: what is chosen and refused)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)


def _selftest(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "tenantflow.cli.main", "selftest", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env | {"COLUMNS": "200"},
        timeout=110,
        check=False,
    )


def test_list_names_the_federated_scenarios(tmp_path: Path) -> None:
    done = _selftest("--placement", "federated", "--list", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["federated"]
    assert "SIGKILLed under load" in done.stdout


def test_a_scenario_of_another_placement_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = _selftest("--placement", "federated", "--only", "crash-sqlite", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: unknown scenario 'crash-sqlite' for --placement federated: one of federated"
    ]


def test_an_unknown_placement_is_refused(tmp_path: Path) -> None:
    done = _selftest("--placement", "moon", "--list", cwd=tmp_path)
    assert done.returncode == 2
    assert "moon" in done.stderr
