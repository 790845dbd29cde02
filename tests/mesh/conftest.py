"""A JetStream server with the mesh's users (admin, one agent user per region, tenant users)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

REGIONS = ("eu", "us")
TENANT_USERS = {"acme": "eu", "globex": "eu"}


@pytest.fixture
def mesh_server(nats_server_binary: Any, tmp_path: Any) -> Any:
    """A private server whose config holds :func:`auth_config`'s users; ``.creds`` has them."""
    from tenantflow.adapters.nats.fabric import auth_config, make_credentials
    from tenantflow.adapters.nats.server import NatsServer

    creds = make_credentials(REGIONS, TENANT_USERS)
    server = NatsServer(
        store_dir=tmp_path / "nats", binary=nats_server_binary, config=auth_config(creds.values())
    )
    server.creds = creds  # type: ignore[attr-defined]
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def admin(mesh_server: Any) -> AsyncIterator[Any]:
    """An admin connection, with every region provisioned."""
    from tenantflow.adapters.nats.fabric import connect, provision

    fabric = await connect(mesh_server.url, mesh_server.creds["admin"])
    for region in REGIONS:
        await provision(fabric, region)
    try:
        yield fabric
    finally:
        await fabric.close()
