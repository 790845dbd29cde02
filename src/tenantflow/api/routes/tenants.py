"""Admin: tenants and their API keys (``/v1/tenants``). Needs an admin key."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from tenantflow.api.auth import Admin, EngineDep, actor_of
from tenantflow.api.errors import ERROR_RESPONSES
from tenantflow.api.schemas import (
    KeyCreated,
    KeyIn,
    KeyOut,
    KeysOut,
    TenantCreate,
    TenantDeleted,
    TenantOut,
    TenantPatch,
    TenantsPage,
)
from tenantflow.domain.policy import policy_overrides
from tenantflow.errors import ConfigurationError, TenantflowError

__all__ = ["router"]

router = APIRouter(prefix="/v1/tenants", tags=["admin"], responses=ERROR_RESPONSES)


def _conflict(when: str) -> dict[int | str, dict[str, Any]]:
    return {409: ERROR_RESPONSES[404] | {"description": when}}


TenantPath = Annotated[str, Path(min_length=1, max_length=64, description="The tenant's id.")]
KeyPath = Annotated[str, Path(min_length=1, max_length=100, description="The key's id.")]


def _overrides(policy: dict[str, Any], *, top_level: tuple[str, ...] = ()) -> dict[str, Any]:
    """The body's policy fields, checked before they become keyword arguments of the call."""
    try:
        return policy_overrides(policy, top_level=top_level)
    except ConfigurationError as exc:
        raise _policy_field(exc) from None


def _policy_field(exc: TenantflowError) -> TenantflowError:
    """A policy error's field path, as a path in the request body."""
    field = exc.fields.get("field")
    if isinstance(exc, ConfigurationError) and isinstance(field, str) and field != "tenant":
        exc.fields["field"] = f"body.policy.{field}"
    return exc


@router.post(
    "",
    status_code=201,
    response_model=TenantOut,
    summary="Register a tenant",
    responses=_conflict("The tenant exists."),
)
async def create_tenant(body: TenantCreate, engine: EngineDep, admin: Admin) -> TenantOut:
    overrides = _overrides(body.policy, top_level=("tier", "org_id"))
    try:
        info = await engine.tenants.create(
            body.id, tier=body.tier, org_id=body.org_id, actor=actor_of(admin), **overrides
        )
    except ConfigurationError as exc:
        if exc.fields.get("field") == "tier":
            exc.fields["field"] = "body.tier"
            raise
        raise _policy_field(exc) from None
    return TenantOut.of(info)


@router.get("", response_model=TenantsPage, summary="List tenants")
async def list_tenants(
    engine: EngineDep,
    admin: Admin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None, Query(max_length=64, description="`next` of the previous page.")
    ] = None,
) -> TenantsPage:
    tenants = engine.tenants.list()
    if cursor is not None:
        tenants = [t for t in tenants if t.id > cursor]
    page = tenants[:limit]
    more = len(tenants) > limit
    return TenantsPage(items=[TenantOut.of(t) for t in page], next=page[-1].id if more else None)


@router.get("/{tenant_id}", response_model=TenantOut, summary="Show a tenant and its policy")
async def get_tenant(tenant_id: TenantPath, engine: EngineDep, admin: Admin) -> TenantOut:
    return TenantOut.of(await engine.tenants.get(tenant_id))


@router.patch(
    "/{tenant_id}",
    response_model=TenantOut,
    summary="Change a tenant's policy",
    responses=_conflict("The region would move the tenant's data to another store."),
)
async def update_tenant(
    tenant_id: TenantPath, body: TenantPatch, engine: EngineDep, admin: Admin
) -> TenantOut:
    overrides = _overrides(body.policy)
    try:
        info = await engine.tenants.update(tenant_id, actor=actor_of(admin), **overrides)
    except ConfigurationError as exc:
        raise _policy_field(exc) from None
    return TenantOut.of(info)


@router.delete(
    "/{tenant_id}",
    response_model=TenantDeleted,
    summary="Delete a tenant",
    responses=_conflict("The tenant has unfinished runs."),
)
async def delete_tenant(
    tenant_id: TenantPath,
    engine: EngineDep,
    admin: Admin,
    purge_audit: Annotated[
        bool, Query(description="Delete its audit log too (kept by default).")
    ] = False,
) -> TenantDeleted:
    """Purge every row of the tenant (refused with 409 while it has unfinished runs)."""
    result = await engine.tenants.delete(tenant_id, actor=actor_of(admin), purge_audit=purge_audit)
    return TenantDeleted(tenant_id=tenant_id, deleted=result["deleted"], left=result["left"])


# -- keys ----------------------------------------------------------------------------------------


@router.post(
    "/{tenant_id}/keys",
    status_code=201,
    response_model=KeyCreated,
    summary="Create an API key for a tenant",
)
async def create_key(
    tenant_id: TenantPath, engine: EngineDep, admin: Admin, body: KeyIn | None = None
) -> KeyCreated:
    """The answer holds the key's secret: it is shown this once."""
    await engine.tenants.get(tenant_id)
    info, secret = await engine.keys.create(
        tenant_id, name=(body or KeyIn()).name, actor=actor_of(admin)
    )
    return KeyCreated(key=KeyOut.of(info), secret=secret)


@router.get("/{tenant_id}/keys", response_model=KeysOut, summary="List a tenant's API keys")
async def list_keys(tenant_id: TenantPath, engine: EngineDep, admin: Admin) -> KeysOut:
    await engine.tenants.get(tenant_id)
    return KeysOut(items=[KeyOut.of(k) for k in await engine.keys.list(tenant_id)])


@router.post(
    "/{tenant_id}/keys/{key_id}/rotate",
    response_model=KeyCreated,
    summary="Replace an API key with a new one",
    responses=_conflict("The key is already revoked."),
)
async def rotate_key(
    tenant_id: TenantPath, key_id: KeyPath, engine: EngineDep, admin: Admin
) -> KeyCreated:
    """Revokes the key and creates its successor (same name); the new secret is shown once."""
    await engine.tenants.get(tenant_id)
    info, secret = await engine.keys.rotate(tenant_id, key_id, actor=actor_of(admin))
    return KeyCreated(key=KeyOut.of(info), secret=secret)


@router.delete("/{tenant_id}/keys/{key_id}", response_model=KeyOut, summary="Revoke an API key")
async def revoke_key(
    tenant_id: TenantPath, key_id: KeyPath, engine: EngineDep, admin: Admin
) -> KeyOut:
    await engine.tenants.get(tenant_id)
    return KeyOut.of(await engine.keys.revoke(tenant_id, key_id, actor=actor_of(admin)))
