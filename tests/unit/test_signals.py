"""Which signal a wait takes: pure functions over the run's execution log."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tenantflow.domain import signals
from tenantflow.domain.records import EventRecord
from tenantflow.errors import SpecError


def ev(i: int, kind: str, **data: Any) -> EventRecord:
    return EventRecord(i, "t", "r", float(i), kind, None, None, data)


def received(i: int, name: str, sid: str, key: str | None = None) -> EventRecord:
    extra = {} if key is None else {"idempotency_key": key}
    return ev(i, signals.RECEIVED, id=sid, name=name, payload=i, **extra)


def consumed(i: int, sid: str, step: str, index: int) -> EventRecord:
    return ev(i, signals.CONSUMED, signal_id=sid, name="x", step=step, index=index)


LOG = [
    received(1, "go", "s1"),
    received(2, "other", "s2"),
    received(3, "go", "s3", key="k"),
    consumed(4, "s1", "a", 2),
]


def test_a_wait_takes_the_oldest_untaken_signal_of_its_name() -> None:
    found = signals.take(LOG, "go", "b", 2)
    assert found is not None and found.data["id"] == "s3"
    assert signals.take(LOG, "missing", "b", 2) is None


def test_a_re_executed_wait_finds_the_signal_it_took() -> None:
    found = signals.take(LOG, "go", "a", 2)
    assert found is not None and found.data["id"] == "s1"


def test_pending_and_duplicates() -> None:
    assert signals.pending(LOG, "go") and signals.pending(iter(LOG), "other")
    assert not signals.pending([*LOG, consumed(5, "s3", "b", 2)], "go")
    dup = signals.duplicate(LOG, "k")
    assert dup is not None and dup.data["id"] == "s3"
    assert signals.duplicate(LOG, None) is None and signals.duplicate(LOG, "nope") is None


@pytest.mark.parametrize("name", ["", "a b", "-lead", "x" * 129, 3])
def test_bad_names_are_refused(name: Any) -> None:
    with pytest.raises(SpecError):
        signals.check_name(name)


def test_payloads_and_keys_are_checked() -> None:
    assert signals.check_payload({"a": [1, 2.5, None]}) == {"a": [1, 2.5, None]}
    assert signals.check_payload("x" * (signals.MAX_PAYLOAD_BYTES - 2)) is not None
    for bad in (math.nan, {1, 2}, object(), "x" * signals.MAX_PAYLOAD_BYTES):
        with pytest.raises(SpecError):
            signals.check_payload(bad)
    assert signals.check_key(None) is None and signals.check_key("k") == "k"
    for key in ("", "k" * 201, 5):
        with pytest.raises(SpecError):
            signals.check_key(key)
