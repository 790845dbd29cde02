"""Placement models: what a placement costs per tenant from 10 to 1,000 tenants, calibrated from
the figures ``tenantflow topology compare`` measured on this machine.

One machine measures a few tens of tenants; this module projects past them, in closed form,
and says how far its fit is from the points it was fitted to. Per placement it models:

* **per-tenant process overhead** — processes and resident memory as ``base + per_tenant * N``,
  least-squares fitted to the ``/proc`` readings taken while tenants were provisioned;
* **shared-component contention** — a shared deployment executes at most the steps/s measured
  at saturation; past ``utilisation`` of it, another instance of the whole deployment (its base
  processes and memory again) is needed, and each instance is a failure domain of its own;
* **CPU** — the measured CPU-seconds per 1,000 steps times each tenant's steady step rate;
* **failure domains** — the share of tenants one shared component's crash touches: measured at
  the measured size, then ``1 / instances`` as instances are added (a cell per ``cell_size``
  tenants for the federated model);
* **policy lag** — the measured lag, carried as it is (it does not depend on the tenant count in
  these placements: one store, policy snapshotted at admission).

The **federated** placement is calibrated from its own measured points when the report has them
(the plane and the cells it started, as one deployment); a report without them gets a model
built from the *embedded* calibration (a federated cell is an embedded engine serving
``cell_size`` tenants), labelled ``modelled from embedded`` everywhere it appears. A placement
with neither is left out, with the reason.

Money: ``cost = gb_month * GB + vcpu_month * vCPUs``, prices given by the caller (defaults are
round public-cloud list prices, not a quote).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_TENANTS",
    "Calibration",
    "Prices",
    "Projection",
    "calibrate",
    "crossings",
    "fit_line",
    "print_projection",
    "project",
    "projection_from_report",
    "projection_lines",
    "projection_table",
]

DEFAULT_TENANTS = (10, 20, 50, 100, 150, 200, 500, 1000)


@dataclass(frozen=True, slots=True)
class Prices:
    """What a resource costs a month (US$)."""

    gb_month: float = 4.0
    vcpu_month: float = 25.0


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x`` (``b = 0`` with fewer than two distinct x)."""
    n = len(xs)
    if n == 0:
        return 0.0, 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return my, 0.0
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - b * mx, b


@dataclass(frozen=True, slots=True)
class Calibration:
    """A placement's model inputs, from measured figures.

    Attributes:
        placement: Its name; ``source`` says where the figures come from.
        base_processes, processes_per_tenant: The fitted process count.
        base_rss_mb, rss_mb_per_tenant: The fitted resident memory.
        capacity_steps_per_s: Steps/s one instance executed at saturation here.
        cpu_s_per_1000_steps: CPU-seconds per 1,000 steps at saturation here.
        shared_blast_share: Share of tenants a shared component's crash touched (measured).
        policy_lag_s: The measured policy enforcement lag.
        cell_size: Tenants per instance by construction (federated cells); None: shared.
        points: The measured ``(tenants, processes, rss_mb)`` the fit is checked against.
    """

    placement: str
    source: str
    base_processes: float
    processes_per_tenant: float
    base_rss_mb: float
    rss_mb_per_tenant: float
    capacity_steps_per_s: float
    cpu_s_per_1000_steps: float
    shared_blast_share: float | None
    policy_lag_s: float | None
    cell_size: int | None = None
    points: tuple[tuple[int, float, float], ...] = ()

    def errors(self) -> list[dict[str, float]]:
        """The fit against each measured point: relative error of processes and memory."""
        out = []
        for tenants, procs, rss in self.points:
            p_hat = self.base_processes + self.processes_per_tenant * tenants
            r_hat = self.base_rss_mb + self.rss_mb_per_tenant * tenants
            out.append(
                {
                    "tenants": tenants,
                    "processes": procs,
                    "processes_model": round(p_hat, 2),
                    "processes_error": abs(p_hat - procs) / procs if procs else 0.0,
                    "rss_mb": rss,
                    "rss_mb_model": round(r_hat, 1),
                    "rss_error": abs(r_hat - rss) / rss if rss else 0.0,
                }
            )
        return out


def _median(summary: Mapping[str, Any], key: str) -> float | None:
    value = summary.get(key, {})
    got = value.get("median") if isinstance(value, Mapping) else None
    return None if got is None else float(got)


def calibrate(report: Mapping[str, Any]) -> tuple[dict[str, Calibration], dict[str, str]]:
    """Calibrations from a ``topology compare`` report (its JSON), and why the placements
    without one have none."""
    out: dict[str, Calibration] = {}
    missing: dict[str, str] = {}
    for name, entry in report.get("placements", {}).items():
        if not entry.get("available") or not entry.get("runs"):
            missing[name] = entry.get("reason", "not measured")
            continue
        summary = entry.get("summary_figures", {})
        xs: list[float] = []
        procs: list[float] = []
        rss: list[float] = []
        points: list[tuple[int, float, float]] = []
        for run in entry["runs"]:
            for point in run.get("detail", {}).get("ops_points", []):
                xs.append(float(point["tenants"]))
                procs.append(float(point["processes"]))
                rss.append(float(point["rss_mb"]))
                points.append(
                    (int(point["tenants"]), float(point["processes"]), float(point["rss_mb"]))
                )
        p0, p1 = fit_line(xs, procs)
        r0, r1 = fit_line(xs, rss)
        shared = [
            v
            for k, v in summary.items()
            if k.startswith("affected_share[")
            and (k.startswith("affected_share[api") or k.startswith("affected_share[engine"))
            and isinstance(v, Mapping)
            and v.get("median") is not None
        ]
        capacity = _median(summary, "steps_per_s")
        cpu = _median(summary, "cpu_s_per_1000_steps")
        if capacity is None or cpu is None:
            missing[name] = "no saturation figures in the report"
            continue
        out[name] = Calibration(
            placement=name,
            source="measured",
            base_processes=p0,
            processes_per_tenant=max(0.0, p1),
            base_rss_mb=r0,
            rss_mb_per_tenant=max(0.0, r1),
            capacity_steps_per_s=capacity,
            cpu_s_per_1000_steps=cpu,
            shared_blast_share=max(float(v["median"]) for v in shared) if shared else None,
            policy_lag_s=_median(summary, "policy_lag_s"),
            points=tuple(points),
        )
    if "federated" not in out and "embedded" in out:
        e = out["embedded"]
        out["federated"] = Calibration(
            placement="federated",
            source="modelled from embedded (one embedded engine per cell of 5 tenants)",
            base_processes=0.0,
            processes_per_tenant=1 / 5,
            base_rss_mb=e.base_rss_mb,
            rss_mb_per_tenant=e.rss_mb_per_tenant,
            capacity_steps_per_s=e.capacity_steps_per_s,
            cpu_s_per_1000_steps=e.cpu_s_per_1000_steps,
            shared_blast_share=None,
            policy_lag_s=None,
            cell_size=5,
        )
        missing.pop("federated", None)
    return out, missing


@dataclass(frozen=True, slots=True)
class Projection:
    """One placement at one tenant count."""

    placement: str
    tenants: int
    instances: int
    processes: float
    rss_gb: float
    vcpus: float
    cost_month: float
    cost_per_tenant_month: float
    blast_share: float | None
    extra: dict[str, Any] = field(default_factory=dict)


def project(
    cal: Calibration,
    tenants: int,
    *,
    steps_per_s_per_tenant: float,
    prices: Prices = Prices(),
    utilisation: float = 0.7,
) -> Projection:
    """``cal``'s placement serving ``tenants`` tenants that each execute
    ``steps_per_s_per_tenant`` steps a second (see the module docstring)."""
    load = tenants * steps_per_s_per_tenant
    if cal.cell_size is not None:
        instances = max(1, math.ceil(tenants / cal.cell_size))
    else:
        instances = max(1, math.ceil(load / (utilisation * cal.capacity_steps_per_s)))
    per_instance_tenants = tenants / instances
    processes = instances * (cal.base_processes + cal.processes_per_tenant * per_instance_tenants)
    if cal.cell_size is not None:
        processes = float(instances)
    rss_mb = instances * cal.base_rss_mb + cal.rss_mb_per_tenant * tenants
    vcpus = load * cal.cpu_s_per_1000_steps / 1000
    cost = prices.gb_month * rss_mb / 1024 + prices.vcpu_month * vcpus
    if cal.cell_size is not None:
        blast = 1 / instances
    elif cal.shared_blast_share is not None:
        # each instance serves 1/instances of the tenants; its shared parts fail alone
        blast = cal.shared_blast_share / instances
    else:
        blast = None
    return Projection(
        placement=cal.placement,
        tenants=tenants,
        instances=instances,
        processes=round(processes, 1),
        rss_gb=round(rss_mb / 1024, 3),
        vcpus=round(vcpus, 3),
        cost_month=round(cost, 2),
        cost_per_tenant_month=round(cost / tenants, 4),
        blast_share=None if blast is None else round(blast, 4),
    )


def crossings(
    table: Mapping[str, Sequence[Projection]],
) -> list[dict[str, Any]]:
    """Where one placement's cost per tenant crosses another's, between adjacent tenant
    counts (linear interpolation), for every pair."""
    names = sorted(table)
    out: list[dict[str, Any]] = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            rows_a, rows_b = table[a], table[b]
            for (pa, pb), (qa, qb) in zip(
                zip(rows_a, rows_b, strict=True),
                zip(rows_a[1:], rows_b[1:], strict=True),
                strict=False,
            ):
                d0 = pa.cost_per_tenant_month - pb.cost_per_tenant_month
                d1 = qa.cost_per_tenant_month - qb.cost_per_tenant_month
                if d0 == 0 or d0 * d1 < 0:
                    frac = 0.0 if d0 == 0 else d0 / (d0 - d1)
                    at = pa.tenants + frac * (qa.tenants - pa.tenants)
                    cheaper_after = b if d1 > 0 else a
                    out.append(
                        {"a": a, "b": b, "tenants": round(at), "cheaper_after": cheaper_after}
                    )
    return out


def projection_table(
    cals: Mapping[str, Calibration],
    *,
    steps_per_s_per_tenant: float,
    tenants: Sequence[int] = DEFAULT_TENANTS,
    prices: Prices = Prices(),
) -> dict[str, list[Projection]]:
    """Every calibrated placement at every tenant count of ``tenants``."""
    return {
        name: [
            project(
                cal,
                n,
                steps_per_s_per_tenant=steps_per_s_per_tenant,
                prices=prices,
            )
            for n in tenants
        ]
        for name, cal in cals.items()
    }


def projection_from_report(
    report: Mapping[str, Any],
    *,
    tenants: Sequence[int] = DEFAULT_TENANTS,
    prices: Prices | None = None,
    rate: float | None = None,
) -> dict[str, Any]:
    """Calibrate the placement models from a compare report and project them (each
    tenant executing ``rate`` steps/s; default: the workload's steady rate)."""
    tenants = tenants or DEFAULT_TENANTS
    prices = prices or Prices()
    cals, missing = calibrate(report)
    w = report["workload"]
    if rate is None:
        rate = float(w["settings"]["quiet_rate"]) * int(w["steps_per_run"])
    table = projection_table(cals, steps_per_s_per_tenant=rate, tenants=tenants, prices=prices)
    projection = {
        "steps_per_s_per_tenant": rate,
        "prices": {"gb_month": prices.gb_month, "vcpu_month": prices.vcpu_month},
        "calibration": {
            name: {
                "source": c.source,
                "base_processes": round(c.base_processes, 2),
                "processes_per_tenant": round(c.processes_per_tenant, 4),
                "base_rss_mb": round(c.base_rss_mb, 1),
                "rss_mb_per_tenant": round(c.rss_mb_per_tenant, 3),
                "capacity_steps_per_s": round(c.capacity_steps_per_s, 1),
                "cpu_s_per_1000_steps": round(c.cpu_s_per_1000_steps, 2),
                "shared_blast_share": c.shared_blast_share,
                "policy_lag_s": c.policy_lag_s,
                "cell_size": c.cell_size,
                "error_at_measured_points": c.errors(),
            }
            for name, c in cals.items()
        },
        "not_modelled": missing,
        "table": {name: [_proj(p) for p in rows] for name, rows in table.items()},
        "crossings": crossings(table),
    }
    return projection


def _proj(p: Any) -> dict[str, Any]:
    return {
        "tenants": p.tenants,
        "instances": p.instances,
        "processes": p.processes,
        "rss_gb": p.rss_gb,
        "vcpus": p.vcpus,
        "cost_month": p.cost_month,
        "cost_per_tenant_month": p.cost_per_tenant_month,
        "blast_share": p.blast_share,
    }


def projection_lines(projection: Mapping[str, Any]) -> list[str]:
    """The projection in words: inputs, the fit's error, cost per tenant, crossings."""
    out = [
        f"Projection (model, not measurement): {projection['steps_per_s_per_tenant']:g} steps/s"
        f" per tenant, ${projection['prices']['gb_month']:g}/GB-month,"
        f" ${projection['prices']['vcpu_month']:g}/vCPU-month"
    ]
    for name, c in projection["calibration"].items():
        out.append(
            f"  {name} [{c['source']}]: processes {c['base_processes']:g} +"
            f" {c['processes_per_tenant']:g}/tenant, RSS {c['base_rss_mb']:g} MB +"
            f" {c['rss_mb_per_tenant']:g} MB/tenant, capacity {c['capacity_steps_per_s']:g}"
            f" steps/s, {c['cpu_s_per_1000_steps']:g} CPU-s/1000 steps"
        )
        errs = c["error_at_measured_points"]
        if errs:
            worst_rss = max(e["rss_error"] for e in errs)
            worst_p = max(e["processes_error"] for e in errs)
            points = ", ".join(str(e["tenants"]) for e in errs)
            out.append(
                f"    fit error at the measured points (tenants {points}): memory ≤"
                f" {worst_rss:.1%}, processes ≤ {worst_p:.1%}"
            )
    for name, why in projection["not_modelled"].items():
        out.append(f"  {name}: not modelled: {why}")
    names = list(projection["table"])
    if names:
        counts = [row["tenants"] for row in projection["table"][names[0]]]
        out.append(
            "  cost per tenant per month (US$) at " + ", ".join(map(str, counts)) + " tenants:"
        )
        for name in names:
            cells = ", ".join(
                f"{row['cost_per_tenant_month']:.3f}" for row in projection["table"][name]
            )
            out.append(f"    {name}: {cells}")
    if projection["crossings"]:
        for c in projection["crossings"]:
            out.append(
                f"  {c['a']} and {c['b']} cross near {c['tenants']} tenants;"
                f" {c['cheaper_after']} is cheaper past it"
            )
    elif names:
        out.append("  no crossing of cost per tenant between 10 and 1,000 tenants")
    return out


def print_projection(path: Any, scenario: Any, console: Any) -> None:
    """``tenantflow simulate --placements COMPARE.json``: the placement models calibrated from
    that report, projected at ``scenario``'s mean step rate per tenant."""
    import json
    from pathlib import Path

    from tenantflow.errors import ConfigurationError

    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}", field="placements") from None
    if not isinstance(report, dict) or "placements" not in report:
        raise ConfigurationError(
            f"{path} is not a `tenantflow topology compare --json` report", field="placements"
        )
    tenants = max(1, scenario.tenant_count)
    runs_per_s = sum(g.rate_per_s * len(g.tenant_ids) for g in scenario.groups) / tenants
    rate = runs_per_s * len(scenario.spec.workflow.steps)
    projection = projection_from_report(report, rate=max(rate, 1e-9))
    console.print(
        f"Placements for {scenario.name}: {runs_per_s * 86400:.0f} runs/day per tenant on average",
        highlight=False,
    )
    for line in projection_lines(projection):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
