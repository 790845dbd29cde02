"""The mesh's read model, projected from the execution log.

On the mesh the agents' store is the *write model*: leases, fences, completion by
compare-and-set, ledgers; several agent processes write it, so it is PostgreSQL. What the API
reads about runs (records, steps, the timeline, state versions) is a *read model* that
:class:`Projector` builds from the execution log on JetStream alone, into a store of the
project's schema (SQLite or PostgreSQL), off the agents' path.

Each entry of a run's state chain (``tf.<r>.<t>.run.<run>.state``, see
:mod:`tenantflow.adapters.nats.log`) carries a **snapshot** (:func:`snapshot`): the run's
record and steps as the shipper read them, and the events and state versions the entry covers
(those after the previous entry's). The projector is a durable pull consumer of the chains of
its regions; it applies one entry per transaction and acknowledges it afterwards:

* **Idempotent.** The projected run row keeps the stream sequence of the last entry applied
  (``meta["log_seq"]``). An entry whose sequence is not newer writes nothing, so a
  redelivery, or a replay of the whole stream, projects nothing twice.
* **In order.** Each entry names its predecessor in the chain (``parent_seq``, the sequence
  the shipper's append was checked against); an entry whose predecessor is not the one
  applied last is not applied (it is retried, after the missing one).
* **Resumable.** After a crash the consumer resumes after its last acknowledged entry; what was
  applied but not acknowledged is delivered again and skipped by the rule above.

What the projector does not own (it is not on the log): tenants, policies, API keys, reviews,
usage, ledgers and the audit chain stay in the write model, which the API reads for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tenantflow.adapters.nats.fabric import Fabric
from tenantflow.adapters.nats.subjects import Region
from tenantflow.adapters.sql import Gen, execute, one
from tenantflow.domain.records import EventRecord, RunRecord, StateVersionRecord, StepRecord
from tenantflow.errors import ConfigurationError
from tenantflow.ports import Store

__all__ = ["REMEMBERED", "Projector", "ProjectorStats", "apply_entry", "snapshot"]

log = logging.getLogger("tenantflow.mesh")

REMEMBERED = 100_000
"""How many runs :meth:`Projector.wait_for` remembers having seen."""


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "surrogateescape")


def _bytes(value: str | None) -> bytes | None:
    return None if value is None else value.encode("utf-8", "surrogateescape")


def snapshot(
    record: RunRecord,
    steps: Sequence[StepRecord],
    versions: Sequence[StateVersionRecord],
    events: Sequence[EventRecord],
) -> dict[str, Any]:
    """What a state entry carries for the read model (JSON-ready)."""
    return {
        "run": {
            "id": record.id,
            "workflow": record.workflow,
            "workflow_version": record.workflow_version,
            "status": record.status.value,
            "lane": record.lane,
            "input": _text(record.input_json),
            "result": _text(record.result_json),
            "error": record.error,
            "state_version": record.state_version,
            "state_hash": record.state_hash,
            "idempotency_key": record.idempotency_key,
            "parent_run_id": record.parent_run_id,
            "meta": record.meta,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "finished_at": record.finished_at,
        },
        "steps": [
            [
                s.key,
                s.status.value,
                s.attempt,
                s.fence,
                s.owner,
                s.lease_expires_at,
                s.available_at,
                _text(s.output_json),
                s.error,
                s.version,
                s.started_at,
                s.finished_at,
            ]
            for s in steps
        ],
        "versions": [
            [v.version, v.parent, v.step, _text(v.delta_json), v.hash, v.created_at]
            for v in versions
        ],
        "events": [[e.id, e.ts, e.kind, e.step, e.attempt, e.data] for e in events],
    }


_STEP_COLUMNS = (
    "key, status, attempt, fence, owner, lease_expires_at, available_at, output, error,"
    " version, started_at, finished_at"
)


def apply_entry(tenant: str, seq: int, parent_seq: int, snap: dict[str, Any]) -> Gen[str]:
    """Apply one state entry to the read model, in the caller's transaction: ``"applied"``,
    ``"seen"`` (applied before: nothing written) or ``"gap"`` (its predecessor in the chain is
    not applied yet: nothing written)."""
    run = snap["run"]
    run_id = str(run["id"])
    row = yield from one("SELECT meta FROM runs WHERE id = ? AND tenant_id = ?", run_id, tenant)
    last = 0 if row is None else int(json.loads(row[0] or "{}").get("log_seq", 0))
    if last >= seq:
        return "seen"
    if last != parent_seq:
        return "gap"
    meta = json.dumps({**(run.get("meta") or {}), "log_seq": seq})
    if row is None:
        yield from execute(
            "INSERT INTO runs (id, tenant_id, workflow, workflow_version, status, lane, input,"
            " result, error, state_version, state_hash, idempotency_key, parent_run_id, meta,"
            " created_at, updated_at, finished_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            run_id,
            tenant,
            run["workflow"],
            run["workflow_version"],
            run["status"],
            run["lane"],
            _bytes(run["input"]) or b"",
            _bytes(run["result"]),
            run["error"],
            run["state_version"],
            run["state_hash"],
            run["idempotency_key"],
            run["parent_run_id"],
            meta,
            run["created_at"],
            run["updated_at"],
            run["finished_at"],
        )
    else:
        yield from execute(
            "UPDATE runs SET status = ?, result = ?, error = ?, state_version = ?,"
            " state_hash = ?, meta = ?, updated_at = ?, finished_at = ?"
            " WHERE id = ? AND tenant_id = ?",
            run["status"],
            _bytes(run["result"]),
            run["error"],
            run["state_version"],
            run["state_hash"],
            meta,
            run["updated_at"],
            run["finished_at"],
            run_id,
            tenant,
        )
    for step in snap["steps"]:
        values = list(step)
        values[7] = _bytes(values[7])
        yield from execute(
            f"INSERT INTO steps (run_id, tenant_id, {_STEP_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (run_id, key) DO UPDATE SET status = excluded.status,"
            " attempt = excluded.attempt, fence = excluded.fence, owner = excluded.owner,"
            " lease_expires_at = excluded.lease_expires_at,"
            " available_at = excluded.available_at, output = excluded.output,"
            " error = excluded.error, version = excluded.version,"
            " started_at = excluded.started_at, finished_at = excluded.finished_at",
            run_id,
            tenant,
            *values,
        )
    for version, parent, step_name, delta, digest, created_at in snap["versions"]:
        yield from execute(
            "INSERT INTO state_versions (run_id, version, tenant_id, parent, step, delta, hash,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            run_id,
            version,
            tenant,
            parent,
            step_name,
            _bytes(delta) or b"",
            digest,
            created_at,
        )
    for _source_id, ts, kind, step_name, attempt, data in snap["events"]:
        yield from execute(
            "INSERT INTO events (tenant_id, run_id, ts, kind, step, attempt, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            tenant,
            run_id,
            ts,
            kind,
            step_name,
            attempt,
            json.dumps(data),
        )
    return "applied"


async def _transaction(store: Store, tenant: str, query: Gen[str]) -> str:
    """Run ``query`` in one transaction of ``store`` in ``tenant``'s scope."""
    from tenantflow.adapters.tenant_transfer import _transaction as transaction

    return await transaction(store, tenant, query)


@dataclass
class ProjectorStats:
    applied: int = 0
    seen: int = 0
    gaps: int = 0
    failed: int = 0


class Projector:
    """A durable consumer of the state chains of ``regions`` writing the read model into
    ``store`` (see the module doc).

    Args:
        fabric: a connection that may read the regions' execution logs.
        store: the read model (SQLite or PostgreSQL, opened by the caller).
        durable: the consumer's name: a projector started again with the same name resumes.
        ack_wait_s: how long an entry delivered but not acknowledged (its projector died)
            waits before it is delivered again.
        on_applied: called with the tenant and the run's record (as the snapshot has it)
            after each entry applied.
    """

    def __init__(
        self,
        fabric: Fabric,
        store: Store,
        regions: Sequence[str],
        *,
        durable: str = "projector",
        batch: int = 64,
        ack_wait_s: float = 10.0,
        on_applied: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.on_applied = on_applied
        self.fabric = fabric
        self.store = store
        self.regions = list(dict.fromkeys(regions))
        self.durable = durable
        self.batch = batch
        self.ack_wait_s = ack_wait_s
        self.stats = ProjectorStats()
        self.applied_runs: dict[str, int] = {}
        """The last stream sequence applied per run (by this process; the
        :data:`REMEMBERED` runs seen last)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: list[Any] = []
        self._changed = asyncio.Condition()

    async def start(self) -> None:
        for region in self.regions:
            sub = await self._subscribe(region)
            self._subs.append(sub)
            self._tasks.append(asyncio.get_running_loop().create_task(self._loop(region, sub)))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for sub in self._subs:  # the consumer stays on the server: a new one resumes it
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()

    async def __aenter__(self) -> Projector:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _subscribe(self, region: str) -> Any:
        from nats.js import api

        r = Region(region)
        return await self.fabric.js.pull_subscribe(
            f"tf.{r.name}.*.run.*.state",
            durable=f"{self.durable}_{r.name}".replace("-", "_"),
            stream=r.evt_stream,
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.ALL,
                ack_wait=self.ack_wait_s,
                max_ack_pending=self.batch * 4,
            ),
        )

    async def _loop(self, region: str, sub: Any) -> None:
        import nats.errors

        delay = 0.1
        while True:
            try:
                msgs = await sub.fetch(self.batch, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the server is away: again
                log.warning("projector of %s: fetch failed: %s", region, exc)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
                continue
            delay = 0.1
            for msg in msgs:
                await self._project(msg)

    async def _project(self, msg: Any) -> None:
        """Apply one entry (again while the store fails: entries are applied in order), then
        acknowledge it; an entry whose predecessor is missing is left for redelivery."""
        seq = int(msg.metadata.sequence.stream)
        body = json.loads(msg.data)
        tenant = str((msg.headers or {}).get("Tf-Tenant", ""))
        snap = body.get("snapshot")
        if snap is None or not tenant:  # an entry without a snapshot: nothing to project
            await msg.ack()
            return
        delay = 0.05
        while True:
            try:
                outcome = await _transaction(
                    self.store, tenant, apply_entry(tenant, seq, int(body["parent_seq"]), snap)
                )
                break
            except asyncio.CancelledError:
                raise
            except ConfigurationError:
                raise
            except Exception as exc:
                self.stats.failed += 1
                log.warning("projecting entry %d failed: %s; again", seq, exc)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
        if outcome == "gap":  # its predecessor comes again after it (a redelivery): wait
            self.stats.gaps += 1
            await msg.nak(delay=0.2)
            return
        if outcome == "applied":
            self.stats.applied += 1
            if self.on_applied is not None:
                self.on_applied(tenant, snap["run"])
        else:
            self.stats.seen += 1
        await msg.ack()
        async with self._changed:
            run_id = str(snap["run"]["id"])
            self.applied_runs.pop(run_id, None)
            self.applied_runs[run_id] = seq
            if len(self.applied_runs) > REMEMBERED:
                del self.applied_runs[next(iter(self.applied_runs))]
            self._changed.notify_all()

    async def wait_for(self, run_id: str, timeout_s: float = 5.0) -> bool:
        """Wait until this projector applied an entry of ``run_id`` (False after
        ``timeout_s``): a submission is readable once it returns."""
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: run_id in self.applied_runs)
        except TimeoutError:
            return False
        return True
