"""How the PostgreSQL store turns the shared statements into what it sends (no server needed)."""

from __future__ import annotations

import pytest

from tenantflow.domain.memory import PutMemory
from tenantflow.domain.records import RecoverOrphans, StartAttempt

pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from tenantflow.adapters.postgres import _by_tenant, _runs_to_lock, postgres_text
from tenantflow.adapters.sql import chunk_sizes as _chunks
from tenantflow.adapters.sql import insert_table as _insert_table
from tenantflow.adapters.sql import merged_insert
from tenantflow.adapters.sql import summed as _summed
from tenantflow.errors import StoreError

EVENTS = "INSERT INTO events (tenant_id, run_id, kind) VALUES (?, ?, ?)"


def test_placeholders_are_numbered_and_pg_additions_kept() -> None:
    text = "SELECT a FROM t WHERE x = ? AND y LIKE 'p%' /*pg: FOR UPDATE*/ AND z = ?"
    assert (
        postgres_text(text)
        == b"SELECT a FROM t WHERE x = $1 AND y LIKE 'p%'  FOR UPDATE AND z = $2"
    )


@pytest.mark.parametrize("n", [1, 2, 3, 7, 13, 255, 256, 257, 1000])
def test_rows_go_in_powers_of_two_that_add_up(n: int) -> None:
    sizes = _chunks(n)
    assert sum(sizes) == n
    assert all(s & (s - 1) == 0 and s <= 256 for s in sizes)
    assert sizes == sorted(sizes, reverse=True)
    assert len(sizes) <= n // 256 + 8  # a handful of statement texts per table


def test_a_merged_insert_repeats_the_values_group() -> None:
    assert _insert_table(EVENTS) == "events"
    assert postgres_text(merged_insert(EVENTS, 3)) == (
        b"INSERT INTO events (tenant_id, run_id, kind)"
        b" VALUES ($1, $2, $3), ($4, $5, $6), ($7, $8, $9)"
    )
    with pytest.raises(StoreError, match="not an INSERT"):
        _insert_table("UPDATE steps SET status = ? WHERE key = ?")


def test_added_rows_are_summed_per_key_in_first_seen_order() -> None:
    rows = [("t1", "d", "steps", 1.0), ("t1", "d", "tokens", 5.0), ("t1", "d", "steps", 2.0)]
    assert _summed(rows) == [("t1", "d", "steps", 3.0), ("t1", "d", "tokens", 5.0)]


def test_a_batch_is_taken_tenant_by_tenant_around_system_ops() -> None:
    def op(tenant: str) -> StartAttempt:
        return StartAttempt(tenant, "r", "a", "o", 0.0, 1.0)

    ops = [op("a"), op("b"), op("a"), RecoverOrphans(0.0), op("b"), op("a"), op("b")]
    # Tenant by tenant (by id), each tenant's ops in their order; nothing crosses the system op.
    assert _by_tenant(ops) == [0, 2, 1, 3, 5, 4, 6]


def test_a_batch_locks_the_runs_it_writes_in_one_order() -> None:
    def op(run: str, key: str = "a", tenant: str = "t") -> StartAttempt:
        return StartAttempt(tenant, run, key, "o", 0.0, 1.0)

    first = [op("r2"), op("r1", "a"), op("r3"), op("r1", "b"), op("r0", tenant="u")]
    second = [op("r3"), op("r1", "b"), op("r2")]
    # Whatever order the ops came in, each tenant's runs are locked by id, each once: two
    # batches sharing runs take them in one order (no deadlock between processes).
    assert _runs_to_lock(first) == {"t": ["r1", "r2", "r3"], "u": ["r0"]}
    assert _runs_to_lock(second) == {"t": ["r1", "r2", "r3"]}
    # A run created by the batch, and a tenant op that writes no run, lock nothing.
    memory = PutMemory("t", "ns", "k", "{}", 0.0, None)
    assert _runs_to_lock([memory, op("r9")]) == {"t": ["r9"]}
