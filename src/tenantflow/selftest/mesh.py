"""The mesh placement's scenarios (``tenantflow selftest --placement mesh``).

Each starts a private nats-server (2.10+, the ``mesh`` extra's 2.15) with the mesh's users:

* ``mesh-crash``: agent processes run the workload's DAG off JetStream on a scratch PostgreSQL
  schema; under load one agent is SIGKILLed, then the NATS server is SIGKILLed and restarted on
  its store, then a fresh agent joins. Lost runs (not completed with the right outputs) and
  duplicate completions (a step with more than one completion record, or more than one
  ``step.succeeded`` fact on the log) must be 0; re-executions are counted (at-least-once).
* ``mesh-isolation``: a tenant's NATS user tries to publish to, subscribe to and fetch from
  another tenant's and another region's subjects and consumers; every try must be refused by
  the server (a try that got through is a cross-tenant violation).
* ``mesh-budget``: 50 one-step runs on two agents (their gateways, at once) call a priced
  tool against the tenant's period budget, a KV ledger that fits 12 calls; overspend must be
  0, exactly 12 calls made (counted at the tool) and the others refused by the ledger.
* ``mesh-deadlock``: three agents waiting on each other (a -> b -> c -> a) must end in a
  timeout naming the cycle before the caller's deadline.
* ``mesh-loan``: the loan platform (``--app tenantflow.examples.loan_platform.service:setup``,
  side effects included) under ``tenantflow mesh up`` with agents in two regions; three
  institutions' applications go in through the REST API and must all complete.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tenantflow.errors import ConfigurationError, StepTimeoutError
from tenantflow.selftest.core import Context, Row, Unavailable
from tenantflow.selftest.workload import (
    STEPS,
    TENANTS,
    WORKFLOW,
    expected_outputs,
    read_executions,
    tenant_of,
)

__all__ = [
    "run_mesh_budget",
    "run_mesh_crash",
    "run_mesh_deadlock",
    "run_mesh_isolation",
    "run_mesh_loan",
]

REGIONS = ("eu", "us")


def _server(directory: Path, tenants: dict[str, str] | None = None) -> Any:
    try:
        import nats  # noqa: F401

        from tenantflow.adapters.nats.fabric import auth_config, make_credentials
        from tenantflow.adapters.nats.server import NatsServer, find_nats_server

        binary = find_nats_server()
    except (ImportError, ConfigurationError) as exc:
        raise Unavailable(f"the mesh needs nats-py and nats-server >= 2.10: {exc}") from None
    creds = make_credentials(REGIONS, tenants)
    server = NatsServer(
        store_dir=directory / "nats", binary=binary, config=auth_config(creds.values())
    ).start()
    server.creds = creds  # type: ignore[attr-defined]
    return server


async def _admin(server: Any) -> Any:
    from tenantflow.adapters.nats.fabric import connect, provision

    fabric = await connect(server.url, server.creds["admin"])
    for region in REGIONS:
        await provision(fabric, region)
    return fabric


# -- crash ----------------------------------------------------------------------------------------


def run_mesh_crash(ctx: Context, row: Row, directory: Path) -> None:
    from tenantflow.selftest.pg import scratch_schema

    server = _server(directory)
    try:
        with scratch_schema(ctx.postgres(), "mesh") as url:
            asyncio.run(_crash(ctx, row, directory, server, url))
    finally:
        server.close()


async def _crash(ctx: Context, row: Row, directory: Path, server: Any, url: str) -> None:
    import tenantflow as tf
    from tenantflow.adapters.nats.fabric import save_credentials, wait_connected
    from tenantflow.adapters.nats.log import ExecutionLog
    from tenantflow.adapters.nats.subjects import Region
    from tenantflow.domain.records import TERMINAL_RUN
    from tenantflow.placement.mesh.control import open_submitter
    from tenantflow.placement.mesh.procs import AgentProcess
    from tenantflow.selftest.workload import build

    runs_n = max(30, ctx.profile.crash_runs // 5)
    async with tf.Engine.open(url) as control:
        for tenant in TENANTS:
            await control.tenants.create(tenant)
    fabric = await _admin(server)
    exec_log = directory / "exec.log"
    creds = save_credentials(server.creds["agent-eu"], directory / "agent-eu.json")
    low, high = ctx.profile.crash_step_ms

    def agent(i: int) -> AgentProcess:
        return AgentProcess(
            url,
            server.url,
            creds,
            ["eu"],
            ["tenantflow.selftest.workload:setup"],
            default_region="eu",
            lease_s=3.0,
            ack_wait_s=3.0,
            env={
                "TF_SELFTEST_EXEC_LOG": str(exec_log),
                "TF_SELFTEST_STEP_MS": f"{low // 3},{high // 3}",
            },
            log_file=directory / f"agent-{i}.log",
        ).start()

    driver, store = await open_submitter(url, fabric, "eu", [build(None).spec])
    procs: list[AgentProcess] = []
    try:
        runs = [
            (tenant_of(i), await driver.submit(tenant_of(i), WORKFLOW, {"i": i}))
            for i in range(runs_n)
        ]
        row.runs = runs_n
        # The agents start once every run is on the stream, so that the kills below land with
        # most of the work still to do however slowly the submissions went.
        procs += [agent(i) for i in range(3)]

        async def until(n: int) -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # the log is another process's file: poll it
                if len(read_executions(exec_log)) >= n:
                    return
                await asyncio.sleep(0.05)

        await until(40)
        procs[0].kill()
        row.fault("agent SIGKILL")
        await until(len(read_executions(exec_log)) + 40)
        server.kill()
        row.fault("nats-server SIGKILL")
        await asyncio.sleep(0.3)
        server.start()
        await wait_connected(fabric)
        procs.append(agent(3))
        deadline = time.monotonic() + 120
        while True:
            records = [await store.get_run(t, r) for t, r in runs]
            if all(r.status in TERMINAL_RUN for r in records) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        lost = 0
        for i, record in enumerate(records):
            steps = {s.key: s for s in await store.get_steps(record.tenant_id, record.id)}
            outputs = {k: int(steps[k].output_json or b"0") for k in STEPS if k in steps}
            if record.status != tf.RunStatus.COMPLETED or outputs != expected_outputs(i):
                lost += 1
        row.lost = lost
        keys = await (await fabric.js.key_value(Region("eu").done_bucket)).keys()
        duplicates = len(keys) - len(set(keys))
        log = ExecutionLog(fabric)
        for tenant, run_id in runs:
            timeline: list[dict[str, Any]] = []
            for _ in range(100):  # shipping trails the store a little
                timeline = await log.timeline("eu", tenant, run_id)
                facts = [e["fact"] for e in timeline if "fact" in e]
                if facts and facts[-1] == "run.completed":
                    break
                await asyncio.sleep(0.1)
            counts = Counter(e["step"] for e in timeline if e.get("fact") == "step.succeeded")
            duplicates += sum(c - 1 for c in counts.values() if c > 1)
        row.duplicate_completions = duplicates
        starts = Counter((e.run, e.step) for e in read_executions(exec_log) if e.kind == "S")
        row.duplicate_executions = sum(c - 1 for c in starts.values() if c > 1)
        row.duplicate_bound = 8 * 2  # the killed agent's slots, and the restart's in-flight
        row.figures["completion records"] = float(len(keys))
    finally:
        for p in procs:
            p.stop()
        await driver.queue.close()
        await driver.close()
        await store.close()
        await fabric.close()


# -- isolation ------------------------------------------------------------------------------------


def run_mesh_isolation(ctx: Context, row: Row, directory: Path) -> None:
    server = _server(directory, {"acme": "eu", "globex": "eu"})
    try:
        asyncio.run(_isolation(row, server))
    finally:
        server.close()


async def _isolation(row: Row, server: Any) -> None:
    import nats.errors
    from nats.js import api

    from tenantflow.adapters.nats.fabric import connect
    from tenantflow.adapters.nats.subjects import Region

    admin = await _admin(server)
    eu, us = Region("eu"), Region("us")
    await admin.js.publish(eu.cmd("globex", "r1", "function"), b"secret")
    await admin.js.add_consumer(
        eu.work_stream,
        api.ConsumerConfig(
            durable_name=eu.consumer("globex", "function"),
            filter_subject=eu.cmd_filter("globex", "function"),
        ),
    )
    acme = await connect(server.url, server.creds["tenant-eu-acme"])
    agent_eu = await connect(server.url, server.creds["agent-eu"])
    tries = 0
    through = 0

    async def publish(fabric: Any, subject: str) -> None:
        nonlocal tries, through
        tries += 1
        try:
            await fabric.js.publish(subject, b"x", timeout=1.0)
            through += 1
        except nats.errors.TimeoutError:
            pass

    try:
        await publish(acme, eu.cmd("globex", "r2", "function"))
        await publish(acme, us.cmd("acme", "r2", "function"))
        await publish(acme, eu.evt("globex", "r1", "step.succeeded"))
        await publish(agent_eu, us.cmd("acme", "r3", "function"))
        await publish(agent_eu, f"$KV.{us.ledger_bucket}.acme.monthly")
        tries += 1
        theirs = await acme.js.pull_subscribe_bind(
            eu.consumer("globex", "function"), stream=eu.work_stream
        )
        try:
            msgs = await theirs.fetch(1, timeout=1.0)
            through += len(msgs)
        except nats.errors.TimeoutError:
            pass
        for fabric, subject in ((acme, eu.tenant_root("globex")), (agent_eu, us.root())):
            tries += 1
            before = len(fabric.errors)
            await fabric.nc.subscribe(subject)
            await fabric.nc.flush()
            await asyncio.sleep(0.2)
            if not any("permissions violation" in e.lower() for e in fabric.errors[before:]):
                through += 1
        info = await admin.js.consumer_info(eu.work_stream, eu.consumer("globex", "function"))
        if info.num_pending != 1:
            through += 1
        row.cross_tenant = through
        row.figures["tries refused"] = float(tries - through)
        row.check(tries >= 8, f"only {tries} tries were made")
    finally:
        for fabric in (acme, agent_eu, admin):
            await fabric.close()


# -- budget ---------------------------------------------------------------------------------------


def run_mesh_budget(ctx: Context, row: Row, directory: Path) -> None:
    from tenantflow.selftest.pg import scratch_schema

    server = _server(directory)
    try:
        with scratch_schema(ctx.postgres(), "meshbudget") as url:
            asyncio.run(_budget(ctx, row, server, url))
    finally:
        server.close()


async def _budget(ctx: Context, row: Row, server: Any, url: str) -> None:
    """One-step runs whose step calls a priced tool, on two agents' gateways at once; the
    tenant's period budget (a KV ledger) fits 12 calls."""
    import tenantflow as tf
    from tenantflow.adapters.nats.ledger import Ledger
    from tenantflow.domain.records import TERMINAL_RUN
    from tenantflow.placement.mesh.agent import AgentOptions, close_agent, open_agent
    from tenantflow.placement.mesh.control import open_submitter
    from tenantflow.placement.mesh.gateway import MeshGateway, period_budget

    cost, fits = 40_000, 12
    limit = fits * cost + cost // 2
    calls: list[int] = []
    bills = tf.Workflow("selftest-bill")

    @bills.step(optional=True)  # a refused call skips the step (the budget ladder)
    async def charge(ctx: Any, input: dict[str, int]) -> int:
        result: int = await ctx.tool("selftest_bureau", i=input["i"])
        return result

    def setup(engine: tf.Engine) -> None:
        engine.register(bills)

        @engine.tools.register(cost_usd=cost / 1_000_000)
        async def selftest_bureau(i: int) -> int:
            calls.append(i)
            await asyncio.sleep(0.01)
            return i

    async with tf.Engine.open(url) as control:
        await control.tenants.create("acme", tier="standard", budget={"period_micros": limit})
    admin = await _admin(server)
    driver, store = await open_submitter(url, admin, "eu", [bills.spec])
    steps = ctx.profile.budget_steps
    options = AgentOptions(
        store_url=url,
        nats_url=server.url,
        creds=server.creds["agent-eu"],
        regions=["eu"],
        default_region="eu",
        slots=max(1, (steps + 1) // 2),
        sweep=False,
        setups=[setup],
    )
    agents = [await open_agent(options) for _ in range(2)]
    try:
        runs = [await driver.submit("acme", bills.name, {"i": i}) for i in range(steps)]
        deadline = time.monotonic() + 120
        while True:
            records = [await store.get_run("acme", r) for r in runs]
            if all(r.status in TERMINAL_RUN for r in records):
                break
            if time.monotonic() > deadline:
                row.check(False, "runs did not end within 120 s")
                return
            await asyncio.sleep(0.1)
        state = await Ledger(admin, "eu").state(
            "acme", period_budget("monthly", records[0].created_at)
        )
        gateways = [d.gateway for d, _, _ in agents]
        refusals = sum(g.kv_refusals for g in gateways if isinstance(g, MeshGateway))
        row.runs = steps
        row.overspend_micros = max(0, state.spent - limit, len(calls) * cost - limit)
        row.figures["granted"] = float(len(calls))
        row.figures["refused by the KV ledger"] = float(refusals)
        row.check(len(calls) == fits, f"{len(calls)} calls made, {fits} fit")
        row.check(state.spent == len(calls) * cost, "the ledger and the calls disagree")
        row.check(state.holds == {}, f"{len(state.holds)} holds left open")
        row.check(refusals >= steps - fits, "the KV ledger did not refuse the others")
    finally:
        for agent in agents:
            await close_agent(*agent)
        await driver.queue.close()
        await driver.close()
        await store.close()
        await admin.close()


# -- deadlock -------------------------------------------------------------------------------------


def run_mesh_deadlock(ctx: Context, row: Row, directory: Path) -> None:
    server = _server(directory)
    try:
        asyncio.run(_deadlock(row, server))
    finally:
        server.close()


async def _deadlock(row: Row, server: Any) -> None:
    from tenantflow.adapters.nats.fabric import connect
    from tenantflow.adapters.nats.hops import HopAgent, HopContext, call

    admin = await _admin(server)
    agents, fabrics = [], []
    for name, target in (("a", "b"), ("b", "c"), ("c", "a")):
        fabric = await connect(server.url, server.creds["agent-eu"])

        async def handle(ctx: HopContext, target: str = target) -> dict[str, Any]:
            return await ctx.call(target, ctx.payload)

        agent = HopAgent(fabric, "eu", name, handle)
        await agent.start()
        agents.append(agent)
        fabrics.append(fabric)
    try:
        started = time.time()
        deadline = started + 3.0
        try:
            await call(admin, "eu", "acme", "a", {}, deadline=deadline)
            row.check(False, "the cycle answered: no deadlock was built")
        except StepTimeoutError as exc:
            row.check(
                exc.fields.get("cycle") == ["a", "b", "c", "a"],
                f"the timeout did not name the cycle: {exc.message}",
            )
            row.note(exc.message)
        ended = time.time()
        row.figures["ended after s"] = round(ended - started, 3)
        row.check(ended < deadline, "the caller had to give up at its own deadline")
    finally:
        for agent in agents:
            await agent.close()
        for fabric in [*fabrics, admin]:
            await fabric.close()


# -- the loan platform ----------------------------------------------------------------------------


LOAN_APP = "tenantflow.examples.loan_platform.service:setup"
"""The app of ``tenantflow serve`` and of the hybrid's loan test (tests/hybrid/test_loan.py)."""

LOAN_APPLICATIONS = (
    ("regional-bank", "enterprise", "us-east-1", "ada", 20_000.0),
    ("eu-institution", "standard", "eu-west-1", "grace", 15_000.0),
    ("fintech-startup", "free", None, "alan", 5_000.0),
)


def run_mesh_loan(ctx: Context, row: Row, directory: Path) -> None:
    """The loan platform's applications, from two regions, through ``tenantflow mesh up`` with
    ``--app`` :data:`LOAN_APP`, the REST API and ``Client``: every one completes."""
    import importlib.util
    import os
    import signal
    import socket
    import subprocess
    import sys

    import httpx

    import tenantflow as tf
    from tenantflow.client import Client
    from tenantflow.selftest.pg import scratch_schema

    if importlib.util.find_spec("tenantflow.examples.loan_platform") is None:
        raise Unavailable("the loan platform example (tenantflow.examples) is not importable")
    _server(directory).close()  # the same check for nats-server as the other scenarios
    with scratch_schema(ctx.postgres(), "meshloan") as url:

        async def keys(tenants: list[str]) -> dict[str | None, str]:
            out: dict[str | None, str] = {}
            async with tf.Engine.open(url) as engine:
                for tenant in [None, *tenants]:
                    _, out[tenant] = await engine.keys.create(tenant)
            return out

        admin_key = asyncio.run(keys([]))[None]
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        log = open(directory / "mesh-up.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "tenantflow.cli.main", "mesh", "up",
                "--agents", "1", "--app", LOAN_APP, "--db", url,
                "--port", str(port), "--dir", str(directory / "mesh"),
                "--regions", "us-east-1,eu-west-1", "--default-region", "us-east-1",
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ),
        )  # fmt: skip
        api = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"{api}/healthz", timeout=1.0)
                    break
                except httpx.HTTPError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("tenantflow mesh up did not start") from None
                    time.sleep(0.2)
            with Client(api, admin_key) as admin:
                for tenant, tier, region, _, _ in LOAN_APPLICATIONS:
                    admin.create_tenant(tenant, tier=tier, policy={"region": region})
            tenant_keys = asyncio.run(keys([t for t, *_ in LOAN_APPLICATIONS]))
            runs = []
            for n, (tenant, _, _, applicant, amount) in enumerate(LOAN_APPLICATIONS):
                with Client(api, tenant_keys[tenant]) as client:
                    application = {
                        "application_id": f"app-{n}",
                        "applicant": applicant,
                        "amount": amount,
                        "income": 60_000.0,
                    }
                    runs.append((tenant, client.submit("loan-approval", application).id))
            row.runs = len(runs)
            deadline = time.monotonic() + 180  # the bureau's latencies are real seconds
            statuses: list[str] = []
            while time.monotonic() < deadline:
                statuses = []
                for tenant, run_id in runs:
                    with Client(api, tenant_keys[tenant]) as client:
                        statuses.append(client.get_run(run_id).status.value)
                if all(s != "running" for s in statuses):
                    break
                time.sleep(1.0)
            row.lost = sum(1 for s in statuses if s != "completed")
            row.note(f"statuses: {', '.join(statuses)}")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
