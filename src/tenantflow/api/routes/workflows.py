"""``GET /v1/workflows``: the registered workflows, their versions and input schemas.

The definitions are the platform's, but they are read by who submits runs: a tenant's key (an
admin key manages tenants and keys, and submits nothing; it gets 403 like on every tenant
operation).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field, TypeAdapter

from tenantflow.api.auth import EngineDep, TenantId
from tenantflow.api.errors import ERROR_RESPONSES
from tenantflow.domain.spec import WorkflowSpec

__all__ = ["WorkflowOut", "WorkflowsOut", "router"]

router = APIRouter(prefix="/v1/workflows", tags=["workflows"])


class WorkflowOut(BaseModel):
    """One registered version of a workflow."""

    name: str
    version: str
    latest: bool = Field(description="Submissions without a version run this one.")
    steps: list[str] = Field(description="Step names, in an order they can run in.")
    input_schema: dict[str, Any] = Field(description="JSON Schema of the run's input.")

    @classmethod
    def of(cls, spec: WorkflowSpec, latest: bool) -> WorkflowOut:
        return cls(
            name=spec.name,
            version=spec.version,
            latest=latest,
            steps=[s.name for s in spec.steps],
            input_schema=input_schema(spec.input_type),
        )


class WorkflowsOut(BaseModel):
    items: list[WorkflowOut]


def input_schema(annotation: Any) -> dict[str, Any]:
    """The JSON Schema pydantic validates ``annotation`` with (``{}`` accepts anything)."""
    try:
        return TypeAdapter(annotation).json_schema()
    except Exception:  # a type pydantic validates but cannot describe
        return {"description": f"not expressible as JSON Schema: {annotation!r}"}


@router.get(
    "",
    response_model=WorkflowsOut,
    summary="Registered workflows, their versions and input schemas",
    responses={401: ERROR_RESPONSES[401], 403: ERROR_RESPONSES[403]},
)
async def list_workflows(engine: EngineDep, tenant: TenantId) -> WorkflowsOut:
    """Every registered version, by name then version; ``latest`` marks the one a submission
    without a version runs."""
    specs = engine.workflows()
    latest = {spec.name: engine.workflow(spec.name).version for spec in specs}
    return WorkflowsOut(items=[WorkflowOut.of(s, latest[s.name] == s.version) for s in specs])
