"""The execution log on JetStream: facts, state-version chains and completion records.

* **Facts** (``tf.<r>.<t>.run.<run>.evt.<fact>``: ``step.succeeded``, ``step.failed``,
  ``step.retrying``, ``run.finished``, ``compensate.<step>``, …) are published with a
  ``Nats-Msg-Id`` naming the run, step, attempt and fact, so a retried publish is stored once.
* **State versions** (``tf.<r>.<t>.run.<run>.state``): one chain per run, appended with
  ``Nats-Expected-Last-Subject-Sequence`` = the sequence of the entry read, so two writers cannot
  both append after the same entry; a writer whose version is not newer than the last entry
  appends nothing (the chain only moves forward).
* **Completion records** (KV ``DONE_<r>``, key ``<t>.<run>.<step>``) are created only if absent:
  the first writer wins, and a later one is handed the winner's record.

A run's timeline (:meth:`ExecutionLog.timeline`) is read back from the stream alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from tenantflow.adapters.nats.fabric import Fabric
from tenantflow.adapters.nats.subjects import Region, token

__all__ = ["Completion", "ExecutionLog"]

_WRONG_LAST = (10071, 10164)


@dataclass(frozen=True, slots=True)
class Completion:
    """A step's completion record: who completed it, with which output."""

    attempt: int
    owner: str
    output_json: bytes
    revision: int


class ExecutionLog:
    """Writes and reads the log of the regions a connection may touch."""

    def __init__(self, fabric: Fabric) -> None:
        self.fabric = fabric
        self._kv: dict[str, Any] = {}

    async def _bucket(self, name: str) -> Any:
        kv = self._kv.get(name)
        if kv is None:
            kv = self._kv[name] = await self.fabric.js.key_value(name)
        return kv

    # -- facts --------------------------------------------------------------------------------

    async def fact(
        self,
        region: str,
        tenant: str,
        run: str,
        fact: str,
        data: dict[str, Any],
        *,
        msg_id: str,
        step: str | None = None,
        attempt: int | None = None,
        wait: bool = True,
    ) -> Any:
        """Publish a fact (``fact`` may hold dots: ``step.succeeded``); its stream sequence (a
        duplicate ``msg_id`` within the server's window gets the first one's). With
        ``wait=False`` the fact is sent and a future of its acknowledgement returned, so that
        several facts go out in order and are acknowledged together."""
        r = Region(region)
        headers = {"Nats-Msg-Id": msg_id, "Tf-Tenant": tenant, "Tf-Run": run}
        if step is not None:
            headers["Tf-Step"] = step
        if attempt is not None:
            headers["Tf-Attempt"] = str(attempt)
        body = {"fact": fact, "step": step, "attempt": attempt, **data}
        name = ".".join(token(part) for part in fact.split("."))
        payload = json.dumps(body, default=str).encode()
        if not wait:
            return await self.fabric.js.publish_async(
                r.evt(tenant, run, name), payload, headers=headers
            )
        ack = await self.fabric.js.publish(r.evt(tenant, run, name), payload, headers=headers)
        return int(ack.seq)

    # -- state versions -----------------------------------------------------------------------

    async def last_state(self, region: str, tenant: str, run: str) -> tuple[int, dict[str, Any]]:
        """The chain's last entry: (its stream sequence, its body); (0, {}) when empty."""
        from nats.js.errors import NotFoundError

        r = Region(region)
        try:
            msg = await self.fabric.js.get_last_msg(r.evt_stream, r.state(tenant, run))
        except NotFoundError:
            return 0, {}
        return int(msg.seq), json.loads(msg.data)

    async def append_state(
        self, region: str, tenant: str, run: str, after_seq: int, body: dict[str, Any]
    ) -> int | None:
        """Append ``body`` to the run's chain if its last entry is still ``after_seq`` (0: the
        chain is empty): the new entry's stream sequence; None, with nothing appended, when
        another writer appended first."""
        from nats.js.errors import APIError

        r = Region(region)
        headers = {
            "Nats-Expected-Last-Subject-Sequence": str(after_seq),
            "Tf-Tenant": tenant,
            "Tf-Run": run,
        }
        body = {**body, "parent_seq": after_seq, "at": time.time()}
        try:
            ack = await self.fabric.js.publish(
                r.state(tenant, run), json.dumps(body, default=str).encode(), headers=headers
            )
        except APIError as exc:
            if exc.err_code in _WRONG_LAST:
                return None
            raise
        return int(ack.seq)

    # -- completion records -------------------------------------------------------------------

    async def completion(self, region: str, tenant: str, run: str, step: str) -> Completion | None:
        """The step's completion record, if any."""
        from nats.js.errors import KeyNotFoundError

        kv = await self._bucket(Region(region).done_bucket)
        try:
            entry = await kv.get(Region.done_key(tenant, run, step))
        except KeyNotFoundError:
            return None
        return self._completion(entry)

    async def complete(
        self, region: str, tenant: str, run: str, step: str, attempt: int, owner: str, output: bytes
    ) -> tuple[bool, Completion]:
        """Record the step's completion if none exists: (True, ours) for the first writer,
        (False, the winner's) for any later one."""
        from nats.js.errors import KeyWrongLastSequenceError

        kv = await self._bucket(Region(region).done_bucket)
        key = Region.done_key(tenant, run, step)
        body = {"attempt": attempt, "owner": owner, "output": output.decode()}
        try:
            revision = await kv.create(key, json.dumps(body).encode())
        except KeyWrongLastSequenceError:
            winner = await kv.get(key)
            return False, self._completion(winner)
        return True, Completion(attempt, owner, output, int(revision))

    @staticmethod
    def _completion(entry: Any) -> Completion:
        body = json.loads(entry.value)
        return Completion(
            int(body["attempt"]), str(body["owner"]), body["output"].encode(), int(entry.revision)
        )

    # -- reading ------------------------------------------------------------------------------

    async def timeline(self, region: str, tenant: str, run: str) -> list[dict[str, Any]]:
        """Every fact and state version of the run, in stream order, with its headers."""
        import nats.errors
        from nats.js import api

        r = Region(region)
        info = await self.fabric.js.stream_info(
            r.evt_stream, subjects_filter=r.run_log(tenant, run)
        )
        total = sum((info.state.subjects or {}).values())
        if total == 0:
            return []
        sub = await self.fabric.js.pull_subscribe(
            r.run_log(tenant, run),
            stream=r.evt_stream,
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.NONE,
                deliver_policy=api.DeliverPolicy.ALL,
                inactive_threshold=30.0,
            ),
        )
        out: list[dict[str, Any]] = []
        try:
            while len(out) < total:
                try:
                    msgs = await sub.fetch(min(256, total - len(out)), timeout=2.0)
                except nats.errors.TimeoutError:
                    break
                for msg in msgs:
                    body = json.loads(msg.data)
                    body["subject"] = msg.subject
                    body["seq"] = msg.metadata.sequence.stream
                    body["headers"] = dict(msg.headers or {})
                    out.append(body)
        finally:
            await sub.unsubscribe()
        return out
