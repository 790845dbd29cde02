"""How many deliveries a broker-fed process runs at once: as many as its machine serves
without queueing, found by measuring.

A process given more slots than its CPUs (shared with the store and the broker) can serve does
not finish more steps: it queues them. Every step's transitions then wait behind the others' —
in its event loop, in the store's connections, in the run queue of the operating system — and a
quiet tenant's step waits with them however fairly its slot was picked. With a burster holding
every slot of a two-core machine, the agents completed fewer steps per second with 8 slots each
than with 2 (docs/mesh.md), and quiet tenants' runs took several times as long.

:class:`Governor` is an adaptive concurrency limit, additive increase and multiplicative
decrease, on the event loop's lag (how late a timer fires: the time a ready callback waits to
run, which grows both when this process has more ready work than it can run and when the
machine's CPUs are oversubscribed and it waits to be scheduled):

* a window whose median lag is over ``target_lag_s`` lowers the limit by a quarter (at least
  one, never under ``least``);
* a window whose median lag is under half of it, in which work waited while every slot was
  busy, raises it by one (never over ``most``).

It is work-conserving: the limit only drops while the machine is saturated (where fewer slots
finish as many steps, only sooner each), and it rises again as soon as there is room. The
caller applies :attr:`Governor.limit` as the most one tenant runs at once, and keeps
:attr:`Governor.reserve` slots above it for the other tenants: a tenant arriving while another
holds the limit starts at once, instead of waiting for one of the holder's steps to end.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from tenantflow.errors import ConfigurationError

__all__ = ["Governor"]


@dataclass(slots=True)
class Governor:
    """An adaptive concurrency limit (see the module doc).

    Args:
        most: the limit's ceiling (the process's slots).
        least: its floor (>= 1).
        target_lag_s: the median event-loop lag above which a window counts as saturated.
        window: lag samples per decision.
        spare: slots kept above the limit, while it is under its ceiling, for tenants other
            than the one holding it (:attr:`reserve`; the caller's to apply).
    """

    most: int
    least: int = 1
    target_lag_s: float = 0.004
    window: int = 10
    spare: int = 1
    limit: int = 0
    lowered: int = 0
    raised: int = 0
    _lags: list[float] = field(default_factory=list)
    _wanted: bool = False

    def __post_init__(self) -> None:
        if self.least < 1 or self.most < self.least:
            raise ConfigurationError(
                f"a governor needs 1 <= least <= most (got least={self.least}, most={self.most})",
                field="slots",
            )
        if not self.target_lag_s > 0.0 or self.window < 1:
            raise ConfigurationError(
                "a governor needs target_lag_s > 0 and window >= 1", field="target_lag_s"
            )
        self.limit = self.limit or self.most

    @property
    def reserve(self) -> int:
        """Slots above :attr:`limit` for other tenants (none while the limit is its ceiling)."""
        return 0 if self.limit >= self.most else self.spare

    def observe(self, lag_s: float, *, wanted: bool) -> bool:
        """Record one lag sample, and whether work waited for a slot since the last one; at
        the end of a window, decide. True when the limit changed."""
        self._lags.append(max(0.0, lag_s))
        self._wanted = self._wanted or wanted
        if len(self._lags) < self.window:
            return False
        lag = statistics.median(self._lags)
        wanted, self._lags, self._wanted = self._wanted, [], False
        before = self.limit
        if lag > self.target_lag_s:
            self.limit = max(self.least, min(self.limit - 1, int(self.limit * 0.75)))
        elif lag < self.target_lag_s / 2 and wanted:
            self.limit = min(self.most, self.limit + 1)
        if self.limit < before:
            self.lowered += 1
        elif self.limit > before:
            self.raised += 1
        return self.limit != before
