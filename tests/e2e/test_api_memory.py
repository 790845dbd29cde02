"""Agent memory over HTTP: the tenant comes from the API key only; another tenant's entry answers
404 exactly like a missing one; bad input is a 422 naming the field, in the one error shape."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "apps"))
from api_harness import Api, bearer, serving

pytestmark = pytest.mark.timeout(60)

ENTRIES = "/v1/memory/{}/entries"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with serving(tmp_path) as served:
        yield served


async def test_entries_are_written_read_listed_and_deleted(api: Api) -> None:
    key = bearer(await api.tenant("bank-a", memory_retention="30d"))
    c = api.client
    r = await c.put(
        f"{ENTRIES.format('user:alice')}/channel", json={"value": {"x": 1}}, headers=key
    )
    assert r.status_code == 200, r.text
    first = r.json()
    assert (first["namespace"], first["key"], first["value"], first["version"]) == (
        "user:alice",
        "channel",
        {"x": 1},
        1,
    )
    assert first["expires_at"] is not None and first["created_at"].endswith("Z")
    r = await c.put(f"{ENTRIES.format('user:alice')}/channel", json={"value": None}, headers=key)
    assert (r.json()["value"], r.json()["version"]) == (None, 2)
    r = await c.get(f"{ENTRIES.format('user:alice')}/channel", headers=key)
    assert r.status_code == 200 and r.json()["version"] == 2

    for name in ("note:1", "note:2", "note:3", "pref"):
        r = await c.put(f"{ENTRIES.format('default')}/{name}", json={"value": name}, headers=key)
        assert r.status_code == 200
    listing = ENTRIES.format("default")
    page = (await c.get(listing, params={"prefix": "note:", "limit": 2}, headers=key)).json()
    assert [e["key"] for e in page["items"]] == ["note:1", "note:2"] and page["next"] == "note:2"
    params = {"prefix": "note:", "limit": 2, "cursor": page["next"]}
    page = (await c.get(listing, params=params, headers=key)).json()
    assert [e["key"] for e in page["items"]] == ["note:3"] and page["next"] is None

    r = await c.delete(f"{listing}/pref", headers=key)
    assert r.json() == {"namespace": "default", "id": "pref", "kind": "entry", "deleted": True}
    r = await c.delete(f"{listing}/pref", headers=key)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_another_tenants_memory_answers_like_missing_memory(api: Api) -> None:
    a, b = bearer(await api.tenant("bank-a")), bearer(await api.tenant("bank-b"))
    c = api.client
    url = f"{ENTRIES.format('session:s1')}/secret"
    assert (await c.put(url, json={"value": "a's canary-91x"}, headers=a)).status_code == 200
    r = await c.post(
        "/v1/memory/session:s1/documents",
        json={"text": "canary-91x confidential", "id": "shared-id"},
        headers=a,
    )
    assert r.status_code == 201 and r.json()["created"] is True

    theirs = await c.get(url, headers=b)
    missing = await c.get(f"{ENTRIES.format('session:s1')}/absent", headers=b)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"] == {
        **missing.json()["error"],
        "message": "memory entry 'secret' not found in namespace 'session:s1'",
        "id": "secret",
    }
    assert (await c.delete(url, headers=b)).status_code == 404
    r = await c.delete("/v1/memory/session:s1/documents/shared-id", headers=b)
    assert r.status_code == 404
    search = await c.get("/v1/memory/session:s1/search", params={"q": "canary"}, headers=b)
    assert search.status_code == 200 and search.json() == {"items": []}
    listing = await c.get(ENTRIES.format("session:s1"), headers=b)
    assert listing.json() == {"items": [], "next": None}
    # The same id in B's memory is B's own document, created anew.
    r = await c.post(
        "/v1/memory/session:s1/documents", json={"text": "b's words", "id": "shared-id"}, headers=b
    )
    assert r.status_code == 201 and r.json()["created"] is True
    r = await c.post(
        "/v1/memory/session:s1/documents", json={"text": "again", "id": "shared-id"}, headers=b
    )
    assert r.status_code == 200 and r.json()["created"] is False
    # A's memory is as A left it.
    assert (await c.get(url, headers=a)).json()["value"] == "a's canary-91x"
    hits = await c.get("/v1/memory/session:s1/search", params={"q": "canary"}, headers=a)
    assert [(h["id"], h["text"]) for h in hits.json()["items"]] == [
        ("shared-id", "canary-91x confidential")
    ]
    # An admin key is not a key to any tenant's memory.
    r = await c.get(url, headers=api.admin)
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"


async def test_search_ranks_documents_best_first(api: Api) -> None:
    key = bearer(await api.tenant("bank-a"))
    docs = "/v1/memory/default/documents"
    for text in (
        "Customer disputes an overdraft fee",
        "Overdraft limits: overdraft, overdraft",
        "Mortgage rates",
    ):
        r = await api.client.post(
            docs, json={"text": text, "metadata": {"len": len(text)}}, headers=key
        )
        assert r.status_code == 201, r.text
    r = await api.client.get(
        "/v1/memory/default/search", params={"q": "overdraft", "limit": 5}, headers=key
    )
    hits = r.json()["items"]
    assert [h["text"] for h in hits] == [
        "Overdraft limits: overdraft, overdraft",
        "Customer disputes an overdraft fee",
    ]
    assert hits[0]["score"] > hits[1]["score"] > 0
    assert hits[1]["metadata"] == {"len": len("Customer disputes an overdraft fee")}


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("GET", "/v1/memory/team:x/entries/k", None, "path.namespace"),
        ("PUT", "/v1/memory/user:/entries/k", {"value": 1}, "path.namespace"),
        ("PUT", "/v1/memory/default/entries/a b", {"value": 1}, "path.key"),
        ("PUT", "/v1/memory/default/entries/" + "k" * 201, {"value": 1}, "path.key"),
        ("PUT", "/v1/memory/default/entries/k", {"value": "x" * 262_143}, "body.value"),
        ("PUT", "/v1/memory/default/entries/k", {}, "body.value"),
        ("PUT", "/v1/memory/default/entries/k", {"value": 1, "extra": 2}, "body.extra"),
        ("POST", "/v1/memory/default/documents", {"text": "..."}, "body.text"),
        ("POST", "/v1/memory/default/documents", {"text": "ok", "id": "a b"}, "body.id"),
        ("POST", "/v1/memory/default/documents", {"text": "ok", "metadata": [1]}, "body.metadata"),
        ("GET", "/v1/memory/default/search?q=%21%21", None, "query.q"),
        ("GET", "/v1/memory/default/search?q=x&limit=101", None, "query.limit"),
        ("GET", "/v1/memory/default/entries?limit=501", None, "query.limit"),
    ],
)
async def test_bad_input_is_a_422_naming_the_field(
    api: Api, method: str, path: str, body: Any, field: str
) -> None:
    key = bearer(await api.tenant("bank-a"))
    r = await api.client.request(method, path, json=body, headers=key)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field, error
    assert error["code"] in ("configuration_invalid", "request_invalid")
    listing = await api.client.get(ENTRIES.format("default"), headers=key)
    assert listing.json()["items"] == []  # nothing was written
