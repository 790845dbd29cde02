"""The hybrid placement's side of NATS JetStream: subjects, streams, the connection.

Per region ``r`` and tenant ``t`` (each one subject token, see
:func:`~tenantflow.domain.outbox.subject_token`), for a side-effect step ``kind``:

* ``tf.<r>.<t>.fx.<kind>`` — a side effect to run (stream ``TF_FX_<R>``, work queue: a message
  is gone once an agent acknowledges it). The relay publishes it with the outbox id as
  ``Nats-Msg-Id``, so a republished row is dropped by the server inside the duplicate window.
* ``tf.<r>.<t>.fxo.<kind>`` — an agent's outcome (``fx.delivered``, ``fx.failed``,
  ``fx.dead_lettered``; stream ``TF_FXO_<R>``, work queue), consumed by the engine's recorder,
  which writes it into the run's timeline.
* ``tf.<r>.<t>.fxdlq.<kind>`` — side effects that failed on every allowed delivery (stream
  ``TF_FXDLQ_<R>``, kept for inspection and replay).

The tenant of a message is its subject's token, put there by the relay from the outbox row's
tenant (which the store wrote from the run's): never a field of the body.

Needs nats-server >= 2.10 (the project pins 2.15; see
:mod:`tenantflow.adapters.nats.server`) and nats-py (the ``mesh`` extra).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tenantflow.domain.outbox import subject_token
from tenantflow.errors import ConfigurationError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

__all__ = ["DUPLICATE_WINDOW_S", "Fabric", "connect", "tenant_of"]

DUPLICATE_WINDOW_S = 600.0
"""How long the server remembers a message id: a relay that crashed between the broker's
acknowledgement and marking its rows republishes them within this window without a duplicate."""

_NAME = re.compile(r"[^A-Za-z0-9_-]")


def _nats() -> Any:
    try:
        import nats
    except ImportError:  # pragma: no cover - the mesh extra is part of dev
        raise ConfigurationError(
            "the hybrid placement needs nats-py: pip install 'tenantflow[mesh]'", field="nats"
        ) from None
    return nats


async def connect(url: str, *, name: str = "tenantflow-hybrid") -> Client:
    """A client that reconnects forever, quickly (nats-py's default waits 2 s between tries)."""
    nats = _nats()
    client: Client = await nats.connect(
        url,
        name=name,
        reconnect_time_wait=0.25,
        max_reconnect_attempts=-1,
        connect_timeout=2,
        allow_reconnect=True,
    )
    return client


def tenant_of(subject: str) -> tuple[str, str]:
    """The tenant and kind of a ``tf.<r>.<t>.<fx|fxo|fxdlq>.<kind>`` subject."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] != "tf":
        raise ValueError(f"not a side-effect subject: {subject!r}")
    return parts[2].replace("~", "."), parts[4]


@dataclass(frozen=True)
class Fabric:
    """The subjects and streams of one region."""

    region: str = "default"

    @property
    def _r(self) -> str:
        return subject_token(self.region)

    @property
    def _stream_suffix(self) -> str:
        return _NAME.sub("_", self.region).upper()

    @property
    def work_stream(self) -> str:
        return f"TF_FX_{self._stream_suffix}"

    @property
    def outcome_stream(self) -> str:
        return f"TF_FXO_{self._stream_suffix}"

    @property
    def dead_stream(self) -> str:
        return f"TF_FXDLQ_{self._stream_suffix}"

    @property
    def done_bucket(self) -> str:
        return f"TF_FXDONE_{self._stream_suffix}"

    def work(self, tenant: str, kind: str) -> str:
        return f"tf.{self._r}.{subject_token(tenant)}.fx.{kind}"

    def outcome(self, tenant: str, kind: str) -> str:
        return f"tf.{self._r}.{subject_token(tenant)}.fxo.{kind}"

    def dead(self, tenant: str, kind: str) -> str:
        return f"tf.{self._r}.{subject_token(tenant)}.fxdlq.{kind}"

    def tenant_work(self, tenant: str) -> str:
        """Every side effect of one tenant: an agent's per-tenant consumer filter."""
        return f"tf.{self._r}.{subject_token(tenant)}.fx.>"

    @property
    def all_work(self) -> str:
        return f"tf.{self._r}.*.fx.>"

    @property
    def all_outcomes(self) -> str:
        return f"tf.{self._r}.*.fxo.>"

    def consumer_for(self, tenant: str) -> str:
        """The durable consumer every agent shares for ``tenant`` (a valid consumer name)."""
        return "fx_" + _NAME.sub(lambda m: f"_{ord(m.group()):02x}", tenant)

    async def ensure(self, js: JetStreamContext) -> None:
        """Create the region's streams and bucket (idempotent)."""
        from nats.js.api import RetentionPolicy, StorageType

        specs = [
            (self.work_stream, f"tf.{self._r}.*.fx.>", RetentionPolicy.WORK_QUEUE),
            (self.outcome_stream, f"tf.{self._r}.*.fxo.>", RetentionPolicy.WORK_QUEUE),
            (self.dead_stream, f"tf.{self._r}.*.fxdlq.>", RetentionPolicy.LIMITS),
        ]
        for name, subject, retention in specs:
            await js.add_stream(
                name=name,
                subjects=[subject],
                retention=retention,
                storage=StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW_S,
            )
        await js.create_key_value(bucket=self.done_bucket, history=1)
