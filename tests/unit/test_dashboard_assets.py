"""The dashboard's shipped files: every template and static file is in the wheel's package data,
the vendored htmx is the pinned release, and the SVG layouts place what they are given."""

from __future__ import annotations

import fnmatch
import hashlib
import tomllib
from pathlib import Path

from tenantflow.dashboard.svg import StepTimes, layout_dag, layout_timeline

ROOT = Path(__file__).parent.parent.parent
PACKAGE = ROOT / "src" / "tenantflow"
HTMX_SHA256 = "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"
"""dist/htmx.min.js of the npm package htmx.org 2.0.11 (`npm pack htmx.org@2.0.11`)."""


def test_every_dashboard_file_is_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["tenantflow"]
    files = [
        p.relative_to(PACKAGE).as_posix()
        for folder in ("templates", "static")
        for p in (PACKAGE / "dashboard" / folder).iterdir()
    ]
    assert len(files) >= 10
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


def test_the_vendored_htmx_is_the_pinned_release() -> None:
    data = (PACKAGE / "dashboard" / "static" / "htmx-2.0.11.min.js").read_bytes()
    assert hashlib.sha256(data).hexdigest() == HTMX_SHA256


def test_dag_layers_steps_by_depth_and_summarises_fan_outs() -> None:
    dag = layout_dag(
        [("a", ()), ("b", ("a",)), ("c", ("a",)), ("d", ("b", "c"))],
        {"a": ["succeeded"], "b": ["succeeded", "failed", "succeeded"], "c": ["running"]},
    )
    by = {n.name: n for n in dag.nodes}
    assert by["a"].x < by["b"].x == by["c"].x < by["d"].x
    assert by["b"].y != by["c"].y
    assert (by["b"].status, by["b"].label) == ("failed", "2/3 succeeded")
    assert (by["d"].status, by["d"].label) == ("pending", "pending")
    assert len(dag.edges) == 4
    assert all(e.x1 < e.x2 for e in dag.edges)
    assert dag.width >= by["d"].x + by["d"].w and dag.height >= by["c"].y + by["c"].h


def test_timeline_scales_bars_and_ticks_to_the_run() -> None:
    steps = [
        StepTimes("a", "succeeded", 1, None, 100.0, 110.0),
        StepTimes("b", "running", 2, 105.0, 110.0, None),
        StepTimes("c", "pending", 0, None, None, None),
    ]
    events = [(100.0, "step.started", "a", 1), (112.0, "step.retry", "b", 1), (1.0, "x", "z", None)]
    tl = layout_timeline(steps, events, start=100.0, end=120.0)
    a, b, c = tl.bars
    assert a.start_x == tl.label_w and a.end_x == tl.label_w + 320  # 0..10 s of 20 s
    assert b.wait_x < b.start_x == a.end_x and b.end_x == tl.label_w + 640  # runs until the end
    assert c.start_x == c.end_x  # not started: no bar
    assert [t.title for t in b.ticks] == ["step.retry (attempt 1)"]
    assert [t.kind for t in a.ticks] == ["step-started"]
    assert tl.span_s == 20.0
