"""``tenantflow events publish`` against a real server (``--url``, the tenant's key) and on the
store (``--db`` with ``--app``): each starts a run of every workflow registered to the event,
the event's id makes a second publish start nothing, and bad input is one line on stderr with a
non-zero exit and nothing started."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import tenantflow as tf

from .apps.api_workflows import setup
from .test_cli_remote import Served, assert_one_line_error, cli, ok, serve, wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    yield from serve(tmp_path, "api_workflows:setup")


def _runs(served: Served, key: str) -> list[dict[str, object]]:
    r = httpx.get(f"{served.url}/v1/runs", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200, r.text
    items: list[dict[str, object]] = r.json()["items"]
    return items


def test_publish_over_the_api_starts_the_registered_workflows_once(served: Served) -> None:
    admin = {"Authorization": f"Bearer {served.admin_key}"}
    for tenant in ("bank-a", "bank-b"):
        r = httpx.post(f"{served.url}/v1/tenants", json={"id": tenant}, headers=admin, timeout=10)
        assert r.status_code == 201, r.text
    key = served.tenant_key("bank-a")
    env = {"TENANTFLOW_URL": served.url, "TENANTFLOW_API_KEY": key}
    cwd = served.cwd

    args = ("events", "publish", "tally.requested", "--data", "3", "--id", "e-1", "--json")
    first = json.loads(ok(cwd, *args, env=env))
    assert (first["name"], first["id"]) == ("tally.requested", "e-1")
    [run] = first["runs"]
    assert run["workflow"] == "tally" and run["created"] is True
    again = json.loads(ok(cwd, *args, env=env))  # the same id: the same run, nothing new
    assert again["runs"] == [{**run, "created": False}]
    done = wait_for(
        lambda: httpx.get(
            f"{served.url}/v1/runs/{run['run_id']}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        ).json(),
        lambda shown: shown["status"] == "completed",
    )
    assert done["result"] == 7 and done["workflow"] == "tally"

    # The text form; the data from a file; a new id each time when none is given.
    data = cwd / "event.json"
    data.write_text("20", encoding="utf-8")
    lines = ok(cwd, "events", "publish", "tally.requested", "--data-file", str(data), env=env)
    head, started = lines.splitlines()
    assert head.startswith("published event tally.requested (evt-"), lines
    assert started.strip().startswith("started run run_") and "of workflow tally" in started
    nothing = ok(cwd, "events", "publish", "nobody.listens", "--id", "n-1", env=env)
    assert nothing.strip() == (
        "published event nobody.listens (n-1): no workflow is registered to it"
    )
    assert len(_runs(served, key)) == 2

    # Bad input: one line, a non-zero exit, nothing started.
    publish = ("events", "publish", "tally.requested")
    assert_one_line_error(cli(cwd, *publish, "--data", "{oops", env=env), 2, "--data is not JSON")
    assert_one_line_error(
        cli(cwd, *publish, "--data", "1", "--data-file", str(data), env=env), 2, "not both"
    )
    assert_one_line_error(cli(cwd, *publish, "--data", '"x"', env=env), 2, "valid integer")
    assert_one_line_error(cli(cwd, "events", "publish", "bad name!", env=env), 2, "name")
    assert_one_line_error(
        cli(cwd, *publish, "--app", "api_workflows:setup", env=env), 2, "--app", "--db"
    )
    assert_one_line_error(
        cli(cwd, *publish, "--data", "1", "--tenant", "bank-b", env=env), 2, "--tenant bank-b"
    )
    assert len(_runs(served, key)) == 2
    # Another tenant's key: its own runs only; bank-a's events started nothing for it.
    other = {"TENANTFLOW_URL": served.url, "TENANTFLOW_API_KEY": served.tenant_key("bank-b")}
    mine = json.loads(ok(cwd, *args, env=other))  # the same event id, another tenant
    assert mine["runs"][0]["created"] is True and mine["runs"][0]["run_id"] != run["run_id"]
    assert len(_runs(served, key)) == 2


async def test_publish_on_the_store_needs_the_app_and_records_the_runs(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'events.db'}"
    async with tf.Engine.open(db) as engine:
        await engine.tenants.create("bank-a", tier="standard")
    on_store = ("--db", db, "events", "publish", "tally.requested", "--tenant", "bank-a")

    assert_one_line_error(cli(tmp_path, *on_store, "--data", "4"), 2, "--app")
    assert_one_line_error(
        cli(tmp_path, *on_store, "--app", "no_such_module:setup"), 2, "no_such_module"
    )
    assert_one_line_error(
        cli(
            tmp_path,
            "--db",
            db,
            "events",
            "publish",
            "tally.requested",
            "--tenant",
            "nobody",
            "--app",
            "api_workflows:setup",
            "--data",
            "4",
        ),
        1,
        "nobody",
    )
    publish = (*on_store, "--app", "api_workflows:setup", "--data", "4", "--id", "s-1", "--json")
    first = json.loads(ok(tmp_path, *publish))
    [run] = first["runs"]
    assert run["workflow"] == "tally" and run["created"] is True
    again = json.loads(ok(tmp_path, *publish))
    assert again["runs"] == [{**run, "created": False}]

    # The run is in the store: the app's engine, opened on it, carries it to its end.
    async with tf.Engine.open(db) as engine:
        setup(engine)
        assert await engine.run("bank-a", run["run_id"]).result() == 9
        assert [r.id for r in await engine.list_runs("bank-a")] == [run["run_id"]]
