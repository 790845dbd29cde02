"""The rows a SQL driver holds within a transaction (adapters/sql.py ``Held``): what it sends."""

from __future__ import annotations

from tenantflow.adapters.sql import Gen, Held, Sql, accumulate, append

EVENTS = "INSERT INTO events (run_id, kind) VALUES (?, ?)"
USAGE = (
    "INSERT INTO usage (tenant_id, metric, value) VALUES (?, ?, ?)"
    " ON CONFLICT (tenant_id, metric) DO UPDATE SET value = usage.value + excluded.value"
)


def statement(gen: Gen[None]) -> Sql:
    """The one statement an ``append`` or ``accumulate`` yields."""
    return next(gen)


def test_appended_rows_go_in_order_as_multi_row_inserts_and_are_never_summed() -> None:
    held = Held()
    held.hold(statement(append(EVENTS, [("r1", "a"), ("r1", "a")])))
    held.hold(statement(append(EVENTS, [("r2", "b")])))
    assert list(held.take()) == [
        ("INSERT INTO events (run_id, kind) VALUES (?, ?), (?, ?)", ["r1", "a", "r1", "a"]),
        (EVENTS, ["r2", "b"]),
    ]


def test_added_rows_are_summed_per_key_only() -> None:
    held = Held()
    held.hold(statement(accumulate(USAGE, [("t1", "steps", 1), ("t2", "steps", 2)])))
    held.hold(statement(accumulate(USAGE, [("t1", "steps", 4), ("t1", "tokens", 8)])))
    sent = list(held.take())
    assert [text.count("(?, ?, ?)") for text, _ in sent] == [2, 1]
    assert [v for _, flat in sent for v in flat] == [
        "t1",
        "steps",
        5,
        "t2",
        "steps",
        2,
        "t1",
        "tokens",
        8,
    ]


def test_many_rows_go_in_statements_of_powers_of_two_in_order() -> None:
    held = Held()
    rows = [(f"r{i}", "k") for i in range(300)]
    held.hold(statement(append(EVENTS, rows)))
    sent = list(held.take())
    assert [text.count("(?, ?)") for text, _ in sent] == [256, 32, 8, 4]
    assert [v for _, flat in sent for v in flat[::2]] == [r for r, _ in rows]


def test_a_statement_naming_a_held_table_is_told_and_take_empties() -> None:
    held = Held()
    assert not held and not held.named_by("DELETE FROM events WHERE run_id = ?")
    held.hold(statement(append(EVENTS, [("r1", "a")])))
    assert held
    assert held.named_by("DELETE FROM events WHERE run_id = ?")
    assert not held.named_by("UPDATE steps SET status = ? WHERE run_id = ?")
    [(text, flat)] = list(held.take())
    assert (text, flat) == (EVENTS, ["r1", "a"])
    assert not held and not held.named_by("DELETE FROM events WHERE run_id = ?")
    assert list(held.take()) == []
