"""The money cap across cells: allowances leased by the plane, spent by the cells' wallets.

Random schedules of heartbeats, lost answers, spending and a plane that goes away: the money
spent across cells never exceeds the cap (overspend 0), and the plane never counts less than
the cells may be using."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from tenantflow.placement.federated.money import MoneyAllocator, MoneyCap, MoneyLease, Wallet

CAP = 1_000_000  # micros


@dataclass
class SimCell:
    name: str
    wallet: Wallet
    backlog: int = 0
    inflight: list[tuple[dict[str, object], dict[str, MoneyLease]]] = field(default_factory=list)
    refused: int = 0


def _check(cells: list[SimCell], plane: MoneyAllocator) -> None:
    spent = sum(c.wallet.spent_micros for c in cells)
    in_force = sum(c.wallet.allowance_micros for c in cells)
    assert spent <= CAP, f"overspend {spent - CAP}"
    assert in_force <= CAP
    assert plane.held_total("llm") <= CAP
    assert in_force <= plane.held_total("llm")  # the plane never counts less than in force


@pytest.mark.parametrize("seed", range(40))
def test_no_order_of_heartbeats_lost_answers_or_plane_outage_overspends(seed: int) -> None:
    rng = random.Random(seed)
    plane = MoneyAllocator()
    plane.set_cap(MoneyCap("llm", CAP))
    plane.new_period("2026-12-06")
    cells = [SimCell(f"c{i}", Wallet("llm")) for i in range(rng.randint(2, 7))]
    plane_up = True
    for _ in range(600):
        cell = rng.choice(cells)
        action = rng.random()
        if action < 0.45:  # tenants of the cell spend (refused past the allowance)
            if not cell.wallet.try_spend(rng.randint(1, 40_000)):
                cell.refused += 1
        elif action < 0.7 and plane_up:  # a heartbeat: the plane answers (later)
            cell.backlog = rng.randint(0, 50)
            report = cell.wallet.report()
            grant = plane.grant(cell.name, cell.backlog, {"llm": report})
            cell.inflight.append((report, grant))
        elif action < 0.9 and cell.inflight:  # an answer arrives, in any order, or is lost
            _, grant = cell.inflight.pop(rng.randrange(len(cell.inflight)))
            if rng.random() < 0.8:
                cell.wallet.take(grant["llm"])
        elif action < 0.95:
            plane_up = not plane_up  # SIGKILL / restart: cells keep their allowances
        _check(cells, plane)
    # Demand moves allowance: with the plane up and every answer delivered, a cell whose
    # backlog is far larger ends with more room than a quiet one.
    for cell in cells:
        cell.inflight.clear()
    busy, quiet = cells[0], cells[1]
    for _ in range(6):
        for cell in cells:
            backlog = 200 if cell is busy else 0
            cell.wallet.take(plane.grant(cell.name, backlog, {"llm": cell.wallet.report()})["llm"])
            _check(cells, plane)
    room = {c.name: c.wallet.allowance_micros - c.wallet.spent_micros for c in cells}
    if sum(room.values()) > len(cells) * 1000:  # money left to share
        assert room[busy.name] > room[quiet.name]


def test_spending_stops_at_the_cap_and_a_new_period_starts_anew() -> None:
    plane = MoneyAllocator()
    plane.set_cap(MoneyCap("llm", CAP))
    plane.new_period("d1")
    a, b = Wallet("llm"), Wallet("llm")
    assert not a.try_spend(1)  # nothing before the first lease
    late = plane.grant("a", 0, {"llm": a.report()})["llm"]
    for _ in range(30):  # both spend as much as they may, renewing often
        for name, wallet in (("a", a), ("b", b)):
            wallet.take(plane.grant(name, 10, {"llm": wallet.report()})["llm"])
            while wallet.try_spend(7_919):
                pass
    assert a.spent_micros + b.spent_micros <= CAP
    assert not a.take(late)  # an answer older than the lease in force changes nothing
    assert a.spent_micros + b.spent_micros > CAP - 2 * 7_919 * 2  # and the cap was usable
    plane.new_period("d2")
    a.take(plane.grant("a", 0, {"llm": a.report()})["llm"])
    assert a.period == "d2" and a.spent_micros == 0
    # b has not heard of d2: its old allowance still counts, so a's share leaves room for it.
    assert a.allowance_micros + b.allowance_micros <= CAP
    assert plane.held_total("llm") <= CAP


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError):
        MoneyCap("llm", -1)
    with pytest.raises(ValueError):
        Wallet("llm").try_spend(-5)
    with pytest.raises(ValueError):
        Wallet("llm").take(MoneyLease("other", "d1", 10, 1))
