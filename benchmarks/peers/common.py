"""What every side of the peer harness shares: the workload's figures and the result line.

Imported by the per-system scripts, which run in different virtual environments (tenantflow's
and the peers'): standard library only.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
from collections.abc import Sequence
from typing import Any

RESULT = "RESULT "  # prefix of the one line a measurement prints for the harness
STEPS = 4  # every workflow: four steps that only compute (as benchmarks/throughput.py)
WARMUP = 20  # sequential runs before the latency measurement (not measured)


def compute(n: int) -> int:
    """The body of every step: a little arithmetic, no I/O, no sleep."""
    return n + 1


def parse(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("mode", choices=["throughput", "latency"])
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--db", required=True, help="path of the SQLite file to create")
    parser.add_argument("--variant", default="", help="a system-specific variant")
    return parser.parse_args()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def throughput(runs: int, elapsed_s: float, **extra: Any) -> dict[str, Any]:
    return {
        "runs": runs,
        "elapsed_s": elapsed_s,
        "steps_per_s": STEPS * runs / elapsed_s,
        "peak_rss_mb": peak_rss_mb(),
        **extra,
    }


def latency(samples_s: Sequence[float], **extra: Any) -> dict[str, Any]:
    ordered = sorted(samples_s)
    return {
        "runs": len(ordered),
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))],
        "peak_rss_mb": peak_rss_mb(),
        **extra,
    }


def emit(figures: dict[str, Any]) -> None:
    print(RESULT + json.dumps(figures), flush=True)
    sys.stdout.flush()
