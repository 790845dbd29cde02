"""``tenantflow selftest`` in a subprocess: the table, the files it writes, its exit status."""

from __future__ import annotations

import json
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


def test_list_names_every_scenario(tmp_path: Path) -> None:
    done = _selftest("--list", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    names = [line.split()[0] for line in done.stdout.splitlines()]
    assert names == [
        "crash-sqlite",
        "crash-postgres",
        "pause",
        "db-restart",
        "isolation",
        "hostile",
        "budget",
        "load",
        "fuzz",
        "audit",
    ]


def test_an_unknown_scenario_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = _selftest("--only", "crash", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: unknown scenario 'crash': one of crash-sqlite, crash-postgres, pause,"
        " db-restart, isolation, hostile, budget, load, fuzz, audit"
    ]


def test_one_scenario_prints_its_row_and_writes_json_and_markdown(tmp_path: Path) -> None:
    done = _selftest(
        "--only",
        "audit",
        "--seed",
        "7",
        "--json",
        "out.json",
        "--markdown",
        "out.md",
        "--workdir",
        "work",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "profile short, seed 7" in done.stdout
    assert "audit" in done.stdout and "pass" in done.stdout
    data = json.loads((tmp_path / "out.json").read_text())
    assert (data["profile"], data["seed"], data["passed"]) == ("short", 7, True)
    [row] = data["rows"]
    assert row["scenario"] == "audit" and row["status"] == "pass"
    assert row["tamper_injected"] == row["tamper_detected"] == 40
    table = (tmp_path / "out.md").read_text()
    assert "| audit | – | – | – | – | – | – | – | – | 40 / 40 | pass" in table
    assert list((tmp_path / "work").iterdir()) == []  # a passed scenario leaves no files


def test_isolation_runs_without_test_libraries(tmp_path: Path) -> None:
    # A user-facing command must not need hypothesis (a dev extra): hide it and run.
    code = (
        "import sys; sys.modules['hypothesis'] = None\n"
        "from tenantflow.cli.main import main\n"
        "sys.argv = ['tenantflow', 'selftest', '--only', 'isolation', '--json', 'out.json']\n"
        "main()"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env | {"COLUMNS": "200"},
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [row] = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert row["status"] == "pass" and row["cross_tenant"] == 0


def test_a_skipped_scenario_is_not_a_pass(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_") and k != "CI"}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "tenantflow.cli.main", "selftest", "--only", "crash-postgres"),
            *("--pg-dsn", "postgresql://postgres@127.0.0.1:1/none", "--json", "out.json"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env | {"COLUMNS": "200"},
        timeout=110,
        check=False,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "skipped, not passed: crash-postgres" in done.stderr
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["passed"] is False and data["skipped"] == ["crash-postgres"]
