"""Sign-in throttling: repeated failed sign-ins are refused for a while, per key and per client.

Each failed sign-in is counted twice: against the key it named (the key id of a
``tfk_<key id>_<secret>`` string; a malformed string counts against its digest) and against the
client's address. Once either has :attr:`SignInThrottle.per_key` (or ``per_address``) failures
within the last ``window_s`` seconds, every sign-in from that address, or naming that key, is
refused with :class:`~tenantflow.errors.RateLimitedError` (429, ``Retry-After``) before the
key is even checked, until the oldest of those failures leaves the window. A successful sign-in
clears its key's failures (not its address's: one good key does not buy more guesses at others).

The counters live in the process's memory, bounded (the oldest buckets are dropped past
``max_buckets``), on the clock the sessions use (tests move it).
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Callable

from tenantflow.domain.keys import parse_key
from tenantflow.errors import ConfigurationError, RateLimitedError

__all__ = ["SignInThrottle"]


class SignInThrottle:
    """Failed sign-ins per key and per client address, in a sliding window.

    Args:
        now: the clock (seconds).
        per_key: failures naming one key that lock it.
        per_address: failures from one address that lock it.
        window_s: how long a failure counts.
        max_buckets: the most keys and addresses tracked.
    """

    def __init__(
        self,
        *,
        now: Callable[[], float],
        per_key: int = 5,
        per_address: int = 20,
        window_s: float = 300.0,
        max_buckets: int = 50_000,
    ) -> None:
        if per_key < 1 or per_address < 1:
            raise ConfigurationError("sign-in limits must be at least 1", field="per_key")
        if not math.isfinite(window_s) or window_s <= 0:
            raise ConfigurationError("the sign-in window must be positive", field="window_s")
        self.now = now
        self.per_key = per_key
        self.per_address = per_address
        self.window_s = window_s
        self._max = max_buckets
        self._failures: dict[str, deque[float]] = {}

    @staticmethod
    def key_bucket(presented: str) -> str:
        """The bucket a presented key string counts against (never the string itself)."""
        key_id = parse_key(presented)
        if key_id is not None:
            return f"key:{key_id}"
        return "key?" + hashlib.sha256(presented.encode()).hexdigest()[:32]

    def _live(self, bucket: str, now: float) -> deque[float]:
        found = self._failures.get(bucket)
        if found is None:
            return deque()
        while found and found[0] <= now - self.window_s:
            found.popleft()
        if not found:
            del self._failures[bucket]
        return found

    def check(self, presented: str, address: str) -> None:
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
            failures = self._live(bucket, now)
            if len(failures) >= limit:
                waits.append(failures[len(failures) - limit] + self.window_s - now)
        if waits:
            wait = max(1.0, math.ceil(max(waits)))
            raise RateLimitedError(
                "too many failed sign-ins; try again later",
                resource="sign-in",
                retry_after_s=wait,
            )

    def failed(self, presented: str, address: str) -> None:
        now = self.now()
        for bucket in (self.key_bucket(presented), f"addr:{address}"):
            found = self._failures.pop(bucket, None) or deque(maxlen=1000)
            found.append(now)
            self._failures[bucket] = found  # re-inserted last: the dict stays oldest-first
        while len(self._failures) > self._max:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, presented: str) -> None:
        self._failures.pop(self.key_bucket(presented), None)
