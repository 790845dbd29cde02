"""The placement models (sim/placements.py), the workload file and the advisor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tenantflow.errors import ConfigurationError
from tenantflow.sim import load_scenario
from tenantflow.sim.placements import (
    Calibration,
    Prices,
    calibrate,
    crossings,
    fit_line,
    project,
    projection_table,
)
from tenantflow.topology.advise import Profile, advise
from tenantflow.topology.compare import waited_out
from tenantflow.topology.workload import load_workload

ROOT = Path(__file__).resolve().parents[2]
WORKLOAD = ROOT / "scenarios" / "topology.yaml"


def _entry(points: list[tuple[int, int, float]], **figures: float) -> dict[str, Any]:
    return {
        "available": True,
        "summary_figures": {
            k: {"median": v, "min": v, "max": v, "n": 1} for k, v in figures.items()
        },
        "runs": [
            {
                "detail": {
                    "ops_points": [
                        {"tenants": t, "processes": p, "rss_mb": r} for t, p, r in points
                    ]
                }
            }
        ],
    }


def _report() -> dict[str, Any]:
    return {
        "workload": {"settings": {"quiet_rate": 0.1}, "steps_per_run": 3},
        "placements": {
            "embedded": _entry(
                [(2, 1, 70.0), (4, 1, 70.2), (6, 1, 70.4)],
                steps_per_s=90.0,
                cpu_s_per_1000_steps=3.0,
                **{"affected_share[engine_kill]": 1.0},
            ),
            "centralized": _entry(
                [(2, 11, 370.0), (4, 11, 374.0), (6, 11, 378.0)],
                steps_per_s=30.0,
                cpu_s_per_1000_steps=18.0,
                policy_lag_s=2.5,
                quiet_p99_ratio=1.5,
                cross_region_calls=0,
                region_bound_calls_checked=50,
                **{"affected_share[api_kill]": 1.0},
            ),
            "mesh": {"available": False, "reason": "not on this branch yet"},
        },
    }


def test_fit_line_recovers_a_line_and_survives_one_point() -> None:
    assert fit_line([1, 2, 3], [5, 7, 9]) == pytest.approx((3.0, 2.0))
    assert fit_line([4], [10]) == (10.0, 0.0)


def test_calibration_fits_the_measured_points_and_reports_its_error() -> None:
    cals, missing = calibrate(_report())
    assert missing == {"mesh": "not on this branch yet"}
    central = cals["centralized"]
    assert central.base_rss_mb == pytest.approx(366.0)
    assert central.rss_mb_per_tenant == pytest.approx(2.0)
    assert all(e["rss_error"] < 1e-9 for e in central.errors())
    assert central.shared_blast_share == 1.0
    # federated has no runner here: modelled from embedded, and labelled so
    assert cals["federated"].source.startswith("modelled from embedded")


def test_shared_placement_adds_instances_past_its_capacity_and_splits_the_blast() -> None:
    cal = calibrate(_report())[0]["centralized"]
    small = project(cal, 10, steps_per_s_per_tenant=0.3)
    big = project(cal, 1000, steps_per_s_per_tenant=0.3)  # 300 steps/s: past 0.7 x 30
    assert small.instances == 1 and small.blast_share == 1.0
    assert big.instances == 15
    assert big.blast_share == pytest.approx(1 / 15, abs=1e-3)
    assert big.cost_per_tenant_month < small.cost_per_tenant_month  # the base is amortised


def test_cells_cost_the_same_per_tenant_at_every_size() -> None:
    fed = calibrate(_report())[0]["federated"]
    costs = {project(fed, n, steps_per_s_per_tenant=0.01).cost_per_tenant_month for n in (10, 100)}
    assert len(costs) == 1


def test_crossing_found_between_a_flat_and_a_falling_cost() -> None:
    flat = Calibration("cells", "x", 0, 0.2, 100.0, 0.0, 1e9, 0.0, None, None, cell_size=5)
    shared = Calibration("shared", "x", 10, 0.0, 1000.0, 1.0, 1e9, 0.0, 1.0, None)
    table = projection_table(
        {"cells": flat, "shared": shared},
        steps_per_s_per_tenant=0.0,
        tenants=(10, 20, 50, 100, 200),
        prices=Prices(gb_month=1.0, vcpu_month=0.0),
    )
    found = crossings(table)
    # per tenant: cells 20 MB; shared 1000/N + 1 MB -> equal near N = 53
    assert len(found) == 1
    assert 50 <= found[0]["tenants"] <= 100
    assert found[0]["cheaper_after"] == "shared"


def test_the_workload_file_and_its_quick_profile() -> None:
    full = load_workload(WORKLOAD)
    quick = load_workload(WORKLOAD, quick=True)
    assert len(full.tenants) == 50 and len(quick.tenants) == 6
    assert quick.burster.id == "institution-x" and quick.burster in quick.tenants
    assert quick.settings.phase < full.settings.phase
    assert any(t.region == "eu-west-1" for t in quick.tenants)
    # the simulator reads the same file (it ignores the topology section)
    assert load_scenario(WORKLOAD).tenant_count == 50


def test_a_malformed_topology_section_is_one_error(tmp_path: Path) -> None:
    text = WORKLOAD.read_text().replace("time_scale: 0.002", "time_scale: 7")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigurationError, match=r"topology\.time_scale"):
        load_workload(bad)


def test_advice_follows_the_seed() -> None:
    report = _report()
    tiny = advise(Profile(tenants=3, tenants_in_18_months=5, team=1), report, "test")
    assert tiny.placement == "embedded"
    modest = advise(
        Profile(tenants=30, tenants_in_18_months=60, team=2, mix="similar"), report, "test"
    )
    assert modest.placement == "centralized"
    assert any("fewer than 50 tenants" in r for r in modest.reasons["centralized"])
    big = advise(
        Profile(tenants=120, tenants_in_18_months=400, regulated=10, mix="mixed", team=8),
        report,
        "test",
    )
    assert big.placement == "mesh"
    # mesh was not measured: the advice says so and names the measured fallback
    assert "not measured" in big.graduate[0] and "centralized" in big.graduate[0]
    assert big.figures["mesh"] == ["mesh: not measured: not on this branch yet"]
    assert any("quiet tenants' p99" in line for line in modest.figures["centralized"])


def test_a_probe_waited_out_an_outage_longer_than_a_run_takes() -> None:
    # A single process killed and back in 0.9 s (a fast machine): its probes waited it out
    # (with a fixed one-second floor this counted no tenant as affected on such a machine).
    assert waited_out(0.9, 0.93, 0.06)
    assert waited_out(None, 0.93, 0.06)  # never ended
    assert not waited_out(0.2, 0.93, 0.06)  # ended long before the component was back
    # A killed worker's tenants move on in milliseconds: every probe takes longer than that.
    assert not waited_out(0.2, 0.031, 0.06)
    # An outage no longer than runs take under this load is not told apart from the load.
    assert not waited_out(0.7, 0.6, 0.4)
    assert waited_out(2.0, 2.0, 0.4)
