"""Process health and readiness (no API key: they carry no tenant data), and Prometheus
metrics (an admin key: they are labelled by tenant)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tenantflow.api.auth import Admin, EngineDep
from tenantflow.api.errors import ERROR_RESPONSES, STREAM_ERROR_RESPONSES
from tenantflow.api.schemas import HealthOut

__all__ = ["READY_TIMEOUT_S", "router"]

router = APIRouter(tags=["health"])

READY_TIMEOUT_S = 2.0


@router.get("/healthz", response_model=HealthOut, summary="The process is up")
async def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=HealthOut,
    summary="Every store answers",
    responses={503: ERROR_RESPONSES[503]},
)
async def readyz(engine: EngineDep) -> HealthOut:
    """A tenant-scoped read of a run that cannot exist, on every store: an answer of "not
    found" within the timeout means the store is reachable."""
    await engine.ready(READY_TIMEOUT_S)
    return HealthOut(status="ok")


@router.get(
    "/metrics",
    summary="Prometheus metrics (admin key)",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text."},
        401: STREAM_ERROR_RESPONSES[401],
        403: STREAM_ERROR_RESPONSES[403],
    },
)
async def metrics(request: Request, admin: Admin) -> Response:
    """The registry's metrics. An admin key is needed: the engine's metrics are labelled by
    tenant, and no tenant may learn of another's (Prometheus sends the key with
    ``authorization: {credentials_file: …}``)."""
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
