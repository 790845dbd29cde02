"""The placement comparison as a benchmark: run it, keep its report, refresh the shipped figures.

    python benchmarks/topology.py                      # scenarios/topology.yaml, every placement
    python benchmarks/topology.py --quick              # the CI profile
    python benchmarks/topology.py --write-defaults     # and rewrite topology/defaults.py
    python benchmarks/topology.py --defaults-from docs/topology/compare.json  # from a kept run

It is ``tenantflow topology compare`` with ``--json/--html/--png`` into ``docs/topology/`` and,
with ``--write-defaults``, the figures ``tenantflow topology advise`` and ``project`` use without
``--from`` regenerated from this run. Figures from a loaded machine are noisy: say so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--placements", default="embedded,centralized,federated,mesh,hybrid")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "topology")
    parser.add_argument("--write-defaults", action="store_true")
    parser.add_argument(
        "--defaults-from",
        type=Path,
        metavar="JSON",
        help="rewrite topology/defaults.py from this kept report instead of running",
    )
    args = parser.parse_args()
    if args.defaults_from is not None:
        return write_defaults(args.defaults_from, _command(args)[:-6])
    args.out.mkdir(parents=True, exist_ok=True)
    command = _command(args)
    done = subprocess.run(
        [sys.executable, "-m", "tenantflow.cli.main", *command[1:]], cwd=ROOT, check=False
    )
    if done.returncode != 0 or not args.write_defaults:
        return done.returncode
    return write_defaults(Path(command[-5]), command[:-6])


def _command(args: argparse.Namespace) -> list[str]:
    stem = "compare-quick" if args.quick else "compare"
    return [
        "tenantflow",
        "topology",
        "compare",
        "scenarios/topology.yaml",
        "--placements",
        args.placements,
        "--repeat",
        str(args.repeat),
        *(["--quick"] if args.quick else []),
        "--json",
        str(args.out / f"{stem}.json"),
        "--html",
        str(args.out / f"{stem}.html"),
        "--png",
        str(args.out / f"{stem}.png"),
    ]


def write_defaults(path: Path, command: list[str]) -> int:
    """Rewrite topology/defaults.py from the report at ``path`` (what ran, when, how loaded)."""
    import json

    from tenantflow.topology.report import defaults_module

    report = json.loads(path.read_text())
    when = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = report["machine"].get("load_average_at_start")
    measured_on = (
        f"{when}, {report['workload']['profile']} profile, {report.get('elapsed_s')} s for"
        f" the whole comparison, 2-core machine shared with other work (load average at"
        f" start {load})"
    )
    source = defaults_module(report, measured_on, " ".join(command))
    target = ROOT / "src" / "tenantflow" / "topology" / "defaults.py"
    target.write_text(source)
    subprocess.run([sys.executable, "-m", "ruff", "format", str(target)], check=False)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
