"""The comparison as a terminal table, JSON, and an HTML page or PNG with plots.

Every cell is a measured figure — the median over the repetitions, with min–max when there
were several — or ``—`` when it could not be measured in that run; a placement that could not
run shows ``not available`` and its reason under the table, never a figure.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from tenantflow.errors import ConfigurationError
from tenantflow.sim.placements import (
    DEFAULT_TENANTS,
    Prices,
    projection_from_report,
    projection_lines,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ROWS",
    "add_projection",
    "print_report",
    "projection_lines",
    "write_html",
    "write_json",
    "write_png",
]

# (label, figure key, format); a key with "[*]" expands to every fault trial measured.
ROWS: list[tuple[str, str, str]] = [
    ("throughput at saturation (steps/s)", "steps_per_s", "{:.1f}"),
    ("throughput at saturation (runs/s)", "runs_per_s", "{:.1f}"),
    ("run p50, quiet (s)", "run_p50_s", "{:.3f}"),
    ("run p99, quiet (s)", "run_p99_s", "{:.3f}"),
    ("hop ready→started p50 (ms)", "hop_p50_ms", "{:.1f}"),
    ("hop ready→started p99 (ms)", "hop_p99_ms", "{:.1f}"),
    ("quiet tenants' p99 without burst (s)", "quiet_p99_alone_s", "{:.3f}"),
    ("quiet tenants' p99 with burst (s)", "quiet_p99_burst_s", "{:.3f}"),
    ("quiet p99 ratio, burst / none (target ≤ 1.10)", "quiet_p99_ratio", "{:.2f}"),
    ("corr(quiet p99 per s, burster queue)", "quiet_p99_depth_corr", "{:+.2f}"),
    ("corr: seconds measured (quiet + burst)", "quiet_p99_depth_corr_points", "{:.0f}"),
    ("Jain's index at saturation (weighted)", "jain", "{:.3f}"),
    ("burster drain alone (s)", "burster_drain_alone_s", "{:.2f}"),
    ("burster drain with others (s)", "burster_drain_with_others_s", "{:.2f}"),
    ("burster drain ratio, with others / alone", "burster_drain_ratio", "{:.2f}"),
    ("policy: admissions over the new cap", "policy_violations", "{:.0f}"),
    ("policy: lag to last violation (s)", "policy_lag_s", "{:.2f}"),
    ("policy: enforcement points", "enforcement_points", "{:.0f}"),
    ("cross-region model calls", "cross_region_calls", "{:.0f}"),
    ("region-bound model calls checked", "region_bound_calls_checked", "{:.0f}"),
    ("attribution error: tokens", "tokens_attribution_error", "{:.2%}"),
    ("attribution error: money", "cost_attribution_error", "{:.2%}"),
    ("attribution error: slot-seconds", "slot_seconds_attribution_error", "{:.2%}"),
    ("processes", "processes", "{:.0f}"),
    ("resident memory (MB)", "rss_mb", "{:.0f}"),
    ("resident memory per tenant (MB)", "rss_mb_per_tenant", "{:.1f}"),
    ("sockets per tenant", "sockets_per_tenant", "{:.2f}"),
    ("database connections", "db_connections", "{:.0f}"),
    ("provisioning per tenant p50 (s)", "provision_s_p50", "{:.2f}"),
    ("CPU-seconds per 1,000 steps", "cpu_s_per_1000_steps", "{:.2f}"),
    ("timeline assembly p50 (ms)", "timeline_p50_ms", "{:.1f}"),
    ("timeline: expected events present", "timeline_events_present", "{:.1%}"),
    ("SLA for 'affected' (s)", "sla_s", "{:.2f}"),
    ("tenants affected: [*]", "affected_share[*]", "{:.0%}"),
    ("first progress after: [*] (s)", "first_progress_s[*]", "{:.2f}"),
    ("p99 back within 1.1x after: [*] (s)", "p99_back_s[*]", "{:.1f}"),
    ("runs lost (must be 0)", "runs_lost", "{:.0f}"),
    ("runs not ended by the drain timeout", "runs_stuck", "{:.0f}"),
    ("duplicate completions (must be 0)", "duplicate_completions", "{:.0f}"),
    ("re-executed steps (at-least-once)", "reexecuted_steps", "{:.0f}"),
    ("submissions refused", "submissions_refused", "{:.0f}"),
]


def _rows(report: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    keys: set[str] = set()
    for entry in report["placements"].values():
        keys |= set(entry.get("summary_figures", {}))
    out: list[tuple[str, str, str]] = []
    for label, key, fmt in ROWS:
        if "[*]" not in key:
            out.append((label, key, fmt))
            continue
        prefix = key.split("[", 1)[0]
        for found in sorted(k for k in keys if k.startswith(prefix + "[")):
            trial = found[len(prefix) + 1 : -1].replace("_", " ")
            out.append((label.replace("[*]", trial), found, fmt))
    return out


def _cell(summary: Mapping[str, Any] | None, fmt: str) -> str:
    if not summary or summary.get("median") is None:
        return "—"
    text = fmt.format(summary["median"])
    if summary.get("n", 1) > 1 and summary["min"] != summary["max"]:
        text += f" ({fmt.format(summary['min'])}–{fmt.format(summary['max'])})"
    return text


def table_rows(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows (one column per placement)."""
    names = list(report["placements"])
    header = ["figure", *names]
    rows: list[list[str]] = []
    for label, key, fmt in _rows(report):
        row = [label]
        for name in names:
            entry = report["placements"][name]
            if not entry.get("available"):
                row.append("not available")
            else:
                row.append(_cell(entry.get("summary_figures", {}).get(key), fmt))
        rows.append(row)
    return header, rows


def what_ran(report: Mapping[str, Any]) -> list[str]:
    """Lines saying what ran: machine, versions, each placement's processes and durability."""
    mach = report["machine"]
    w = report["workload"]
    lines = [
        f"workload: {w['file']} (profile {w['profile']}, seed {w['seed']}, {w['tenants']}"
        f" tenants, burster {w['burster']}, {w['steps_per_run']} steps a run)",
        f"machine: {mach['cpus']} CPUs ({mach['cpu'] or 'unknown'}), {mach['memory_gb']} GB,"
        f" load at start {mach['load_average_at_start']}; {mach['os']}",
        f"versions: tenantflow {mach['tenantflow']}, Python {mach['python']}",
    ]
    for name, entry in report["placements"].items():
        if not entry.get("available"):
            lines.append(f"{name}: not available: {entry['reason']}")
            continue
        first = entry["runs"][0]["describe"]
        lines.append(
            f"{name}: {first['processes']}; {first['store']}; {first['durability']};"
            f" {len(entry['runs'])} run(s), {sum(r['seconds'] for r in entry['runs']):.0f} s"
        )
    return lines


def print_report(report: Mapping[str, Any], console: Console) -> None:
    header, rows = table_rows(report)
    table = Table(title=f"tenantflow topology compare: {report['workload']['name']}")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for line in what_ran(report):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    projection = report.get("projection")
    if projection:
        for line in projection_lines(projection):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
    console.print("What one machine cannot show:", highlight=False)
    for line in report["cannot_show"]:
        console.print(f"  - {line}", highlight=False, markup=False, soft_wrap=True)


def add_projection(
    report: dict[str, Any],
    *,
    tenants: Sequence[int] = DEFAULT_TENANTS,
    prices: Prices | None = None,
    rate: float | None = None,
) -> dict[str, Any]:
    """Calibrate the placement models from ``report`` and add their projection to it (each
    tenant executing ``rate`` steps/s; default: the workload's steady rate)."""
    projection = projection_from_report(report, tenants=tenants, prices=prices, rate=rate)
    report["projection"] = projection
    return projection


def write_json(report: Mapping[str, Any], path: Path) -> None:
    _write_atomic(path, json.dumps(report, indent=1, default=str).encode())


def _figure(report: Mapping[str, Any]) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigurationError(
            "--html and --png draw plots with matplotlib, which is not installed:"
            " pip install 'tenantflow[report]'",
            field="matplotlib",
        ) from None
    measured = {n: e for n, e in report["placements"].items() if e.get("available")}
    fig = Figure(figsize=(12, 13), layout="constrained")
    axes = fig.subplots(3, 2)
    # 1. quiet tenants' p99 per second against the burster's queue, per placement
    ax = axes[0][0]
    twin = ax.twinx()
    for i, (name, entry) in enumerate(measured.items()):
        series = entry["runs"][0]["detail"].get("isolation_series", {})
        if series.get("second"):
            ax.plot(
                series["second"],
                series["quiet_p99_s"],
                marker="o",
                label=f"{name} quiet p99",
                color=f"C{i}",
            )
            twin.plot(
                series["second"],
                series["burster_queued"],
                linestyle="--",
                color=f"C{i}",
                alpha=0.6,
                label=f"{name} burster queued",
            )
    ax.set_title("Quiet then burst phase: quiet tenants' p99 per s (—), burster queued (--)")
    ax.set_xlabel("second from the quiet phase's start")
    ax.set_ylabel("p99 (s)")
    twin.set_ylabel("burster runs queued")
    ax.legend(loc="upper right", fontsize=7)
    # 2. blast radius per fault
    ax = axes[0][1]
    trials: list[str] = sorted(
        {
            k
            for e in measured.values()
            for k in e.get("summary_figures", {})
            if k.startswith("affected_share[")
        }
    )
    width = 0.8 / max(1, len(measured))
    for i, (name, entry) in enumerate(measured.items()):
        values = [(entry["summary_figures"].get(t) or {}).get("median") or 0.0 for t in trials]
        ax.bar([j + i * width for j in range(len(trials))], values, width, label=name)
    ax.set_xticks([j + width * (len(measured) - 1) / 2 for j in range(len(trials))])
    ax.set_xticklabels(
        [t[len("affected_share[") : -1].replace("_", " ") for t in trials],
        rotation=30,
        fontsize=8,
        ha="right",
        rotation_mode="anchor",
    )
    ax.set_ylim(0, 1.05)
    ax.set_title("Blast radius: share of tenants affected by one fault")
    ax.legend(fontsize=8)
    # 3. projection: cost per tenant
    ax = axes[1][0]
    projection = report.get("projection") or {}
    for name, rows in projection.get("table", {}).items():
        ax.plot(
            [r["tenants"] for r in rows],
            [r["cost_per_tenant_month"] for r in rows],
            marker=".",
            label=name,
        )
    for c in projection.get("crossings", []):
        ax.axvline(c["tenants"], color="grey", linestyle=":", alpha=0.7)
    ax.set_xscale("log")
    ax.set_title("Projection (model): cost per tenant per month (US$)")
    ax.set_xlabel("tenants")
    ax.legend(fontsize=8)
    # 4. memory against tenants provisioned (the calibration points)
    ax = axes[1][1]
    for name, entry in measured.items():
        pts = [p for r in entry["runs"] for p in r["detail"].get("ops_points", [])]
        ax.plot(
            [p["tenants"] for p in pts],
            [p["rss_mb"] for p in pts],
            marker="o",
            linestyle="",
            label=name,
        )
    ax.set_title("Measured: RSS of all processes vs tenants")
    ax.set_xlabel("tenants")
    ax.set_ylabel("MB")
    ax.legend(fontsize=8)
    # 5. recovery: seconds after each fault until the per-second p99 is back within 1.1x
    ax = axes[2][0]
    for i, (name, entry) in enumerate(measured.items()):
        faults = entry["runs"][0]["detail"].get("faults", [])
        labels = [f"{t['kind']} {t['fault']}" for t in faults]
        back = [t.get("p99_back_s") for t in faults]
        positions = [sorted_trials(measured).index(lab) + i * width for lab in labels]
        ax.bar(
            [x for x, b in zip(positions, back, strict=True) if b is not None],
            [b for b in back if b is not None],
            width,
            label=name,
            color=f"C{i}",
        )
        windows = [t.get("window_s") for t in faults]
        ax.scatter(
            [x for x, b in zip(positions, back, strict=True) if b is None],
            [w or 0.0 for w, b in zip(windows, back, strict=True) if b is None],
            marker="x",
            color=f"C{i}",
        )
    names = sorted_trials(measured)
    ax.set_xticks([j + width * (len(measured) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels(names, rotation=30, fontsize=8, ha="right", rotation_mode="anchor")
    ax.set_title("Recovery: s after the fault until p99 per s is back within 1.1x (x: not back)")
    ax.set_ylabel("s")
    ax.legend(fontsize=8)
    axes[2][1].axis("off")
    return fig


def sorted_trials(measured: Mapping[str, Any]) -> list[str]:
    """Every ``kind fault`` trial of the measured placements, sorted."""
    return sorted(
        {
            f"{t['kind']} {t['fault']}"
            for e in measured.values()
            for t in e["runs"][0]["detail"].get("faults", [])
        }
    )


def write_png(report: Mapping[str, Any], path: Path) -> None:
    buffer = io.BytesIO()
    _figure(report).savefig(buffer, format="png", dpi=100)
    _write_atomic(path, buffer.getvalue())


def write_html(report: Mapping[str, Any], path: Path) -> None:
    buffer = io.StringIO()
    _figure(report).savefig(buffer, format="svg")
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    header, rows = table_rows(report)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    ran = "".join(f"<li>{html.escape(line)}</li>" for line in what_ran(report))
    proj = (
        "".join(
            f"<li>{html.escape(line)}</li>"
            for line in projection_lines(
                report.get("projection")
                or {
                    "calibration": {},
                    "not_modelled": {},
                    "table": {},
                    "crossings": [],
                    "steps_per_s_per_tenant": 0,
                    "prices": {"gb_month": 0, "vcpu_month": 0},
                }
            )
        )
        if report.get("projection")
        else ""
    )
    cannot = "".join(f"<li>{html.escape(line)}</li>" for line in report["cannot_show"])
    page = _PAGE.format(
        title=html.escape(f"tenantflow topology compare: {report['workload']['name']}"),
        table=f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>",
        ran=ran,
        projection=proj,
        cannot=cannot,
        svg=svg,
    )
    _write_atomic(path, page.encode())


def _write_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigurationError(f"cannot write {path}: {exc.strerror}", field="path") from exc


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }}
td:first-child {{ text-align: left; }}
svg {{ max-width: 100%; height: auto; }}
</style></head>
<body>
<h1>{title}</h1>
{table}
<h2>What ran</h2><ul>{ran}</ul>
<h2>Projection past this machine</h2><ul>{projection}</ul>
<div>{svg}</div>
<h2>What one machine cannot show</h2><ul>{cannot}</ul>
</body></html>
"""


def shipped_subset(report: Mapping[str, Any], measured_on: str) -> dict[str, Any]:
    """What ``tenantflow topology advise`` and ``project`` need from a report (its figures, the
    calibration points, what ran), for :mod:`tenantflow.topology.defaults`."""
    placements: dict[str, Any] = {}
    for name, entry in report["placements"].items():
        if not entry.get("available"):
            placements[name] = {k: entry[k] for k in ("summary", "available", "reason")}
            continue
        placements[name] = {
            "summary": entry["summary"],
            "available": True,
            "summary_figures": entry["summary_figures"],
            "runs": [
                {
                    "describe": run["describe"],
                    "seconds": run["seconds"],
                    "detail": {"ops_points": run["detail"].get("ops_points", [])},
                }
                for run in entry["runs"]
            ],
        }
    return {
        "measured_on": measured_on,
        "workload": report["workload"],
        "machine": report["machine"],
        "placements": placements,
        "cannot_show": report["cannot_show"],
    }


def defaults_module(report: Mapping[str, Any], measured_on: str, command: str) -> str:
    """The source of :mod:`tenantflow.topology.defaults` for ``report``."""
    import pprint
    import textwrap

    data = pprint.pformat(shipped_subset(report, measured_on), width=96, sort_dicts=True)
    what = textwrap.fill(f"a real run of ``{command}`` ({measured_on}).", width=96)
    return (
        '"""The figures ``tenantflow topology advise`` and ``project`` use without ``--from``:\n'
        f"{what}\n\n"
        "Generated by ``python benchmarks/topology.py --write-defaults``; do not edit by hand.\n"
        '"""\n\n'
        "from typing import Any\n\n"
        f"MEASURED: dict[str, Any] = {data}\n"
    )


def markdown_table(report: Mapping[str, Any], keys: Sequence[str] | None = None) -> str:
    """The table as Markdown (every row, or only the rows of ``keys``)."""
    header, rows = table_rows(report)
    if keys is not None:
        wanted = {label for label, key, _ in _rows(report) if key in keys}
        rows = [r for r in rows if r[0] in wanted]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)
