"""The tenancy commands (``tenants``, ``reviews``, ``usage``, ``audit``) driven in a subprocess
against a real SQLite database.

Registry tests start from an empty database file path and write it through the command line.
Usage and review tests read a module-scoped database written in-process by the engine: tenant
``acme`` ran a small workflow twice (its steps call nothing external, yet usage records steps and
slot seconds) and has one open review task; tenant ``quiet`` has done nothing.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.domain.tenancy import CreateReview, ReviewRecord, ReviewStatus

pytestmark = pytest.mark.timeout(60)


tally = tf.Workflow("tally", input=int)


@tally.step
async def double(ctx: tf.StepContext, input: int) -> int:
    return input * 2


@tally.step
async def total(ctx: tf.StepContext, double: int) -> int:
    return double + 1


@dataclass(frozen=True)
class Db:
    url: str
    cwd: Path

    @property
    def path(self) -> Path:
        return Path(self.url.removeprefix("sqlite:///"))


@dataclass(frozen=True)
class Populated(Db):
    run_id: str
    review_id: str


async def _populate(url: str) -> tuple[str, str]:
    async with tf.Engine.open(url, seed=1) as engine:
        await engine.tenants.create("acme", tier="standard")
        await engine.tenants.create("quiet", tier="free")
        engine.register(tally)
        run_ids = []
        for n in (3, 4):
            run = await engine.submit("tally", tenant="acme", input=n)
            await run.result()
            run_ids.append(run.id)
        # An open review task, as a review step leaves it (the run that asked has moved on).
        now = engine.clock.now()
        review = ReviewRecord(
            id="rev_cli_test",
            tenant_id="acme",
            run_id=run_ids[0],
            step="total",
            pool="acme-reviewers",
            lane="normal",
            status=ReviewStatus.PENDING,
            sla_due=None,
            created_at=now,
            payload={"kind": "step", "request": {"amount": 50_000}},
        )
        await engine.runtime.writer.write(CreateReview(review))
    return run_ids[0], review.id


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Populated:
    root = tmp_path_factory.mktemp("tenancy")
    url = f"sqlite:///{root / 'flow.db'}"
    run_id, review_id = asyncio.run(_populate(url))
    return Populated(url, root, run_id, review_id)


@pytest.fixture
def fresh(tmp_path: Path) -> Db:
    """A database path with no file yet: the first write command creates it."""
    return Db(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path)


def cli(db: Db, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI on ``db``; ``TENANTFLOW_*`` from the outer environment never leaks in."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "tenantflow.cli.main", *args, "--db", db.url],
        capture_output=True,
        text=True,
        cwd=db.cwd,
        env={**base, "COLUMNS": "200"},
        timeout=30,
        check=False,
    )


def clis(db: Db, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands (reads, or writes refused before the store opens) at once."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: cli(db, *args), commands))


def ok(db: Db, *args: str) -> str:
    proc = cli(db, *args)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert proc.stderr == ""
    return proc.stdout


def ok_json(db: Db, *args: str) -> Any:
    return json.loads(ok(db, *args, "--json"))


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


# -- tenants ----------------------------------------------------------------------------------


def test_tenants_of_each_tier_are_created_listed_and_shown(fresh: Db) -> None:
    made = ok_json(fresh, "tenants", "create", "bank-a", "--tier", "enterprise", "--org", "acme")
    assert (made["id"], made["org_id"], made["policy_version"]) == ("bank-a", "acme", 1)
    assert made["policy"]["tier"] == "enterprise" and made["region"] == "us-east-1"
    ok(
        fresh,
        "tenants",
        "create",
        "bank-b",
        "--tier",
        "standard",
        "--set",
        "max_active_runs=5",
        "--set",
        "region=eu-west-1",
        "--set",
        'rate_limits={"tool:credit_bureau":"50/hour"}',
    )
    assert "created tenant free-1 (free" in ok(
        fresh, "tenants", "create", "free-1", "--tier", "free"
    )

    listed = ok_json(fresh, "tenants", "list")
    assert [(t["id"], t["policy"]["tier"]) for t in listed] == [
        ("bank-a", "enterprise"),
        ("bank-b", "standard"),
        ("free-1", "free"),
    ]
    shown = ok_json(fresh, "tenants", "show", "bank-b")
    assert (shown["policy_version"], shown["region"], shown["store"]) == (1, "eu-west-1", "default")
    policy = shown["policy"]
    assert policy["max_active_runs"] == 5 and policy["region"] == "eu-west-1"
    assert policy["rate_limits"]["tool:credit_bureau"] == {
        "count": 50,
        "window_s": 3600.0,
        "burst": 50,
    }
    assert shown["created_at"].endswith("Z") and shown["updated_at"].endswith("Z")
    table = ok(fresh, "tenants", "list")
    assert "bank-a" in table and "eu-west-1" in table and "free-1" in table


def test_an_invalid_policy_is_one_line_exit_2_and_writes_nothing(fresh: Db) -> None:
    bad = [
        (("--tier", "free", "--set", "max_active_runs=-1"), ("max_active_runs", "-1")),
        (("--tier", "free", "--set", "region=mars-1"), ("region", "mars-1")),
        (("--tier", "gold"), ("tier", "gold")),
        (("--tier", "free", "--set", "colour=blue"), ("unknown policy field", "colour")),
        (("--tier", "free", "--set", "guaranteed_slots=9"), ("guaranteed_slots",)),
        (("--tier", "free", "--set", "max_active_runs"), ("FIELD=VALUE",)),
        (("--set", "max_active_runs=2"), ("--tier",)),
    ]
    args, words = bad[0]
    assert_one_line_error(cli(fresh, "tenants", "create", "bad", *args), 2, *words)
    assert not fresh.path.exists()  # refused before the store was even opened

    ok(fresh, "tenants", "create", "good", "--tier", "standard")
    procs = clis(
        fresh,
        *(("tenants", "create", "bad", *args) for args, _ in bad[1:]),
        ("tenants", "create", "bad/id", "--tier", "free"),
    )
    for proc, words in zip(procs, [w for _, w in bad[1:]] + [("tenant",)], strict=True):
        assert_one_line_error(proc, 2, *words)
    assert_one_line_error(
        cli(fresh, "tenants", "create", "good", "--tier", "free"), 1, "already exists"
    )
    listed = ok_json(fresh, "tenants", "list")
    assert [(t["id"], t["policy"]["tier"], t["policy_version"]) for t in listed] == [
        ("good", "standard", 1)
    ]
    assert_one_line_error(cli(fresh, "tenants", "show", "bad"), 1, "not found")


def test_update_bumps_the_policy_version_and_names_what_changed(fresh: Db) -> None:
    ok(fresh, "tenants", "create", "bank-a", "--tier", "standard")
    updated = ok_json(
        fresh,
        "tenants",
        "update",
        "bank-a",
        "--set",
        "max_active_runs=7",
        "--set",
        'budget={"period_micros": "$100"}',
    )
    assert updated["policy_version"] == 2
    assert updated["policy"]["budget"]["run_micros"] == 500_000  # a budget mapping merges
    assert {c["path"]: (c["before"], c["after"]) for c in updated["changes"]} == {
        "max_active_runs": (10, 7),
        "budget.period_micros": (None, 100_000_000),
    }
    assert "policy version 2 -> 3" in ok(fresh, "tenants", "update", "bank-a", "--set", "weight=3")

    assert_one_line_error(
        cli(fresh, "tenants", "update", "bank-a", "--set", "max_active_runs=-1"), 2, "-1"
    )
    assert_one_line_error(
        cli(fresh, "tenants", "update", "nobody", "--set", "weight=2"), 1, "not found"
    )
    for name in ("actor", "known_regions"):  # the calls' own arguments, not policy fields
        assert_one_line_error(
            cli(fresh, "tenants", "update", "bank-a", "--set", f"{name}=x"),
            2,
            "unknown policy field",
        )
        assert_one_line_error(
            cli(fresh, "tenants", "create", "bank-b", "--tier", "free", "--set", f"{name}=x"),
            2,
            "unknown policy field",
        )
    shown = ok_json(fresh, "tenants", "show", "bank-a")
    assert shown["policy_version"] == 3 and shown["policy"]["max_active_runs"] == 7


def test_a_policy_file_in_yaml_and_a_copied_tenant(fresh: Db) -> None:
    (fresh.cwd / "policy.yaml").write_text(
        "tier: free\nmax_active_runs: 2\nregion: eu-west-1\nreview_sla: 4h\n", encoding="utf-8"
    )
    made = ok_json(
        fresh, "tenants", "create", "y1", "--policy-file", "policy.yaml", "--set", "weight=1.5"
    )
    policy = made["policy"]
    assert (policy["tier"], policy["max_active_runs"], policy["region"]) == ("free", 2, "eu-west-1")
    assert policy["review_sla"] == "PT4H" and policy["weight"] == 1.5

    (fresh.cwd / "y1.json").write_text(ok(fresh, "tenants", "show", "y1", "--json"))
    copy = ok_json(fresh, "tenants", "create", "y2", "--policy-file", "y1.json")
    assert copy["policy"] == policy

    assert_one_line_error(
        cli(fresh, "tenants", "create", "y3", "--policy-file", "y1.json", "--tier", "enterprise"),
        2,
        "contradicts",
    )


def test_delete_needs_yes_and_proves_that_no_row_is_left(fresh: Db) -> None:
    ok(fresh, "tenants", "create", "gone", "--tier", "free")
    ok(fresh, "tenants", "create", "stays", "--tier", "free")
    assert_one_line_error(cli(fresh, "tenants", "delete", "gone"), 2, "--yes")

    proof = ok_json(fresh, "tenants", "delete", "gone", "--yes")
    assert proof["rows_left"] == 0 and proof["audit_log"] == "kept"
    assert proof["left"] and not any(proof["left"].values())
    assert proof["deleted"]["tenants"] == 1

    shown, log, verified = clis(
        fresh,
        ("tenants", "show", "gone"),
        ("audit", "log", "--tenant", "gone", "--json"),
        ("audit", "verify", "--tenant", "gone", "--json"),
    )
    assert_one_line_error(shown, 1, "not found", "gone")
    # The audit log is kept, still verifiable, and ends with the deletion.
    assert json.loads(log.stdout)[-1]["action"] == "tenant.deleted"
    assert verified.returncode == 0 and json.loads(verified.stdout)["ok"] is True

    text = ok(fresh, "tenants", "delete", "stays", "--yes", "--purge-audit")
    assert "0 rows left" in text and "audit log purged" in text
    assert_one_line_error(cli(fresh, "audit", "verify", "--tenant", "stays"), 1, "not found")


def test_a_write_while_another_engine_executes_on_the_file_is_refused(fresh: Db) -> None:
    ok(fresh, "tenants", "create", "bank-a", "--tier", "free")

    async def while_executing() -> tuple[Any, Any]:
        async with tf.Engine.open(fresh.url):
            write = await asyncio.to_thread(
                cli, fresh, "tenants", "update", "bank-a", "--set", "weight=2"
            )
            show = await asyncio.to_thread(cli, fresh, "tenants", "show", "bank-a", "--json")
        return write, show

    write, show = asyncio.run(while_executing())
    assert_one_line_error(write, 1, "another tenantflow engine")
    assert show.returncode == 0 and json.loads(show.stdout)["policy_version"] == 1  # reads work


# -- audit ------------------------------------------------------------------------------------


def test_audit_verify_is_ok_until_a_row_is_tampered_with(fresh: Db) -> None:
    ok(fresh, "tenants", "create", "bank-a", "--tier", "standard")
    ok(fresh, "tenants", "update", "bank-a", "--set", "max_active_runs=3")
    ok(fresh, "tenants", "create", "bank-b", "--tier", "free")

    log, verified = clis(
        fresh,
        ("audit", "log", "--tenant", "bank-a", "--json"),
        ("audit", "verify", "--tenant", "bank-a", "--json"),
    )
    assert [(r["seq"], r["action"], r["actor"]) for r in json.loads(log.stdout)] == [
        (1, "tenant.created", "cli"),
        (2, "policy.updated", "cli"),
    ]
    assert verified.returncode == 0
    assert json.loads(verified.stdout) == {
        "tenant_id": "bank-a",
        "ok": True,
        "checked": 2,
        "first_bad_seq": None,
        "reason": None,
    }

    with sqlite3.connect(fresh.path) as conn:
        conn.execute("UPDATE audit_log SET detail = '{}' WHERE seq = 1 AND tenant_id = 'bank-a'")
    conn.close()

    human, as_json, other = clis(
        fresh,
        ("audit", "verify", "--tenant", "bank-a"),
        ("audit", "verify", "--tenant", "bank-a", "--json"),
        ("audit", "verify", "--tenant", "bank-b", "--json"),
    )
    assert human.returncode == 1 and human.stderr == ""
    assert "seq 1" in human.stdout and "hash does not match" in human.stdout
    assert as_json.returncode == 1
    found = json.loads(as_json.stdout)
    assert (found["ok"], found["first_bad_seq"], found["checked"]) == (False, 1, 0)
    # Each tenant has its own chain: bank-b's is untouched.
    assert other.returncode == 0 and json.loads(other.stdout)["ok"] is True

    with sqlite3.connect(fresh.path) as conn:
        conn.execute("UPDATE audit_log SET detail = 'not json' WHERE tenant_id = 'bank-b'")
    conn.close()
    assert_one_line_error(cli(fresh, "audit", "verify", "--tenant", "bank-b"), 1, "cannot be read")


# -- usage ------------------------------------------------------------------------------------


def test_usage_as_json_and_csv_counts_steps_and_slot_seconds(populated: Populated) -> None:
    rows = ok_json(populated, "usage", "--tenant", "acme")
    steps = {r["dim"]: r["value"] for r in rows if r["metric"] == "steps"}
    assert steps == {"double": 2, "total": 2}
    slots = [r for r in rows if r["metric"] == "slot_seconds"]
    assert {r["dim"] for r in slots} == {"double", "total"}
    assert all(r["value"] >= 0 for r in slots)
    day = rows[0]["day"]
    assert {r["day"] for r in rows} == {day}
    after = (date.fromisoformat(day) + timedelta(days=1)).isoformat()

    as_csv, later, that_day, human, bad_day, backwards, nobody = clis(
        populated,
        ("usage", "--tenant", "acme", "--csv"),
        ("usage", "-t", "acme", "--since", after, "--json"),
        ("usage", "-t", "acme", "--since", day, "--until", day, "--json"),
        ("usage", "--tenant", "acme"),
        ("usage", "-t", "acme", "--since", "2026-13-01"),
        ("usage", "-t", "acme", "--since", after, "--until", day),
        ("usage", "-t", "nobody"),
    )
    assert as_csv.returncode == 0, as_csv.stderr
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert list(parsed[0]) == ["day", "metric", "dim", "value"]
    assert [(r["day"], r["metric"], r["dim"]) for r in parsed] == [
        (r["day"], r["metric"], r["dim"]) for r in rows
    ]
    assert json.loads(later.stdout) == []
    assert json.loads(that_day.stdout) == rows
    assert "slot_seconds" in human.stdout and "budget of tenant acme" in human.stdout
    assert_one_line_error(bad_day, 2, "since")
    assert_one_line_error(backwards, 2, "after")
    assert_one_line_error(nobody, 1, "not found")


# -- reviews ----------------------------------------------------------------------------------


def test_reviews_list_show_and_claim_from_the_command_line(populated: Populated) -> None:
    quiet, nobody, listed, shown, elsewhere = clis(
        populated,
        ("reviews", "list", "--tenant", "quiet", "--json"),
        ("reviews", "list", "-t", "nobody"),
        ("reviews", "list", "--tenant", "acme", "--json"),
        ("reviews", "show", populated.review_id, "--tenant", "acme", "--json"),
        ("reviews", "show", populated.review_id, "-t", "quiet"),
    )
    assert json.loads(quiet.stdout) == []
    assert_one_line_error(nobody, 1, "not found")
    [task] = json.loads(listed.stdout)
    assert (task["id"], task["status"], task["pool"]) == (
        populated.review_id,
        "pending",
        "acme-reviewers",
    )
    review = json.loads(shown.stdout)
    assert review["run_id"] == populated.run_id
    assert review["payload"]["request"] == {"amount": 50_000}
    assert_one_line_error(elsewhere, 1, "not found")  # another tenant cannot see it

    claimed = ok_json(
        populated, "reviews", "claim", populated.review_id, "-t", "acme", "--reviewer", "alice"
    )
    assert (claimed["status"], claimed["claimed_by"]) == ("claimed", "alice")
    assert_one_line_error(
        cli(populated, "reviews", "claim", populated.review_id, "-t", "acme", "--reviewer", "bob"),
        1,
    )
    # Deciding moves the waiting step on, so it needs the run executing in the same engine.
    assert_one_line_error(
        cli(
            populated,
            "reviews",
            "decide",
            populated.review_id,
            "-t",
            "acme",
            "--reviewer",
            "alice",
            "--approve",
        ),
        1,
        "not executing",
    )
    [after] = ok_json(populated, "reviews", "list", "--tenant", "acme", "--all")
    assert (after["status"], after["decided_by"]) == ("claimed", None)
