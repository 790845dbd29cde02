"""Sign-in throttling: repeated failed sign-ins are refused for a while, per key and per client.

Each failed sign-in is counted twice: against the key it named (the key id of a
``tfk_<key id>_<secret>`` string; a malformed string counts against its digest) and against the
client's address. Once either has :attr:`SignInThrottle.per_key` (or ``per_address``) failures
within the last ``window_s`` seconds, every sign-in from that address, or naming that key, is
refused with :class:`~tenantflow.errors.RateLimitedError` (429, ``Retry-After``) before the
key is even checked, until the oldest of those failures leaves the window. A successful sign-in
clears its key's failures (not its address's: one good key does not buy more guesses at others).

Each failure is one row with its own expiry (``window_s`` after it) in
:class:`~tenantflow.dashboard.records.DashboardRecords` — by default the database the API uses,
so every ``tenantflow serve`` process on it counts the same failures: spreading guesses over
several processes behind a load balancer buys nothing. Rows are keyed by a digest of the
bucket and the time, on the clock the sessions use (tests move it).
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Callable

from tenantflow.dashboard.records import DashboardRecords, ProcessRecords
from tenantflow.domain.keys import parse_key
from tenantflow.errors import ConfigurationError, RateLimitedError

__all__ = ["SignInThrottle"]

_NAMESPACE = "sign-in"


class SignInThrottle:
    """Failed sign-ins per key and per client address, in a sliding window.

    Args:
        now: the clock (seconds).
        records: where failures are counted (default: this process's memory).
        per_key: failures naming one key that lock it.
        per_address: failures from one address that lock it.
        window_s: how long a failure counts.
    """

    def __init__(
        self,
        *,
        now: Callable[[], float],
        records: DashboardRecords | None = None,
        per_key: int = 5,
        per_address: int = 20,
        window_s: float = 300.0,
    ) -> None:
        if per_key < 1 or per_address < 1:
            raise ConfigurationError("sign-in limits must be at least 1", field="per_key")
        if not math.isfinite(window_s) or window_s <= 0:
            raise ConfigurationError("the sign-in window must be positive", field="window_s")
        self.now = now
        self.records: DashboardRecords = records if records is not None else ProcessRecords()
        self.per_key = per_key
        self.per_address = per_address
        self.window_s = window_s

    @staticmethod
    def key_bucket(presented: str) -> str:
        """The bucket a presented key string counts against (never the string itself)."""
        key_id = parse_key(presented)
        if key_id is not None:
            return f"key:{key_id}"
        return "key?" + hashlib.sha256(presented.encode()).hexdigest()[:32]

    @staticmethod
    def _prefix(bucket: str) -> str:
        return hashlib.sha256(bucket.encode()).hexdigest()[:32] + "/"

    async def _live(self, bucket: str, now: float, limit: int) -> list[float]:
        """The times of the bucket's failures still in the window, oldest first (at most
        ``limit``: enough to know whether it is locked)."""
        rows = await self.records.scan(_NAMESPACE, self._prefix(bucket), now=now, limit=limit)
        return sorted(float(v["at"]) for _, v in rows if float(v["at"]) > now - self.window_s)

    async def check(self, presented: str, address: str) -> None:
        """Refuse the attempt if its key or its address is locked.

        Raises:
            RateLimitedError: too many failed sign-ins; ``retry_after_s`` says for how long.
        """
        now = self.now()
        waits = []
        for bucket, limit in (
            (self.key_bucket(presented), self.per_key),
            (f"addr:{address}", self.per_address),
        ):
            failures = await self._live(bucket, now, 1000)
            if len(failures) >= limit:
                waits.append(failures[len(failures) - limit] + self.window_s - now)
        if waits:
            wait = max(1.0, math.ceil(max(waits)))
            raise RateLimitedError(
                "too many failed sign-ins; try again later",
                resource="sign-in",
                retry_after_s=wait,
            )

    async def failed(self, presented: str, address: str) -> None:
        now = self.now()
        for bucket in (self.key_bucket(presented), f"addr:{address}"):
            key = f"{self._prefix(bucket)}{now:020.6f}/{secrets.token_hex(4)}"
            await self.records.put(
                _NAMESPACE, key, {"at": now}, now=now, expires_at=now + self.window_s
            )

    async def succeeded(self, presented: str) -> None:
        now = self.now()
        prefix = self._prefix(self.key_bucket(presented))
        while rows := await self.records.scan(_NAMESPACE, prefix, now=now, limit=100):
            for key, _ in rows:
                await self.records.delete(_NAMESPACE, key, now=now)
