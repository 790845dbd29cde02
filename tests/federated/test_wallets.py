"""A cell's wallets (placement/federated/wallets.py): durable across a restart, a late lease
ignored, a refusal takes nothing, a removed cap's wallet dropped."""

from __future__ import annotations

import json
from pathlib import Path

from tenantflow.placement.federated.money import MoneyLease
from tenantflow.placement.federated.wallets import Wallets


def lease(allowance: int, seq: int, period: str = "2026-12-06") -> dict[str, str | int]:
    return MoneyLease("daily", period, allowance, seq).to_dict()


def test_a_restarted_cell_remembers_what_it_spent(tmp_path: Path) -> None:
    path = tmp_path / "wallets.json"
    wallets = Wallets(path)
    assert wallets.reserve(10**9)  # no cap heard of: nothing guarded
    wallets.take([lease(30, 1)])
    assert wallets.reserve(20) and not wallets.reserve(20)  # 40 > 30: refused, nothing taken
    wallets.settle(20, 15)  # 5 given back
    assert wallets.reports()["daily"]["spent_micros"] == 15
    again = Wallets(path)  # the process restarted (or was SIGKILLed after the write)
    assert again.reports() == wallets.reports()
    assert again.reserve(15) and not again.reserve(1)
    assert json.loads(path.read_text())["daily"]["spent_micros"] == 30


def test_late_leases_are_ignored_and_a_new_period_starts_anew(tmp_path: Path) -> None:
    wallets = Wallets(tmp_path / "w.json")
    wallets.take([lease(50, 3)])
    assert wallets.reserve(40)
    wallets.take([lease(100, 2)])  # older than the one in force: a late answer
    assert wallets.reports()["daily"]["allowance_micros"] == 50
    assert not wallets.reserve(20)
    wallets.take([lease(25, 4, period="2026-12-07")])
    assert wallets.reports()["daily"]["spent_micros"] == 0 and wallets.reserve(25)
    wallets.take([])  # the cap was removed at the plane
    assert wallets.reports() == {} and wallets.reserve(10**9)
    assert Wallets(tmp_path / "w.json").reports() == {}
