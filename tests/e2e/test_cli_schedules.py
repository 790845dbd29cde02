"""``tenantflow schedules add | list | pause | resume | delete`` on a server (``--url``) and on
the store (``--db --tenant``), ``runs submit --in / --at`` (a delayed start), and one-line
errors for bad input."""

from __future__ import annotations

import json

import httpx
import pytest

from .test_cli_remote import Served, assert_one_line_error, cli, ok, served

pytestmark = pytest.mark.timeout(180)
__all__ = ["served"]  # the fixture, imported for these tests


def _tenant(server: Served, tenant: str = "bank-a") -> dict[str, str]:
    r = httpx.post(
        f"{server.url}/v1/tenants",
        json={"id": tenant, "tier": "enterprise"},
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    return {"TENANTFLOW_URL": server.url, "TENANTFLOW_API_KEY": server.tenant_key(tenant)}


def test_schedules_over_the_server_and_on_the_store(served: Served) -> None:
    env = _tenant(served)
    cwd = served.cwd
    line = ok(cwd, "schedules", "add", "hourly", "tally", "--every", "1h", "-i", "2", env=env)
    assert line.startswith("added hourly: tally every 3600s, overlap skip, next ")
    made = json.loads(
        ok(cwd, "schedules", "add", "nightly", "tally", "--cron", "30 2 * * *", "--json", env=env)
    )
    assert made["cron"] == "30 2 * * *" and made["durable"] is True
    assert ok(cwd, "schedules", "pause", "hourly", env=env).startswith("paused hourly:")
    listed = json.loads(ok(cwd, "schedules", "list", "--json", env=env))
    assert [(s["name"], s["paused"]) for s in listed] == [("hourly", True), ("nightly", False)]
    assert "hourly: tally every 3600s, overlap skip, paused" in ok(
        cwd, "runs", "schedules", env=env
    )
    assert ok(cwd, "schedules", "resume", "hourly", env=env).startswith("resumed hourly:")
    assert ok(cwd, "schedules", "delete", "nightly", env=env) == "deleted schedule nightly\n"
    # On the store: the same tenant's schedules, read and changed there.
    store = ("--db", served.db, "--tenant", "bank-a")
    on_store = json.loads(ok(cwd, "schedules", "list", "--json", *store))
    assert [s["name"] for s in on_store] == ["hourly"]
    ok(cwd, "schedules", "add", "weekly", "tally", "--cron", "0 6 * * 1", *store)
    names = [s["name"] for s in json.loads(ok(cwd, "schedules", "list", "--json", env=env))]
    assert names == ["hourly", "weekly"]

    # Delayed starts.
    later = ok(cwd, "runs", "submit", "tally", "-i", "1", "--in", "10m", env=env)
    assert later.startswith("delayed start at-") and "tally at " in later
    at = json.loads(
        ok(
            cwd,
            "runs",
            "submit",
            "tally",
            "-i",
            "1",
            "--at",
            "2099-01-01T00:00:00Z",
            "--json",
            env=env,
        )
    )
    assert at["schedule"].startswith("at-") and at["start_at"].startswith("2099-01-01T00:00:00")

    # Bad input: one line, non-zero.
    for args, words in (
        (("schedules", "add", "x", "tally", "--every", "soon"), ("every", "duration")),
        (("schedules", "add", "x", "tally"), ("--every", "--cron", "--at")),
        (("schedules", "add", "x", "no-such-workflow", "--every", "1m"), ("no-such-workflow",)),
        (("schedules", "add", "hourly", "tally", "--every", "1m"), ("exists",)),
        (
            ("runs", "submit", "tally", "-i", "1", "--in", "5m", "--at", "2099-01-01T00:00:00Z"),
            ("--at", "--in"),
        ),
    ):
        proc = cli(cwd, *args, env=env)
        assert proc.returncode != 0, (args, proc.stdout)
        assert_one_line_error(proc, proc.returncode, *words)
