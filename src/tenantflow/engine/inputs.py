"""What a submission may not carry: credentials (see :mod:`tenantflow.domain.credentials`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tenantflow.domain.credentials import find_credential_json
from tenantflow.domain.records import Transition
from tenantflow.domain.tenancy import AuditEntry
from tenantflow.errors import ContractError

if TYPE_CHECKING:
    from tenantflow.engine.execution.driver import RunDriver as Runtime

__all__ = ["refuse_credentials"]


async def refuse_credentials(
    runtime: Runtime, tenant: str, workflow: str, input_json: bytes
) -> None:
    """Refuse an input holding a credential-shaped string: audited in the tenant's chain by
    field path and kind, never the value.

    Raises:
        ContractError: with ``field`` (the path inside the input, e.g. ``auth.token``),
            ``kind`` and ``reason="credential"``.
    """
    found = find_credential_json(input_json)
    if found is None:
        return
    detail = {"field": found.where(), "kind": found.kind}
    refused = AuditEntry("engine", "input.refused", f"workflow:{workflow}", detail)
    await runtime.writer.write(Transition(tenant, "", runtime.clock.now(), audit=[refused]))
    raise ContractError(
        f"{found.where()} looks like a credential ({found.kind.replace('_', ' ')}): secrets"
        " must not be passed in run inputs; give tools their credentials from the platform's"
        " configuration",
        step="<input>",
        field=found.path,
        kind=found.kind,
        reason="credential",
        workflow=workflow,
    )
