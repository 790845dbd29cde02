"""``tenantflow topology compare``: the phases, one placement at a time.

For each placement (and each repetition) a fresh deployment is started and driven through:

1. **provision** — every tenant created over the API, with a key, and its first run waited for
   (provisioning time per tenant); ``/proc`` is read after a third, two thirds and all of them
   (the points the placement model is fitted to);
2. **quiet** — every tenant but the burster submits at ``quiet_rate`` for ``phase`` seconds;
3. **burst** — the same arrivals (same seed), and the burster submits ``burst`` runs at once:
   quiet tenants' p99 against phase 2, and per second against the burster's queue depth;
4. **saturation** — every tenant submits ``saturation_runs`` at once: steps/s and runs/s while
   all are backlogged, Jain's index over weight-normalised steps, CPU-seconds per 1,000 steps;
5. **burst alone** — the burster's ``burst`` runs with every other tenant idle (drain time
   against phase 3's);
6. **policy** — with the burster backlogged, its ``max_running_steps`` is lowered to
   ``policy_cap``: the step starts that broke the new cap after the write was acknowledged,
   and the last of them (then the cap is restored);
7. **accounts** — usage per tenant from the API against the executions log (tokens, money,
   slot-seconds), model calls of region-bound tenants outside their region, timelines;
8. **faults** — for each component and fault, steady load, the fault, recovery: share of
   tenants with a failed, refused or SLA-breaking run in the window, time to first progress,
   time to per-second p99 back within 1.1x, runs lost, duplicate completions.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tenantflow.topology import measure as m
from tenantflow.topology.driver import TERMINAL, Driver, RunInfo, Submission
from tenantflow.topology.execlog import ExecLine, read_exec_log
from tenantflow.topology.placements import runners as all_runners
from tenantflow.topology.placements import versions
from tenantflow.topology.procfs import Usage, total
from tenantflow.topology.runner import Component, Deployment, PlacementRunner
from tenantflow.topology.workload import Workload

__all__ = ["CANNOT_SHOW", "Progress", "compare", "machine"]

Progress = Callable[[str, str], None]
"""``progress(placement, text)``: what is happening now."""

CANNOT_SHOW = [
    "Network cost: every process talks over loopback, so cross-host latency, bandwidth and"
    " partitions (and what they do to a shared database or broker) are not in these figures.",
    "True scale: tens of tenants on one 2-core machine, not hundreds or thousands; the"
    " projection past the measured points is a model (see 'projection'), not a measurement.",
    "Independent hardware failure: every process shares one kernel, disk and power supply;"
    " a 'database' fault here terminates the deployment's connections, it does not crash or"
    " restart the shared PostgreSQL server.",
    "CPU attributed per tenant: tenants share processes in these placements, so only"
    " slot-seconds (wall time a step held a slot) are attributed per tenant and checked.",
    "Residency of data at rest: embedded, centralized, mesh and hybrid have one store (and the"
    " mesh and hybrid one broker) for every tenant; federated cells have a store each, but all"
    " on this machine's disk; only model calls' regions are checked here.",
    "Figures are from a machine shared with other work: latency and CPU are noisy; repeat"
    " (--repeat) and read the min-max.",
]

EXPECTED_EVENTS = ("step.started", "step.succeeded", "state.version")


def machine() -> dict[str, Any]:
    """The machine the figures come from."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        mem_gb = round(int(first.split()[1]) / 1024 / 1024, 1)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "memory_gb": mem_gb,
        "os": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in load],
        **versions(),
    }


def compare(
    workload: Workload,
    placements: Sequence[str],
    *,
    repeat: int = 1,
    progress: Progress = lambda _p, _t: None,
    workdir: Path | None = None,
    runners: Mapping[str, PlacementRunner] | None = None,
) -> dict[str, Any]:
    """Run every placement of ``placements`` ``repeat`` times; the report's data."""
    started = time.time()
    found = dict(runners) if runners is not None else all_runners()
    result: dict[str, Any] = {
        "workload": {
            "file": str(workload.path),
            "name": workload.name,
            "profile": "quick" if workload.quick else "full",
            "seed": workload.seed,
            "tenants": len(workload.tenants),
            "burster": workload.burster.id,
            "steps_per_run": len(workload.steps),
            "slots": workload.slots,
            "settings": workload.settings.model_dump(exclude={"quick"}),
        },
        "machine": machine(),
        "placements": {},
        "cannot_show": CANNOT_SHOW,
    }
    for name in placements:
        runner = found[name]
        why = runner.unavailable()
        entry: dict[str, Any] = {"summary": runner.summary}
        if why is not None:
            entry["available"] = False
            entry["reason"] = why
            progress(name, f"not available: {why}")
            result["placements"][name] = entry
            continue
        entry["available"] = True
        entry["runs"] = []
        for _ in range(repeat):
            base = Path(tempfile.mkdtemp(prefix=f"tf-topology-{name}-", dir=workdir))
            try:
                entry["runs"].append(asyncio.run(_one(workload, runner, base, progress)))
            except Exception as exc:  # this placement's run failed: say so, go on
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                entry["failed"] = f"{type(exc).__name__}: {first[:300]}"
                progress(name, f"failed: {entry['failed']}")
                break
            finally:
                shutil.rmtree(base, ignore_errors=True)
        if not entry["runs"]:
            entry["available"] = False
            entry["reason"] = f"the run failed: {entry['failed']}"
        else:
            entry["summary_figures"] = summarise(entry["runs"])
        result["placements"][name] = entry
    result["elapsed_s"] = round(time.time() - started, 1)
    return result


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Median, min and max of every figure over the repetitions."""
    figures: dict[str, list[float]] = defaultdict(list)
    keys: set[str] = set()
    for run in runs:
        for key, value in run["figures"].items():
            keys.add(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                figures[key].append(float(value))
    out: dict[str, dict[str, float | None]] = {}
    for key in sorted(keys):
        values = sorted(figures.get(key, []))
        if not values:
            out[key] = {"median": None, "min": None, "max": None, "n": 0}
            continue
        mid = len(values) // 2
        median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
        out[key] = {"median": median, "min": values[0], "max": values[-1], "n": len(values)}
    return out


class _Run:
    """One deployment's measurement (the phases of the module docstring)."""

    def __init__(
        self, workload: Workload, name: str, deployment: Deployment, log: Path, progress: Progress
    ) -> None:
        self.w = workload
        self.name = name
        self.d = deployment
        self.log = log
        self.progress = progress
        self.driver = Driver(deployment.base_url, deployment.admin_key, workload, self.say)
        self.driver.idempotency_keys = getattr(deployment, "idempotency_keys", True)
        self.fig: dict[str, Any] = {}
        self.detail: dict[str, Any] = {}
        self.lost = 0
        self.refused = 0
        self.stuck = 0
        self.sla = workload.settings.sla
        self._lines: list[ExecLine] = []
        self._offset = 0
        self.steady_p99: float | None = None

    def say(self, text: str) -> None:
        self.progress(self.name, text)

    @property
    def s(self) -> Any:
        return self.w.settings

    def lines(self) -> list[ExecLine]:
        """The executions log so far (read incrementally: it only grows)."""
        more, self._offset = read_exec_log(self.log, self._offset)
        self._lines.extend(more)
        return self._lines

    def usage(self) -> Usage:
        return total(self.d.processes())

    async def settle(
        self, subs: Sequence[Submission], phase: str, since: float
    ) -> dict[str, RunInfo]:
        tenants = sorted({s.tenant for s in subs})
        drained = await self.driver.drain(tenants, phase, self.s.drain_timeout)
        runs = await self.driver.all_runs(tenants, since - 1.0)
        acked = [s for s in subs if s.run_id is not None]
        # lost: acknowledged, and the API does not know the run; stuck: known, not ended
        self.lost += sum(1 for s in acked if s.run_id not in runs)
        self.stuck += sum(
            1 for s in acked if s.run_id in runs and runs[s.run_id].status not in TERMINAL
        )
        self.refused += sum(1 for s in subs if s.run_id is None)
        if not drained:
            self.say(f"{phase}: not drained after {self.s.drain_timeout:g}s")
        return runs

    async def provision(self) -> None:
        marks = sorted({max(1, len(self.w.tenants) * k // 3) for k in (1, 2, 3)})
        times: list[float] = []
        points: list[dict[str, Any]] = []
        for i, tenant in enumerate(self.w.tenants, start=1):
            self.say(f"provision: tenant {i}/{len(self.w.tenants)}")
            deadline = time.monotonic() + self.s.drain_timeout  # each tenant's own
            times.append(await self.driver.provision(tenant, deadline))
            if i in marks:
                await asyncio.sleep(0.5)
                use = self.usage()
                conns = self.d.connections()
                points.append(
                    {
                        "tenants": i,
                        "processes": use.processes,
                        "rss_mb": use.rss_mb,
                        "sockets": use.sockets,
                        "fds": use.fds,
                        "threads": use.threads,
                        "db_connections": conns.get("database"),
                    }
                )
        self.detail["ops_points"] = points
        last = points[-1]
        n = last["tenants"]
        self.fig["provision_s_p50"] = m.percentile(times, 50)
        self.fig["provision_s_max"] = max(times)
        self.fig["processes"] = last["processes"]
        self.fig["rss_mb"] = last["rss_mb"]
        self.fig["rss_mb_per_tenant"] = last["rss_mb"] / n
        self.fig["processes_per_tenant"] = last["processes"] / n
        self.fig["sockets_per_tenant"] = last["sockets"] / n
        if last["db_connections"] is not None:
            self.fig["db_connections"] = last["db_connections"]

    async def quiet_and_burst(self) -> None:
        quiet = [t.id for t in self.w.quiet]
        rate, seconds = self.s.quiet_rate, self.s.phase
        t0 = time.time()
        subs = await self.driver.open_loop(quiet, rate, seconds, "quiet", self.w.seed)
        runs = await self.settle(subs, "quiet", t0)
        lat = m.run_latencies(subs, runs)
        seconds_ok = [x.seconds for x in lat if x.seconds is not None]
        self.fig["run_p50_s"] = m.percentile(seconds_ok, 50)
        self.fig["run_p99_s"] = m.percentile(seconds_ok, 99)
        steps = [s.name for s in self.w.steps]
        hops = m.hop_latencies(self.lines(), runs, steps)
        self.fig["hop_p50_ms"] = _ms(m.percentile(hops, 50))
        self.fig["hop_p99_ms"] = _ms(m.percentile(hops, 99))
        buckets = m.per_second_p99(lat, t0, t0 + seconds)
        quiet_buckets = {t0 + s + 0.5: v for s, v in buckets.items()}
        self.steady_p99 = m.percentile(list(buckets.values()), 99) or self.fig["run_p99_s"]
        quiet_alone = self.fig["run_p99_s"]
        # A run breaks the SLA when slower than the workload's sla or twice this placement's
        # own quiet p99, whichever is larger: a slower placement is not counted as failing
        # its tenants merely for being slower.
        self.sla = max(self.s.sla, 2 * (quiet_alone or 0.0))
        self.fig["sla_s"] = self.sla

        t1 = time.time()
        burster = self.w.burster.id
        steady = asyncio.create_task(
            self.driver.open_loop(quiet, rate, seconds, "burst", self.w.seed)
        )
        flood = await self.driver.batch(burster, self.w.burst, "burst")
        subs = await steady
        runs = await self.settle([*subs, *flood], "burst", t1)
        lat = m.run_latencies(subs, runs)
        quiet_burst = m.p([x.seconds for x in lat], 99)
        self.fig["quiet_p99_alone_s"] = quiet_alone
        self.fig["quiet_p99_burst_s"] = quiet_burst
        if quiet_alone and quiet_burst is not None:
            self.fig["quiet_p99_ratio"] = quiet_burst / quiet_alone
        buckets = m.per_second_p99(lat, t1, t1 + seconds)
        # Every second of the quiet and the burst phases with two quiet runs or more: their
        # p99 against the burster's runs created and not yet started at the second's middle
        # (none in the quiet phase, where it submits nothing: measured all the same).
        series = {**quiet_buckets, **{t1 + s + 0.5: v for s, v in buckets.items()}}
        burster_runs = list((await self.driver.all_runs([burster], t0 - 1.0)).values())
        depth = m.queue_depth(burster_runs, self.lines(), steps[0], list(series))
        self.fig["quiet_p99_depth_corr"] = m.pearson(
            [float(d) for d in depth], list(series.values())
        )
        self.fig["quiet_p99_depth_corr_points"] = len(series)
        self.detail["isolation_series"] = {
            "phase": ["quiet" if at < t1 else "burst" for at in series],
            "second": [round(at - t0, 1) for at in series],
            "quiet_p99_s": list(series.values()),
            "burster_queued": depth,
        }
        self.fig["burster_drain_with_others_s"] = m.drain_time(flood, runs)

    async def saturation(self) -> None:
        before = self.usage()
        t0 = time.time()
        subs_lists = await asyncio.gather(
            *(self.driver.batch(t.id, self.s.saturation_runs, "saturation") for t in self.w.tenants)
        )
        subs = [s for group in subs_lists for s in group]
        runs = await self.settle(subs, "saturation", t0)
        after = self.usage()
        lines = self.lines()
        weights = {t.id: t.weight for t in self.w.tenants}
        sat = m.saturation(lines, runs, weights, t0)
        self.fig["steps_per_s"] = sat["steps_per_s"]
        self.fig["runs_per_s"] = sat["runs_per_s"]
        self.fig["jain"] = sat["jain"]
        ids = set(runs)
        steps = len({(x.run, x.step) for x in lines if x.kind == "E" and x.run in ids})
        cpu = after.cpu_s - before.cpu_s
        self.fig["cpu_s_per_1000_steps"] = cpu / steps * 1000 if steps else None
        self.detail["saturation_cpu"] = {"cpu_s": round(cpu, 2), "steps": steps}

    async def burst_alone(self) -> None:
        t0 = time.time()
        flood = await self.driver.batch(self.w.burster.id, self.w.burst, "burst-alone")
        runs = await self.settle(flood, "burst alone", t0)
        alone = m.drain_time(flood, runs)
        self.fig["burster_drain_alone_s"] = alone
        other = self.fig.get("burster_drain_with_others_s")
        if alone and other:
            self.fig["burster_drain_ratio"] = other / alone

    async def policy(self) -> None:
        burster = self.w.burster
        t0 = time.time()
        deadline = time.monotonic() + self.s.drain_timeout
        flood = asyncio.create_task(
            self.driver.batch(burster.id, max(20, self.w.burst // 2), "policy")
        )
        seen = len(self.lines())
        for _ in range(200):  # until the burster is executing steps
            await asyncio.sleep(0.05)
            new = self.lines()[seen:]
            seen += len(new)
            if any(x.tenant == burster.id and x.at >= t0 for x in new):
                break
        cap = self.s.policy_cap
        # The cap is the whole bound: no guaranteed or borrowed slots above it.
        stricter = {
            "max_running_steps": cap,
            "guaranteed_slots": min(cap, burster.guaranteed_slots),
            "burst_slots": 0,
        }
        written = await self.driver.set_policy(burster.id, stricter, deadline)
        await asyncio.sleep(min(3.0, self.s.phase))
        subs = await flood
        lines = self.lines()
        violations, lag, at_write = m.policy_violations(lines, burster.id, written, cap)
        restored = {
            "max_running_steps": burster.max_running_steps,
            "guaranteed_slots": burster.guaranteed_slots,
            "burst_slots": burster.burst_slots,
        }
        await self.driver.set_policy(burster.id, restored, deadline)
        await self.settle(subs, "policy", t0)
        self.fig["policy_violations"] = violations
        self.fig["policy_lag_s"] = lag
        self.fig["enforcement_points"] = self.d.enforcement_points()
        self.detail["policy"] = {"cap": cap, "running_at_write": at_write}

    async def accounts(self) -> None:
        lines = self.lines()
        truth = m.measured_cost(lines)
        attributed: dict[str, dict[str, float]] = {}
        for tenant in self.w.tenants:
            attributed[tenant.id] = await self.driver.usage(tenant.id)
        # label: (executions-log key, the API's usage metrics that attribute it)
        pairs: dict[str, tuple[str, tuple[str, ...]]] = {
            "tokens": ("tokens", ("tokens_in", "tokens_out")),
            "cost": ("cost_micros", ("cost_micros",)),
            "slot_seconds": ("step_s", ("slot_seconds",)),
        }
        for label, (truth_key, metrics) in pairs.items():
            total_err, worst = m.attribution_error(
                {t: sum(u.get(k, 0.0) for k in metrics) for t, u in attributed.items()},
                {t: row[truth_key] for t, row in truth.items()},
            )
            self.fig[f"{label}_attribution_error"] = total_err
            self.fig[f"{label}_attribution_worst_tenant_error"] = worst
        regions = {t.id: t.region for t in self.w.tenants}
        model_region = {e.model: e.region for e in self.w.endpoints}
        outside, checked = m.residency(lines, regions, model_region)
        self.fig["cross_region_calls"] = outside
        self.fig["region_bound_calls_checked"] = checked
        # observability: the timelines of some completed runs
        runs = await self.driver.all_runs([t.id for t in self.w.tenants], 0.0)
        done = [r for r in runs.values() if r.status == "completed"]
        step_names = [s.name for s in self.w.steps]
        took: list[float] = []
        present = expected = 0
        missing: dict[str, int] = defaultdict(int)
        for run in done[: self.s.timeline_samples]:
            seconds, events = await self.driver.timeline(run.tenant, run.id)
            took.append(seconds)
            have = {(e["kind"], e.get("step")) for e in events}
            want: set[tuple[str, str | None]] = {("run.submitted", None), ("run.completed", None)}
            if ("run.queued", None) in have:  # admitted later, from the tenant's queue
                want |= {("run.queued", None), ("run.admitted", None)}
            else:
                want.add(("run.started", None))
            want |= {(k, s) for s in step_names for k in EXPECTED_EVENTS}
            want |= {("model.call", s.name) for s in self.w.steps if s.calls_model}
            expected += len(want)
            present += len(want & have)
            for kind, step in want - have:
                missing[f"{kind}:{step}"] += 1
        self.detail["timeline_missing"] = dict(missing)
        self.fig["timeline_p50_ms"] = _ms(m.percentile(took, 50))
        self.fig["timeline_max_ms"] = _ms(max(took) if took else None)
        self.fig["timeline_events_present"] = present / expected if expected else None

    async def faults(self) -> None:
        # The first component of each kind: components of one kind are alike (the workers,
        # the cells, the agents), and each trial costs its outage plus the window.
        seen: set[str] = set()
        comps = [c for c in self.d.components() if not (c.kind in seen or seen.add(c.kind))]  # type: ignore[func-returns-value]
        trials: list[dict[str, Any]] = []
        for comp in comps:
            for fault in comp.faults:
                if self.s.wants(self.name, comp.kind, fault):
                    trials.append(await self.fault(comp, fault))
        self.detail["faults"] = trials
        for trial in trials:
            key = f"{trial['kind']}_{trial['fault']}"
            self.fig[f"affected_share[{key}]"] = trial["affected_share"]
            self.fig[f"first_progress_s[{key}]"] = trial["first_progress_s"]
            self.fig[f"p99_back_s[{key}]"] = trial["p99_back_s"]
        self.fig["duplicate_completions"] = sum(t["duplicate_completions"] for t in trials)
        self.fig["reexecuted_steps"] = sum(t["reexecuted_steps"] for t in trials)

    async def fault(self, comp: Component, fault: str) -> dict[str, Any]:
        label = f"fault: {fault} {comp.name}"
        tenants = [t.id for t in self.w.tenants]
        window = self.s.fault_window
        # The steady load goes on until ``window`` after the component is back: the longest
        # it can run is bounded by the drain timeout (a restart that takes longer fails).
        longest = self.s.fault_before + self.s.sigstop_for + self.s.drain_timeout + window
        stop = asyncio.Event()
        t0 = time.time()
        load = asyncio.create_task(
            self.driver.open_loop(
                tenants, self.s.quiet_rate, longest, label, self.w.seed + 7, stop=stop
            )
        )
        await asyncio.sleep(self.s.fault_before)
        when = await asyncio.to_thread(self.d.inject, comp.name, fault)
        served = self.d.serves(comp.name, when - 5.0)
        self.say(f"{label}: injected")
        # One probe run per tenant at the moment of the fault: every tenant is exposed to it.
        probes = asyncio.create_task(self.driver.probe(tenants, label))
        if fault == "stop":
            await asyncio.sleep(self.s.sigstop_for)
        try:
            await asyncio.to_thread(self.d.recover, comp.name, fault)
        except BaseException:
            stop.set()
            raise
        back_at = time.time()
        outage = back_at - when  # until restarted (kill) or continued (stop)
        await asyncio.sleep(window)
        stop.set()
        end = back_at + window
        probed = await probes
        subs = [*await load, *probed]
        lost_before, stuck_before = self.lost, self.stuck
        runs = await self.settle(subs, label, t0)
        lat = m.run_latencies(subs, runs)
        lines = [x for x in self.lines() if x.at >= t0]
        sla = self.sla
        affected: set[str] = set()
        for sub in subs:
            if not (when - sla <= sub.first_try <= end):
                continue
            if sub.run_id is None:
                affected.add(sub.tenant)
        # The steady load's runs break the SLA or fail; the probes (one per tenant, all at
        # once: a small burst of their own) only count when they failed or waited out the
        # outage itself (see ``waited_out``).
        probe_ids = {sub.run_id for sub in probed}
        for x in lat:
            if x.run_id in probe_ids:
                if x.seconds is None or x.status != "completed":
                    affected.add(x.tenant)
                continue
            if when - sla <= x.submitted <= end and (
                x.seconds is None or x.seconds > sla or x.status != "completed"
            ):
                affected.add(x.tenant)
        for x in lat:
            if x.run_id in probe_ids and waited_out(x.seconds, outage, self.steady_p99):
                affected.add(x.tenant)
        first_progress: list[float] = []
        for tenant in tenants:
            after = [x.at for x in lines if x.tenant == tenant and x.kind == "E" and x.at >= when]
            if after:
                first_progress.append(min(after) - when)
        steady = [x for x in lat if x.run_id not in probe_ids]
        buckets = m.per_second_p99(steady, when, end)
        back = m.p99_back(buckets, 1.1 * (self.steady_p99 or 0.0))
        gate = asyncio.Semaphore(8)

        async def twice(run: RunInfo) -> int:
            async with gate:
                _, events = await self.driver.timeline(run.tenant, run.id)
            kinds: dict[tuple[str, str | None], int] = defaultdict(int)
            for e in events:
                kinds[(e["kind"], e.get("step"))] += 1
            return sum(
                n - 1
                for (k, _s), n in kinds.items()
                if n > 1 and k in ("run.completed", "step.succeeded")
            )

        duplicates = sum(await asyncio.gather(*(twice(r) for r in runs.values())))
        ends: dict[tuple[str, str], int] = defaultdict(int)
        for line in lines:
            if line.kind == "E" and line.run in runs:
                ends[(line.run, line.step)] += 1
        trial = {
            "component": comp.name,
            "kind": comp.kind,
            "shared": comp.shared,
            "fault": fault,
            "how": comp.how,
            "tenants": len(tenants),
            "affected": sorted(affected),
            "affected_share": len(affected) / len(tenants),
            "served_by_component": None if served is None else sorted(served),
            "outage_s": round(outage, 3),
            "window_s": round(end - when, 3),
            "p99_per_second": {str(k): round(v, 4) for k, v in buckets.items()},
            "p99_bound_s": round(1.1 * (self.steady_p99 or 0.0), 4),
            "first_progress_s": max(first_progress) if first_progress else None,
            "p99_back_s": back,
            "runs": len(runs),
            "runs_lost": self.lost - lost_before,
            "runs_stuck": self.stuck - stuck_before,
            "duplicate_completions": duplicates,
            "reexecuted_steps": sum(n - 1 for n in ends.values() if n > 1),
            "trial_s": round(time.time() - t0, 1),  # load, fault, window, drain and checks
        }
        self.say(
            f"{label}: {len(affected)}/{len(tenants)} tenants affected,"
            f" first progress {trial['first_progress_s']}"
        )
        return trial


def waited_out(seconds: float | None, outage: float, steady_p99: float | None) -> bool:
    """Whether a probe submitted at a fault, ``seconds`` to its end (None: it never ended),
    waited out an outage of ``outage`` seconds: the outage is longer than a run normally takes
    (twice the steady p99, and at least half a second: a restarted process is back in about a
    second, a killed worker's tenants move on in milliseconds, which any probe takes) and the
    probe took about as long."""
    if outage < max(0.5, 2.0 * (steady_p99 or 0.0)):
        return False
    return seconds is None or seconds >= 0.95 * outage


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


async def _one(
    workload: Workload, runner: PlacementRunner, workdir: Path, progress: Progress
) -> dict[str, Any]:
    name = runner.name
    log = workdir / "exec.log"
    env = {
        "TF_TOPOLOGY_WORKLOAD": str(workload.path),
        "TF_TOPOLOGY_PROFILE": "quick" if workload.quick else "full",
        "TF_TOPOLOGY_EXEC_LOG": str(log),
    }
    progress(name, "starting")
    start = time.monotonic()
    deployment = await asyncio.to_thread(runner.start, workload, workdir, env)
    started_s = time.monotonic() - start
    run = _Run(workload, name, deployment, log, progress)
    try:
        async with run.driver:
            phases = (
                run.provision,
                run.quiet_and_burst,
                run.saturation,
                run.burst_alone,
                run.policy,
                run.accounts,
                run.faults,
            )
            for phase in phases:
                began = time.monotonic()
                await phase()
                run.detail.setdefault("phase_s", {})[phase.__name__] = round(
                    time.monotonic() - began, 1
                )
    finally:
        await asyncio.to_thread(deployment.stop)
    run.fig["runs_lost"] = run.lost
    run.fig["runs_stuck"] = run.stuck
    run.fig["submissions_refused"] = run.refused
    run.fig["start_s"] = started_s
    run.detail.setdefault("phase_s", {})["start"] = round(started_s, 1)
    progress(name, "done")
    return {
        "describe": deployment.describe(),
        "components": [asdict(c) for c in deployment.components()],
        "figures": {k: _round(v) for k, v in run.fig.items()},
        "detail": run.detail,
        "seconds": round(time.monotonic() - start, 1),
    }


def _round(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return round(value, 4)
    return value
