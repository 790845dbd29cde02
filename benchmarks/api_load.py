"""Open-loop load on the REST API: run submissions over loopback to a real ``tenantflow serve``.

    python benchmarks/api_load.py                          # 500/s for 20 s, 4 tenants
    python benchmarks/api_load.py --rate 800 --duration 10 --tenants 1

The server, its workflow, the load generator and what they measure are
:mod:`tenantflow.selftest.load` (``tenantflow selftest --only load`` holds a stated rate and
judges it); this script runs them at any rate and prints: submissions/s achieved, p50/p99/max
submission latency, errors by status, the runs completed and steps/s while the load ran and
after a bounded drain, and the dispatch latency (submission to first step) read from the store.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from tenantflow.selftest.core import percentile
from tenantflow.selftest.load import LoadResult, Served, accounted, load, start_server


def report(served: Served, r: LoadResult) -> None:
    ok = len(r.accepted)
    lat = sorted(r.latencies_ms) or [0.0]
    completed, phantom, dispatch = asyncio.run(accounted(served, r))
    print(
        f"api load: {r.scheduled} submissions at {r.rate:g}/s for {r.duration_s:g} s,"
        f" {r.tenants} tenant(s)"
    )
    print(
        f"  submissions/s achieved  {ok / r.answered_s:8.1f}  ({ok} accepted in"
        f" {r.answered_s:.1f} s)"
    )
    print(f"  schedule kept           {r.sent_s:8.1f} s to send all")
    print(f"  p50 latency ms          {statistics.median(lat):8.1f}")
    print(f"  p99 latency ms          {percentile(lat, 0.99) or 0.0:8.1f}")
    print(f"  max latency ms          {lat[-1]:8.1f}")
    print(f"  errors                  {r.errors or 0}")
    print(
        f"  runs completed          {completed:8d} of {ok} accepted ({phantom} never accepted)"
        f" after {r.drained_s:.1f} s"
    )
    print(
        f"  dispatch p50/p99 ms     {percentile(dispatch, 0.5) or 0.0:8.1f} /"
        f" {percentile(dispatch, 0.99) or 0.0:.1f}"
    )
    print(f"  steps/s                 {r.steps_during / r.answered_s:8.1f} during the load")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="submissions per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--slots", type=int, default=64, help="the server's step slots")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tf-api-load-") as tmp:
        served = start_server(Path(tmp), args.slots)
        try:
            result = asyncio.run(
                load(served, args.rate, args.duration, args.tenants, args.connections)
            )
        finally:
            code = served.process.stop(60.0)
            if code != 0:
                print(f"server exited {code}:\n{served.log.read_text()}")
        report(served, result)


if __name__ == "__main__":
    main()
