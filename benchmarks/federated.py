"""The federated placement's costs and behaviour, for N tenants: a plane and its cells as real
processes on this machine (``tenantflow plane``; the cells started by its supervisor).

    python benchmarks/federated.py                        # 10, 50 and 200 tenants
    python benchmarks/federated.py --tenants 10 --cell-size 1
    python benchmarks/federated.py --tenants 200 --cell-size 20 --runs 4

For each N it prints:

* provisioning time per tenant (create → cell started and ready → tenant placed), p50/p99, and
  the wall time for all N (``--parallel`` creations at once);
* processes and memory per tenant: the cells' count and summed RSS (from /proc), ÷ N;
* steps/s: every tenant submits ``--runs`` runs of the five-step workload at once; steps
  completed ÷ the time until the last run ended;
* quiet tenants' p99: run latency (submission → completion, from the cells' records) of the
  quiet tenants, alone and while one tenant bursts ``--burst`` runs, and their ratio.

Cells are dedicated (``--cell-size 1``) up to 50 tenants and pooled above (the default size for
N tenants is ``max(1, N // 10)``): a 2-core machine cannot hold 200 Python processes and still
measure anything. Numbers from a machine shared with other work are noisy: say so with them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tenantflow.selftest.core import percentile
from tenantflow.selftest.federated import Federation, latencies, submit_all, wait_all
from tenantflow.selftest.workload import STEPS, WORKFLOW


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def measure(n: int, cell_size: int, runs: int, burst: int, parallel: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tf-bench-federated-") as tmp:
        fed = Federation(
            Path(tmp), cell_size=cell_size, heartbeat_s=1.0, env={"TF_SELFTEST_STEP_MS": "5,20"}
        )
        try:
            fed.start()
            tenants = [f"t{i:03d}" for i in range(n)]
            started = time.monotonic()
            took = fed.provision(tenants, parallel=parallel)
            wall = time.monotonic() - started
            per = sorted(took.values())
            pids = fed.cell_pids()
            rss = sum(rss_kib(p) for p in pids)
            plane_rss = rss_kib(fed.proc.pid) if fed.proc else 0
            for t in tenants:  # learn each route once
                fed.client(t).tenant()
            # steps/s: every tenant at once
            begin = time.monotonic()
            ids = {t: submit_all(fed, t, WORKFLOW, range(runs)) for t in tenants}
            records = [r for t in tenants for r in wait_all(fed, t, ids[t], 900)]
            elapsed = time.monotonic() - begin
            completed = sum(r.status.value == "completed" for r in records)
            # quiet p99 alone, then under one tenant's burst
            quiet = tenants[1 : min(len(tenants), 6)]
            alone_ids = {t: submit_all(fed, t, WORKFLOW, range(5)) for t in quiet}
            alone = [r for t in quiet for r in wait_all(fed, t, alone_ids[t], 600)]
            burst_ids = submit_all(fed, tenants[0], WORKFLOW, range(burst))
            under_ids = {t: submit_all(fed, t, WORKFLOW, range(5)) for t in quiet}
            under = [r for t in quiet for r in wait_all(fed, t, under_ids[t], 600)]
            wait_all(fed, tenants[0], burst_ids, 900)
            p99_alone = percentile(latencies(alone), 0.99) or 0.0
            p99_under = percentile(latencies(under), 0.99) or 0.0
            return {
                "tenants": n,
                "cell_size": cell_size,
                "cells": len(pids),
                "provision_s_p50": percentile(per, 0.5) or 0.0,
                "provision_s_p99": percentile(per, 0.99) or 0.0,
                "provision_wall_s": wall,
                "processes_per_tenant": (len(pids) + 1) / n,
                "rss_mib_per_tenant": (rss + plane_rss) / 1024 / n,
                "cell_rss_mib": rss / 1024 / max(1, len(pids)),
                "runs": len(records),
                "completed": completed,
                "steps_per_s": completed * len(STEPS) / elapsed,
                "quiet_p99_s_alone": p99_alone,
                "quiet_p99_s_burst": p99_under,
                "quiet_p99_ratio": p99_under / p99_alone if p99_alone else float("nan"),
            }
        finally:
            fed.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, action="append", help="repeatable; 10, 50, 200")
    parser.add_argument("--cell-size", type=int, default=None, help="tenants per cell")
    parser.add_argument("--runs", type=int, default=5, help="runs per tenant for steps/s")
    parser.add_argument("--burst", type=int, default=200, help="the bursting tenant's runs")
    parser.add_argument("--parallel", type=int, default=4, help="tenants created at once")
    args = parser.parse_args()
    print(f"federated benchmark on {os.cpu_count()} cores (loopback; noisy on a shared machine)")
    header = (
        f"{'tenants':>7} {'cell':>4} {'cells':>5} {'prov p50':>8} {'prov p99':>8} {'prov all':>8}"
        f" {'proc/t':>6} {'MiB/t':>6} {'steps/s':>8} {'quiet p99':>9} {'burst p99':>9} {'ratio':>6}"
    )
    print(header)
    for n in args.tenants or [10, 50, 200]:
        size = args.cell_size or (1 if n <= 50 else max(1, n // 10))
        r = measure(n, size, args.runs, args.burst, args.parallel)
        print(
            f"{r['tenants']:>7} {r['cell_size']:>4} {r['cells']:>5}"
            f" {r['provision_s_p50']:>7.2f}s {r['provision_s_p99']:>7.2f}s"
            f" {r['provision_wall_s']:>7.1f}s {r['processes_per_tenant']:>6.2f}"
            f" {r['rss_mib_per_tenant']:>6.1f} {r['steps_per_s']:>8.1f}"
            f" {r['quiet_p99_s_alone']:>8.3f}s {r['quiet_p99_s_burst']:>8.3f}s"
            f" {r['quiet_p99_ratio']:>6.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
