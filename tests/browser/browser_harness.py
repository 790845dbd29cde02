"""Helpers of the browser tests: a real ``tenantflow serve`` on 127.0.0.1 and Debian's Chromium
driven by Playwright for Python (no browser download: the system's ``chromium`` is launched).

Without chromium or playwright these tests skip with the reason; under ``CI=true`` they fail
instead, so CI cannot pass without having run them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "e2e"))
from served import cli_ok as cli
from served import start_server

SCREENSHOTS = Path(__file__).parent.parent.parent / "docs" / "img"


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run under CI=true: {reason}")
    pytest.skip(reason)


def chromium_path() -> str:
    for candidate in ("chromium", "chromium-browser"):
        found = shutil.which(candidate)
        if found:
            return found
    _missing("no chromium on PATH (apt-get install chromium)")
    raise AssertionError("unreachable")


@dataclass
class Served:
    """A running ``tenantflow serve`` and an admin key for it."""

    url: str
    admin_key: str
    proc: subprocess.Popen[bytes]
    log: Path

    def api(self, key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
        )

    def tenant(self, tenant_id: str, **policy: Any) -> str:
        """Register a tenant through the REST API; a key of it."""
        with self.api(self.admin_key) as c:
            r = c.post("/v1/tenants", json={"id": tenant_id, "policy": policy})
            assert r.status_code == 201, r.text
            r = c.post(f"/v1/tenants/{tenant_id}/keys", json={"name": f"{tenant_id}-reviewer"})
            assert r.status_code == 201, r.text
            secret: str = r.json()["secret"]
            return secret

    def submit(self, key: str, workflow: str, input: Any) -> str:
        with self.api(key) as c:
            r = c.post("/v1/runs", json={"workflow": workflow, "input": input})
            assert r.status_code == 201, r.text
            run_id: str = r.json()["id"]
            return run_id

    def wait(self, key: str, path: str, ok: Any, timeout: float = 20) -> Any:
        """Poll ``path`` until ``ok(json)`` (the server runs in another process)."""
        deadline = time.monotonic() + timeout
        with self.api(key) as c:
            while True:
                r = c.get(path)
                assert r.status_code == 200, r.text
                if ok(r.json()):
                    return r.json()
                assert time.monotonic() < deadline, f"timed out waiting on {path}: {r.text}"
                time.sleep(0.05)


@contextlib.contextmanager
def serving(cwd: Path, *options: str) -> Iterator[Served]:
    """``tenantflow serve`` (with ``options``) on a new SQLite file in ``cwd``, until exit."""
    db = f"sqlite:///{cwd / 'dashboard.db'}"
    cli(cwd, "db", "upgrade", "--db", db)
    admin = json.loads(cli(cwd, "keys", "create", "--admin", "--name", "ops", "--db", db, "--json"))
    log = cwd / "serve.log"
    options = ("--app", "api_workflows:setup", "--host", "127.0.0.1", *options)
    proc, url = start_server(cwd, db, *options, log=log)
    server = Served(url, admin["secret"], proc, log)
    try:
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
