"""The plane's own small store: cells, tenants and where they live, key ids, policy documents,
global limits and the leases held. No execution state: runs, steps and ledgers are in the cells.

SQLite (one file, WAL, ``synchronous=FULL``), read into memory at start; every change is
written before it is acted on. Reads for routing come from memory.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CellRow", "PolicyRow", "Registry", "TenantRow"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
  id TEXT PRIMARY KEY, url TEXT NOT NULL, port INTEGER NOT NULL, store TEXT NOT NULL,
  state_dir TEXT NOT NULL, admin_key TEXT NOT NULL, max_tenants INTEGER NOT NULL,
  status TEXT NOT NULL, pid INTEGER, restarts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tenants (
  id TEXT PRIMARY KEY, cell TEXT, status TEXT NOT NULL, info TEXT, proof TEXT,
  created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (key_id TEXT PRIMARY KEY, tenant TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS policies (
  tenant TEXT NOT NULL, version INTEGER NOT NULL, document TEXT NOT NULL,
  published_at REAL NOT NULL, acked_at REAL, error TEXT, PRIMARY KEY (tenant, version)
);
CREATE TABLE IF NOT EXISTS quotas (resource TEXT PRIMARY KEY, rate_per_s REAL NOT NULL,
  burst INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS money_caps (name TEXT PRIMARY KEY, cap_micros INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS money_held (cap TEXT NOT NULL, cell TEXT NOT NULL,
  held INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (cap, cell));
CREATE TABLE IF NOT EXISTS leases (cell TEXT NOT NULL, resource TEXT NOT NULL,
  rate_per_s REAL NOT NULL, burst INTEGER NOT NULL, PRIMARY KEY (cell, resource));
"""


@dataclass
class CellRow:
    id: str
    url: str
    port: int
    store: str
    state_dir: str
    admin_key: str
    max_tenants: int
    status: str  # "starting" | "running" | "stopped"
    pid: int | None
    restarts: int
    created_at: float

    def public(self) -> dict[str, Any]:
        """What the plane shows of a cell (never its admin key)."""
        return {
            "id": self.id,
            "url": self.url,
            "store": self.store,
            "max_tenants": self.max_tenants,
            "status": self.status,
            "pid": self.pid,
            "restarts": self.restarts,
        }


@dataclass
class TenantRow:
    id: str
    cell: str | None
    status: str  # "provisioning" | "active" | "draining" | "deleted"
    info: dict[str, Any] | None
    proof: dict[str, Any] | None
    created_at: float
    updated_at: float


@dataclass
class PolicyRow:
    tenant: str
    version: int
    document: dict[str, Any]
    published_at: float
    acked_at: float | None = None
    error: str | None = None


@dataclass
class Registry:
    """See the module docstring. Thread-safe (one lock); every method is quick."""

    path: Path
    cells: dict[str, CellRow] = field(default_factory=dict)
    tenants: dict[str, TenantRow] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # key id -> tenant
    policies: dict[str, list[PolicyRow]] = field(default_factory=dict)
    quotas: dict[str, tuple[float, int]] = field(default_factory=dict)
    leases: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)
    money_caps: dict[str, int] = field(default_factory=dict)  # name -> cap (micros a period)
    money_held: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    """(cap, cell) -> (the most the cell may hold, the seq of the lease granting it)."""

    def __post_init__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._load()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _load(self) -> None:
        db = self._db
        for row in db.execute("SELECT * FROM cells"):
            self.cells[row[0]] = CellRow(*row)
        for tid, cell, status, info, proof, created, updated in db.execute("SELECT * FROM tenants"):
            self.tenants[tid] = TenantRow(
                tid,
                cell,
                status,
                json.loads(info) if info else None,
                json.loads(proof) if proof else None,
                created,
                updated,
            )
        self.keys = dict(db.execute("SELECT key_id, tenant FROM keys").fetchall())
        for tenant, version, doc, published, acked, error in db.execute(
            "SELECT * FROM policies ORDER BY tenant, version"
        ):
            self.policies.setdefault(tenant, []).append(
                PolicyRow(tenant, version, json.loads(doc), published, acked, error)
            )
        self.quotas = {r: (rate, burst) for r, rate, burst in db.execute("SELECT * FROM quotas")}
        self.leases = {
            (c, r): (rate, burst) for c, r, rate, burst in db.execute("SELECT * FROM leases")
        }
        self.money_caps = dict(db.execute("SELECT name, cap_micros FROM money_caps").fetchall())
        self.money_held = {
            (cap, cell): (held, seq)
            for cap, cell, held, seq in db.execute("SELECT * FROM money_held")
        }

    def _exec(self, sql: str, *args: Any) -> None:
        with self._lock:
            self._db.execute(sql, args)

    # -- cells --------------------------------------------------------------------------------

    def put_cell(self, cell: CellRow) -> None:
        self._exec(
            "INSERT OR REPLACE INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            cell.id,
            cell.url,
            cell.port,
            cell.store,
            cell.state_dir,
            cell.admin_key,
            cell.max_tenants,
            cell.status,
            cell.pid,
            cell.restarts,
            cell.created_at,
        )
        self.cells[cell.id] = cell

    def drop_cell(self, cell_id: str) -> None:
        self._exec("DELETE FROM cells WHERE id = ?", cell_id)
        self._exec("DELETE FROM leases WHERE cell = ?", cell_id)
        self.cells.pop(cell_id, None)
        self.leases = {k: v for k, v in self.leases.items() if k[0] != cell_id}

    def tenants_of(self, cell_id: str) -> list[str]:
        return sorted(
            t.id for t in self.tenants.values() if t.cell == cell_id and t.status != "deleted"
        )

    # -- tenants ------------------------------------------------------------------------------

    def put_tenant(self, row: TenantRow) -> None:
        row.updated_at = time.time()
        self._exec(
            "INSERT OR REPLACE INTO tenants VALUES (?,?,?,?,?,?,?)",
            row.id,
            row.cell,
            row.status,
            json.dumps(row.info) if row.info is not None else None,
            json.dumps(row.proof) if row.proof is not None else None,
            row.created_at,
            row.updated_at,
        )
        self.tenants[row.id] = row

    def put_key(self, key_id: str, tenant: str) -> None:
        self._exec("INSERT OR REPLACE INTO keys VALUES (?,?)", key_id, tenant)
        self.keys[key_id] = tenant

    def drop_keys(self, tenant: str) -> None:
        self._exec("DELETE FROM keys WHERE tenant = ?", tenant)
        self.keys = {k: t for k, t in self.keys.items() if t != tenant}

    # -- policies -----------------------------------------------------------------------------

    def latest_policy(self, tenant: str) -> PolicyRow | None:
        rows = self.policies.get(tenant)
        return rows[-1] if rows else None

    def publish(self, tenant: str, document: dict[str, Any]) -> PolicyRow:
        latest = self.latest_policy(tenant)
        row = PolicyRow(tenant, (latest.version if latest else 0) + 1, document, time.time())
        self._exec(
            "INSERT INTO policies VALUES (?,?,?,?,?,?)",
            tenant,
            row.version,
            json.dumps(document),
            row.published_at,
            None,
            None,
        )
        self.policies.setdefault(tenant, []).append(row)
        return row

    def ack(self, tenant: str, version: int, *, at: float, error: str | None = None) -> None:
        for row in self.policies.get(tenant, []):
            if row.version == version and row.acked_at is None:
                row.acked_at, row.error = (None, error) if error else (at, None)
                self._exec(
                    "UPDATE policies SET acked_at = ?, error = ? WHERE tenant = ? AND version = ?",
                    row.acked_at,
                    row.error,
                    tenant,
                    version,
                )

    def drop_policies(self, tenant: str) -> None:
        self._exec("DELETE FROM policies WHERE tenant = ?", tenant)
        self.policies.pop(tenant, None)

    # -- quotas and leases --------------------------------------------------------------------

    def put_quota(self, resource: str, limit: tuple[float, int] | None) -> None:
        if limit is None:
            self._exec("DELETE FROM quotas WHERE resource = ?", resource)
            self.quotas.pop(resource, None)
        else:
            self._exec("INSERT OR REPLACE INTO quotas VALUES (?,?,?)", resource, *limit)
            self.quotas[resource] = limit

    def put_lease(self, cell: str, resource: str, lease: tuple[float, int]) -> None:
        if self.leases.get((cell, resource)) == lease:
            return
        self._exec("INSERT OR REPLACE INTO leases VALUES (?,?,?,?)", cell, resource, *lease)
        self.leases[(cell, resource)] = lease

    # -- money caps ---------------------------------------------------------------------------

    def put_money_cap(self, name: str, cap_micros: int | None) -> None:
        if cap_micros is None:
            self._exec("DELETE FROM money_caps WHERE name = ?", name)
            self._exec("DELETE FROM money_held WHERE cap = ?", name)
            self.money_caps.pop(name, None)
            self.money_held = {k: v for k, v in self.money_held.items() if k[0] != name}
        else:
            self._exec("INSERT OR REPLACE INTO money_caps VALUES (?,?)", name, cap_micros)
            self.money_caps[name] = cap_micros

    def put_money_held(self, cap: str, cell: str, held: int, seq: int) -> None:
        """Written before the grant is answered: a restarted plane counts it."""
        if self.money_held.get((cap, cell)) == (held, seq):
            return
        self._exec("INSERT OR REPLACE INTO money_held VALUES (?,?,?,?)", cap, cell, held, seq)
        self.money_held[(cap, cell)] = (held, seq)
