"""The ``tenantflow`` command line, driven in a subprocess against a real SQLite database.

One module-scoped database is written in-process by the engine (two runs for ``bank-a``, one
for ``bank-b``); every test then reads it through ``python -m tenantflow.cli.main``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import tenantflow as tf
from tenantflow.adapters.sqlite_schema import MIGRATIONS

pytestmark = pytest.mark.timeout(60)


class Application(BaseModel):
    applicant: str
    amount: int


loan = tf.Workflow("loan", input=Application)


@loan.step
async def score(ctx: tf.StepContext, app: Application) -> dict[str, int]:
    return {"points": app.amount // 100}


@loan.step
async def decide(ctx: tf.StepContext, score: dict[str, int]) -> str:
    return "approve" if score["points"] >= 5 else "refer"


@dataclass(frozen=True)
class Db:
    url: str
    cwd: Path
    a_first: str  # bank-a, older
    a_second: str  # bank-a, newer
    b_only: str  # bank-b


async def _populate(url: str) -> tuple[str, str, str]:
    async with tf.Engine.open(url, seed=1, auto_tenant="enterprise") as engine:
        engine.register(loan)
        ids = []
        for tenant, amount in (("bank-a", 900), ("bank-a", 100), ("bank-b", 700)):
            run = await engine.submit(
                "loan", tenant=tenant, input={"applicant": "x", "amount": amount}
            )
            await run.result()
            ids.append(run.id)
    return ids[0], ids[1], ids[2]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Db:
    root = tmp_path_factory.mktemp("cli")
    url = f"sqlite:///{root / 'flow.db'}"
    a1, a2, b1 = asyncio.run(_populate(url))
    return Db(url, root, a1, a2, b1)


def cli(db: Db, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI; ``TENANTFLOW_*`` from the outer environment never leaks in."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "tenantflow.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=db.cwd,
        env={**base, "COLUMNS": "200", **(env or {})},
        timeout=30,
        check=False,
    )


def ok_json(db: Db, *args: str) -> Any:
    proc = cli(db, *args, "--db", db.url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return json.loads(proc.stdout)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0]


def test_version_prints_the_package_version(db: Db) -> None:
    proc = cli(db, "--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"tenantflow {tf.__version__}"


def test_runs_list_shows_only_the_tenants_runs_newest_first(db: Db) -> None:
    runs = ok_json(db, "runs", "list", "--tenant", "bank-a", "--json")
    assert [r["id"] for r in runs] == [db.a_second, db.a_first]
    assert {r["tenant_id"] for r in runs} == {"bank-a"}
    assert db.b_only not in json.dumps(runs)
    assert runs[0]["status"] == "completed" and runs[0]["created_at"].endswith("Z")


def test_runs_list_pages_and_filters(db: Db) -> None:
    newest = ok_json(
        db, "runs", "list", "-t", "bank-a", "--status", "completed", "--limit", "1", "--json"
    )
    assert [r["id"] for r in newest] == [db.a_second]
    older = ok_json(
        db, "runs", "list", "-t", "bank-a", "--workflow", "loan", "--before", db.a_second, "--json"
    )
    assert [r["id"] for r in older] == [db.a_first]


def test_database_url_comes_from_the_environment_without_db(db: Db) -> None:
    proc = cli(
        db, "runs", "list", "-t", "bank-b", "--json", env={"TENANTFLOW_DATABASE_URL": db.url}
    )
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in json.loads(proc.stdout)] == [db.b_only]


def test_global_db_option_works_before_the_command(db: Db) -> None:
    proc = cli(db, "--db", db.url, "runs", "list", "-t", "bank-b")
    assert proc.returncode == 0, proc.stderr
    assert db.b_only in proc.stdout  # the table keeps the whole id


def test_runs_show_lists_steps_with_status_and_attempt(db: Db) -> None:
    run = ok_json(db, "runs", "show", db.a_first, "--tenant", "bank-a", "--json")
    assert run["id"] == db.a_first and run["result"] == "approve"
    assert [(s["key"], s["status"], s["attempt"]) for s in run["steps"]] == [
        ("score", "succeeded", 1),
        ("decide", "succeeded", 1),
    ]


def test_runs_timeline_is_the_execution_log_in_order(db: Db) -> None:
    events = ok_json(db, "runs", "timeline", db.a_first, "--tenant", "bank-a", "--json")
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "run.submitted" and kinds[-1] == "run.completed"
    done = [(e["kind"], e["step"], e["attempt"]) for e in events if e["kind"] == "step.succeeded"]
    assert done == [("step.succeeded", "score", 1), ("step.succeeded", "decide", 1)]
    assert events[0]["data"]["workflow"] == "loan"
    assert all(e["ts"].endswith("Z") for e in events)
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)


def test_runs_timeline_jsonl_has_one_event_per_line(db: Db) -> None:
    proc = cli(db, "runs", "timeline", db.a_first, "-t", "bank-a", "--jsonl", "--db", db.url)
    assert proc.returncode == 0, proc.stderr
    kinds = [json.loads(line)["kind"] for line in proc.stdout.splitlines()]
    assert kinds[0] == "run.submitted" and kinds[-1] == "run.completed"


def test_runs_state_version_zero_is_the_input(db: Db) -> None:
    found = ok_json(db, "runs", "state", db.a_first, "-t", "bank-a", "--version", "0", "--json")
    assert found["version"] == 0 and found["step"] is None
    assert found["state"] == {"input": {"applicant": "x", "amount": 900}}


def test_runs_diff_shows_the_added_step_output(db: Db) -> None:
    changes = ok_json(db, "runs", "diff", db.a_first, "0", "1", "-t", "bank-a", "--json")
    assert changes == [{"path": "score", "kind": "added", "before": None, "after": {"points": 9}}]


def test_another_tenants_run_is_not_found(db: Db) -> None:
    proc = cli(db, "runs", "show", db.b_only, "--tenant", "bank-a", "--db", db.url)
    assert_one_line_error(proc, 1, "not found", db.b_only)


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (("--db", "ftp://example.org/x"), "ftp://example.org/x"),
        (("--db", "not a url"), "not a URL"),
        (("--tenant", "bad/tenant"), "tenant"),
    ],
    ids=["unsupported-url", "malformed-url", "bad-tenant"],
)
def test_bad_input_is_one_line_and_exit_2(db: Db, args: tuple[str, ...], word: str) -> None:
    base = {"--db": db.url, "--tenant": "bank-a"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    proc = cli(db, "runs", "list", *(x for kv in base.items() for x in kv))
    assert_one_line_error(proc, 2, word)


def test_bad_environment_value_names_the_variable(db: Db) -> None:
    proc = cli(db, "runs", "list", "-t", "bank-a", env={"TENANTFLOW_DATABASE_URL": ""})
    assert_one_line_error(proc, 2, "TENANTFLOW_DATABASE_URL")


def test_db_upgrade_creates_the_schema(db: Db, tmp_path: Path) -> None:
    proc = cli(db, "db", "upgrade", "--db", f"sqlite:///{tmp_path / 'new.db'}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"schema version {len(MIGRATIONS)}"
    assert (tmp_path / "new.db").exists()
