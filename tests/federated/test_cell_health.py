"""What a cell's dashboard shows of its placement, without processes: the cells as the plane's
heartbeat answer has them (up, late, down), the plane, and the cell itself before the plane
has answered; the heartbeat asks for that view now and then only."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

from tenantflow.placement.federated.cell import PEERS_EVERY_S, Cell, CellOptions


def cell(tmp_path: Path, **options: Any) -> Cell:
    engine: Any = SimpleNamespace(
        tenants=SimpleNamespace(list=lambda: [SimpleNamespace(id="t1")]),
        gateway=SimpleNamespace(platform_limits={}, spend_guard=None),
        runtimes={},
        dispatcher=SimpleNamespace(queued_by={}, running_by={}),
    )
    opts = CellOptions(
        cell_id="c1",
        url="http://127.0.0.1:9001",
        state_dir=tmp_path,
        max_tenants=2,
        plane_url="http://127.0.0.1:9000",
        heartbeat_s=1.0,
        **options,
    )
    return Cell(opts, engine, admin_key="k")


async def test_before_the_plane_answers_the_cell_shows_itself_and_the_plane_down(
    tmp_path: Path,
) -> None:
    c = cell(tmp_path)
    members = await c.members()
    assert [(m.kind, m.id, m.state) for m in members] == [
        ("plane", "http://127.0.0.1:9000", "down"),
        ("cell", "c1", "up"),
    ]
    assert members[1].detail["tenants"] == "t1" and members[1].detail["held"] == "1 of 2"
    facts = c.describe()
    assert facts["cell"] == "c1" and facts["plane"] == "http://127.0.0.1:9000"
    assert facts["plane reachable"] == "no" and facts["last heartbeat answered (UTC)"] == "never"


async def test_the_plane_view_gives_each_cell_its_state(tmp_path: Path) -> None:
    c = cell(tmp_path)
    now = time.time()
    c.plane_ok, c.last_beat, c.peers_at = True, now, now
    c.peers = [
        {"id": "c1", "url": "u1", "status": "running", "alive": True, "tenants": ["t1"],
         "max_tenants": 2, "restarts": 0, "heartbeat_at": now - 0.5},
        {"id": "c2", "url": "u2", "status": "running", "alive": True, "tenants": ["t2", "t3"],
         "max_tenants": 2, "restarts": 1, "heartbeat_at": now - 60},
        {"id": "c3", "url": "u3", "status": "running", "alive": False, "tenants": [],
         "max_tenants": 1, "restarts": 4, "heartbeat_at": now - 1},
        {"id": "c4", "url": "u4", "status": "starting", "alive": True, "tenants": [],
         "max_tenants": 1, "restarts": 0, "heartbeat_at": None},
    ]  # fmt: skip
    members = await c.members()
    assert [(m.kind, m.id, m.state) for m in members] == [
        ("plane", "http://127.0.0.1:9000", "up"),
        ("cell", "c1", "up"),
        ("cell", "c2", "late"),  # its last beat is older than 3 beats
        ("cell", "c3", "down"),  # its process is gone
        ("cell", "c4", "late"),  # never beat yet
    ]
    c1, c2 = members[1], members[2]
    assert c1.detail["this cell"] == "yes" and "this cell" not in c2.detail
    assert c2.detail["tenants"] == "t2, t3" and c2.detail["restarts"] == 1
    assert c2.last_seen_s == now - 60


async def test_the_heartbeat_asks_for_the_view_now_and_then(tmp_path: Path) -> None:
    c = cell(tmp_path)
    c.load()
    asked: list[bool] = []

    def plane(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        asked.append(body["want_cells"])
        answer: dict[str, Any] = {"leases": [], "money_leases": []}
        if body["want_cells"]:
            answer["cells"] = [{"id": "c1", "alive": True, "heartbeat_at": 5.0}]
            answer["at"] = 6.0
        return httpx.Response(200, json=answer)

    async with httpx.AsyncClient(transport=httpx.MockTransport(plane)) as client:
        await c.heartbeat(client)
        await c.heartbeat(client)
        assert asked == [True, False]
        assert c.peers == [{"id": "c1", "alive": True, "heartbeat_at": 5.0}]
        assert c.peers_at == 6.0 and c.plane_ok
        c._peers_asked -= PEERS_EVERY_S
        await c.heartbeat(client)
        assert asked == [True, False, True]
