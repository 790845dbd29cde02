"""``tenantflow simulate``, driven in a subprocess as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
QUICK = ROOT / "scenarios" / "quick.yaml"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, "-m", "tenantflow.cli.main", "simulate", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )


def test_simulate_prints_the_comparison_and_writes_json(tmp_path: Path) -> None:
    out, page = tmp_path / "report.json", tmp_path / "report.html"
    result = _cli(str(QUICK), "--json", str(out), "--html", str(page), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    text = result.stdout
    assert "quick (simulated): latency and SLA" in text
    for expected in ("without controls", "with controls", "ordinary", "bursting", "gdpr", "p99"):
        assert expected in text
    assert "model calls of region-bound tenants left their region" in text
    assert "<svg" in page.read_text(encoding="utf-8")
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["params"]["seed"] == 7 and report["params"]["tenants"] == 20
    assert [s["controls"] for s in report["scenarios"]] == [False, True]
    gdpr = {
        s["controls"]: next(c for c in s["classes"] if c["tenant_class"] == "gdpr")
        for s in report["scenarios"]
    }
    assert gdpr[True]["residency_violations"] == 0
    assert gdpr[False]["residency_violations"] > 0


def test_same_seed_same_figures_and_one_variant(tmp_path: Path) -> None:
    figures = []
    for name in ("a.json", "b.json"):
        result = _cli(str(QUICK), "--seed", "11", "--variants", "on", "--json", name, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        report = json.loads((tmp_path / name).read_text(encoding="utf-8"))
        (scenario,) = report["scenarios"]
        assert scenario["controls"] is True and report["params"]["seed"] == 11
        scenario.pop("wall_s")
        figures.append(scenario)
    assert figures[0] == figures[1]


def test_a_malformed_scenario_is_one_line_naming_the_line_and_exit_2(tmp_path: Path) -> None:
    text = QUICK.read_text(encoding="utf-8")
    broken = text.replace("      max_running_steps: 4\n", "      max_running_steps: -4\n", 1)
    assert broken != text
    line = next(
        n for n, row in enumerate(broken.splitlines(), start=1) if "max_running_steps: -4" in row
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(broken, encoding="utf-8")
    result = _cli(str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"error: bad.yaml:{line}: tenants[4].policy.max_running_steps: must be >= 0 (got -4)"
    ]


def test_a_missing_file_exits_2(tmp_path: Path) -> None:
    result = _cli(str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: nope.yaml: cannot read the scenario")
    assert len(result.stderr.strip().splitlines()) == 1
