"""The command line against a running server: ``tenantflow serve`` in a real process on a loopback
port, the CLI in subprocesses with ``--url``/``--api-key`` (before or after the command) or
``TENANTFLOW_URL``/``TENANTFLOW_API_KEY``.

What the commands print over HTTP — tables and ``--json`` — must be what the same commands print
on the store (``--db``) for the same data: every read is done both ways, the store's once the
server has stopped. Errors are one line on stderr: exit 2 for a bad key (401), a key that may not
do this (403) or bad input (422), 1 for the rest, an unreachable server included.
"""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .served import CliForker, cli_env, free_port, start_server

pytestmark = pytest.mark.timeout(180)

BIG = {"applicant": "ada", "amount": 5000}
UNKNOWN_KEY = "tfk_" + "0" * 24 + "_" + "A" * 43


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test apps importable; ``TENANTFLOW_*`` from the outer environment never leaks in."""
    return cli_env({"COLUMNS": "200", **(extra or {})})


def cli(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``tenantflow ARGS`` in a process of its own, forked from one that imported the command
    line once (see :class:`served.CliForker`): these tests run a hundred commands."""
    return CliForker.shared().run(cwd, *args, env=_env(env), timeout=60)


def ok(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = cli(cwd, *args, env=env)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    assert proc.stderr == ""
    return proc.stdout


def ok_json(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return json.loads(ok(cwd, *args, "--json", env=env))


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    db: str
    cwd: Path
    admin_key: str

    def stop(self) -> int:
        """SIGTERM, and the exit code once the process has ended."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def tenant_key(self, tenant: str) -> str:
        """A new API key of ``tenant``, made over HTTP with the admin key."""
        r = httpx.post(
            f"{self.url}/v1/tenants/{tenant}/keys",
            headers={"Authorization": f"Bearer {self.admin_key}"},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        secret: str = r.json()["secret"]
        return secret

    def submit(self, key: str, workflow: str, input: Any) -> str:
        r = httpx.post(
            f"{self.url}/v1/runs",
            json={"workflow": workflow, "input": input},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        run_id: str = r.json()["id"]
        return run_id


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """``tenantflow serve`` on a fresh SQLite file, the test workflows loaded, and an admin key
    made with ``tenantflow keys create --admin``."""
    yield from serve(tmp_path, "api_workflows:setup")


def serve(tmp_path: Path, *apps: str) -> Iterator[Served]:
    """``tenantflow serve --app APP…`` on a fresh SQLite file in ``tmp_path``, until closed."""
    db = f"sqlite:///{tmp_path / 'served.db'}"
    ok(tmp_path, "db", "upgrade", "--db", db)
    admin = ok_json(tmp_path, "keys", "create", "--admin", "--name", "ops", "--db", db)["secret"]
    log = tmp_path / "server.log"
    app_args = [arg for app in apps for arg in ("--app", app)]
    proc, url = start_server(tmp_path, db, *app_args, log=log, env=_env())
    server = Served(proc, url, log, db, tmp_path, admin)
    try:
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"timed out; last: {value}"
        time.sleep(0.1)


def _reads(run_id: str, review_id: str) -> dict[str, tuple[str, ...]]:
    """Every tenant read, by name (each is run for its table and its --json)."""
    return {
        "runs list": ("runs", "list"),
        "runs show": ("runs", "show", run_id),
        "runs timeline": ("runs", "timeline", run_id),
        "runs state": ("runs", "state", run_id),
        "runs state v0": ("runs", "state", run_id, "--version", "0"),
        "runs diff": ("runs", "diff", run_id, "0", "3"),
        "reviews list": ("reviews", "list", "--all"),
        "reviews show": ("reviews", "show", review_id),
        "usage": ("usage",),
        "audit log": ("audit", "log"),
        "audit verify": ("audit", "verify"),
    }


ADMIN_READS = {"tenants list": ("tenants", "list"), "tenants show": ("tenants", "show", "bank-a")}


def _both(
    cwd: Path, commands: dict[str, tuple[str, ...]], env: dict[str, str] | None = None
) -> dict[str, tuple[str, Any]]:
    """Each command's table and JSON, run in parallel."""
    jobs = [(name, args, as_json) for name, args in commands.items() for as_json in (False, True)]

    def run(job: tuple[str, tuple[str, ...], bool]) -> str:
        return ok(cwd, *job[1], *(["--json"] if job[2] else []), env=env)

    with ThreadPoolExecutor(max_workers=6) as pool:
        outs = list(pool.map(run, jobs))
    found: dict[str, tuple[str, Any]] = {}
    for (name, _, as_json), out in zip(jobs, outs, strict=True):
        table, data = found.get(name, ("", None))
        found[name] = (table, json.loads(out)) if as_json else (out, data)
    return found


def _runs(value: Any) -> list[dict[str, Any]]:
    """The run dicts in a ``runs list``/``runs show`` JSON answer."""
    return value if isinstance(value, list) else [value]


def test_remote_commands_print_what_the_store_prints(served: Served) -> None:
    cwd, url, admin = served.cwd, served.url, served.admin_key
    as_admin = ("--url", url, "--api-key", admin)

    # The registry over HTTP with an admin key: options after the command, or before it.
    made = ok_json(
        cwd, "tenants", "create", "bank-a", "--tier", "enterprise", "--org", "acme", *as_admin
    )
    assert (made["id"], made["org_id"], made["policy"]["tier"]) == ("bank-a", "acme", "enterprise")
    assert made["policy_version"] == 1 and made["created_at"].endswith("Z")
    ok(cwd, *as_admin, "tenants", "create", "bank-b", "--tier", "free", "--set", "weight=2")
    updated = ok_json(cwd, "tenants", "update", "bank-b", "--set", "weight=3", *as_admin)
    assert updated["policy_version"] == 2
    assert updated["changes"] == [
        {"path": "weight", "kind": "changed", "before": 2.0, "after": 3.0}
    ]
    deleted = ok_json(cwd, "tenants", "delete", "bank-b", "--yes", *as_admin)
    assert (deleted["tenant_id"], deleted["rows_left"], deleted["audit_log"]) == (
        "bank-b",
        0,
        "kept",
    )
    assert deleted["deleted"]["tenants"] == 1

    # bank-a's key, in the environment: no --tenant needed, the server knows it from the key.
    key = served.tenant_key("bank-a")
    as_tenant = {"TENANTFLOW_URL": url, "TENANTFLOW_API_KEY": key}
    quick = served.submit(key, "tally", 10)
    waiting = served.submit(key, "approval", BIG)
    [task] = wait_for(
        lambda: ok_json(cwd, "reviews", "list", env=as_tenant), lambda tasks: len(tasks) == 1
    )
    assert (task["run_id"], task["status"], task["tenant_id"]) == (waiting, "pending", "bank-a")
    claimed = ok_json(cwd, "reviews", "claim", task["id"], "-r", "alice", env=as_tenant)
    assert (claimed["status"], claimed["claimed_by"]) == ("claimed", "alice")
    # A server executes its runs, so a decision from the command line resumes the step.
    decided = ok_json(
        cwd, "reviews", "decide", task["id"], "-r", "alice", "--approve", "-m", "ok", env=as_tenant
    )
    assert (decided["status"], decided["decided_by"], decided["comment"]) == (
        "approved",
        "alice",
        "ok",
    )
    for run_id, result in ((waiting, "approved"), (quick, 21)):
        run = wait_for(
            lambda run_id=run_id: ok_json(cwd, "runs", "show", run_id, env=as_tenant),
            lambda run: run["status"] == "completed",
        )
        assert run["result"] == result
    # --tenant may still be given: it must be the key's tenant.
    assert ok(cwd, "usage", "--tenant", "bank-a", env=as_tenant).startswith("usage of tenant")

    reads = _reads(waiting, task["id"])
    remote = _both(cwd, reads, env=as_tenant)
    # The options as flags after the command, too.
    remote_flags = {
        name: ("--url", url, "--api-key", key, *args)
        for name, args in reads.items()
        if name in ("runs show", "audit verify")
    }
    remote.update({f"{name} (flags)": out for name, out in _both(cwd, remote_flags).items()})
    remote.update(_both(cwd, {n: (*args, *as_admin) for n, args in ADMIN_READS.items()}))

    # The store, read once the server has stopped (it holds the SQLite file while it runs).
    assert served.stop() == 0
    on_store = ("--db", served.db)
    local = _both(cwd, {n: (*args, "--tenant", "bank-a", *on_store) for n, args in reads.items()})
    local.update(_both(cwd, {n: (*args, *on_store) for n, args in ADMIN_READS.items()}))

    for name, (table, data) in remote.items():
        local_table, local_data = local[name.removesuffix(" (flags)")]
        if name.startswith(("runs list", "runs show")):
            # The API's run has no `meta` (the policy version and region the run was admitted
            # under) unless the server sends it; everything else is the same.
            local_data = copy.deepcopy(local_data)
            for here, there in zip(_runs(data), _runs(local_data), strict=True):
                assert here.pop("meta") in ({}, there.pop("meta"))
        assert data == local_data, name
        assert table == local_table, name

    # What was read is what happened.
    timeline = [e["kind"] for e in local["runs timeline"][1]]
    assert timeline[0] == "run.submitted" and timeline[-1] == "run.completed"
    assert "review.requested" in timeline
    assert local["runs state v0"][1]["state"] == {"input": BIG}
    assert local["runs state"][1]["state"]["decide"] == "approved"
    assert [r["id"] for r in local["runs list"][1]] == [waiting, quick]
    assert sum(u["value"] for u in local["usage"][1] if u["metric"] == "steps") == 4
    assert local["audit verify"][1]["ok"] is True
    actions = [row["action"] for row in local["audit log"][1]]
    assert actions[:2] == ["tenant.created", "api_key.created"]
    assert [t["id"] for t in local["tenants list"][1]] == ["bank-a"]
    assert "usage of tenant bank-a" in remote["usage"][0]


def test_remote_errors_are_one_line_with_the_right_exit_code(served: Served) -> None:
    cwd, url, admin = served.cwd, served.url, served.admin_key
    ok(cwd, "tenants", "create", "bank-a", "--tier", "free", "--url", url, "--api-key", admin)
    key = served.tenant_key("bank-a")
    as_tenant = {"TENANTFLOW_URL": url, "TENANTFLOW_API_KEY": key}
    nowhere = f"http://127.0.0.1:{free_port()}"
    other = f"sqlite:///{cwd / 'other.db'}"
    ok(cwd, "db", "upgrade", "--db", other)
    bad_region = ("--api-key", admin, "tenants", "create", "x", "--tier", "free")
    bad_region += ("--set", "region=mars-1")
    (
        unknown_key,
        tenant_key_on_admin,
        admin_key_on_tenant,
        other_tenant,
        no_such_run,
        refused_region,
        no_key,
        db_and_url,
        keys_remote,
        unreachable,
        db_wins,
    ) = [
        cli(cwd, *args, env=env)
        for args, env in [
            (("runs", "list", "--url", url, "--api-key", UNKNOWN_KEY), None),
            (("tenants", "list"), as_tenant),
            (("runs", "list", "--url", url, "--api-key", admin), None),
            (("usage", "--tenant", "bank-b"), as_tenant),
            (("runs", "show", "run_nope"), as_tenant),
            (bad_region, {"TENANTFLOW_URL": url}),
            (("runs", "list", "--url", url), None),
            (("runs", "list", "--url", url, "--db", served.db), {"TENANTFLOW_API_KEY": key}),
            (("--url", url, "--api-key", admin, "keys", "list", "--tenant", "bank-a"), None),
            (("audit", "verify"), {"TENANTFLOW_URL": nowhere, "TENANTFLOW_API_KEY": key}),
            (
                ("runs", "list", "-t", "bank-a", "--db", other),
                {"TENANTFLOW_URL": nowhere, "TENANTFLOW_API_KEY": key},
            ),
        ]
    ]
    assert_one_line_error(unknown_key, 2, "invalid API key")  # 401
    assert_one_line_error(tenant_key_on_admin, 2, "needs an admin key")  # 403
    assert_one_line_error(admin_key_on_tenant, 2, "not an admin key")  # 403
    assert_one_line_error(other_tenant, 2, "--tenant bank-b", "tenant bank-a")
    assert_one_line_error(no_such_run, 1, "not found", "run_nope")  # 404
    assert_one_line_error(refused_region, 2, "region", "mars-1")  # the server's 422
    assert_one_line_error(no_key, 2, "--api-key", "TENANTFLOW_API_KEY")
    assert_one_line_error(db_and_url, 2, "--db", "--url", "not both")
    # keys over --url: an admin key manages a tenant's keys through the API (read-only here).
    assert keys_remote.returncode == 0 and "key_" in keys_remote.stdout, keys_remote.stderr
    assert_one_line_error(unreachable, 1, f"cannot reach the tenantflow server at {nowhere}")
    # A --db flag wins over TENANTFLOW_URL: the store is read, the unreachable server ignored.
    assert (db_wins.returncode, db_wins.stdout.strip(), db_wins.stderr) == (0, "no runs", "")
    # Nothing was changed by the refused commands.
    tenants = ok_json(cwd, "tenants", "list", "--url", url, "--api-key", admin)
    assert [t["id"] for t in tenants] == ["bank-a"]
