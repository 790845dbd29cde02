"""Tables never cut a number or an id: they wrap text, or leave columns out with a note."""

from __future__ import annotations

import re

from rich.console import Console
from rich.table import Table

from tenantflow.report import build_report, print_report
from tenantflow.tables import Fitted

from .test_report import _trace

RUN_IDS = [f"run_01JQ{n:022d}" for n in range(3)]


def _runs_table() -> Table:
    table = Table()
    for name in ("run", "workflow", "status", "created", "finished", "error"):
        table.add_column(name)
    for n, run_id in enumerate(RUN_IDS):
        table.add_row(
            run_id,
            "loan-approval@12",
            "completed",
            f"2026-12-06T06:4{n}:39.123Z",
            f"2026-12-06T06:5{n}:01.456Z",
            "step verify failed: the credit bureau answered 503 three times in a row",
        )
    return table


def _print(renderable: object, width: int) -> str:
    console = Console(width=width, record=True, force_terminal=True)
    console.print(renderable)
    return console.export_text()


def _cells(text: str) -> list[str]:
    return [c.strip() for line in text.splitlines() for c in re.split(r"[│┃]", line)]


def test_at_80_columns_ids_and_times_stay_whole_and_columns_left_out_are_named() -> None:
    text = _print(
        Fitted(
            _runs_table(),
            text=frozenset({"workflow", "error"}),
            optional=("error", "created", "finished"),
        ),
        80,
    )
    assert "…" not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    cells = _cells(text)
    for run_id in RUN_IDS:
        assert run_id in cells  # one piece, on one line: copyable
    # The error wraps at spaces; the times cannot be cut, so they are left out, and said so.
    assert "(not shown at 80 columns: created, finished;" in text
    assert "bureau" in text and any("503" in c for c in cells)


def test_wide_enough_everything_is_shown_and_nothing_is_noted() -> None:
    text = _print(Fitted(_runs_table(), text=frozenset({"error"})), 240)
    assert "not shown" not in text and "…" not in text
    assert "2026-12-06T06:52:01.456Z" in _cells(text)


def test_text_columns_wrap_at_spaces_before_anything_is_left_out() -> None:
    text = _print(Fitted(_runs_table(), text=frozenset({"workflow", "error"})), 150)
    assert "not shown" not in text
    assert "three times in a" in text.replace("\n", " ") or "credit bureau" in text
    assert all(run_id in _cells(text) for run_id in RUN_IDS)


def test_the_report_at_80_columns_cuts_no_figure() -> None:
    report = build_report("Monday", {}, [_trace(False), _trace(True)])
    for summary in report.scenarios:  # figures as wide as a real platform's
        for row in summary.classes:
            row.submitted, row.completed = 50_041, 50_040
            row.p50_s, row.p95_s, row.p99_s = 754.2, 1234.5, 98_765.0
    console = Console(width=80, record=True, force_terminal=True)
    print_report(report, console)
    text = console.export_text()
    assert "…" not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    cells = _cells(text)
    for figure in ("50040/50041", "12.6m", "20.6m", "27.4h"):
        assert figure in cells or any(figure in c for c in cells), figure
