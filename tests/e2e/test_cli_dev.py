"""``tenantflow dev``: keys printed that work, the app's workflows served, a restart when the
app's code changes, and nothing left running when it is stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.timeout(120)

APP = """
import tenantflow as tf

flow = tf.Workflow("{name}", input=int)


@flow.step
async def double(ctx: tf.StepContext, input: int) -> int:
    return input * 2


def setup(engine: tf.Engine) -> None:
    engine.register(flow)
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(check: Callable[[], Any], timeout: float = 40) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_dev_serves_the_app_with_keys_and_restarts_on_change(tmp_path: Path) -> None:
    package = tmp_path / "devapp"
    package.mkdir()
    (package / "__init__.py").write_text(APP.format(name="first"), encoding="utf-8")
    port = _port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    env["PYTHONPATH"] = str(tmp_path)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "tenantflow.cli.main", "dev", "--app", "devapp:setup"),
            *("--port", str(port), "--db", f"sqlite:///{tmp_path / 'dev.db'}"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[0].startswith(f"tenantflow dev: http://127.0.0.1:{port}")
        key = lines[2].split()[-1]
        assert lines[2].startswith("tenant demo") and key.startswith("tfk_")
        base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}

        def names() -> list[str]:
            r = httpx.get(f"{base}/v1/workflows", headers=auth, timeout=2)
            return [w["name"] for w in r.json()["items"]] if r.status_code == 200 else []

        assert _until(names) == ["first"]
        source = package / "__init__.py"
        before = source.stat().st_mtime
        source.write_text(APP.format(name="second"), encoding="utf-8")
        os.utime(source, (before + 10, before + 10))  # changed, whatever the clock's resolution
        assert _until(lambda: names() == ["second"])  # restarted with the new code
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0 or code == -signal.SIGTERM or code == 128 + signal.SIGTERM
    err = proc.stderr.read() if proc.stderr else ""
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    assert "code changed, restarting" in err
    with pytest.raises(httpx.TransportError):  # the server went with it
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
