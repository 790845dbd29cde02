"""The mesh's fabric on NATS JetStream: connections, per-region streams and buckets, and the
server's users, whose permissions make residency and tenant isolation fail closed at the server.

* :func:`connect` opens a nats-py connection with a short reconnect wait (nats-py's default of
  2 s makes a client take ~2 s to come back after a server restart) and unlimited reconnect
  attempts; permission errors the server reports are kept on the returned :class:`Fabric`.
* :func:`provision` creates (idempotently) one region's streams and KV buckets: ``WORK_<r>``
  (WorkQueue retention, discard new), ``EVT_<r>`` (Limits retention: the execution log),
  ``READY_<r>`` (one message per subject), and the buckets ``DONE_<r>``, ``LEDGER_<r>``,
  ``POLICY_<r>`` (see :mod:`.subjects`).
* :func:`auth_config` writes the server's ``authorization`` block: an admin user, one user per
  region (its agents) allowed only its region's subjects, JetStream API subjects and inbox, and
  optionally one user per tenant allowed only that tenant's subjects and consumers.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenantflow.adapters.nats.subjects import KINDS, Region, token
from tenantflow.errors import ConfigurationError

__all__ = [
    "Credentials",
    "Fabric",
    "auth_config",
    "connect",
    "load_credentials",
    "make_credentials",
    "provision",
    "save_credentials",
]

RECONNECT_WAIT_S = 0.1
"""Between reconnect attempts (nats-py's default is 2 s)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """One NATS user: ``region`` and ``tenant`` say what it may touch (None: everything)."""

    user: str
    password: str = field(repr=False)
    region: str | None = None
    tenant: str | None = None

    @property
    def inbox(self) -> str:
        """The reply-subject prefix this user may subscribe to (its own, not everyone's)."""
        return f"_INBOX_{token(self.user)}"

    def as_json(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "password": self.password,
            "region": self.region,
            "tenant": self.tenant,
        }


def make_credentials(
    regions: Iterable[str], tenants: Mapping[str, str] | None = None
) -> dict[str, Credentials]:
    """Fresh random passwords: ``admin``, ``agent-<region>`` per region and
    ``tenant-<region>-<tenant>`` per tenant (``tenants`` maps tenant → region)."""
    creds = {"admin": Credentials("admin", secrets.token_urlsafe(18))}
    for region in regions:
        Region(region)  # validates the name
        creds[f"agent-{region}"] = Credentials(
            f"agent-{region}", secrets.token_urlsafe(18), region=region
        )
    for tenant, region in (tenants or {}).items():
        name = f"tenant-{region}-{token(tenant)}"
        creds[name] = Credentials(name, secrets.token_urlsafe(18), region=region, tenant=tenant)
    return creds


def save_credentials(creds: Credentials, path: Path) -> Path:
    """Write one user's credentials to ``path`` (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(json.dumps(creds.as_json()))
    return path


def load_credentials(path: str | Path) -> Credentials:
    """Credentials written by :func:`save_credentials`.

    Raises:
        ConfigurationError: the file is missing or malformed.
    """
    try:
        raw = json.loads(Path(path).read_text())
        return Credentials(
            str(raw["user"]),
            str(raw["password"]),
            region=raw.get("region"),
            tenant=raw.get("tenant"),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(
            f"cannot read NATS credentials from {str(path)!r}: {exc}", field="nats_creds"
        ) from None


def _js_api(region: Region) -> list[str]:
    """The JetStream API subjects an agent of ``region`` needs, for its region's streams only."""
    subjects = ["$JS.API.INFO"]
    for stream in region.streams:
        subjects += [
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.INFO.{stream}.>",
            f"$JS.API.CONSUMER.DELETE.{stream}.>",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
            f"$JS.ACK.{stream}.>",
        ]
    subjects += [f"$KV.{bucket}.>" for bucket in region.buckets]
    subjects.append("$JS.FC.>")  # flow-control replies of the policy watch's ordered consumer
    return subjects


def _tenant_api(region: Region, tenant: str) -> list[str]:
    """What a tenant's own user may call: its own consumers of its region's work stream."""
    subjects = ["$JS.API.INFO", f"$JS.API.STREAM.INFO.{region.work_stream}"]
    for kind in KINDS:
        consumer = region.consumer(tenant, kind)
        subjects += [
            f"$JS.API.CONSUMER.INFO.{region.work_stream}.{consumer}",
            f"$JS.API.CONSUMER.MSG.NEXT.{region.work_stream}.{consumer}",
            f"$JS.ACK.{region.work_stream}.{consumer}.>",
        ]
    return subjects


def _quoted(subjects: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(s) for s in subjects) + "]"


def auth_config(users: Iterable[Credentials]) -> str:
    """The server's ``authorization`` block for ``users`` (see the module doc)."""
    entries = []
    for c in users:
        if c.region is None:
            user, password = json.dumps(c.user), json.dumps(c.password)
            entries.append(f"    {{user: {user}, password: {password}}}")
            continue
        region = Region(c.region)
        if c.tenant is None:
            pub = [region.root(), *_js_api(region)]
            sub = [region.root(), f"{c.inbox}.>"]
        else:
            pub = [region.tenant_root(c.tenant), *_tenant_api(region, c.tenant)]
            sub = [region.tenant_root(c.tenant), f"{c.inbox}.>"]
        entries.append(
            f"    {{user: {json.dumps(c.user)}, password: {json.dumps(c.password)},"
            f" permissions: {{publish: {{allow: {_quoted(pub)}}},"
            f" subscribe: {{allow: {_quoted(sub)}}}, allow_responses: true}}}}"
        )
    return "authorization {\n  users = [\n" + "\n".join(entries) + "\n  ]\n}\n"


class Fabric:
    """One connection to the fabric (nats-py client, JetStream context) and the permission
    errors the server reported on it."""

    def __init__(self, nc: Any, creds: Credentials | None, api_timeout_s: float = 5.0) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=api_timeout_s)
        self.creds = creds
        self.errors: list[str] = []
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def close(self) -> None:
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # already lost: closing is all that is left
                await self.nc.close()

    async def kv(self, bucket: str) -> Any:
        return await self.js.key_value(bucket)


async def connect(
    url: str,
    creds: Credentials | None = None,
    *,
    name: str = "tenantflow",
    api_timeout_s: float = 5.0,
) -> Fabric:
    """Connect to ``url`` as ``creds`` (None: no authentication), reconnecting for ever with a
    short wait; a JetStream API call not answered in ``api_timeout_s`` fails (a call the
    server's permissions refuse is never answered).

    Raises:
        ConfigurationError: the mesh extra (nats-py) is not installed.
        OSError / nats errors: the server is unreachable or refused the user.
    """
    try:
        import nats
    except ImportError as exc:  # pragma: no cover - the mesh extra is in dev
        raise ConfigurationError(
            f"the mesh needs nats-py: pip install 'tenantflow[mesh]' ({exc})"
        ) from None
    holder: list[Fabric] = []

    async def on_error(exc: Exception) -> None:
        if holder:
            holder[0].errors.append(str(exc))

    async def on_reconnect() -> None:
        if holder:
            holder[0].reconnects += 1

    options: dict[str, Any] = {
        "name": name,
        "reconnect_time_wait": RECONNECT_WAIT_S,
        "max_reconnect_attempts": -1,
        "connect_timeout": 2,
        "allow_reconnect": True,
        "error_cb": on_error,
        "reconnected_cb": on_reconnect,
        "ping_interval": 5,
        "max_outstanding_pings": 3,
    }
    if creds is not None:
        options.update(user=creds.user, password=creds.password, inbox_prefix=creds.inbox)
    nc = await nats.connect(url, **options)
    fabric = Fabric(nc, creds, api_timeout_s)
    holder.append(fabric)
    return fabric


async def provision(fabric: Fabric, region: str, *, max_work_msgs: int = 1_000_000) -> Region:
    """Create ``region``'s streams and buckets if missing (idempotent); its names."""
    from nats.js import api

    r = Region(region)
    js = fabric.js
    await _ensure_stream(
        js,
        api.StreamConfig(
            name=r.work_stream,
            subjects=[f"tf.{region}.*.run.*.cmd.*"],
            retention=api.RetentionPolicy.WORK_QUEUE,
            discard=api.DiscardPolicy.NEW,
            max_msgs=max_work_msgs,
            storage=api.StorageType.FILE,
            duplicate_window=120.0,
        ),
    )
    await _ensure_stream(
        js,
        api.StreamConfig(
            name=r.evt_stream,
            subjects=[f"tf.{region}.*.run.*.evt.>", f"tf.{region}.*.run.*.state"],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            duplicate_window=120.0,
            allow_direct=True,
        ),
    )
    await _ensure_stream(
        js,
        api.StreamConfig(
            name=r.ready_stream,
            subjects=[f"tf.{region}._ready.*.*"],
            retention=api.RetentionPolicy.LIMITS,
            max_msgs_per_subject=1,
            storage=api.StorageType.FILE,
        ),
    )
    for bucket in r.buckets:
        try:
            await js.key_value(bucket)
        except Exception:
            await js.create_key_value(bucket=bucket, history=1, storage=api.StorageType.FILE)
    return r


async def _ensure_stream(js: Any, config: Any) -> None:
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)


async def wait_connected(fabric: Fabric, timeout_s: float = 30.0) -> None:
    """Wait until the client is connected again (after a server restart)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not fabric.connected:
        if loop.time() > deadline:
            raise TimeoutError("the NATS server did not come back")
        await asyncio.sleep(0.05)
