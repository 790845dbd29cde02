"""Database restart: restart PostgreSQL several times while runs are in flight.

An embedded engine on PostgreSQL runs the workload (:mod:`tenantflow.selftest.workload`) for
three tenants while the scenario restarts the server under it several times (``pg_ctlcluster …
restart``, or ``--pg-restart``): every connection drops, and for a second or two none can be
made. A share of the engine's commits also lands and then raises (a lost acknowledgement). The
submitter retries a failed submission with the same idempotency key, as a client would. The
engine must ride through — retry, reconnect, reload what it cannot be sure of — and lose
nothing: every run completes, each step's completion recorded once, in DAG order. Recovery, from
the moment the server accepts connections again to the first step the engine starts after it,
is measured and reported, not bounded: it is the connection pool's reconnection (psycopg_pool
retries with exponential backoff, 1 s, 2 s, 4 s, …), not a lease, that sets it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import tenantflow as tf
from tenantflow.adapters import open_store
from tenantflow.domain.records import TERMINAL_RUN
from tenantflow.errors import StoreError
from tenantflow.selftest.core import Context, Row, Unavailable
from tenantflow.selftest.faults import LOST_ACKS, LostAcks
from tenantflow.selftest.pg import default_restart_command, restart, scratch_schema, wait_up
from tenantflow.selftest.verify import Expected, verify_runs
from tenantflow.selftest.workload import WORKFLOW, ExecLog, build, read_executions, tenant_of

__all__ = ["run_db_restart"]

SLOTS = 16
DEADLINE_S = 180.0


def run_db_restart(ctx: Context, row: Row, directory: Path) -> None:
    """The scenario (see the module docstring)."""
    server = ctx.postgres()
    command = list(ctx.pg_restart or default_restart_command() or [])
    if not command:
        raise Unavailable(
            "cannot restart PostgreSQL here: no pg_ctlcluster with one cluster under"
            " /etc/postgresql (give the command with --pg-restart)"
        )
    wait_up(server, timeout_s=10)
    with scratch_schema(server, "restart") as url:
        asyncio.run(_drive(ctx, row, directory, server, url, command))


async def _drive(
    ctx: Context, row: Row, directory: Path, server: str, url: str, command: list[str]
) -> None:
    profile, rng = ctx.profile, ctx.rng("db-restart")
    log = ExecLog(directory / "executions.log")
    faults = LostAcks(open_store(url), 0.0, seed=ctx.seed, on_fault=lambda _: row.fault(LOST_ACKS))
    engine = tf.Engine(
        faults,  # type: ignore[arg-type]  # a Store by delegation
        tf.EngineConfig(
            slots=SLOTS,
            seed=ctx.seed,
            lease=timedelta(seconds=profile.lease_s),
            auto_tenant="enterprise",
        ),
    )
    engine.register(build(log, min_s=0.02, max_s=0.1, seed=ctx.seed))
    runs = profile.restart_runs
    submitted: list[Expected] = []
    outages: list[tuple[float, float]] = []  # (down, up) wall times
    async with engine:
        faults.share = profile.commit_fault_share

        spread_s = max(10.0, 4.0 * profile.restarts)  # so that every restart meets runs

        async def submit() -> None:
            begin = time.monotonic()
            for i in range(runs):
                await asyncio.sleep(max(0.0, begin + i * spread_s / runs - time.monotonic()))
                while True:
                    try:
                        handle = await engine.submit(
                            WORKFLOW,
                            tenant=tenant_of(i),
                            input={"i": i},
                            idempotency_key=f"run-{i}",
                        )
                        break
                    except StoreError:  # the server is restarting: the same key again
                        await asyncio.sleep(0.1)
                submitted.append(Expected(tenant_of(i), i, handle.id))

        async def restarts() -> None:
            for _ in range(profile.restarts):
                await asyncio.sleep(rng.uniform(1.0, 2.5))
                down = time.time()
                await asyncio.to_thread(restart, command)
                up = await asyncio.to_thread(wait_up, server)
                outages.append((down, up))
                row.fault("PG restarts")

        await asyncio.gather(submit(), restarts())
        ended = await _until_ended(engine, submitted)
    row.check(ended == runs, f"only {ended} of {runs} runs ended within {DEADLINE_S:g}s")
    executions = read_executions(log.path)
    async with tf.Engine.open(url, execute=False) as reader:
        outcome = await verify_runs(reader.store, submitted, executions)
    outcome.into(row)
    starts = sorted(x.at for x in executions if x.kind == "S")
    for _, up in outages:
        after = [at for at in starts if at >= up]
        if after:
            row.recovery_s.append(after[0] - up)
    # A restart or a lost acknowledgement cuts short at most what was executing: every slot.
    row.duplicate_bound = sum(row.faults.values()) * SLOTS
    downtime = [up - down for down, up in outages]
    row.note(
        f"PostgreSQL, embedded engine; {len(outages)} restarts, each down"
        f" {min(downtime, default=0):.1f}–{max(downtime, default=0):.1f}s; lease"
        f" {profile.lease_s:g}s; {SLOTS} slots"
    )


async def _until_ended(engine: tf.Engine, runs: list[Expected]) -> int:
    """Poll the store until every run has ended (or the deadline); how many ended."""
    deadline = time.monotonic() + DEADLINE_S
    pending = list(runs)
    while pending and time.monotonic() < deadline:
        still = []
        for exp in pending:
            try:
                record = await engine.get_run(exp.tenant, exp.run_id)
            except StoreError:
                still.append(exp)
                continue
            if record.status not in TERMINAL_RUN:
                still.append(exp)
        pending = still
        if pending:
            await asyncio.sleep(0.2)
    return len(runs) - len(pending)
