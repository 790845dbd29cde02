"""A report as a terminal table, JSON, or an HTML page / PNG with plots.

The plots need matplotlib (``pip install 'tenantflow[report]'``); the table and JSON do not.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from tenantflow.errors import ConfigurationError
from tenantflow.report.build import ClassRow, Report, ScenarioSummary, percentile
from tenantflow.report.trace import Trace
from tenantflow.tables import Fitted

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "fmt_duration",
    "print_report",
    "report_json",
    "require_plots",
    "write_html",
    "write_json",
    "write_png",
]

_DEGRADATION_SHORT = {
    "cheaper_model": "cheaper",
    "skip_optional": "skipped",
    "escalate_to_human": "escalated",
    "pause": "paused",
}


def fmt_duration(seconds: float | None, censored: bool = False) -> str:
    """``0.4s``, ``45s``, ``12.5m``, ``3.2h``; ``-`` for None; ``≥`` prefix when censored."""
    if seconds is None:
        return "-"
    prefix = "≥" if censored else ""
    if seconds < 10:
        return f"{prefix}{seconds:.1f}s"
    if seconds < 120:
        return f"{prefix}{seconds:.0f}s"
    if seconds < 7200:
        return f"{prefix}{seconds / 60:.1f}m"
    return f"{prefix}{seconds / 3600:.1f}h"


def _label(summary: ScenarioSummary) -> str:
    return summary.scenario


def _controls(summary: ScenarioSummary) -> str:
    # The terminal tables say "on"/"off" under a "controls" header: the width goes to numbers.
    return "on" if summary.controls else "off"


def _class_table(title: str, columns: list[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("tenant class")
    table.add_column("controls")
    for name, justify in columns:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    return table


def _degraded(row: ClassRow) -> str:
    if not row.degradations:
        return "-"
    return " ".join(f"{n} {_DEGRADATION_SHORT.get(k, k)}" for k, n in row.degradations.items())


def _regions(row: ClassRow) -> str:
    if not row.model_calls_by_region:
        return "-"
    text = " ".join(f"{region} {n}" for region, n in row.model_calls_by_region.items())
    if row.residency_violations:
        return f"[bold red]{text} ({row.residency_violations} outside)[/]"
    return text


def _sla_text(row: ClassRow) -> str:
    """``12/49 (24%)``, or ``best effort`` for tenants without a run SLA."""
    if not row.sla_measured:
        return "best effort"
    share = row.sla_violations / row.sla_measured
    return f"{row.sla_violations}/{row.sla_measured} ({share:.0%})"


def _sla(row: ClassRow) -> str:
    text = _sla_text(row)
    if row.sla_measured and row.sla_violations / row.sla_measured > 0.05:
        return f"[bold red]{text}[/]"
    return text


def _percentiles(row: ClassRow) -> tuple[str, str, str]:
    """p50, p95, p99; ``≥`` on each that unfinished runs reach (a lower bound)."""
    return (
        fmt_duration(row.p50_s, row.censored and row.p50_s == row.p99_s),
        fmt_duration(row.p95_s, row.censored and row.p95_s == row.p99_s),
        fmt_duration(row.p99_s, row.censored),
    )


def print_report(report: Report, console: Console) -> None:
    """Print the comparison: two tables of one row per tenant class and scenario, and totals."""
    latency = _class_table(
        f"{report.title}: latency and SLA",
        [
            ("runs", "right"),
            ("p50", "right"),
            ("p95", "right"),
            ("p99", "right"),
            ("SLA missed", "right"),
            ("slot share", "right"),
        ],
    )
    isolation = _class_table(
        "Limits, budget, residency and reviews",
        [
            ("limit waits", "right"),
            ("degraded", "left"),
            ("model calls by region", "left"),
            ("open reviews (max)", "right"),
            ("$/run", "right"),
        ],
    )
    classes = report.class_order()
    for position, klass in enumerate(classes):
        for summary in report.scenarios:
            row = next((r for r in summary.classes if r.tenant_class == klass), None)
            if row is None:
                continue
            last = summary is report.scenarios[-1] and position < len(classes) - 1
            head = (klass if summary is report.scenarios[0] else "", _controls(summary))
            latency.add_row(
                *head,
                f"{row.completed}/{row.submitted - row.refused}",
                *_percentiles(row),
                _sla(row),
                f"{row.slot_share:.0%}",
                end_section=last,
            )
            isolation.add_row(
                *head,
                str(row.rate_limit_waits),
                _degraded(row),
                _regions(row),
                str(row.max_open_reviews),
                "-" if row.cost_per_run_usd is None else f"${row.cost_per_run_usd:.3f}",
                end_section=last,
            )
    hint = "a wider terminal, --json or --html shows every column"
    text = frozenset({"tenant class", "SLA missed", "degraded", "model calls by region"})
    console.print(Fitted(latency, text=text, optional=("slot share",), hint=hint))
    console.print(
        Fitted(
            isolation,
            text=text,
            optional=("model calls by region", "open reviews (max)"),
            hint=hint,
        )
    )
    totals = Table(title="Per scenario", title_justify="left")
    for name in _TOTALS:
        totals.add_column(name, justify="left" if name == "scenario" else "right")
    for cells in _totals_rows(report.scenarios):
        totals.add_row(*cells)
    console.print(Fitted(totals, text=frozenset({"scenario"})))
    for summary in report.scenarios:
        for note in summary.notes:
            console.print(f"[dim]{_label(summary)}: {html.escape(note, quote=False)}[/]")
    console.print(f"[dim]{html.escape(_NOTE, quote=False)}[/]")


_TOTALS = (
    "scenario",
    "runs completed",
    "fairness when contended",
    "Jain's index (whole window)",
    "slots",
    "simulated",
    "wall",
)

_NOTE = (
    "Latency is submission to the end of the last step, in scenario time. ≥: runs still going"
    " when the scenario stopped reach this percentile, so it is a lower bound. SLA missed:"
    " runs over the tenant's run SLA (or unfinished) of those with one. Fairness when"
    " contended (compare the scenarios on this): at each sample where the tenant classes"
    " asked for more steps than there were slots, Jain's index of the slots each class held /"
    " its weighted max-min fair share under the tenants' policies, averaged; the same rule for"
    " every scenario, 1.0 = every class held what the policies entitle it to (n = contended"
    " samples). Jain's index (whole window): slot-seconds received over the whole window /"
    " fair share of the work admitted with controls, the same reference for every scenario;"
    " close to 1.0 whenever the platform catches up by the end, so it does not see delay."
)


def _totals_rows(scenarios: list[ScenarioSummary]) -> list[list[str]]:
    return [
        [
            _label(s),
            f"{s.completed}/{s.runs}",
            "-"
            if s.jain_contended is None
            else f"{s.jain_contended:.3f} (n={s.contended_samples})",
            "-" if s.jain is None else f"{s.jain:.3f}",
            str(s.slots),
            fmt_duration(s.duration_s),
            f"{s.wall_s:.1f}s",
        ]
        for s in scenarios
    ]


def report_json(report: Report) -> dict[str, Any]:
    """The report as JSON-ready data: parameters, figures, and per-class series for plotting."""
    return {
        "title": report.title,
        "params": report.params,
        "scenarios": [
            {**asdict(summary), "series": _series(trace, report.class_order())}
            for summary, trace in zip(report.scenarios, report.traces, strict=True)
        ],
    }


def write_json(report: Report, path: Path) -> None:
    """Write :func:`report_json` to ``path`` (atomically: a temp file renamed into place)."""
    _write_atomic(path, json.dumps(report_json(report), indent=2, default=str).encode())


def _series(trace: Trace, classes: list[str]) -> dict[str, Any]:
    klass = {p.tenant: p.tenant_class for p in trace.tenants}
    width = _bucket_s(trace.duration_s)
    p95: dict[str, dict[int, float | None]] = {}
    for name in classes:
        buckets: dict[int, list[float]] = defaultdict(list)
        for run in trace.runs:
            if klass.get(run.tenant) != name or run.status == "refused":
                continue
            latency = run.latency_s
            if latency is None:
                latency = trace.duration_s - run.submitted_s
            buckets[int(run.submitted_s // width)].append(latency)
        p95[name] = {b: percentile(sorted(v), 0.95) for b, v in sorted(buckets.items())}
    return {
        "bucket_s": width,
        "latency_p95_s": {
            name: [[b * width, v] for b, v in points.items()] for name, points in p95.items()
        },
        "samples": [
            {"t_s": s.t_s, "running": s.running, "queued": s.queued, "reviews": s.reviews}
            for s in trace.samples
        ],
    }


def _bucket_s(duration_s: float) -> float:
    """A bucket width giving ~60 points over the scenario, rounded to a readable value."""
    raw = max(duration_s / 60.0, 1.0)
    for nice in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400):
        if nice >= raw:
            return float(nice)
    return float(math.ceil(raw / 86400) * 86400)


def require_plots() -> None:
    """Check that the plots can be drawn, before a long run rather than after it.

    Raises:
        ConfigurationError: matplotlib is not installed (``pip install 'tenantflow[report]'``).
    """
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "--html and --png draw plots with matplotlib, which is not installed:"
            " pip install 'tenantflow[report]'",
            field="matplotlib",
        ) from None


def _figure(report: Report) -> Figure:
    require_plots()
    from matplotlib.figure import Figure

    classes = report.class_order()
    cmap = _colors(len(classes))
    columns = len(report.traces)
    fig = Figure(figsize=(6.0 * columns, 7.5), layout="constrained")
    axes = fig.subplots(2, columns, squeeze=False, sharey="row")
    scale, unit = _time_unit(max((t.duration_s for t in report.traces), default=1.0))
    for column, trace in enumerate(report.traces):
        series = _series(trace, classes)
        top, bottom = axes[0][column], axes[1][column]
        for name, color in zip(classes, cmap, strict=True):
            points = series["latency_p95_s"].get(name, [])
            if points:
                top.plot(
                    [p[0] / scale for p in points],
                    [p[1] for p in points],
                    label=name,
                    color=color,
                    marker=".",
                )
        top.set_yscale("log")
        top.set_title(f"{trace.scenario}: p95 latency by submission time")
        top.set_xlabel(f"submitted at ({unit})")
        top.set_ylabel("latency (s, log)")
        top.grid(True, alpha=0.3)
        samples = trace.samples
        xs = [s.t_s / scale for s in samples]
        stacks = [[s.running.get(name, 0) for s in samples] for name in classes]
        if samples:
            bottom.stackplot(xs, stacks, labels=classes, colors=cmap, alpha=0.85)
        bottom.axhline(trace.slots, color="black", linewidth=0.8, linestyle="--")
        bottom.set_title(f"{trace.scenario}: worker slots held by class")
        bottom.set_xlabel(f"time ({unit})")
        bottom.set_ylabel(f"slots (of {trace.slots})")
        bottom.grid(True, alpha=0.3)
    axes[0][0].legend(loc="upper left", fontsize="small")
    return fig


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return [palette(i % 10) for i in range(n)]


def _time_unit(duration_s: float) -> tuple[float, str]:
    if duration_s >= 3 * 86400:
        return 86400.0, "days"
    if duration_s >= 3 * 3600:
        return 3600.0, "hours"
    if duration_s >= 180:
        return 60.0, "minutes"
    return 1.0, "seconds"


def write_png(report: Report, path: Path) -> None:
    """Write the plots (latency over time, slot share over time, per scenario) as a PNG."""
    buffer = io.BytesIO()
    _figure(report).savefig(buffer, format="png", dpi=110)
    _write_atomic(path, buffer.getvalue())


def write_html(report: Report, path: Path) -> None:
    """Write a self-contained HTML page: the tables and the plots (inline SVG)."""
    buffer = io.StringIO()
    _figure(report).savefig(buffer, format="svg")
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prolog: the SVG is inline
    body = [
        f"<h1>{html.escape(report.title)}</h1>",
        _params_html(report.params),
        _classes_html(report),
        _totals_html(report.scenarios),
        f'<div class="plots">{svg}</div>',
        f"<p class=note>{html.escape(_NOTE)}</p>",
    ]
    page = _PAGE.format(title=html.escape(report.title), body="\n".join(body))
    _write_atomic(path, page.encode())


def _params_html(params: dict[str, Any]) -> str:
    items = "".join(
        f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in params.items()
    )
    return f"<ul class=params>{items}</ul>"


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _classes_html(report: Report) -> str:
    rows: list[list[str]] = []
    for klass in report.class_order():
        for summary in report.scenarios:
            row = next((r for r in summary.classes if r.tenant_class == klass), None)
            if row is None:
                continue
            regions = " ".join(f"{k} {v}" for k, v in row.model_calls_by_region.items()) or "-"
            if row.residency_violations:
                regions += f" ({row.residency_violations} outside residency)"
            sla = _sla_text(row)
            rows.append(
                [
                    klass,
                    summary.scenario,
                    f"{row.completed}/{row.submitted - row.refused}",
                    *_percentiles(row),
                    sla,
                    str(row.rate_limit_waits),
                    _degraded(row),
                    regions,
                    str(row.max_open_reviews),
                    "-" if row.cost_per_run_usd is None else f"${row.cost_per_run_usd:.3f}",
                    f"{row.slot_share:.0%}",
                ]
            )
    headers = [
        "tenant class",
        "scenario",
        "runs",
        "p50",
        "p95",
        "p99",
        "SLA violations",
        "rate-limit waits",
        "budget degradations",
        "model calls by region",
        "max open reviews",
        "cost/run",
        "slot share",
    ]
    return _table(headers, rows)


def _totals_html(scenarios: list[ScenarioSummary]) -> str:
    return _table(_TOTALS, _totals_rows(scenarios))


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
td:first-child, td:nth-child(2) {{ text-align: left; }}
.params {{ columns: 2; font-size: 0.9em; }}
.plots svg {{ max-width: 100%; height: auto; }}
.note {{ color: #666; font-size: 0.85em; }}
</style></head>
<body>
{body}
</body></html>
"""
