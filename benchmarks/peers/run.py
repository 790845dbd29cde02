"""Side by side: tenantflow, DBOS Transact 3.4 and LangGraph 1.2 on the same workload.

    python benchmarks/peers/run.py                   # 2,000 runs, 3 reps, 300 sequential runs
    python benchmarks/peers/run.py --runs 2000 --reps 3 --latency-runs 300
    python benchmarks/peers/run.py --quick           # 200 runs, 1 rep, 50 sequential runs

The peers are installed by this script, once, into their own virtual environment
(``benchmarks/peers/.venv-peers``, git-ignored; ``TF_PEERS_VENV`` moves it): ``dbos==3.4.*``,
``langgraph==1.2.*`` and ``langgraph-checkpoint-sqlite`` from PyPI (``TF_PEERS_INDEX_URL``
points pip at another index). When that cannot be done the script prints one line saying why,
skips the peers and still measures tenantflow (exit 0).

The workload, the same for all three: workflows of four steps that only compute (as
``benchmarks/throughput.py``), on SQLite in a fresh temporary file per measurement.

* throughput: ``--runs`` workflows submitted at once, every result awaited by the client;
  timed from the first submit to the last result read; steps/s = 4 x runs / that time;
* latency: ``--latency-runs`` runs one at a time (submit, await the result), after 20 unmeasured
  ones; p50 / p99;
* peak RSS: the throughput process's maximum resident set (interpreter and imports included).

Every measurement runs in its own subprocess -- tenantflow in the interpreter running this
script (the project's venv), the peers in theirs -- interleaved rep by rep (tenantflow, DBOS,
LangGraph, tenantflow, ...), so that the shared machine's noise falls on all of them.

Durability, as configured here (each process prints what its SQLite file reports):

* tenantflow: ``synchronous=FULL`` (its default), WAL; a step's transition is committed (group
  commit) before it is acted on.
* DBOS: its SQLite system database with DBOS's own connection settings (``synchronous`` left at
  SQLite's default, FULL), the file switched to WAL before DBOS opens it (DBOS's default
  rollback journal measured 13.6 steps/s at 50 runs here, 60 with WAL: the better-tuned form is
  the one compared); every step's output and the workflow's status are recorded before the
  workflow goes on. ``dbos`` starts workflows with ``DBOS.start_workflow_async``;
  ``--dbos-queue`` adds ``dbos-queue``, which enqueues them on a registered ``Queue``
  (``global_concurrency`` 64, tenantflow's slots, polled every 50 ms) with ``enqueue_async``.
* LangGraph: a 4-node ``StateGraph`` compiled with ``AsyncSqliteSaver``, one ``thread_id`` per
  run, ``durability="sync"`` (each checkpoint written before the next step starts: the closest
  to the others; LangGraph's default is ``"async"``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VENV = Path(os.environ.get("TF_PEERS_VENV", HERE / ".venv-peers"))
REQUIREMENTS = ["dbos==3.4.*", "langgraph==1.2.*", "langgraph-checkpoint-sqlite"]
IMPORTS = "import dbos, langgraph, langgraph.checkpoint.sqlite.aio"
MARKER = ".tf-peers-installed"
RESULT = "RESULT "
INSTALL_TIMEOUT_S = 1200
MEASURE_TIMEOUT_S = 900


@dataclass(frozen=True)
class System:
    name: str
    python: str
    script: str
    variant: str = ""
    latency: bool = True


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1]


def ensure_peers() -> tuple[str | None, str]:
    """The peers' interpreter, creating and filling their venv if needed; else (None, why)."""
    python = venv_python(VENV)
    marker = VENV / MARKER
    wanted = " ".join(REQUIREMENTS)
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return str(python), "cached"
    try:
        if not python.exists():
            subprocess.run(
                [sys.executable, "-m", "venv", "--clear", str(VENV)],
                check=True,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
            )
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        index = os.environ.get("TF_PEERS_INDEX_URL")
        if index:
            # Only that index: no configuration files, extra indexes or local wheel folders.
            pip += ["--isolated", "--index-url", index]
        done = subprocess.run(
            [*pip, *REQUIREMENTS], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
        )
        if done.returncode != 0:
            return None, f"pip exit {done.returncode}: {_tail(done.stderr or done.stdout)}"
        check = subprocess.run(
            [str(python), "-c", IMPORTS], capture_output=True, text=True, timeout=300
        )
        if check.returncode != 0:
            return None, f"installed but not importable: {_tail(check.stderr)}"
    except subprocess.TimeoutExpired as exc:
        return None, f"timed out after {exc.timeout:.0f} s: {' '.join(map(str, exc.cmd[:4]))}"
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return None, f"{type(exc).__name__}: {_tail(detail)}"
    marker.write_text(wanted)
    return str(python), "installed"


def tenantflow_python() -> str:
    if find_spec("tenantflow") is not None:
        return sys.executable
    local = venv_python(ROOT / ".venv")
    if local.exists():
        return str(local)
    raise SystemExit("error: tenantflow is not importable; run with the project's .venv/bin/python")


def measure(system: System, mode: str, runs: int) -> dict[str, Any] | str:
    """One measurement in a fresh subprocess and SQLite file: its figures, or why it failed."""
    with tempfile.TemporaryDirectory(prefix=f"tf-peers-{system.name}-") as tmp:
        cmd = [system.python, str(HERE / system.script), mode, "--runs", str(runs)]
        cmd += ["--db", str(Path(tmp) / "bench.db")]
        if system.variant:
            cmd += ["--variant", system.variant]
        t0 = time.perf_counter()
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=MEASURE_TIMEOUT_S, cwd=tmp
            )
        except subprocess.TimeoutExpired:
            return f"timed out after {MEASURE_TIMEOUT_S} s"
        wall = time.perf_counter() - t0
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT):
            figures: dict[str, Any] = json.loads(line[len(RESULT) :])
            figures["process_s"] = wall
            return figures
    return f"exit {done.returncode}: {_tail(done.stderr or done.stdout)}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "   -  "
    return f"{a / b:5.2f}x"


def _get(figures: dict[str, Any] | str | None, key: str) -> float | None:
    if isinstance(figures, dict) and key in figures:
        return float(figures[key])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="workflows per throughput rep")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--latency-runs", type=int, default=300, help="sequential runs per rep")
    parser.add_argument("--quick", action="store_true", help="200 runs, 1 rep, 50 sequential")
    parser.add_argument("--no-peers", action="store_true", help="measure tenantflow only")
    parser.add_argument(
        "--dbos-queue", action="store_true", help="also DBOS through a Queue (throughput only)"
    )
    args = parser.parse_args()
    if args.quick:
        args.runs, args.reps, args.latency_runs = 200, 1, 50
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"peers: {args.runs} four-step workflows (all submitted at once, results awaited),"
        f" {args.latency_runs} sequential runs, {args.reps} reps, interleaved;"
        f" {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}",
        flush=True,
    )
    systems = [System("tenantflow", tenantflow_python(), "tf_side.py")]
    if args.no_peers:
        print("peers skipped: --no-peers", flush=True)
    else:
        peer_python, why = ensure_peers()
        if peer_python is None:
            print(
                f"peers skipped: could not install {', '.join(REQUIREMENTS)} into {VENV}"
                f" ({why}); measuring tenantflow only",
                flush=True,
            )
        else:
            print(f"peers: venv {VENV} ({why})", flush=True)
            systems.append(System("dbos", peer_python, "dbos_side.py", "start+wal"))
            if args.dbos_queue:
                systems.append(
                    System("dbos-queue", peer_python, "dbos_side.py", "queue+wal", latency=False)
                )
            systems.append(System("langgraph", peer_python, "langgraph_side.py", "sync"))
    results: dict[tuple[str, str], list[dict[str, Any] | str]] = {}
    seen: set[str] = set()
    for rep in range(1, args.reps + 1):
        for mode, runs in (("throughput", args.runs), ("latency", args.latency_runs)):
            for system in systems:
                if mode == "latency" and not system.latency:
                    continue
                figures = measure(system, mode, runs)
                results.setdefault((system.name, mode), []).append(figures)
                if isinstance(figures, str):
                    print(f"rep {rep} {mode:<10} {system.name:<11} FAILED: {figures}", flush=True)
                    continue
                if system.name not in seen and "durability" in figures:
                    seen.add(system.name)
                    print(f"  durability {system.name}: {figures['durability']}", flush=True)
                if mode == "throughput":
                    line = (
                        f"{figures['steps_per_s']:8.0f} steps/s ({figures['elapsed_s']:.2f} s),"
                        f" peak RSS {figures['peak_rss_mb']:.0f} MB"
                    )
                else:
                    line = f"p50 {figures['p50_ms']:6.1f} ms  p99 {figures['p99_ms']:6.1f} ms"
                print(f"rep {rep} {mode:<10} {system.name:<11} {line}", flush=True)
        # Ratios of this rep.
        tf_t = results[("tenantflow", "throughput")][-1]
        tf_l = results[("tenantflow", "latency")][-1]
        for system in systems[1:]:
            peer_t = results[(system.name, "throughput")][-1]
            parts = [
                f"steps/s {_ratio(_get(tf_t, 'steps_per_s'), _get(peer_t, 'steps_per_s'))}",
                f"RSS {_ratio(_get(tf_t, 'peak_rss_mb'), _get(peer_t, 'peak_rss_mb'))}",
            ]
            if system.latency:
                peer_l = results[(system.name, "latency")][-1]
                parts += [
                    f"p50 {_ratio(_get(tf_l, 'p50_ms'), _get(peer_l, 'p50_ms'))}",
                    f"p99 {_ratio(_get(tf_l, 'p99_ms'), _get(peer_l, 'p99_ms'))}",
                ]
            print(f"rep {rep} ratio tenantflow/{system.name:<11} {'  '.join(parts)}", flush=True)
    summary(systems, results, args)


def _median(values: list[dict[str, Any] | str], key: str) -> float | None:
    got = [float(v[key]) for v in values if isinstance(v, dict)]
    return statistics.median(got) if got else None


def _span(values: list[dict[str, Any] | str], key: str, fmt: str) -> str:
    got = sorted(float(v[key]) for v in values if isinstance(v, dict))
    if not got:
        return "-"
    return " / ".join(format(x, fmt) for x in got)


def _latency_ratios(tf: dict[str, float | None], peer: dict[str, float | None]) -> str:
    p50 = _ratio(tf["p50_ms"], peer["p50_ms"])
    return f"  p50 {p50}  p99 {_ratio(tf['p99_ms'], peer['p99_ms'])}"


def summary(
    systems: list[System],
    results: dict[tuple[str, str], list[dict[str, Any] | str]],
    args: argparse.Namespace,
) -> None:
    print()
    print(f"summary (medians over {args.reps} reps; every rep's figure in brackets, sorted)")
    header = f"{'system':<12}{'steps/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'RSS MB':>8}  reps"
    print(header)
    print("-" * len(header))
    med: dict[str, dict[str, float | None]] = {}
    for s in systems:
        thr = results.get((s.name, "throughput"), [])
        lat = results.get((s.name, "latency"), [])
        med[s.name] = {
            "steps_per_s": _median(thr, "steps_per_s"),
            "peak_rss_mb": _median(thr, "peak_rss_mb"),
            "p50_ms": _median(lat, "p50_ms"),
            "p99_ms": _median(lat, "p99_ms"),
        }
        m = med[s.name]

        def cell(v: float | None, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)

        print(
            f"{s.name:<12}{cell(m['steps_per_s'], '9.0f'):>9}{cell(m['p50_ms'], '9.1f'):>9}"
            f"{cell(m['p99_ms'], '9.1f'):>9}{cell(m['peak_rss_mb'], '8.0f'):>8}"
            f"  steps/s [{_span(thr, 'steps_per_s', '.0f')}]"
            + (f" p50 [{_span(lat, 'p50_ms', '.1f')}]" if lat else "")
        )
    tf = med["tenantflow"]
    for s in systems[1:]:
        p = med[s.name]
        print(
            f"overall tenantflow/{s.name:<11}"
            f" steps/s {_ratio(tf['steps_per_s'], p['steps_per_s'])}"
            f"  RSS {_ratio(tf['peak_rss_mb'], p['peak_rss_mb'])}"
            + (_latency_ratios(tf, p) if s.latency else "")
        )
    print("(steps/s ratio > 1: tenantflow faster; latency and RSS ratios < 1: tenantflow lower)")


if __name__ == "__main__":
    main()
