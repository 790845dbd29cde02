"""Who is calling: the API key in ``Authorization: Bearer <key>``, and what it may do.

A key belongs to one tenant, or to nobody (an admin key, for the control plane). Tenant
operations take the tenant from the key and only from the key — never from a body, path or
query — so every store read they make is scoped to the caller's tenant, and another tenant's
object answers exactly like one that does not exist. Admin operations refuse tenant keys, and
tenant operations refuse admin keys (403): an admin key is not a key to every tenant.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tenantflow.errors import AuthenticationError, PermissionDeniedError
from tenantflow.placement import ControlPlane, Principal

__all__ = ["Admin", "EngineDep", "TenantId", "actor_of", "authenticate", "engine_of"]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key: `Authorization: Bearer <key>`. Admin keys are created with"
    " `tenantflow keys create --admin`; tenant keys with POST /v1/tenants/{tenant_id}/keys.",
)


async def engine_of(request: Request) -> ControlPlane:
    """The engine the app serves (async: FastAPI runs a plain function in a thread pool)."""
    engine: ControlPlane = request.app.state.engine
    return engine


EngineDep = Annotated[ControlPlane, Depends(engine_of)]


Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]


async def authenticate(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    """The caller, from its API key (401 when there is none or it is not valid)."""
    if credentials is None:
        raise AuthenticationError(
            "this operation needs an API key: send Authorization: Bearer <key>"
        )
    engine: ControlPlane = request.app.state.engine
    principal = await engine.keys.authenticate(credentials.credentials)
    request.state.principal = principal
    return principal


# One dependency each (not layered on a shared one): every request solves them, so every
# level counts.


async def _admin(request: Request, credentials: Credentials) -> Principal:
    principal = await authenticate(request, credentials)
    if not principal.is_admin:
        raise PermissionDeniedError(
            "this operation needs an admin key; a tenant key acts only on its own tenant"
            " (under /v1/tenant, /v1/runs, /v1/reviews …)",
            key_id=principal.key_id,
        )
    return principal


async def _tenant(request: Request, credentials: Credentials) -> str:
    principal = await authenticate(request, credentials)
    if principal.tenant_id is None:
        raise PermissionDeniedError(
            "this operation acts on one tenant's data: use that tenant's API key, not an admin key",
            key_id=principal.key_id,
        )
    return principal.tenant_id


Admin = Annotated[Principal, Depends(_admin)]
"""An admin key's principal (403 for a tenant key)."""

TenantId = Annotated[str, Depends(_tenant)]
"""The caller's tenant, from its key (403 for an admin key)."""


def actor_of(principal: Principal) -> str:
    """Who the audit log names for a change made with this key."""
    return f"api:{principal.key_id}"
