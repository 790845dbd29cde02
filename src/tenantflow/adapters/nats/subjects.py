"""Names on the fabric: subjects, streams, buckets, consumers and keys of the mesh.

One region is one set of streams and buckets; the tenant is a subject token, so a NATS user
whose permissions name one region's (or one tenant's) subjects cannot touch another's:

=========================================  ======================================================
``tf.<r>.<t>.run.<run>.cmd.<kind>``        a work item: run one step (stream ``WORK_<r>``,
                                           WorkQueue retention: deleted when acked)
``tf.<r>.<t>.run.<run>.evt.<fact>``        a fact: step succeeded/failed/…, run finished
                                           (stream ``EVT_<r>``, Limits retention: the log)
``tf.<r>.<t>.run.<run>.state``             the run's state versions, one chain per run, appended
                                           with an expected-last-subject-sequence check
``tf.<r>._ready.<kind>.<t>``               "this tenant has work of this kind" (stream
                                           ``READY_<r>``, one message per subject)
``tf.<r>.<t>.hop.<agent>``                 a request to an agent (core NATS request/reply)
KV ``DONE_<r>``  ``<t>.<run>.<step>``      completion records, created only if absent
KV ``LEDGER_<r>`` ``<t>.<budget>``         budget ledgers, updated by compare-and-set
KV ``POLICY_<r>`` ``<t>``                  tenants' policies (agents watch them)
=========================================  ======================================================

Tenant ids may hold ``.`` and step keys ``[`` ``]``; neither is allowed in a subject token, a
consumer name or a KV key, so every token is escaped by :func:`token`: a character outside
``[A-Za-z0-9_-]`` becomes ``=XX`` (its code in hex), which is reversible (:func:`untoken`) and
valid everywhere.
"""

from __future__ import annotations

import re

from tenantflow.errors import ConfigurationError

__all__ = [
    "KINDS",
    "Region",
    "token",
    "untoken",
]

KINDS: tuple[str, ...] = ("function", "agent", "review")
"""The step kinds a work item can carry (a step's ``kind``)."""

_PLAIN = re.compile(r"[A-Za-z0-9_-]")
_ESCAPED = re.compile(r"=([0-9A-F]{2})")
_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


def token(value: str) -> str:
    """``value`` as one subject token / consumer name part / KV key part (see the module doc)."""
    if not value:
        raise ConfigurationError("an empty name cannot be a subject token", field="token")
    return "".join(c if _PLAIN.match(c) else f"={ord(c):02X}" for c in value)


def untoken(value: str) -> str:
    """The inverse of :func:`token`."""
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), value)


class Region:
    """The names of one region's streams, buckets and subjects."""

    def __init__(self, name: str) -> None:
        if not _REGION.match(name):
            raise ConfigurationError(
                f"invalid mesh region {name!r}: lower-case letters, digits and '-'",
                field="region",
                value=name,
            )
        self.name = name
        self.work_stream = f"WORK_{name}"
        self.evt_stream = f"EVT_{name}"
        self.ready_stream = f"READY_{name}"
        self.done_bucket = f"DONE_{name}"
        self.ledger_bucket = f"LEDGER_{name}"
        self.policy_bucket = f"POLICY_{name}"

    @property
    def buckets(self) -> tuple[str, ...]:
        return (self.done_bucket, self.ledger_bucket, self.policy_bucket)

    @property
    def streams(self) -> tuple[str, ...]:
        """Every stream of the region, the KV buckets' included."""
        return (
            self.work_stream,
            self.evt_stream,
            self.ready_stream,
            *(f"KV_{b}" for b in self.buckets),
        )

    # -- subjects ---------------------------------------------------------------------------

    def root(self) -> str:
        return f"tf.{self.name}.>"

    def tenant_root(self, tenant: str) -> str:
        return f"tf.{self.name}.{token(tenant)}.>"

    def cmd(self, tenant: str, run: str, kind: str) -> str:
        return f"tf.{self.name}.{token(tenant)}.run.{token(run)}.cmd.{kind}"

    def cmd_any(self, tenant: str) -> str:
        """Every work item of ``tenant``, of any run and kind."""
        return f"tf.{self.name}.{token(tenant)}.run.*.cmd.*"

    def cmd_filter(self, tenant: str, kind: str) -> str:
        """Every work item of ``tenant`` of ``kind`` (one consumer's filter)."""
        return f"tf.{self.name}.{token(tenant)}.run.*.cmd.{kind}"

    def evt(self, tenant: str, run: str, fact: str) -> str:
        return f"tf.{self.name}.{token(tenant)}.run.{token(run)}.evt.{fact}"

    def state(self, tenant: str, run: str) -> str:
        return f"tf.{self.name}.{token(tenant)}.run.{token(run)}.state"

    def run_log(self, tenant: str, run: str) -> str:
        """The run's facts and state versions (a filter on the log stream)."""
        return f"tf.{self.name}.{token(tenant)}.run.{token(run)}.>"

    def ready(self, kind: str, tenant: str) -> str:
        return f"tf.{self.name}._ready.{kind}.{token(tenant)}"

    def hop(self, tenant: str, agent: str) -> str:
        return f"tf.{self.name}.{token(tenant)}.hop.{token(agent)}"

    # -- consumers and keys -----------------------------------------------------------------

    def consumer(self, tenant: str, kind: str) -> str:
        """The durable pull consumer of ``tenant``'s work items of ``kind``."""
        return f"w_{token(tenant)}_{kind}"

    @staticmethod
    def done_key(tenant: str, run: str, step: str) -> str:
        return f"{token(tenant)}.{token(run)}.{token(step)}"

    @staticmethod
    def ledger_key(tenant: str, budget: str) -> str:
        return f"{token(tenant)}.{token(budget)}"

    @staticmethod
    def policy_key(tenant: str) -> str:
        return token(tenant)
