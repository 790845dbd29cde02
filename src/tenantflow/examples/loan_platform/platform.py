"""The platform: institutions and their policies, model endpoints, tools, and the engine.

Tenants as in seed 001:

* **Regional Bank** (enterprise): 50 concurrent workflows, 500 credit-bureau calls/hour, the
  large model, $2.00 per workflow, US region only, a dedicated team of 3 reviewers.
* **Credit Union** (standard): 10 concurrent, 50 calls/hour, the small model, $0.50.
* **Fintech Startup** (free): 3 concurrent, 10 calls/hour, the small model, $0.10 — its budget
  runs low on every application, so the optional fraud screen is skipped (the budget ladder) —
  and the shared reviewers at the lowest priority.
* **European institution** (standard, GDPR-bound): eu-west-1 only — its state lives in the EU
  store, its model calls go to EU endpoints, its reviews to EU-based reviewers.
* **Ordinary institutions** (standard), and **Institution X**, which bursts: capped at 20
  concurrent workflows, a fifth of the worker slots and 200 bureau calls/hour, at most 50 at
  once (the seed's caps).

SLAs are compressed with the scenario (a Monday morning, not a quarter): 5 minutes for the
enterprise tier, 10 for the standard tier, best effort for the free tier.

The credit bureau is one vendor for the whole platform with its own quota
(:data:`BUREAU_PLATFORM_LIMIT`, a platform rate limit); each tenant's policy splits it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import tenantflow as tf
from tenantflow.adapters.providers import SimulatedProvider
from tenantflow.domain.models import ModelRequest, ModelResponse
from tenantflow.examples.loan_platform.workflow import loan
from tenantflow.ports import Clock

__all__ = [
    "BUREAU_PER_TIER",
    "BUREAU_PLATFORM_LIMIT",
    "ENDPOINTS",
    "REVIEWER_POOLS",
    "Institution",
    "build_engine",
    "institutions",
]

BUREAU_PLATFORM_LIMIT: dict[str, Any] = {"rate": "1500/hour", "burst": 100}
"""The bureau's quota for the whole platform, shared by every institution: 1,500 calls an hour,
at most 100 at once."""

REVIEWER_POOLS: dict[str, int] = {
    "regional-bank-reviewers": 3,  # the bank's dedicated compliance team
    "shared": 6,  # everyone else's
    "eu-reviewers": 2,  # EU-based employees, for the GDPR-bound institution
}

_US, _EU = "us-east-1", "eu-west-1"


def _endpoint(tier: str, region: str, price_in: int, price_out: int) -> tf.Endpoint:
    """A model deployment; prices in micro-dollars per 1,000 tokens."""
    return tf.Endpoint(
        name=f"{tier}-{region[:2]}",
        provider="sim",
        model=f"{tier}-model",
        region=region,
        tier=tier,
        price_in_per_1k_micros=price_in,
        price_out_per_1k_micros=price_out,
        max_context=128_000,
    )


ENDPOINTS: list[tuple[tf.Endpoint, tuple[float, float]]] = [
    # (endpoint, latency (median ms, p99 ms) in scenario time); EU: 10% dearer and slower
    (_endpoint("large", _US, 160_000, 320_000), (14_000.0, 30_000.0)),
    (_endpoint("small", _US, 40_000, 80_000), (7_000.0, 15_000.0)),
    (_endpoint("large", _EU, 176_000, 352_000), (16_000.0, 34_000.0)),
    (_endpoint("small", _EU, 44_000, 88_000), (8_000.0, 17_000.0)),
]


@dataclass(frozen=True, slots=True)
class Institution:
    """One tenant of the platform and how much it submits on a normal day."""

    tenant_id: str
    tenant_class: str
    tier: str
    per_hour: float
    """Applications per hour in steady traffic."""
    policy: dict[str, Any] = field(default_factory=dict)
    """Overrides of the tier preset."""


_SLA = {"enterprise": timedelta(minutes=5), "standard": timedelta(minutes=10)}

BUREAU_PER_TIER: dict[str, str] = {
    "enterprise": "500/hour",
    "standard": "50/hour",
    "free": "10/hour",
}
"""Each tier's share of the credit bureau's quota: the platform's policy, not the library's
tier presets (which know nothing of this platform's tools)."""


def _bureau(tier: str) -> dict[str, Any]:
    return {"rate_limits": {"tool:credit_bureau": BUREAU_PER_TIER[tier]}}


def institutions(n: int, *, slots: int) -> list[Institution]:
    """The seed's named institutions, Institution X, and ``n - 5`` ordinary ones.

    Args:
        n: how many institutions in all (at least 6).
        slots: the platform's worker slots (Institution X is capped at a fifth of them).
    """
    if n < 6:
        raise ValueError("the platform needs at least 6 institutions")
    standard = {"run_sla": _SLA["standard"], **_bureau("standard")}
    named = [
        Institution(
            "regional-bank",
            "regional bank",
            "enterprise",
            per_hour=90.0,
            policy={"run_sla": _SLA["enterprise"], "region": _US, **_bureau("enterprise")},
        ),
        Institution("credit-union", "credit union", "standard", per_hour=30.0, policy=standard),
        Institution("fintech-startup", "fintech startup", "free", 20.0, _bureau("free")),
        Institution(
            "eu-institution",
            "EU (GDPR)",
            "standard",
            per_hour=30.0,
            policy={
                **standard,
                "region": _EU,
                "reviewer_pool": "eu-reviewers",
                "data_retention": timedelta(days=30),
            },
        ),
        Institution(
            "institution-x",
            "X (bursting)",
            "standard",
            per_hour=30.0,
            policy={
                **standard,
                "max_active_runs": 20,
                "max_running_steps": max(1, slots // 5),
                "guaranteed_slots": min(2, max(1, slots // 5)),
                "burst_slots": 0,
                "rate_limits": {"tool:credit_bureau": {"rate": "200/hour", "burst": 50}},
            },
        ),
    ]
    ordinary = [
        Institution(f"institution-{i:03d}", "ordinary", "standard", 30.0, standard)
        for i in range(1, n - len(named) + 1)
    ]
    return named + ordinary


# -- tools: the identity service and the credit bureau ---------------------------------------


class IdentityArgs(BaseModel):
    applicant: str


class BureauArgs(BaseModel):
    applicant: str
    amount: float


class ReleaseArgs(BaseModel):
    hold_id: str


def _unit(*parts: object) -> float:
    """A stable number in [0, 1) from ``parts`` (the same applicant, the same answer)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def register_tools(engine: tf.Engine, clock: Clock, seed: int) -> None:
    """The identity service and the credit bureau: latency on the engine's clock, priced."""
    rng = random.Random(seed)

    @engine.tools.register(name="identity_service", input=IdentityArgs, cost_usd=0.02)
    async def identity_service(applicant: str) -> dict[str, Any]:
        """Check the applicant's identity documents."""
        await clock.sleep(rng.uniform(3.0, 7.0))
        return {"verified": True, "confidence": 0.75 + 0.25 * _unit("id", applicant)}

    @engine.tools.register(
        name="credit_bureau",
        input=BureauArgs,
        resource="tool:credit_bureau",
        cost_usd=0.05,
    )
    async def credit_bureau(applicant: str, amount: float, idempotency_key: str) -> dict[str, Any]:
        """Pull the applicant's credit report and place a hold (idempotent per key)."""
        await clock.sleep(rng.uniform(6.0, 14.0))
        score = 560 + int(290 * _unit("score", applicant))
        return {"score": score, "hold_id": f"hold-{idempotency_key[-16:]}"}

    @engine.tools.register(name="credit_bureau_release", input=ReleaseArgs)
    async def credit_bureau_release(hold_id: str) -> None:
        """Release a credit hold."""
        await clock.sleep(1.0)


def add_models(engine: tf.Engine, clock: Clock, seed: int) -> None:
    """Every endpoint, served by the simulated provider with its own latency profile.

    A reply depends on the request's content only, not on the call's idempotency key (which
    names the run): the same application gets the same answer whichever run asks, so its
    decision is the same under every placement (a retried call is answered alike as before).
    """
    for endpoint, latency in ENDPOINTS:
        content = SimulatedProvider(endpoint.name, clock=clock, seed=seed, out_tokens=(40, 160))

        def respond(request: ModelRequest, of: SimulatedProvider = content) -> ModelResponse:
            return of.reply(dataclasses.replace(request, idempotency_key=None))

        engine.models.add(
            endpoint,
            SimulatedProvider(
                endpoint.name,
                clock=clock,
                seed=seed,
                latency_ms=latency,
                out_tokens=(40, 160),
                respond=respond,
            ),
        )


async def build_engine(
    directory: Path,
    *,
    clock: Clock,
    controls: bool,
    slots: int,
    seed: int,
    members: list[Institution],
) -> tf.Engine:
    """An embedded engine on two SQLite stores (US and EU), with every institution registered.

    The EU institution's runs, state and audit log live only in ``eu-west-1.db``.
    """
    engine = tf.Engine.open(
        f"sqlite:///{directory / 'us-east-1.db'}?synchronous=normal",
        regions={_EU: f"sqlite:///{directory / 'eu-west-1.db'}?synchronous=normal"},
        region=_US,
        clock=clock,
        slots=slots,
        seed=seed,
        controls=controls,
        platform_limits={"tool:credit_bureau": BUREAU_PLATFORM_LIMIT},
        lease=timedelta(minutes=10),
    )
    engine.register(loan)
    register_tools(engine, clock, seed)
    add_models(engine, clock, seed)
    await engine.start()
    for member in members:
        await engine.tenants.create(member.tenant_id, tier=member.tier, **member.policy)
    return engine
