"""Durable schedules over HTTP: create, list, pause, resume, delete with the tenant's key; bad
input answers 4xx JSON and writes nothing; a delayed start (``start_at`` / ``delay_s``) answers
202 with its one-shot schedule, and the same Idempotency-Key gives the same one (200)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "apps"))
from api_harness import bearer, serving

pytestmark = pytest.mark.timeout(60)

NIGHTLY = {"name": "nightly", "workflow": "tally", "input": 1, "cron": "30 2 * * *"}


async def test_schedules_are_made_paused_resumed_and_deleted_and_bad_input_is_4xx(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as api:
        h = bearer(await api.tenant("tenant-a"))
        r = await api.client.post("/v1/schedules", json=NIGHTLY, headers=h)
        assert r.status_code == 201, r.text
        made = r.json()
        assert (made["name"], made["cron"], made["durable"], made["paused"]) == (
            "nightly",
            "30 2 * * *",
            True,
            False,
        )
        assert made["next_at"] is not None and made["next_at"].endswith(("Z", "+00:00"))
        again = await api.client.post("/v1/schedules", json=NIGHTLY, headers=h)
        assert again.status_code == 409, again.text
        bad_bodies = [
            ({**NIGHTLY, "name": "b1", "cron": "61 * * * *"}, "cron"),
            ({**NIGHTLY, "name": "b2", "workflow": "no-such-workflow"}, "workflow"),
            ({"name": "b3", "workflow": "tally", "every_s": 0}, "every_s"),
            ({"name": "b4", "workflow": "tally", "every_s": -5}, "every_s"),
            ({"name": "b5", "workflow": "tally", "every_s": 0.5}, "every"),
            ({"name": "b6", "workflow": "tally"}, "every"),
            ({**NIGHTLY, "name": "b7", "every_s": 60}, "every"),
            ({**NIGHTLY, "name": "Bad Name"}, "name"),
            ({**NIGHTLY, "name": "b8", "overlap": "pile"}, "overlap"),
            ({**NIGHTLY, "name": "b9", "cron": None, "at": "2030-01-01T00:00:00"}, "at"),
        ]
        for body, word in bad_bodies:
            r = await api.client.post("/v1/schedules", json=body, headers=h)
            assert r.status_code == 422, (body, r.text)
            assert word in r.text, (body, r.text)
        # Non-finite numbers are not JSON: refused before anything is read.
        r = await api.client.post(
            "/v1/schedules",
            content=b'{"name": "b10", "workflow": "tally", "every_s": Infinity}',
            headers=h | {"Content-Type": "application/json"},
        )
        assert 400 <= r.status_code < 500, r.text
        listed = (await api.client.get("/v1/schedules", headers=h)).json()["items"]
        assert [s["name"] for s in listed] == ["nightly"]  # nothing half-written

        r = await api.client.post("/v1/schedules/nightly/pause", headers=h)
        assert r.status_code == 200 and r.json()["paused"] is True and r.json()["next_at"] is None
        r = await api.client.post("/v1/schedules/nightly/resume", headers=h)
        assert r.status_code == 200 and r.json()["paused"] is False
        r = await api.client.delete("/v1/schedules/nightly", headers=h)
        assert r.status_code == 200 and r.json() == {"name": "nightly", "deleted": True}
        r = await api.client.post("/v1/schedules/nightly/pause", headers=h)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert (await api.client.get("/v1/schedules", headers=h)).json()["items"] == []


async def test_a_delayed_start_is_a_one_shot_schedule(tmp_path: Path) -> None:
    async with serving(tmp_path) as api:
        h = bearer(await api.tenant("tenant-a"))
        key = {"Idempotency-Key": "later-1"}
        body = {"workflow": "tally", "input": 3, "delay_s": 3600}
        r = await api.client.post("/v1/runs", json=body, headers=h | key)
        assert r.status_code == 202, r.text
        delayed = r.json()
        assert delayed["schedule"].startswith("at-") and delayed["created"] is True
        r = await api.client.post("/v1/runs", json=body, headers=h | key)
        assert r.status_code == 200 and r.json()["schedule"] == delayed["schedule"]
        listed = (await api.client.get("/v1/schedules", headers=h)).json()["items"]
        assert [(s["name"], s["at"] is not None) for s in listed] == [(delayed["schedule"], True)]
        assert (await api.client.get("/v1/runs", headers=h)).json()["items"] == []  # not yet
        at = {"workflow": "tally", "input": 3, "start_at": "2099-01-01T00:00:00Z"}
        r = await api.client.post("/v1/runs", json=at, headers=h)
        assert r.status_code == 202 and r.json()["start_at"].startswith("2099-01-01T00:00:00")
        for bad in (
            {**at, "start_at": "2099-01-01T00:00:00"},  # no zone
            {**at, "delay_s": 5},  # both
            {"workflow": "tally", "input": 3, "delay_s": 0},
            {"workflow": "tally", "input": 3, "delay_s": -1},
            {"workflow": "no-such-workflow", "input": 3, "delay_s": 60},
        ):
            r = await api.client.post("/v1/runs", json=bad, headers=h)
            assert r.status_code == 422, (bad, r.text)
        # A time already come: an ordinary submission.
        past = {"workflow": "tally", "input": 3, "start_at": "2000-01-01T00:00:00Z"}
        r = await api.client.post("/v1/runs", json=past, headers=h)
        assert r.status_code == 201, r.text
        done = await api.wait_run(h["Authorization"].split()[1], r.json()["id"])
        assert done["waiting"] is None  # ended: nothing holds it
