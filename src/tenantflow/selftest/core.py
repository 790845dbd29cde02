"""What every scenario shares: the profiles, the row of figures a scenario returns, the context
it runs in, and the runner that turns exceptions and missing servers into rows.

A scenario is a function ``run(ctx) -> Row``. It measures — from the stores, the execution logs
and the HTTP answers it got — and judges each figure against a stated bound with
:meth:`Row.check`; a failed check is a one-line reason. A scenario that needs something absent
(PostgreSQL, an optional package) raises :class:`Unavailable`: skipped with the reason on a
developer's machine, failed under CI, where everything must be present.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "LONG",
    "PROFILES",
    "SHORT",
    "Context",
    "Profile",
    "Row",
    "Scenario",
    "Unavailable",
    "percentile",
    "run_scenario",
]

Status = Literal["pass", "fail", "skip"]

_CAPTURED = ("tenantflow", "psycopg", "uvicorn", "httpx")


@dataclass(frozen=True)
class Profile:
    """How big each scenario is. ``short`` runs in CI; ``long`` is bigger, with seeded repeats.

    Durations are seconds; a lease is the step and tenant lease of the processes under test
    (recovery is judged against it).
    """

    name: str
    lease_s: float = 2.0
    crash_runs: int = 300
    crash_kills: int = 30
    crash_repeats: int = 1
    crash_step_ms: tuple[int, int] = (30, 200)
    commit_fault_share: float = 0.02
    cluster_runs: int = 300
    cluster_kills: int = 30
    cluster_lease_s: float = 1.0
    cluster_step_ms: tuple[int, int] = (50, 150)
    pause_repeats: int = 1
    restart_runs: int = 300
    restarts: int = 3
    budget_steps: int = 50
    budget_repeats: int = 20
    load_rate: float = 200.0
    load_hold_s: float = 10.0
    isolation_examples: int = 8
    fuzz_examples: int = 3
    fuzz_cases: int = 150
    audit_trials: int = 40


SHORT = Profile("short")
LONG = replace(
    SHORT,
    name="long",
    crash_runs=600,
    crash_kills=60,
    crash_repeats=3,
    cluster_runs=600,
    cluster_kills=60,
    cluster_step_ms=(80, 200),
    pause_repeats=3,
    restart_runs=600,
    restarts=6,
    budget_repeats=100,
    load_rate=300.0,
    load_hold_s=60.0,
    isolation_examples=40,
    fuzz_examples=10,
    fuzz_cases=1000,
    audit_trials=300,
)
PROFILES = {p.name: p for p in (SHORT, LONG)}


class Unavailable(Exception):
    """Something the scenario needs is missing: skipped locally, a failure in CI."""


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (nearest rank) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Row:
    """One scenario's measured figures and verdict. ``None``: the figure does not apply."""

    scenario: str
    runs: int | None = None
    faults: dict[str, int] = field(default_factory=dict)
    lost: int | None = None
    duplicate_completions: int | None = None
    duplicate_executions: int | None = None
    duplicate_bound: int | None = None
    recovery_s: list[float] = field(default_factory=list)
    recovery_bound_s: float | None = None
    cross_tenant: int | None = None
    overspend_micros: int | None = None
    tamper_detected: int | None = None
    tamper_injected: int | None = None
    figures: dict[str, float] = field(default_factory=dict)  # the scenario's own, by name
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    status: Status = "pass"
    reason: str = ""
    elapsed_s: float = 0.0

    def check(self, ok: bool, reason: str) -> bool:
        """Record a failed bound (``reason``: what was wrong, with the figures)."""
        if not ok:
            self.failures.append(reason)
        return ok

    def note(self, text: str) -> None:
        self.notes.append(text)

    def fault(self, kind: str, n: int = 1) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + n

    @property
    def recovery_p50(self) -> float | None:
        return percentile(self.recovery_s, 0.5)

    @property
    def recovery_p99(self) -> float | None:
        return percentile(self.recovery_s, 0.99)

    def judge(self) -> None:
        """Apply the common bounds (every figure that applies must be 0 or within its bound)
        and settle the status."""
        zero = {
            "lost runs": self.lost,
            "duplicate completions": self.duplicate_completions,
            "cross-tenant violations": self.cross_tenant,
            "overspend (micro-dollars)": self.overspend_micros,
        }
        for what, value in zero.items():
            self.check(value in (None, 0), f"{value} {what} (must be 0)")
        if self.duplicate_executions is not None and self.duplicate_bound is not None:
            self.check(
                self.duplicate_executions <= self.duplicate_bound,
                f"{self.duplicate_executions} duplicate executions, over their bound of"
                f" {self.duplicate_bound}",
            )
        p99 = self.recovery_p99
        if p99 is not None and self.recovery_bound_s is not None:
            self.check(
                p99 < self.recovery_bound_s,
                f"recovery p99 {p99:.2f}s is not under {self.recovery_bound_s:g}s",
            )
        if self.tamper_injected is not None:
            self.check(
                self.tamper_detected == self.tamper_injected,
                f"tampering found at the exact row {self.tamper_detected} times out of"
                f" {self.tamper_injected}",
            )
        if self.failures:
            self.status = "fail"
            self.reason = "; ".join([r for r in (self.reason,) if r] + self.failures)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["recovery_p50_s"] = self.recovery_p50
        out["recovery_p99_s"] = self.recovery_p99
        del out["recovery_s"]
        out["recoveries"] = len(self.recovery_s)
        return out


@dataclass
class Context:
    """What a scenario runs with."""

    profile: Profile
    seed: int = 1
    pg_url: str | None = None
    in_ci: bool = False
    workdir: Path | None = None
    progress: Callable[[str], None] = lambda text: None
    pg_restart: Sequence[str] | None = None
    # Runs the tenantflow command line with these arguments and returns its output, raising
    # RuntimeError on a non-zero exit. Given by the ``tenantflow selftest`` command (the
    # command line in its own process); None runs the installed one in a subprocess. The
    # selftest never imports the CLI itself: the CLI imports the selftest.
    command_line: Callable[[Sequence[str]], str] | None = None

    def run_cli(self, args: Sequence[str]) -> str:
        """The output of ``tenantflow ARGS`` (see :attr:`command_line`).

        Raises:
            RuntimeError: the command exited non-zero (with the end of its output).
        """
        if self.command_line is not None:
            return self.command_line(args)
        command = [sys.executable, "-m", "tenantflow.cli.main", *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            output = done.stdout + done.stderr
            raise RuntimeError(f"tenantflow {' '.join(args)}: {output[-300:]}")
        return done.stdout

    def rng(self, name: str, repeat: int = 0) -> random.Random:
        """A random generator for ``name``, the same for the same seed (and repeat)."""
        return random.Random(self.seed * 1_000_003 + zlib.crc32(name.encode()) + repeat)

    def say(self, text: str) -> None:
        self.progress(text)

    def postgres(self) -> str:
        """The PostgreSQL server URL; :class:`Unavailable` when none is configured."""
        if not self.pg_url:
            raise Unavailable("no PostgreSQL server configured (--pg-dsn)")
        return self.pg_url


@dataclass(frozen=True)
class Scenario:
    """A named scenario: what it proves and the function that measures it."""

    name: str
    summary: str
    run: Callable[[Context, Row, Path], None]
    needs: tuple[str, ...] = ()


def run_scenario(scenario: Scenario, ctx: Context) -> Row:
    """Run one scenario into a judged row: never raises for the scenario's own failures."""
    row = Row(scenario.name)
    started = time.monotonic()
    base = ctx.workdir
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix=f"tf-selftest-{scenario.name}-", dir=base))
    # What in-process engines and drivers log goes to the scenario's file, not the console.
    to_file = logging.FileHandler(directory / "engine.log", encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger(name) for name in _CAPTURED]
    propagate = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(to_file)
        logger.propagate = False
    try:
        ctx.say(f"{scenario.name}: {scenario.summary}")
        scenario.run(ctx, row, directory)
    except Unavailable as exc:
        if ctx.in_ci:
            row.status, row.reason = "fail", f"{exc} (CI must provide it)"
        else:
            row.status, row.reason = "skip", str(exc)
    except Exception as exc:
        row.status = "fail"
        row.reason = f"crashed: {type(exc).__name__}: {exc}"
        (directory / "traceback.txt").write_text(traceback.format_exc(), encoding="utf-8")
    finally:
        for logger, before in zip(loggers, propagate, strict=True):
            logger.removeHandler(to_file)
            logger.propagate = before
        to_file.close()
    row.elapsed_s = time.monotonic() - started
    if row.status != "skip":
        row.judge()
    if row.status == "fail":
        row.reason += f" (files: {directory})"
    else:
        shutil.rmtree(directory, ignore_errors=True)
    ctx.say(f"{scenario.name}: {row.status} in {row.elapsed_s:.1f}s")
    return row
