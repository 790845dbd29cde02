"""``tenantflow mesh up``: a NATS server, agents and an API on one machine.

:class:`MeshUp` starts a private nats-server (2.10 or newer, see
:mod:`tenantflow.adapters.nats.server`) on a free port with its store and the users'
credentials under ``directory`` (an admin for the API, one user per region for its agents;
files mode 0600), provisions every region's streams and buckets, and starts ``agents`` agent
processes per region. The API is the caller's (``tenantflow mesh up`` serves
:class:`~.control.MeshControl` with the REST app).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tenantflow.adapters.nats.fabric import (
    Credentials,
    auth_config,
    connect,
    make_credentials,
    provision,
    save_credentials,
)
from tenantflow.adapters.nats.server import NatsServer, find_nats_server
from tenantflow.errors import ConfigurationError
from tenantflow.placement.mesh.procs import AgentProcess

__all__ = ["MeshUp", "find_nats_server", "require_postgres"]


def require_postgres(url: str) -> None:
    """The mesh's agents are separate processes writing one store: PostgreSQL only."""
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigurationError(
            "the mesh needs a PostgreSQL store (several agent processes write it): "
            f"--db postgresql://..., not {url.split(':', 1)[0]}",
            field="db",
        )


@dataclass
class MeshUp:
    """A local mesh: a NATS server and agent processes (see the module doc)."""

    store_url: str
    apps: Sequence[str]
    directory: Path
    regions: Sequence[str] = ("global",)
    default_region: str = "global"
    agents: int = 2
    slots: int = 8
    lease_s: float = 30.0
    ack_wait_s: float = 30.0
    nats_port: int = 0
    env: Mapping[str, str] = field(default_factory=dict)
    server: NatsServer | None = field(default=None, init=False)
    procs: list[AgentProcess] = field(default_factory=list, init=False)
    creds: dict[str, Credentials] = field(default_factory=dict, init=False)

    @property
    def admin(self) -> Credentials:
        return self.creds["admin"]

    async def start(self) -> MeshUp:
        require_postgres(self.store_url)
        regions = list(dict.fromkeys([*self.regions, self.default_region]))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.creds = make_credentials(regions)
        for name, creds in self.creds.items():
            save_credentials(creds, self.directory / "creds" / f"{name}.json")
        self.server = NatsServer(
            store_dir=self.directory / "nats",
            port=self.nats_port,
            config=auth_config(self.creds.values()),
        )
        await asyncio.to_thread(self.server.start)
        fabric = await connect(self.server.url, self.admin)
        try:
            for region in regions:
                await provision(fabric, region)
        finally:
            await fabric.close()
        return self

    def start_agents(self) -> None:
        assert self.server is not None
        for region in dict.fromkeys([*self.regions, self.default_region]):
            for i in range(self.agents):
                self.procs.append(
                    AgentProcess(
                        self.store_url,
                        self.server.url,
                        self.directory / "creds" / f"agent-{region}.json",
                        [region],
                        self.apps,
                        default_region=self.default_region,
                        slots=self.slots,
                        lease_s=self.lease_s,
                        ack_wait_s=self.ack_wait_s,
                        env=self.env,
                        log_file=self.directory / f"agent-{region}-{i}.log",
                    ).start()
                )

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
        self.procs.clear()
        if self.server is not None:
            self.server.stop()
