"""`tenantflow demo`: the loan platform's Monday morning, small and fast, end to end."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tenantflow as tf
from tenantflow.examples.loan_platform.demo import BURSTER, DemoConfig, arrivals, run_demo
from tenantflow.examples.loan_platform.platform import institutions
from tenantflow.report import Report

# The demo fixture does about 5 CPU-seconds of engine work in virtual time (a few seconds on an
# idle machine). Its figures do not depend on how long that takes, so the timeout is only a
# watchdog against a hang, wide enough for a machine where this process gets a tenth of a core.
pytestmark = pytest.mark.timeout(600)

SMALL = DemoConfig(
    institutions=8,
    slots=10,
    burst=150,
    minutes=6.0,
    drain_min=3.0,
    burst_at_min=1.0,
    burst_spread_min=1.0,
    speed=240.0,
)


def test_the_same_seed_gives_the_same_workload() -> None:
    members = institutions(SMALL.institutions, slots=SMALL.slots)
    assert arrivals(SMALL, members) == arrivals(SMALL, members)
    other = dataclasses.replace(SMALL, seed=2)
    assert arrivals(other, members) != arrivals(SMALL, members)
    burst = [a for a in arrivals(SMALL, members) if a[1] == BURSTER and a[0] >= 60.0]
    assert len(burst) >= SMALL.burst


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="module")
def report(demo_dir: Path) -> Report:
    # In virtual time: the engine's work takes none, so the figures below are the same on an
    # idle machine and a starved one (on the scaled wall clock a loaded machine stretched every
    # step and failed these tests now and then).
    return asyncio.run(run_demo(SMALL, directory=demo_dir, virtual=True))


async def _fraud_screens(directory: Path, tenant: str) -> list[tuple[str, str, list[str]]]:
    """(run status, fraud screen status, budget degradations of that step) for each run."""
    reader = tf.Engine.open(
        f"sqlite:///{directory / 'us-east-1.db'}",
        regions={"eu-west-1": f"sqlite:///{directory / 'eu-west-1.db'}"},
        region="us-east-1",
        execute=False,
    )
    out = []
    async with reader:
        for run in await reader.list_runs(tenant, limit=1000):
            steps = {s.key: s.status.value for s in await reader.steps(tenant, run.id)}
            degraded = [
                str(e.data.get("action"))
                for e in await reader.timeline(tenant, run.id)
                if e.kind == "budget.degraded" and e.step == "fraud_screen"
            ]
            out.append((run.status.value, steps.get("fraud_screen", "-"), degraded))
    return out


def _rows(report: Report, controls: bool) -> dict[str, object]:
    summary = next(s for s in report.scenarios if s.controls == controls)
    return {r.tenant_class: r for r in summary.classes}


def test_controls_keep_the_burst_inside_its_caps(report: Report) -> None:
    trace = next(t for t in report.traces if t.controls)
    cap = max(1, SMALL.slots // 5)
    held = [s.running.get("X (bursting)", 0) for s in trace.samples]
    assert max(held) <= cap  # the running-step cap held at every sample
    without = next(t for t in report.traces if not t.controls)
    assert max(s.running.get("X (bursting)", 0) for s in without.samples) > cap


def test_quiet_tenants_do_better_with_controls(report: Report) -> None:
    on, off = _rows(report, True), _rows(report, False)
    quiet = ["regional bank", "credit union", "ordinary"]
    on_late = sum(on[c].sla_violations for c in quiet)  # type: ignore[attr-defined]
    off_late = sum(off[c].sla_violations for c in quiet)  # type: ignore[attr-defined]
    assert on_late < off_late
    assert on["ordinary"].p95_s < off["ordinary"].p95_s  # type: ignore[attr-defined]


def test_hard_rules_hold_in_both_variants(report: Report) -> None:
    for controls in (True, False):
        rows = _rows(report, controls)
        eu = rows["EU (GDPR)"]
        assert set(eu.model_calls_by_region) <= {"eu-west-1"}  # type: ignore[attr-defined]
        assert all(r.residency_violations == 0 for r in rows.values())  # type: ignore[attr-defined]
    for trace in report.traces:
        for run in trace.runs:
            if run.tenant == "fintech-startup" and run.status == "completed":
                assert run.cost_micros <= 100_000  # never over its per-run budget


def test_the_fintechs_budget_never_covers_the_fraud_screen(report: Report, demo_dir: Path) -> None:
    # $0.10 a run: after identity and the bureau ($0.07) and the compliance check (at least
    # $0.0056), the fraud screen's worst case (300 tokens out on the small model, $0.024, plus
    # its prompt) never fits, so whenever the budget is checked the ladder skips it. Whether
    # the step gets that far is not the budget's to say: its 2-minute timeout can end an
    # attempt first, and the optional step then fails without a degradation.
    screens = asyncio.run(_fraud_screens(demo_dir / "controls", "fintech-startup"))
    assert screens, "the fintech submitted no application"
    for run_status, screen, degraded in screens:
        assert screen != "succeeded", screens
        if screen == "skipped":
            assert degraded == ["skip_optional"], screens
        assert degraded in ([], ["skip_optional"]), screens
        if run_status == "completed":
            assert screen in ("skipped", "failed"), screens


def test_cli_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    env = {**os.environ, "COLUMNS": "160"}
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "tenantflow.cli.main", "demo", "--quiet"),
            *("--institutions", "6", "--slots", "6", "--burst", "30", "--minutes", "2"),
            *("--drain", "1", "--burst-at", "0.5", "--speed", "300", "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "latency and SLA" in proc.stdout and "Jain" in proc.stdout
    data = json.loads(out.read_text())
    assert {s["scenario"] for s in data["scenarios"]} == {"with controls", "without controls"}


def test_cli_refuses_bad_options_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tenantflow.cli.main", "demo", "--quiet", "--burst-at", "99"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --burst-at 99 ")
    assert "--minutes" in lines[0] and "burst_at_min" not in lines[0]  # the user's terms


def test_cli_shorter_than_the_default_burst_minute_runs(tmp_path: Path) -> None:
    # `demo --minutes 2` used to fail on the default burst minute (8): now the burst moves in.
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "tenantflow.cli.main", "demo", "--quiet", "--minutes", "2"),
            *("--institutions", "6", "--slots", "6", "--burst", "10", "--drain", "0.5"),
            *("--speed", "600", "--json", str(tmp_path / "d.json")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    params = json.loads((tmp_path / "d.json").read_text())["params"]
    assert "minute 0.5" in str(params)


def test_the_bureau_limits_are_the_platforms_policy_not_the_library_presets() -> None:
    from tenantflow.examples.loan_platform.platform import BUREAU_PER_TIER

    members = {m.tenant_id: m for m in institutions(8, slots=10)}
    assert members["fintech-startup"].policy["rate_limits"] == {
        "tool:credit_bureau": BUREAU_PER_TIER["free"]
    }
    assert members["regional-bank"].policy["rate_limits"] == {"tool:credit_bureau": "500/hour"}
