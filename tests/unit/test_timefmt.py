"""User-facing times are ISO-8601, including those inside execution-log data."""

from __future__ import annotations

from rich.console import Console

from tenantflow.api.schemas import EventOut
from tenantflow.cli import render
from tenantflow.domain.records import EventRecord
from tenantflow.domain.timefmt import event_times_iso, iso

TS = 1_767_312_245.5  # 2026-01-02T00:04:05.5Z


def _event(kind: str, data: dict[str, object]) -> EventRecord:
    return EventRecord(1, "bank-a", "run-1", TS, kind, "verify", 1, data)


def test_event_times_become_iso_and_the_rest_is_untouched() -> None:
    data = {"until": TS, "retry_at": TS + 10, "expires_at": int(TS), "error": "x", "n": 3}
    out = event_times_iso(data)
    assert out == {
        "until": "2026-01-02T00:04:05.500000Z",
        "retry_at": "2026-01-02T00:04:15.500000Z",
        "expires_at": "2026-01-02T00:04:05.000000Z",
        "error": "x",
        "n": 3,
    }
    assert event_times_iso({"until": "2026-01-02T00:04:05Z"}) == {"until": "2026-01-02T00:04:05Z"}
    assert iso(None) is None


def test_the_cli_and_the_api_show_retry_at_and_until_as_iso() -> None:
    retry = _event("step.retrying", {"error": "boom", "retry_at": TS + 10})
    deferred = _event("step.deferred", {"reason": "rate limit", "until": TS + 60})
    assert render.event_dict(retry)["data"]["retry_at"] == "2026-01-02T00:04:15.500000Z"
    assert EventOut.of(deferred).data["until"] == "2026-01-02T00:05:05.500000Z"
    console = Console(width=200, record=True)
    console.print(render.events_table([retry, deferred]))
    text = console.export_text()
    assert "2026-01-02T00:04:15.500000Z" in text and "2026-01-02T00:05:05.500000Z" in text
    assert str(TS + 10) not in text
