"""Property-based fuzzing of the REST API with schemathesis, from the app's own OpenAPI
document: every operation, with valid and invalid data, as a tenant key and as an admin key,
on generated ids and on real ones. The one property: no answer is a server error (5xx); every
answer is also checked against the document (status, content type, body schema).

Bounded: a few examples per operation and mode, no deadline; it runs in every check.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

sys.path.insert(0, str(Path(__file__).parent / "apps"))
import api_workflows

import tenantflow as tf
from tenantflow.api import create_app

pytestmark = pytest.mark.timeout(120)

EXAMPLES = 6  # per operation, mode, key and id choice
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass(frozen=True)
class Prepared:
    url: str
    admin: str
    tenant: str
    ids: dict[str, str]  # real path parameters: the tenant's run and review, a victim tenant


async def _prepare(url: str) -> Prepared:
    """A database with an admin key, the fuzzed tenant (a completed run, a run waiting for its
    review) and a victim tenant the admin operations may change or delete."""
    async with tf.Engine.open(url, seed=1) as engine:
        api_workflows.setup(engine)
        await engine.tenants.create("fuzz", tier="standard")
        await engine.tenants.create("victim", tier="free")
        _, admin = await engine.keys.create(None, name="admin")
        _, tenant = await engine.keys.create("fuzz", name="fuzz")
        victim_key, _ = await engine.keys.create("victim", name="victim")
        done = await engine.submit("tally", tenant="fuzz", input=2)
        await done.result()
        waiting = await engine.submit(
            "approval", tenant="fuzz", input={"applicant": "fuzz", "amount": 5000}
        )
        opened = asyncio.Event()
        engine.reviews.subscribe(lambda review: opened.set())
        await asyncio.wait_for(opened.wait(), 10)
        reviews = await engine.reviews.list("fuzz")
        await engine.cancel("fuzz", waiting.id)  # so that no event stream waits on it
    return Prepared(
        url,
        admin,
        tenant,
        {
            "run_id": done.id,
            "review_id": reviews[0].id,
            "tenant_id": "victim",
            "key_id": victim_key.id,
        },
    )


@pytest.fixture
def schema(tmp_path: Path) -> Iterator[tuple[Any, Prepared]]:
    prepared = asyncio.run(_prepare(f"sqlite:///{tmp_path / 'fuzz.db'}?synchronous=normal"))
    engine = tf.Engine.open(prepared.url, seed=1)
    app = create_app(engine, setup=[api_workflows.setup], max_body_bytes=65_536)
    try:
        # Loading the document starts the app's lifespan (the engine) in schemathesis's loop.
        yield schemathesis.openapi.from_asgi("/openapi.json", app), prepared
    finally:
        asgi.shutdown_lifespans()


def _fuzz(operation: Any, key: str, path_parameters: dict[str, str] | None) -> None:
    strategies = [
        operation.as_strategy(mode, path_parameters=path_parameters)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]

    @settings(
        max_examples=EXAMPLES * len(strategies),
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(strategies))
    def run(case: Any) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)

    run()


def test_no_operation_answers_a_server_error(schema: tuple[Any, Prepared]) -> None:
    loaded, prepared = schema
    operations = [result.ok() for result in loaded.get_all_operations()]
    assert len(operations) >= 30
    for operation in operations:
        params = {p.name for p in operation.path_parameters}
        real = {k: v for k, v in prepared.ids.items() if k in params} or None
        for key in (prepared.tenant, prepared.admin):
            _fuzz(operation, key, None)
            if real is not None:
                _fuzz(operation, key, real)
