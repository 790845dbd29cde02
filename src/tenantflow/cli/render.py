"""Presentation: records as JSON-ready dicts for machines and rich tables for people.

Timestamps are ISO-8601 in UTC everywhere: microseconds in JSON, milliseconds in tables. JSON
goes to stdout unwrapped and uncoloured (``print``), tables through a rich console.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from rich import box
from rich.console import Console, RenderableType
from rich.json import JSON
from rich.table import Table
from rich.text import Text

from tenantflow.domain import timefmt
from tenantflow.domain.audit import AuditRecord, VerifyResult
from tenantflow.domain.policy import micros_to_usd
from tenantflow.domain.records import EventRecord, RunRecord, RunStatus, StepRecord, StepStatus
from tenantflow.domain.state import Change
from tenantflow.domain.tenancy import ReviewRecord, ReviewStatus
from tenantflow.tables import Fitted, output_console

if TYPE_CHECKING:
    from tenantflow.placement import StateVersion, TenantInfo

__all__ = [
    "audit_dict",
    "audit_table",
    "budget_table",
    "change_dict",
    "changes_table",
    "console",
    "deletion_table",
    "event_dict",
    "events_table",
    "iso",
    "print_json",
    "print_json_lines",
    "review_detail",
    "review_dict",
    "reviews_table",
    "run_detail",
    "run_dict",
    "runs_table",
    "state_dict",
    "state_view",
    "step_dict",
    "steps_table",
    "tenant_detail",
    "tenant_dict",
    "tenants_table",
    "usage_dict",
    "usage_table",
    "verify_dict",
    "verify_line",
]

_STYLES = {
    RunStatus.COMPLETED.value: "green",
    RunStatus.FAILED.value: "red",
    RunStatus.COMPENSATED.value: "yellow",
    RunStatus.CANCELLED.value: "yellow",
    RunStatus.RUNNING.value: "cyan",
    StepStatus.SUCCEEDED.value: "green",
    StepStatus.COMPENSATION_FAILED.value: "red",
    StepStatus.SKIPPED.value: "dim",
    ReviewStatus.PENDING.value: "cyan",
    ReviewStatus.CLAIMED.value: "cyan",
    ReviewStatus.APPROVED.value: "green",
    ReviewStatus.REJECTED.value: "red",
}


T = TypeVar("T")


def console() -> Console:
    """A console on stdout: the terminal's width, or (a pipe, a file) wide enough that no
    table is squeezed."""
    return output_console()


def _table(*columns: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for name in columns:
        table.add_column(name)
    return table


def _fitted(table: Table, *, text: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> Fitted:
    # Numbers, ids and times are never cut or broken; ``text`` columns wrap at spaces; the
    # ``optional`` ones are left out (last named first), with a note, when the rest cannot fit.
    return Fitted(table, text=frozenset(text), optional=optional)


def iso(ts: float | None, *, timespec: str = "microseconds") -> str | None:
    """A POSIX timestamp as ISO-8601 UTC (``2026-01-02T03:04:05.678901Z``); None stays None."""
    return timefmt.iso(ts, timespec=timespec)


def _ms(ts: float | None) -> str:
    return iso(ts, timespec="milliseconds") or ""


def _load(raw: bytes | None) -> Any:
    return None if raw is None else json.loads(raw)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _spaced(value: Any) -> str:
    # JSON in a table cell: spaces after separators, so a narrow column wraps between values.
    return json.dumps(value, separators=(", ", ": "), ensure_ascii=False, default=str)


def _status(value: str) -> Text:
    return Text(value, style=_STYLES.get(value, ""))


# -- JSON ------------------------------------------------------------------------------------


def print_json(value: Any) -> None:
    """Print ``value`` as one JSON document on stdout."""
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def print_rows(
    rows: Sequence[T],
    *,
    json: bool,
    as_dict: Callable[[T], Any],
    table: Callable[[Sequence[T]], RenderableType],
    empty: str,
) -> bool:
    """A list command's output: JSON (a list of ``as_dict`` of each row), else a table, else
    ``empty`` when there are no rows. True when a table was printed."""
    if json:
        print_json([as_dict(r) for r in rows])
        return False
    out = console()
    if not rows:
        out.print(empty, markup=False)
        return False
    shown = table(rows)
    out.print(Fitted(shown) if isinstance(shown, Table) else shown)
    return True


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
        "data": timefmt.event_times_iso(event.data),
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


def runs_table(runs: Sequence[RunRecord]) -> Fitted:
    """Runs, newest first."""
    table = _table("run", "workflow", "status", "created", "finished", "error")
    for r in runs:
        table.add_row(
            Text(r.id),
            Text(f"{r.workflow}@{r.workflow_version}"),
            _status(r.status.value),
            _ms(r.created_at),
            _ms(r.finished_at),
            Text(r.error or ""),
        )
    return _fitted(table, text=("workflow", "error"), optional=("error", "created", "finished"))


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


def steps_table(steps: Sequence[StepRecord]) -> Fitted:
    """A run's steps with status and attempt."""
    table = _table("step", "status", "attempt", "version", "started", "finished", "error")
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
    return _fitted(table, text=("error",), optional=("error", "started", "finished"))


def events_table(events: Sequence[EventRecord]) -> Fitted:
    """A run's execution log, oldest first."""
    table = _table("time", "event", "step", "attempt", "data")
    for e in events:
        table.add_row(
            _ms(e.ts),
            Text(e.kind),
            Text(e.step or ""),
            "" if e.attempt is None else str(e.attempt),
            Text(_spaced(timefmt.event_times_iso(e.data)) if e.data else ""),
        )
    return _fitted(table, text=("data",), optional=("data",))


def state_view(version: StateVersion) -> tuple[Text, JSON]:
    """A header line and the pretty-printed state of one version."""
    made_by = "the input" if version.step is None else f"step {version.step}"
    header = Text(
        f"run {version.run_id} state version {version.version} ({made_by},"
        f" {_ms(version.created_at)}) hash {version.hash[:12]}"
    )
    return header, JSON(_compact(version.state))


def changes_table(changes: Sequence[Change]) -> Fitted:
    """Differences between two state versions."""
    table = _table("path", "change", "before", "after")
    for c in changes:
        table.add_row(
            Text(c.path),
            Text(c.kind),
            Text("" if c.kind == "added" else _spaced(c.before)),
            Text("" if c.kind == "removed" else _spaced(c.after)),
        )
    return _fitted(table, text=("before", "after"))


# -- tenancy: tenants, reviews, usage and budgets, audit --------------------------------------


def _number(value: Any) -> Any:
    # Usage counters are stored as REAL: a count reads 3, not 3.0.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _grid(rows: Iterable[tuple[str, Text]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in rows:
        grid.add_row(name, value)
    return grid


def _amount(unit: str, value: int | None) -> str:
    """A ledger amount: dollars for micro-dollars (``$2.00``, ``$0.012345``), else the count."""
    if value is None:
        return ""
    if unit != "micros":
        return str(value)
    whole, _, frac = f"{micros_to_usd(value):.6f}".partition(".")
    return f"${whole}.{frac.rstrip('0').ljust(2, '0')}"


def tenant_dict(info: TenantInfo) -> dict[str, Any]:
    """A tenant and its current policy, JSON-ready (durations as ISO 8601)."""
    return {
        **info.to_dict(),
        "created_at": iso(info.created_at),
        "updated_at": iso(info.updated_at),
    }


def tenants_table(tenants: Sequence[TenantInfo]) -> Fitted:
    """Tenants by id, with the policy fields that matter most at a glance."""
    table = _table(
        "tenant",
        "org",
        "tier",
        "policy",
        "region",
        "store",
        "weight",
        "max runs",
        "max steps",
        "updated",
    )
    for t in tenants:
        p = t.policy
        table.add_row(
            Text(t.id),
            Text(t.org_id or ""),
            Text(p.tier),
            f"v{t.policy_version}",
            Text(p.region or "any"),
            Text(t.store),
            f"{p.weight:g}",
            str(p.max_active_runs),
            str(p.max_running_steps),
            _ms(t.updated_at),
        )
    return _fitted(table, optional=("org", "store", "weight", "max steps", "max runs", "updated"))


def tenant_detail(info: TenantInfo) -> tuple[Table, JSON]:
    """A tenant's fields, one per row, and its policy pretty-printed."""
    grid = _grid(
        [
            ("tenant", Text(info.id)),
            ("org", Text(info.org_id or "")),
            ("tier", Text(info.policy.tier)),
            ("policy version", Text(str(info.policy_version))),
            ("region", Text(info.policy.region or "any")),
            ("store", Text(info.store)),
            ("created", Text(_ms(info.created_at))),
            ("updated", Text(_ms(info.updated_at))),
        ]
    )
    return grid, JSON(_compact(info.policy.model_dump(mode="json")))


def deletion_table(result: dict[str, Any]) -> Fitted:
    """What a tenant deletion removed, and the rows left afterwards, per table."""
    deleted: dict[str, int] = result.get("deleted", {})
    left: dict[str, int] = result.get("left", {})
    table = _table("table", "deleted", "left")
    for name in sorted(set(deleted) | set(left)):
        count = left.get(name)
        table.add_row(
            Text(name),
            str(deleted.get(name, 0)),
            Text("" if count is None else str(count), style="green" if count == 0 else "red"),
        )
    return _fitted(table)


def review_dict(review: ReviewRecord) -> dict[str, Any]:
    """A review task, JSON-ready."""
    return {
        "id": review.id,
        "tenant_id": review.tenant_id,
        "run_id": review.run_id,
        "step": review.step,
        "pool": review.pool,
        "lane": review.lane,
        "status": review.status.value,
        "sla_due": iso(review.sla_due),
        "created_at": iso(review.created_at),
        "claimed_by": review.claimed_by,
        "decided_by": review.decided_by,
        "decided_at": iso(review.decided_at),
        "comment": review.comment,
        "escalations": review.escalations,
        "payload": review.payload,
    }


def reviews_table(reviews: Sequence[ReviewRecord]) -> Fitted:
    """Review tasks in queue order (lane, then SLA)."""
    table = _table("review", "pool", "lane", "status", "step", "run", "sla due", "claimed by")
    for r in reviews:
        table.add_row(
            Text(r.id),
            Text(r.pool),
            Text(r.lane),
            _status(r.status.value),
            Text(r.step),
            Text(r.run_id),
            _ms(r.sla_due),
            Text(r.claimed_by or ""),
        )
    return _fitted(table, optional=("run", "sla due", "pool", "step", "claimed by", "lane"))


def review_detail(review: ReviewRecord) -> tuple[Table, JSON]:
    """A review's fields, one per row, and what the reviewer is asked (its payload)."""
    rows: list[tuple[str, Text]] = [
        ("review", Text(review.id)),
        ("tenant", Text(review.tenant_id)),
        ("run", Text(review.run_id)),
        ("step", Text(review.step)),
        ("pool", Text(review.pool)),
        ("lane", Text(review.lane)),
        ("status", _status(review.status.value)),
        ("created", Text(_ms(review.created_at))),
        ("sla due", Text(_ms(review.sla_due))),
    ]
    if review.claimed_by:
        rows.append(("claimed by", Text(review.claimed_by)))
    if review.decided_by:
        rows.append(("decided by", Text(review.decided_by)))
        rows.append(("decided", Text(_ms(review.decided_at))))
    if review.comment:
        rows.append(("comment", Text(review.comment)))
    if review.escalations:
        rows.append(("escalations", Text(str(review.escalations))))
    return _grid(rows), JSON(_compact(review.payload))


def usage_dict(row: dict[str, Any]) -> dict[str, Any]:
    """One usage counter (day, metric, dim, value), JSON-ready."""
    return {
        "day": row["day"],
        "metric": row["metric"],
        "dim": row["dim"],
        "value": _number(row["value"]),
    }


def usage_table(rows: Sequence[dict[str, Any]]) -> Fitted:
    """Usage counters per day, metric and dimension (tool, model, step or pool)."""
    table = _table("day", "metric", "dim", "value")
    for row in rows:
        value = _number(row["value"])
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        table.add_row(row["day"], Text(row["metric"]), Text(row["dim"]), shown)
    return _fitted(table)


def budget_table(ledgers: Sequence[dict[str, Any]]) -> Fitted:
    """Budget ledgers: limit, spent, reserved and overrun per scope and unit."""
    table = _table(
        "scope", "unit", "period", "limit", "spent", "reserved", "overrun", "period start"
    )
    for led in ledgers:
        unit = str(led["unit"])
        limit = led.get("limit")
        table.add_row(
            Text(str(led["scope"])),
            Text(unit),
            Text(led.get("period") or ""),
            "unlimited" if limit is None else _amount(unit, limit),
            _amount(unit, led.get("spent")),
            _amount(unit, led.get("reserved")),
            _amount(unit, led.get("overrun")),
            _ms(led.get("period_start")),
        )
    return _fitted(table, optional=("period", "overrun", "period start"))


def audit_dict(record: AuditRecord) -> dict[str, Any]:
    """One audit row, JSON-ready."""
    return {**record.model_dump(mode="json"), "ts": iso(record.ts)}


def audit_table(records: Sequence[AuditRecord]) -> Fitted:
    """A tenant's audit rows, oldest first."""
    table = _table("seq", "time", "actor", "action", "subject", "detail", "hash")
    for r in records:
        table.add_row(
            str(r.seq),
            _ms(r.ts),
            Text(r.actor),
            Text(r.action),
            Text(r.subject),
            Text(_audit_detail(r.detail)),
            Text(r.hash[:12]),
        )
    return _fitted(table, text=("detail",), optional=("hash", "detail"))


_DETAIL_CHARS = 160


def _audit_detail(detail: dict[str, Any] | None) -> str:
    # A policy change's detail is the whole policy: past a few lines, the table names its
    # fields rather than cutting a value in half; --json has it in full.
    if not detail:
        return ""
    text = _spaced(detail)
    if len(text) <= _DETAIL_CHARS:
        return text
    return f"fields {', '.join(map(str, detail))} (values: --json)"


def verify_dict(tenant: str, result: VerifyResult) -> dict[str, Any]:
    """The outcome of an audit chain check, JSON-ready."""
    return {
        "tenant_id": tenant,
        "ok": result.ok,
        "checked": result.checked,
        "first_bad_seq": result.first_bad_seq,
        "reason": result.reason or None,
    }


def verify_line(tenant: str, result: VerifyResult) -> Text:
    """One line: the chain is intact, or where it breaks and why."""
    rows = f"{result.checked} row{'' if result.checked == 1 else 's'}"
    if result.ok:
        return Text(f"ok: tenant {tenant} audit chain intact ({rows})", style="green")
    return Text(
        f"tampered: tenant {tenant} audit chain breaks at seq {result.first_bad_seq}:"
        f" {result.reason} ({rows} verified before it)",
        style="red",
    )
