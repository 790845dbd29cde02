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


def _figures(report: dict[str, object]) -> list[str]:
    """The runs and completions the report's tables print, per class and scenario."""
    out = []
    for scenario in report["scenarios"]:  # type: ignore[attr-defined]
        for row in scenario["classes"]:
            out.append(f"{row['completed']}/{row['submitted'] - row['refused']}")
    return out


@pytest.mark.parametrize("columns", ["80", None])
def test_no_figure_is_cut_at_80_columns_or_through_a_pipe(
    tmp_path: Path, columns: str | None
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    result = subprocess.run(
        [sys.executable, "-m", "tenantflow.cli.main", "simulate", str(QUICK), "--json", "r.json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "PYTHONIOENCODING": "utf-8"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "…" not in text
    if columns == "80":
        assert all(len(line) <= 80 for line in text.splitlines())
    words = text.split()
    for figure in _figures(json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))):
        assert figure in words, figure


def test_fairness_is_compared_on_one_reference_and_controls_score_higher(tmp_path: Path) -> None:
    result = _cli(str(QUICK), "--json", "r.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    off, on = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["scenarios"]
    # Without controls the burster holds the slots while others wait: the contended figure,
    # the one the table says to compare on, must show it.
    assert off["contended_samples"] > 0 and on["contended_samples"] > 0
    assert off["jain_contended"] < 0.5 < 0.9 < on["jain_contended"]
    assert "fairness when contended" in result.stdout
    assert "compare the scenarios on this" in " ".join(result.stdout.split())


def test_plots_without_matplotlib_fail_before_the_run(tmp_path: Path) -> None:
    # matplotlib hidden: the error must come before the simulation, so nothing is written.
    code = (
        "import sys; sys.modules['matplotlib'] = None; sys.modules['matplotlib.figure'] = None\n"
        "from tenantflow.cli.main import main; sys.argv = ['tenantflow'] + sys.argv[1:]; main()"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "simulate",
            str(QUICK),
            "--json",
            "r.json",
            "--html",
            "r.html",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and "tenantflow[report]" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "r.html").exists()
