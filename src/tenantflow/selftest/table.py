"""The selftest's table: rich for the terminal, Markdown for documents, JSON for machines."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tenantflow.selftest.core import Row

__all__ = ["COLUMNS", "Header", "cells", "print_rows", "write_json", "write_markdown"]

COLUMNS = (
    "scenario",
    "runs",
    "faults injected",
    "lost",
    "dup. completions",
    "dup. executions (bound)",
    "recovery p50 / p99 (bound)",
    "cross-tenant",
    "overspend",
    "tampering found / injected",
    "result",
)
_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow"}


@dataclass(frozen=True)
class Header:
    """What ran, where and when."""

    profile: str
    seed: int
    started: datetime
    python: str = platform.python_version()
    machine: str = f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores"

    def line(self) -> str:
        return (
            f"tenantflow selftest — profile {self.profile}, seed {self.seed},"
            f" {self.started:%Y-%m-%d %H:%M} UTC, {self.machine}, Python {self.python}"
        )


def _n(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _faults(row: Row) -> str:
    shown = [f"{n:,} {kind}" for kind, n in row.faults.items() if n]
    return " + ".join(shown) or "–"


def _recovery(row: Row) -> str:
    p50, p99 = row.recovery_p50, row.recovery_p99
    if p50 is None or p99 is None:
        return "–"
    bound = "" if row.recovery_bound_s is None else f" (< {row.recovery_bound_s:g} s)"
    return f"{_seconds(p50)} / {_seconds(p99)}{bound}"


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 0.1 else f"{value:.2f} s"


def _usd(micros: int | None) -> str:
    if micros is None:
        return "–"
    return "$0" if micros == 0 else f"${micros / 1_000_000:.6f}"


def cells(row: Row) -> list[str]:
    """The row's cells, in :data:`COLUMNS` order."""
    dup = _n(row.duplicate_executions)
    if row.duplicate_executions is not None and row.duplicate_bound is not None:
        dup += f" (≤ {row.duplicate_bound:,})"
    tamper = "–"
    if row.tamper_injected is not None:
        tamper = f"{_n(row.tamper_detected)} / {_n(row.tamper_injected)}"
    return [
        row.scenario,
        _n(row.runs),
        _faults(row),
        _n(row.lost),
        _n(row.duplicate_completions),
        dup,
        _recovery(row),
        _n(row.cross_tenant),
        _usd(row.overspend_micros),
        tamper,
        f"{row.status} ({row.elapsed_s:.0f} s)",
    ]


def print_rows(rows: Sequence[Row], header: Header, console: Console | None = None) -> None:
    """The table, then each scenario's details, then a line per failure or skip."""
    out = console or Console()
    table = Table(title=header.line(), box=box.SIMPLE_HEAD, title_justify="left")
    for name in COLUMNS:
        table.add_column(name, overflow="fold")
    for row in rows:
        values = cells(row)
        table.add_row(*values[:-1], Text(values[-1], style=_STYLE[row.status]))
    out.print(table)
    for row in rows:
        for note in row.notes:
            out.print(f"  {row.scenario}: {note}", markup=False, highlight=False)
    for row in rows:
        if row.status != "pass":
            out.print(
                Text(f"{row.status.upper()} {row.scenario}: {row.reason}", style=_STYLE[row.status])
            )


def write_markdown(rows: Sequence[Row], header: Header, path: Path) -> None:
    """The table as Markdown (the README's reliability section)."""
    lines = [f"{header.line()}", "", "| " + " | ".join(COLUMNS) + " |"]
    lines.append("|" + "---|" * len(COLUMNS))
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells(row)) + " |")
    lines.append("")
    for row in rows:
        lines.extend(f"- {row.scenario}: {note}" for note in row.notes)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_json(rows: Sequence[Row], header: Header, path: Path) -> None:
    data: dict[str, Any] = {
        "profile": header.profile,
        "seed": header.seed,
        "started": header.started.astimezone(UTC).isoformat(),
        "machine": header.machine,
        "python": header.python,
        "argv": sys.argv,
        "passed": all(r.status == "pass" for r in rows),
        "skipped": [r.scenario for r in rows if r.status == "skip"],
        "rows": [r.to_dict() for r in rows],
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
