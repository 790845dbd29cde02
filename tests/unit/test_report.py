"""The report: every figure computed from a trace, and every format written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from tenantflow.domain.fairness import max_min_shares
from tenantflow.errors import ContractError
from tenantflow.report import (
    RunOutcome,
    Sample,
    TenantProfile,
    Trace,
    build_report,
    fmt_duration,
    print_report,
    write_html,
    write_json,
    write_png,
)


def _trace(controls: bool) -> Trace:
    tenants = [
        TenantProfile("a", "quiet", "standard", 1.0, residency=None, max_running_steps=4, sla_s=60),
        TenantProfile("eu", "gdpr", "standard", 1.0, residency="eu-west-1", sla_s=60),
        TenantProfile("x", "burst", "standard", 1.0, max_running_steps=2),
    ]
    runs = [
        RunOutcome("a", 0.0, 10.0, "completed", cost_micros=100_000, endpoint_regions=("us",)),
        RunOutcome("a", 5.0, 95.0, "completed", cost_micros=300_000, rate_limit_waits=2),
        RunOutcome("a", 50.0, None, "unfinished"),
        RunOutcome("eu", 0.0, 20.0, "completed", endpoint_regions=("eu-west-1", "us-east-1")),
        RunOutcome("x", 0.0, 30.0, "completed", degradations=("skip_optional",)),
        RunOutcome("x", 1.0, None, "refused"),
    ]
    samples = [Sample(0.0, {"quiet": 2}, {}, {"burst": 3}), Sample(10.0, {"burst": 2}, {}, {})]
    return Trace(
        scenario="with" if controls else "without",
        controls=controls,
        slots=4,
        duration_s=100.0,
        wall_s=1.0,
        tenants=tenants,
        runs=runs,
        samples=samples,
        service_s={"a": 100.0, "eu": 50.0, "x": 50.0},
        demand_s={"a": 100.0, "eu": 50.0, "x": 50.0},
    )


def test_class_rows_are_computed_from_the_runs() -> None:
    report = build_report("t", {"seed": 1}, [_trace(True)])
    rows = {r.tenant_class: r for r in report.scenarios[0].classes}
    quiet = rows["quiet"]
    # latencies 10, 90 and the unfinished run's lower bound 100 - 50 = 50
    assert (quiet.p50_s, quiet.p99_s) == (50.0, 90.0)
    assert quiet.censored is True  # the unfinished run's floor (50) is below the p99
    assert (quiet.sla_measured, quiet.sla_violations) == (3, 2)  # 90 s > 60 s, and unfinished
    assert quiet.rate_limit_waits == 2
    assert quiet.cost_usd == pytest.approx(0.4)
    assert quiet.cost_per_run_usd == pytest.approx(0.4 / 3)
    assert quiet.slot_share == pytest.approx(0.5)
    gdpr = rows["gdpr"]
    assert gdpr.model_calls_by_region == {"eu-west-1": 1, "us-east-1": 1}
    assert gdpr.residency_violations == 1
    burst = rows["burst"]
    assert (burst.refused, burst.completed, burst.sla_measured) == (1, 1, 0)
    assert burst.degradations == {"skip_optional": 1}
    assert burst.max_open_reviews == 3
    assert report.class_order() == ["quiet", "gdpr", "burst"]


def test_jain_is_one_when_everyone_gets_its_fair_share() -> None:
    trace = _trace(True)
    assert build_report("t", {}, [trace]).scenarios[0].jain == pytest.approx(1.0)
    trace.service_s = {"a": 190.0, "eu": 5.0, "x": 5.0}
    assert build_report("t", {}, [trace]).scenarios[0].jain < 0.6


def test_max_min_shares_water_fills_by_weight_and_cap() -> None:
    shares = max_min_shares(
        {"a": 10.0, "b": 100.0, "c": 100.0},
        {"a": 1.0, "b": 1.0, "c": 2.0},
        {"a": float("inf"), "b": float("inf"), "c": 40.0},
        100.0,
    )
    assert shares == pytest.approx({"a": 10.0, "b": 50.0, "c": 40.0})
    with pytest.raises(ContractError):
        max_min_shares({"a": 1.0}, {}, {"a": 1.0}, 1.0)


def test_every_format_is_written(tmp_path: Path) -> None:
    report = build_report("Monday", {"seed": 7}, [_trace(False), _trace(True)])
    console = Console(record=True, width=160)
    print_report(report, console)
    text = console.export_text()
    assert "Monday: latency and SLA" in text and "≥90s" in text and "2/3 (67%)" in text
    write_json(report, tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert [s["scenario"] for s in data["scenarios"]] == ["without", "with"]
    assert data["scenarios"][1]["series"]["latency_p95_s"]["quiet"]
    write_html(report, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "<svg" in page and "<table>" in page and "Monday" in page
    write_png(report, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fmt_duration() -> None:
    assert [fmt_duration(v) for v in (None, 0.42, 45, 750, 11_000)] == [
        "-",
        "0.4s",
        "45s",
        "12.5m",
        "3.1h",
    ]
    assert fmt_duration(90, censored=True) == "≥90s"
