"""Layouts for the pictures the dashboard draws on the server: a run's DAG and its timeline.

Pure geometry: the templates turn these shapes into SVG. The DAG is layered by topological
depth (a step sits one column right of its deepest dependency); the timeline is one row per
step, with the wait before its start, its run time, and a tick per event (attempts, retries,
rate-limit and review waits, degradations) on a shared time axis.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Bar", "Dag", "Edge", "Node", "Tick", "Timeline", "layout_dag", "layout_timeline"]

NODE_W = 150
NODE_H = 40
GAP_X = 50
GAP_Y = 16
PAD = 8


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    status: str  # a StepStatus value, or "pending" for a step not started
    label: str  # what the box says under the name: the status, or "3/10 succeeded"
    x: int
    y: int
    w: int = NODE_W
    h: int = NODE_H


@dataclass(frozen=True, slots=True)
class Edge:
    x1: int
    y1: int
    x2: int
    y2: int


@dataclass(frozen=True, slots=True)
class Dag:
    nodes: list[Node]
    edges: list[Edge]
    width: int
    height: int


def _depths(steps: Sequence[tuple[str, Sequence[str]]]) -> dict[str, int]:
    depth: dict[str, int] = {}
    for name, deps in steps:  # topological order: every dependency is already placed
        depth[name] = 1 + max((depth.get(d, -1) for d in deps), default=-1)
    return depth


def layout_dag(
    steps: Sequence[tuple[str, Sequence[str]]], statuses: Mapping[str, Sequence[str]]
) -> Dag:
    """Boxes and arrows for ``steps`` (name and dependencies, in topological order).

    Args:
        steps: the workflow's steps.
        statuses: the statuses of each step's records (one for a plain step, one per element
            for a fan-out); a step with none is pending.
    """
    depth = _depths(steps)
    rows: dict[int, int] = {}
    place: dict[str, tuple[int, int]] = {}
    nodes: list[Node] = []
    for name, _ in steps:
        column = depth[name]
        row = rows.get(column, 0)
        rows[column] = row + 1
        x = PAD + column * (NODE_W + GAP_X)
        y = PAD + row * (NODE_H + GAP_Y)
        place[name] = (x, y)
        found = list(statuses.get(name, ()))
        nodes.append(Node(name, _status(found), _label(found), x, y))
    edges = [
        Edge(
            place[d][0] + NODE_W, place[d][1] + NODE_H // 2, place[n][0], place[n][1] + NODE_H // 2
        )
        for n, deps in steps
        for d in deps
        if d in place
    ]
    columns = max(depth.values(), default=0) + 1
    height_rows = max(rows.values(), default=1)
    return Dag(
        nodes,
        edges,
        width=2 * PAD + columns * NODE_W + (columns - 1) * GAP_X,
        height=2 * PAD + height_rows * NODE_H + (height_rows - 1) * GAP_Y,
    )


_ORDER = (
    "failed",
    "compensation_failed",
    "running",
    "waiting",
    "mapped",
    "ready",
    "pending",
    "cancelled",
    "compensated",
    "skipped",
    "succeeded",
)


def _status(found: Sequence[str]) -> str:
    """One status for a step's records: the most telling one (a failure, then activity)."""
    if not found:
        return "pending"
    present = set(found)
    return next((s for s in _ORDER if s in present), found[0])


def _label(found: Sequence[str]) -> str:
    if len(found) <= 1:
        return found[0] if found else "pending"
    done = sum(1 for s in found if s == "succeeded")
    return f"{done}/{len(found)} succeeded"


@dataclass(frozen=True, slots=True)
class Tick:
    x: float
    kind: str
    title: str


@dataclass(frozen=True, slots=True)
class Bar:
    key: str
    status: str
    attempt: int
    y: int
    wait_x: float  # the wait before the step started (ready → started)
    start_x: float
    end_x: float
    ticks: list[Tick] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Timeline:
    bars: list[Bar]
    width: int
    height: int
    label_w: int
    span_s: float


ROW_H = 18
LABEL_W = 170
PLOT_W = 640


@dataclass(frozen=True, slots=True)
class StepTimes:
    """What the timeline needs of one step record."""

    key: str
    status: str
    attempt: int
    ready_at: float | None
    started_at: float | None
    finished_at: float | None


def layout_timeline(
    steps: Sequence[StepTimes],
    events: Iterable[tuple[float, str, str | None, int | None]],
    *,
    start: float,
    end: float,
) -> Timeline:
    """Bars for ``steps`` between ``start`` and ``end`` (seconds since the epoch).

    Args:
        steps: the rows, in the order shown.
        events: ``(ts, kind, step key, attempt)`` of the run's events; those of a shown step
            become ticks on its row.
        start: the left edge (the run's creation).
        end: the right edge (its end, or now).
    """
    span = max(end - start, 1e-3)

    def x(ts: float | None, default: float) -> float:
        if ts is None:
            return default
        return round(LABEL_W + PLOT_W * min(max((ts - start) / span, 0.0), 1.0), 1)

    ticks: dict[str, list[Tick]] = {s.key: [] for s in steps}
    for ts, kind, key, attempt in events:
        row = ticks.get(key) if key is not None else None
        if row is not None:
            title = kind if attempt is None else f"{kind} (attempt {attempt})"
            row.append(Tick(x(ts, LABEL_W), kind.replace(".", "-"), title))
    bars = []
    for i, s in enumerate(steps):
        start_x = x(s.started_at, LABEL_W + PLOT_W)
        end_x = x(s.finished_at, x(end, LABEL_W + PLOT_W)) if s.started_at is not None else start_x
        wait_x = min(x(s.ready_at, start_x), start_x) if s.ready_at else start_x
        bars.append(
            Bar(s.key, s.status, s.attempt, i * ROW_H, wait_x, start_x, end_x, ticks[s.key])
        )
    return Timeline(bars, LABEL_W + PLOT_W + PAD, max(len(steps), 1) * ROW_H + 20, LABEL_W, span)
