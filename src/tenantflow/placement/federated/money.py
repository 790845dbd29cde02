"""A cross-tenant money cap across cells: allowances the plane leases, a wallet each cell spends.

A money cap (``$500`` a day across every tenant of the deployment, say) is not a rate: what is
spent is gone. So a cell's lease is an **allowance**: the most its tenants may have spent, in
total, in the cap's period (``allowance_micros``). The cell's wallet refuses a spend that would
take ``spent`` past the allowance it holds — locally, without calling the plane.

The plane keeps one invariant, in any order of heartbeats and with answers lost:

    the sum over cells of the allowance each may be using never exceeds the cap,

and since a cell never spends past its allowance, **the money spent across cells never exceeds
the cap**. Two rules make it hold:

* a cell's heartbeat reports what it has spent and the allowance in force *at that moment*; the
  plane counts a cell as holding ``max(allowance granted last, allowance reported in force)``
  until a later heartbeat reports the new one in force — so an answer still in flight (or lost)
  with a smaller allowance never lets the plane hand the difference to another cell early;
* a new allowance is at least what the cell has spent (spent money is not taken back) and at
  most the cap minus what every other cell holds. What is left unallocated is shared in
  proportion to demand (``1 + backlog``), so a busy cell grows as quiet ones shrink.

With the plane down a cell keeps the allowance it holds and never gets more: it can spend at
most that. There is no decay to compute — an allowance is a ceiling on a total, and the plane
counted it — so the sum stays within the cap however long the plane is away. A new period
(``period`` changes) starts every cell at ``spent = 0``.

Pure: no I/O, no clock reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["MoneyAllocator", "MoneyCap", "MoneyLease", "Wallet"]


@dataclass(frozen=True, slots=True)
class MoneyCap:
    """``cap_micros`` (millionths of the currency unit) across every tenant, per period."""

    name: str
    cap_micros: int

    def __post_init__(self) -> None:
        if self.cap_micros < 0:
            raise ValueError("a money cap cannot be negative")


@dataclass(frozen=True, slots=True)
class MoneyLease:
    """A cell's allowance under one cap for one period: it may have spent this much, in all."""

    cap: str
    period: str
    allowance_micros: int
    seq: int  # grows with every grant: a cell never takes an older lease over a newer one

    def to_dict(self) -> dict[str, str | int]:
        return {
            "cap": self.cap,
            "period": self.period,
            "allowance_micros": self.allowance_micros,
            "seq": self.seq,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> MoneyLease:
        return cls(
            str(data["cap"]),
            str(data["period"]),
            int(data["allowance_micros"]),  # type: ignore[call-overload]
            int(data["seq"]),  # type: ignore[call-overload]
        )


@dataclass
class Wallet:
    """A cell's side of one cap: what it has spent this period and the allowance in force."""

    cap: str
    period: str = ""
    spent_micros: int = 0
    allowance_micros: int = 0  # nothing may be spent before the first lease
    seq: int = 0  # the lease in force

    def try_spend(self, micros: int) -> bool:
        """Spend ``micros`` if the allowance has room; False (nothing spent) if not."""
        if micros < 0:
            raise ValueError("a spend cannot be negative")
        if self.spent_micros + micros > self.allowance_micros:
            return False
        self.spent_micros += micros
        return True

    def report(self) -> dict[str, str | int]:
        """What the heartbeat carries for this cap."""
        return {
            "cap": self.cap,
            "period": self.period,
            "spent_micros": self.spent_micros,
            "allowance_micros": self.allowance_micros,
            "seq": self.seq,
        }

    def take(self, lease: MoneyLease) -> bool:
        """Apply a lease from the plane (a lease of a new period starts the spending anew);
        False, and nothing changed, for a lease older than the one in force (a late answer)."""
        if lease.cap != self.cap:
            raise ValueError(f"a lease of {lease.cap!r} for the wallet of {self.cap!r}")
        if lease.seq <= self.seq:
            return False
        if lease.period != self.period:
            self.period, self.spent_micros = lease.period, 0
        self.allowance_micros, self.seq = lease.allowance_micros, lease.seq
        return True


@dataclass
class _Holder:
    in_force: int = 0  # the allowance the cell last reported in force
    in_force_seq: int = 0
    spent: int = 0
    pending: dict[int, int] = field(default_factory=dict)  # seq -> allowance, not yet reported

    @property
    def held(self) -> int:
        """The most the cell may be using: what it reported in force, or any grant it may
        still take (newer than that one)."""
        return max(self.in_force, self.spent, *self.pending.values())


@dataclass
class MoneyAllocator:
    """The plane's side of the money caps (see the module docstring)."""

    caps: dict[str, MoneyCap] = field(default_factory=dict)
    period: str = ""
    holders: dict[str, dict[str, _Holder]] = field(default_factory=dict)  # cap -> cell -> holder
    demand: dict[str, float] = field(default_factory=dict)  # cell -> 1 + backlog
    seq: int = 0

    def set_cap(self, cap: MoneyCap | None, name: str = "") -> None:
        """Set a cap (lowering one takes effect as cells renew: spent money is not taken back)
        or, with None, remove the cap ``name``."""
        if cap is None:
            self.caps.pop(name, None)
            self.holders.pop(name, None)
            return
        self.caps[cap.name] = cap
        self.holders.setdefault(cap.name, {})

    def new_period(self, period: str) -> None:
        """A new period (a new day): every cell starts at nothing spent once it takes a lease
        of it. Until a cell reports the new period, the allowance it reports in force still
        counts against the cap (it may go on spending it): conservative, never over."""
        self.period = period

    def held_total(self, cap: str) -> int:
        return sum(h.held for h in self.holders.get(cap, {}).values())

    def forget(self, cell: str) -> None:
        """The cell is gone for good: its allowances are free."""
        self.demand.pop(cell, None)
        for holders in self.holders.values():
            holders.pop(cell, None)

    def grant(
        self, cell: str, backlog: int, reports: Mapping[str, Mapping[str, object]]
    ) -> dict[str, MoneyLease]:
        """The allowances for ``cell``, from its heartbeat: ``backlog`` (queued and running
        steps) and ``reports`` (cap name -> :meth:`Wallet.report`)."""
        self.demand[cell] = 1.0 + max(0, backlog)
        total_demand = sum(self.demand.values())
        out: dict[str, MoneyLease] = {}
        for name, cap in self.caps.items():
            holders = self.holders.setdefault(name, {})
            holder = holders.setdefault(cell, _Holder())
            report = reports.get(name)
            if report is not None:
                seq = int(report.get("seq", 0))  # type: ignore[call-overload]
                # The cell takes leases in seq order: those up to ``seq`` will never apply.
                holder.pending = {s: a for s, a in holder.pending.items() if s > seq}
                holder.in_force_seq = seq
                holder.in_force = int(report.get("allowance_micros", 0))  # type: ignore[call-overload]
                # A cell still in an older period may spend what it holds there until it takes
                # this answer: counted (in_force), but its spending is not this period's.
                same = str(report.get("period", "")) == self.period
                holder.spent = int(report.get("spent_micros", 0)) if same else 0  # type: ignore[call-overload]
            others = sum(h.held for c, h in holders.items() if c != cell)
            room = max(0, cap.cap_micros - others)  # the most this cell may hold
            unallocated = max(0, cap.cap_micros - others - holder.spent)
            share = int(unallocated * self.demand[cell] / total_demand)
            allowance = max(holder.spent, min(room, holder.spent + share))
            self.seq += 1
            holder.pending[self.seq] = allowance
            out[name] = MoneyLease(name, self.period, allowance, self.seq)
        return out
