"""The project's nats-server launcher: version gate, start, kill -9 and restart keep JetStream."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tenantflow.adapters.nats.server import (
    MIN_VERSION,
    NatsServer,
    find_nats_server,
    nats_server_version,
)
from tenantflow.errors import ConfigurationError

nats = pytest.importorskip("nats", reason="the mesh extra (nats-py) is not installed")


def test_the_binary_found_is_new_enough(nats_server_binary: Path) -> None:
    assert nats_server_version(nats_server_binary) >= MIN_VERSION


def test_an_old_server_is_refused(tmp_path: Path) -> None:
    old = tmp_path / "nats-server"
    old.write_text("#!/bin/sh\necho 'nats-server: v2.9.10'\n")
    old.chmod(0o755)
    with pytest.raises(ConfigurationError, match=r"2\.9\.10.*>= 2\.10\.0"):
        find_nats_server(str(old))


def test_a_binary_that_prints_no_version_is_refused(tmp_path: Path) -> None:
    odd = tmp_path / "nats-server"
    odd.write_text("#!/bin/sh\necho hello\n")
    odd.chmod(0o755)
    with pytest.raises(ConfigurationError, match="printed no version"):
        nats_server_version(odd)


async def _publish_acked(url: str, count: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="WORK", subjects=["work.>"], retention="workqueue")
    for i in range(count):
        await js.publish(f"work.{i}", b"x", headers={"Nats-Msg-Id": str(i)})
    await nc.close()


async def _count(url: str) -> int:
    nc = await nats.connect(url)
    info = await nc.jetstream().stream_info("WORK")
    await nc.close()
    return int(info.state.messages)


def test_acknowledged_messages_survive_kill_and_restart_on_the_same_port(
    nats_server: NatsServer,
) -> None:
    port = nats_server.port
    asyncio.run(_publish_acked(nats_server.url, 50))
    nats_server.kill()
    assert nats_server.pid is None
    nats_server.start()
    assert nats_server.port == port
    assert asyncio.run(_count(nats_server.url)) == 50


def test_close_stops_the_process_and_removes_a_temporary_store(nats_server_binary: Path) -> None:
    server = NatsServer(binary=nats_server_binary).start()
    store = server.store_dir
    assert store is not None and store.exists() and server.pid is not None
    server.close()
    assert server.pid is None and not store.exists()
