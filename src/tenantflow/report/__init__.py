"""Reports: what happened in a scenario, with and without tenant controls, as figures.

``tenantflow demo`` and ``tenantflow simulate`` each record one :class:`Trace` per scenario;
:func:`build_report` computes the comparison and :func:`print_report`, :func:`write_json`,
:func:`write_html` and :func:`write_png` present it.
"""

from tenantflow.report.build import ClassRow, Report, ScenarioSummary, build_report
from tenantflow.report.render import (
    fmt_duration,
    print_report,
    report_json,
    require_plots,
    write_html,
    write_json,
    write_png,
)
from tenantflow.report.trace import RunOutcome, Sample, TenantProfile, Trace

__all__ = [
    "ClassRow",
    "Report",
    "RunOutcome",
    "Sample",
    "ScenarioSummary",
    "TenantProfile",
    "Trace",
    "build_report",
    "fmt_duration",
    "print_report",
    "report_json",
    "require_plots",
    "write_html",
    "write_json",
    "write_png",
]
