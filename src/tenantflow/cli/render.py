"""Presentation: records as JSON-ready dicts for machines and rich tables for people.

Timestamps are ISO-8601 in UTC everywhere: microseconds in JSON, milliseconds in tables. JSON
goes to stdout unwrapped and uncoloured (``print``), tables through a rich console.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.json import JSON
from rich.table import Table
from rich.text import Text

from tenantflow.domain.records import EventRecord, RunRecord, RunStatus, StepRecord, StepStatus
from tenantflow.domain.state import Change
from tenantflow.engine.engine import StateVersion

__all__ = [
    "change_dict",
    "changes_table",
    "console",
    "event_dict",
    "events_table",
    "iso",
    "print_json",
    "print_json_lines",
    "run_detail",
    "run_dict",
    "runs_table",
    "state_dict",
    "state_view",
    "step_dict",
    "steps_table",
]

_PIPE_WIDTH = 200
_STYLES = {
    RunStatus.COMPLETED.value: "green",
    RunStatus.FAILED.value: "red",
    RunStatus.COMPENSATED.value: "yellow",
    RunStatus.CANCELLED.value: "yellow",
    RunStatus.RUNNING.value: "cyan",
    StepStatus.SUCCEEDED.value: "green",
    StepStatus.COMPENSATION_FAILED.value: "red",
    StepStatus.SKIPPED.value: "dim",
}


def console() -> Console:
    """A console on stdout, wide when not a terminal so piped tables are not squeezed."""
    out = Console(highlight=False)
    if not out.is_terminal:
        out.width = max(out.width, _PIPE_WIDTH)
    return out


def _table(*columns: str, fold: tuple[str, ...] = ()) -> Table:
    # Columns in ``fold`` (ids, times) wrap mid-word rather than lose characters to an ellipsis.
    table = Table(box=box.SIMPLE_HEAD)
    for name in columns:
        table.add_column(name, overflow="fold" if name in fold else "ellipsis")
    return table


def iso(ts: float | None, *, timespec: str = "microseconds") -> str | None:
    """A POSIX timestamp as ISO-8601 UTC (``2026-01-02T03:04:05.678901Z``); None stays None."""
    if ts is None:
        return None
    text = datetime.fromtimestamp(ts, UTC).isoformat(timespec=timespec)
    return text.removesuffix("+00:00") + "Z"


def _ms(ts: float | None) -> str:
    return iso(ts, timespec="milliseconds") or ""


def _load(raw: bytes | None) -> Any:
    return None if raw is None else json.loads(raw)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _status(value: str) -> Text:
    return Text(value, style=_STYLES.get(value, ""))


# -- JSON ------------------------------------------------------------------------------------


def print_json(value: Any) -> None:
    """Print ``value`` as one JSON document on stdout."""
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def print_json_lines(values: Iterable[Any]) -> None:
    """Print each value as one compact JSON object per line (JSON Lines)."""
    for value in values:
        print(_compact(value))


def run_dict(run: RunRecord) -> dict[str, Any]:
    """A run record, JSON-ready (input and result decoded)."""
    return {
        "id": run.id,
        "tenant_id": run.tenant_id,
        "workflow": run.workflow,
        "workflow_version": run.workflow_version,
        "status": run.status.value,
        "lane": run.lane,
        "input": _load(run.input_json),
        "result": _load(run.result_json),
        "error": run.error,
        "state_version": run.state_version,
        "state_hash": run.state_hash,
        "idempotency_key": run.idempotency_key,
        "parent_run_id": run.parent_run_id,
        "created_at": iso(run.created_at),
        "updated_at": iso(run.updated_at),
        "finished_at": iso(run.finished_at),
        "meta": run.meta,
    }


def step_dict(step: StepRecord) -> dict[str, Any]:
    """A step record, JSON-ready (output decoded; leases and fencing left out)."""
    return {
        "key": step.key,
        "status": step.status.value,
        "attempt": step.attempt,
        "state_version": step.version,
        "output": _load(step.output_json),
        "error": step.error,
        "started_at": iso(step.started_at),
        "finished_at": iso(step.finished_at),
    }


def event_dict(event: EventRecord) -> dict[str, Any]:
    """An execution-log entry, JSON-ready."""
    return {
        "id": event.id,
        "ts": iso(event.ts),
        "kind": event.kind,
        "step": event.step,
        "attempt": event.attempt,
        "data": event.data,
    }


def state_dict(version: StateVersion) -> dict[str, Any]:
    """A materialised state version, JSON-ready."""
    return {
        "run_id": version.run_id,
        "version": version.version,
        "parent": version.parent,
        "step": version.step,
        "hash": version.hash,
        "created_at": iso(version.created_at),
        "state": version.state,
    }


def change_dict(change: Change) -> dict[str, Any]:
    """One state difference, JSON-ready."""
    return {
        "path": change.path,
        "kind": change.kind,
        "before": change.before,
        "after": change.after,
    }


# -- tables ----------------------------------------------------------------------------------


def runs_table(runs: Sequence[RunRecord]) -> Table:
    """Runs, newest first."""
    table = _table(
        "run",
        "workflow",
        "status",
        "created",
        "finished",
        "error",
        fold=("run", "created", "finished"),
    )
    for r in runs:
        table.add_row(
            Text(r.id),
            Text(f"{r.workflow}@{r.workflow_version}"),
            _status(r.status.value),
            _ms(r.created_at),
            _ms(r.finished_at),
            Text(r.error or ""),
        )
    return table


def run_detail(run: RunRecord) -> Table:
    """One run's fields, one per row."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, Text]] = [
        ("run", Text(run.id)),
        ("tenant", Text(run.tenant_id)),
        ("workflow", Text(f"{run.workflow}@{run.workflow_version}")),
        ("status", _status(run.status.value)),
        ("lane", Text(run.lane)),
        ("created", Text(_ms(run.created_at))),
        ("updated", Text(_ms(run.updated_at))),
        ("finished", Text(_ms(run.finished_at))),
        ("state version", Text(str(run.state_version))),
        ("input", Text(_compact(_load(run.input_json)))),
    ]
    if run.result_json is not None:
        rows.append(("result", Text(_compact(_load(run.result_json)))))
    if run.error:
        rows.append(("error", Text(run.error, style="red")))
    if run.idempotency_key:
        rows.append(("idempotency key", Text(run.idempotency_key)))
    if run.parent_run_id:
        rows.append(("parent run", Text(run.parent_run_id)))
    for name, value in rows:
        grid.add_row(name, value)
    return grid


def steps_table(steps: Sequence[StepRecord]) -> Table:
    """A run's steps with status and attempt."""
    table = _table(
        "step",
        "status",
        "attempt",
        "version",
        "started",
        "finished",
        "error",
        fold=("step", "started", "finished"),
    )
    for s in steps:
        table.add_row(
            Text(s.key),
            _status(s.status.value),
            str(s.attempt),
            "" if s.version is None else str(s.version),
            _ms(s.started_at),
            _ms(s.finished_at),
            Text(s.error or ""),
        )
    return table


def events_table(events: Sequence[EventRecord]) -> Table:
    """A run's execution log, oldest first."""
    table = _table("time", "event", "step", "attempt", "data", fold=("time", "step", "data"))
    for e in events:
        table.add_row(
            _ms(e.ts),
            Text(e.kind),
            Text(e.step or ""),
            "" if e.attempt is None else str(e.attempt),
            Text(_compact(e.data) if e.data else ""),
        )
    return table


def state_view(version: StateVersion) -> tuple[Text, JSON]:
    """A header line and the pretty-printed state of one version."""
    made_by = "the input" if version.step is None else f"step {version.step}"
    header = Text(
        f"run {version.run_id} state version {version.version} ({made_by},"
        f" {_ms(version.created_at)}) hash {version.hash[:12]}"
    )
    return header, JSON(_compact(version.state))


def changes_table(changes: Sequence[Change]) -> Table:
    """Differences between two state versions."""
    table = _table("path", "change", "before", "after", fold=("path", "before", "after"))
    for c in changes:
        table.add_row(
            Text(c.path),
            Text(c.kind),
            Text("" if c.kind == "added" else _compact(c.before)),
            Text("" if c.kind == "removed" else _compact(c.after)),
        )
    return table
