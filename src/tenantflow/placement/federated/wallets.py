"""A cell's wallets of the cross-tenant money caps, durable, and the gateway's spend guard.

The cell holds one :class:`~.money.Wallet` per money cap the plane has told it of. Every change
(a spend, a settlement, a lease taken) is written to ``wallets.json`` in the cell's state
directory before the call it allows goes on (temp file, fsync, rename), so a cell restarted
(or SIGKILLed) comes back with what it spent this period and the allowance it held: it can
never spend the same allowance twice. (Deriving ``spent`` from the store's ledgers instead
would miss the tenants moved away this period and sum every tenant's ledgers on each start;
the file is exact, and one small write per priced call.)

As the gateway's ``spend_guard`` (:class:`tenantflow.engine.gateway.gateway.SpendGuard`) it
takes a priced call's worst case from every wallet or refuses it (nothing taken): the gateway
then raises ``BudgetExceededError`` with scope ``platform``. A cell that has never heard of a
cap has no wallet and guards nothing; a wallet without a lease yet has an allowance of 0.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tenantflow.placement.federated.money import MoneyLease, Wallet

__all__ = ["Wallets"]


class Wallets:
    """The cell's wallets, persisted in ``path`` on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.wallets: dict[str, Wallet] = {}
        self.refused = 0  # calls refused since the process started (not persisted)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = {}
        for name, w in data.items():
            self.wallets[name] = Wallet(
                name,
                str(w["period"]),
                int(w["spent_micros"]),
                int(w["allowance_micros"]),
                int(w["seq"]),
            )

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump({n: w.report() for n, w in self.wallets.items()}, fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    # -- the spend guard ----------------------------------------------------------------------

    def reserve(self, micros: int) -> bool:
        """Take ``micros`` from every wallet, or from none (False) if one has no room."""
        if micros <= 0 or not self.wallets:
            return True
        if any(w.spent_micros + micros > w.allowance_micros for w in self.wallets.values()):
            self.refused += 1
            return False
        for wallet in self.wallets.values():
            wallet.try_spend(micros)
        self._save()
        return True

    def settle(self, reserved: int, actual: int) -> None:
        """Give back what a call did not cost of its reservation."""
        back = reserved - max(0, actual)
        if back <= 0 or not self.wallets:
            return
        for wallet in self.wallets.values():
            wallet.spent_micros = max(0, wallet.spent_micros - back)
        self._save()

    # -- the plane's side ---------------------------------------------------------------------

    def reports(self) -> dict[str, dict[str, str | int]]:
        """What the heartbeat carries: each wallet's :meth:`~.money.Wallet.report`."""
        return {n: w.report() for n, w in sorted(self.wallets.items())}

    def take(self, leases: Iterable[Mapping[str, Any]]) -> None:
        """Apply the plane's answer: a lease per cap in force (a late, older lease is ignored);
        a cap the answer no longer names was removed at the plane and its wallet goes."""
        taken = [MoneyLease.from_dict(x) for x in leases]
        names = {lease.cap for lease in taken}
        changed = False
        for name in [n for n in self.wallets if n not in names]:
            del self.wallets[name]
            changed = True
        for lease in taken:
            wallet = self.wallets.setdefault(lease.cap, Wallet(lease.cap))
            changed = wallet.take(lease) or changed
        if changed:
            self._save()
