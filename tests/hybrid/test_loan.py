"""The loan platform end to end under the hybrid placement, with the same ``--app``.

Loan applications run on the platform's own app (``tenantflow.examples.loan_platform.service:
setup``, the ``--app`` of ``tenantflow serve`` and of the mesh's ``mesh-loan``; its workflow
records the credit pull in the CRM and notifies the applicant, two side effects) first on an
embedded engine, then through the hybrid's processes: a centralized front on PostgreSQL records
them, ``tenantflow hybrid worker --lease 2`` orchestrates the critical path and writes the side
effects to the outbox, ``tenantflow hybrid relay`` (beside the worker's own relay: the server
drops the copies) publishes them, and ``tenantflow hybrid agent`` runs them. Every side effect
is applied exactly once (counted at the receiver, ``$TENANTFLOW_LOAN_WEBHOOK``), every outcome
lands in its run's timeline, and each application's result equals the embedded engine's.
The platform's latencies run ``$TENANTFLOW_LOAN_SPEED`` = 200 times faster.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.hybrid.conftest import Receiver
from tests.hybrid.test_hybrid import ROOT, _empty, _kill, _spawn, kinds, until

from tenantflow.domain.outbox import FX_DELIVERED, FX_ENQUEUED
from tenantflow.engine.engine import Engine
from tenantflow.examples.loan_platform.effects import WEBHOOK_ENV
from tenantflow.examples.loan_platform.service import SPEED_ENV, setup
from tenantflow.examples.loan_platform.workflow import Application, loan

pytestmark = [pytest.mark.timeout(180), pytest.mark.postgres]

APPLICATIONS = [
    Application(
        application_id=f"APP-{i:03d}",
        applicant=f"applicant-{i}",
        amount=5_000 + 1_000 * i,
        income=40_000,
    )
    for i in range(6)
]
SIDE_EFFECTS = ("record_pull", "notify_applicant")
APP = "tenantflow.examples.loan_platform.service:setup"
SPEED = "200"


async def _run_all(engine: Engine, tenant: str) -> tuple[list[str], list[Any]]:
    ids = []
    for application in APPLICATIONS:
        handle = await engine.submit(
            "loan-approval", tenant=tenant, input=application.model_dump(mode="json")
        )
        ids.append(handle.id)
    results = []
    for run_id in ids:
        record = await engine.wait(tenant, run_id, timeout=timedelta(seconds=120))
        assert record.status == "completed", (record.status, record.error)
        results.append(engine.decode_result(record))
    return ids, results


async def test_loan_applications_run_end_to_end_under_the_hybrid_with_side_effects(
    nats_server: Any,
    receiver: Receiver,
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert {s.name for s in loan._steps if s.side_effect} == set(SIDE_EFFECTS)
    monkeypatch.setenv(WEBHOOK_ENV, receiver.url)
    monkeypatch.setenv(SPEED_ENV, SPEED)
    async with Engine.open(f"sqlite:///{tmp_path / 'e.db'}", auto_tenant="standard") as embedded:
        setup(embedded)
        _, expected = await _run_all(embedded, "bank")
    # Embedded, the side effects ran in the engine, once each.
    assert len(receiver.applied) == len(APPLICATIONS) * len(SIDE_EFFECTS)
    with receiver.lock:
        receiver.applied.clear()
        receiver.posts.clear()

    env = {**os.environ, WEBHOOK_ENV: receiver.url, SPEED_ENV: SPEED, "PYTHONPATH": str(ROOT)}
    app = ("--app", APP)
    worker = _spawn(
        "worker", "--db", postgres_url, "--nats", nats_server.url, "--lease", "2", *app, env=env
    )
    relay = _spawn("relay", "--db", postgres_url, "--nats", nats_server.url, env=env)
    agent = _spawn("agent", "--nats", nats_server.url, *app, env=env)
    try:
        async with Engine.open(postgres_url, cluster="front", auto_tenant="standard") as front:
            front.register(loan)
            ids, results = await _run_all(front, "bank")
            assert results == expected
            wanted = {f"{run_id}:{step}" for run_id in ids for step in SIDE_EFFECTS}
            await until(
                lambda: _done(set(receiver.applied) == wanted), "every side effect applied", 120
            )
            store: Any = front.store
            await until(lambda: _empty(store.outbox(None)), "every outcome recorded", 120)
            for run_id in ids:
                seen = await kinds(front, "bank", run_id)
                assert seen.count(FX_ENQUEUED) == len(SIDE_EFFECTS)
                assert seen.count(FX_DELIVERED) == len(SIDE_EFFECTS)
                started = [
                    e.step
                    for e in await front.store.events("bank", run_id)
                    if e.kind == "step.started"
                ]
                assert not set(started) & set(SIDE_EFFECTS)  # the worker never ran them
        assert set(receiver.posts) == wanted and max(receiver.posts.values()) == 1
    finally:
        for proc in (agent, relay, worker):
            _kill(proc)


async def _done(value: bool) -> bool:
    return value
