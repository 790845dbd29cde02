"""The comparison's figures, computed from what was recorded: pure functions, no I/O.

Inputs are the driver's submissions (when each run was first tried and acknowledged), the
runs' records from the API (status, created, finished), and the executions log (when each step
body started and ended, in which process, and what its provider answered). One host, one clock:
wall times from all three compare directly.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tenantflow.topology.driver import RunInfo, Submission
from tenantflow.topology.execlog import ExecLine

__all__ = [
    "Latency",
    "drain_time",
    "hop_latencies",
    "jain",
    "p99_back",
    "pearson",
    "percentile",
    "queue_depth",
    "run_latencies",
    "saturation",
]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def jain(values: Sequence[float]) -> float | None:
    """Jain's fairness index: 1 when all equal, 1/n when one takes everything."""
    if not values or not any(values):
        return None
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson's correlation; None with fewer than 3 points or no variance."""
    if len(xs) != len(ys) or len(xs) < 3:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    if sx == 0 or sy == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / (sx * sy)


@dataclass(frozen=True, slots=True)
class Latency:
    """A run's client-seen latency: first submission try → finished (seconds)."""

    tenant: str
    run_id: str
    submitted: float
    seconds: float | None
    status: str


def run_latencies(subs: Iterable[Submission], runs: Mapping[str, RunInfo]) -> list[Latency]:
    out: list[Latency] = []
    for sub in subs:
        if sub.run_id is None:
            continue
        run = runs.get(sub.run_id)
        if run is None:
            out.append(Latency(sub.tenant, sub.run_id, sub.first_try, None, "missing"))
            continue
        seconds = None if run.finished_at is None else max(0.0, run.finished_at - sub.first_try)
        out.append(Latency(sub.tenant, sub.run_id, sub.first_try, seconds, run.status))
    return out


def p(values: Iterable[float | None], q: float) -> float | None:
    return percentile([v for v in values if v is not None], q)


def first_starts(lines: Iterable[ExecLine]) -> dict[tuple[str, str], float]:
    """(run, step) → when its first attempt's body started."""
    out: dict[tuple[str, str], float] = {}
    for x in lines:
        if x.kind == "S":
            key = (x.run, x.step)
            if key not in out or x.at < out[key]:
                out[key] = x.at
    return out


def last_ends(lines: Iterable[ExecLine]) -> dict[tuple[str, str], float]:
    """(run, step) → when its last body's work was done."""
    out: dict[tuple[str, str], float] = {}
    for x in lines:
        if x.kind == "E":
            key = (x.run, x.step)
            out[key] = max(out.get(key, 0.0), x.at)
    return out


def hop_latencies(
    lines: Sequence[ExecLine], runs: Mapping[str, RunInfo], steps: Sequence[str]
) -> list[float]:
    """Ready → started, per hop of completed runs: the first step's start after the run was
    created, each later step's start after the previous step's work was done."""
    starts, ends = first_starts(lines), last_ends(lines)
    out: list[float] = []
    for run in runs.values():
        if run.status != "completed":
            continue
        ready = run.created_at
        for step in steps:
            started = starts.get((run.id, step))
            if started is None:
                break
            out.append(max(0.0, started - ready))
            end = ends.get((run.id, step))
            if end is None:
                break
            ready = end
    return out


def queue_depth(
    runs: Iterable[RunInfo], lines: Sequence[ExecLine], first_step: str, times: Iterable[float]
) -> list[int]:
    """At each of ``times``: the runs created and not yet started (their first step's body
    had not begun)."""
    starts = first_starts(lines)
    spans = [(r.created_at, starts.get((r.id, first_step), math.inf)) for r in runs]
    return [sum(1 for c, s in spans if c <= t < s) for t in times]


def per_second_p99(lat: Sequence[Latency], start: float, end: float) -> dict[int, float]:
    """Second (from ``start``) → p99 of the runs submitted in it (two runs at least)."""
    buckets: dict[int, list[float]] = defaultdict(list)
    for x in lat:
        if x.seconds is not None and start <= x.submitted < end:
            buckets[int(x.submitted - start)].append(x.seconds)
    return {s: percentile(v, 99) or 0.0 for s, v in sorted(buckets.items()) if len(v) >= 2}


def p99_back(buckets: Mapping[int, float], bound: float) -> float | None:
    """Seconds after a fault until the per-second p99 is back within ``bound`` for good: the
    first second from which every later second's p99 is within it. None when the last second
    measured is still above it (not back within the window) or no second was measured."""
    if not buckets or bound <= 0:
        return None
    back: float | None = None
    for second in sorted(buckets, reverse=True):
        if buckets[second] > bound:
            break
        back = float(second)
    return back


def saturation(
    lines: Sequence[ExecLine],
    runs: Mapping[str, RunInfo],
    weights: Mapping[str, float],
    start: float,
) -> dict[str, float | None]:
    """Throughput and fairness while every tenant is backlogged: from ``start`` until the first
    tenant's last run finished. Steps are counted once per (run, step) (their first ``E``)."""
    last_finish: dict[str, float] = {}
    for run in runs.values():
        if run.finished_at is not None:
            last_finish[run.tenant] = max(last_finish.get(run.tenant, 0.0), run.finished_at)
    if not last_finish:
        return {"steps_per_s": None, "runs_per_s": None, "jain": None, "window_s": None}
    end = min(last_finish.values())
    window = max(end - start, 1e-6)
    done: dict[tuple[str, str], tuple[str, float]] = {}
    for x in lines:
        if x.kind == "E" and x.run in runs and (x.run, x.step) not in done:
            done[(x.run, x.step)] = (x.tenant, x.at)
    per_tenant: dict[str, float] = defaultdict(float)
    steps = 0
    for tenant, at in done.values():
        if start <= at <= end:
            per_tenant[tenant] += 1
            steps += 1
    finished = sum(
        1 for r in runs.values() if r.finished_at is not None and start <= r.finished_at <= end
    )
    shares = [per_tenant.get(t, 0.0) / w for t, w in weights.items()]
    return {
        "steps_per_s": steps / window,
        "runs_per_s": finished / window,
        "jain": jain(shares),
        "window_s": window,
    }


def drain_time(subs: Sequence[Submission], runs: Mapping[str, RunInfo]) -> float | None:
    """First submission → last of their runs finished (None if one did not finish)."""
    if not subs:
        return None
    ends = [runs[s.run_id].finished_at if s.run_id in runs else None for s in subs if s.run_id]
    if not ends or any(e is None for e in ends):
        return None
    return max(e for e in ends if e is not None) - min(s.first_try for s in subs)


def policy_violations(
    lines: Sequence[ExecLine], tenant: str, written: float, cap: int
) -> tuple[int, float, int]:
    """After a stricter step cap was acknowledged at ``written``: the step starts of ``tenant``
    that found ``cap`` or more of its steps already executing (admissions that broke the new
    policy), the time from ``written`` to the last of them (0 when none), and how many were
    executing at ``written``."""
    spans: dict[tuple[str, str, int, int], list[float]] = {}
    for x in lines:
        if x.tenant != tenant:
            continue
        key = (x.run, x.step, x.attempt, x.pid)
        if x.kind == "S":
            spans[key] = [x.at, math.inf]
        elif key in spans:
            spans[key][1] = min(spans[key][1], x.at)
    intervals = sorted((s, e) for s, e in spans.values())
    at_write = sum(1 for s, e in intervals if s <= written < e)
    violations = 0
    last = 0.0
    for s, _ in intervals:
        if s < written:
            continue
        running = sum(1 for s2, e2 in intervals if s2 < s < e2 or (s2 == s and s2 < e2))
        if running > cap:
            violations += 1
            last = s - written
    return violations, last, at_write


def residency(
    lines: Iterable[ExecLine], regions: Mapping[str, str | None], model_region: Mapping[str, str]
) -> tuple[int, int]:
    """Model calls of region-bound tenants served outside their region, and all of their
    model calls (from the executions log: the model that answered names the endpoint)."""
    outside = total = 0
    for x in lines:
        if x.kind != "E" or x.model is None:
            continue
        region = regions.get(x.tenant)
        if region is None:
            continue
        total += 1
        if model_region.get(x.model) != region:
            outside += 1
    return outside, total


def measured_cost(lines: Iterable[ExecLine]) -> dict[str, dict[str, float]]:
    """Per tenant, from the executions log: tokens, micro-dollars and step wall seconds."""
    out: dict[str, dict[str, float]] = defaultdict(
        lambda: {"tokens": 0.0, "cost_micros": 0.0, "step_s": 0.0}
    )
    starts: dict[tuple[int, str, int], float] = {}
    for x in lines:
        key = (x.pid, x.run + "/" + x.step, x.attempt)
        if x.kind == "S":
            starts[key] = x.at
        elif x.kind == "E":
            row = out[x.tenant]
            row["tokens"] += x.tokens_in + x.tokens_out
            row["cost_micros"] += x.cost_micros
            if key in starts:
                row["step_s"] += x.at - starts[key]
    return dict(out)


def attribution_error(
    attributed: Mapping[str, float], measured: Mapping[str, float]
) -> tuple[float | None, float | None]:
    """Total relative error (Σ|a - m| / Σm) and the largest per-tenant relative error."""
    tenants = set(attributed) | set(measured)
    total_m = sum(measured.get(t, 0.0) for t in tenants)
    if total_m <= 0:
        return None, None
    errors = [abs(attributed.get(t, 0.0) - measured.get(t, 0.0)) for t in tenants]
    worst = max(
        (abs(attributed.get(t, 0.0) - m) / m for t in tenants if (m := measured.get(t, 0.0)) > 0),
        default=None,
    )
    return sum(errors) / total_m, worst
