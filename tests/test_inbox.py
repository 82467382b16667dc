"""The inbox: listing with keyset pagination and filters, unread counts, read, unread, archive."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tests.api_helpers import bearer
from tests.factory import Factory
from workers import jobs


@pytest.fixture
async def headers(pool: asyncpg.Pool) -> dict[str, str]:
    return await bearer(pool, "messages", name="website")


async def _all_pages(client, path: str, headers, **params: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        resp = await client.get(path, params=query, headers=headers)
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


async def test_listing_is_newest_first_and_pages_without_gaps(client, headers, factory: Factory) -> None:
    ann = await factory.account(external_id="ann")
    other = await factory.account(external_id="bob")
    ids = [(await factory.message(ann, subject=f"S{i}"))["id"] for i in range(7)]
    await factory.message(other)
    resp = await client.get("/v1/accounts/ann/messages", params={"limit": "3"}, headers=headers)
    page = await resp.json()
    assert [m["id"] for m in page["items"]] == ids[::-1][:3]
    assert page["next_cursor"]
    seen = await _all_pages(client, "/v1/accounts/ann/messages", headers, limit="3")
    assert [m["id"] for m in seen] == ids[::-1]
    # A message arriving between pages does not shift the pages already walked.
    resp = await client.get(
        "/v1/accounts/ann/messages", params={"limit": "3", "cursor": page["next_cursor"]}, headers=headers
    )
    await factory.message(ann)
    assert [m["id"] for m in (await resp.json())["items"]] == ids[::-1][3:6]


async def test_exact_page_boundary_has_no_next_cursor(client, headers, factory) -> None:
    ann = await factory.account(external_id="ann")
    for _ in range(2):
        await factory.message(ann)
    page = await (await client.get("/v1/accounts/ann/messages?limit=2", headers=headers)).json()
    assert len(page["items"]) == 2 and page["next_cursor"] is None
    empty = await factory.account(external_id="empty")
    assert empty
    page = await (await client.get("/v1/accounts/empty/messages", headers=headers)).json()
    assert page == {"items": [], "next_cursor": None}


async def test_filters_unread_category_archived(client, headers, factory, pool) -> None:
    ann = await factory.account(external_id="ann")
    read = await factory.message(ann, category="news", read_at=await pool.fetchval("SELECT now()"))
    unread_news = await factory.message(ann, category="news")
    blog = await factory.message(ann, category="blog")
    archived = await factory.message(ann, category="blog", archived_at=await pool.fetchval("SELECT now()"))
    path = "/v1/accounts/ann/messages"

    async def ids(**params: str) -> list[int]:
        return [m["id"] for m in await _all_pages(client, path, headers, limit="1", **params)]

    assert await ids() == [blog["id"], unread_news["id"], read["id"]]
    assert await ids(unread="true") == [blog["id"], unread_news["id"]]
    assert await ids(category="news") == [unread_news["id"], read["id"]]
    assert await ids(category="blog", unread="true") == [blog["id"]]
    assert await ids(archived="include") == [archived["id"], blog["id"], unread_news["id"], read["id"]]
    assert await ids(archived="only") == [archived["id"]]
    for bad in (
        {"unread": "maybe"},
        {"category": "Not Valid"},
        {"archived": "all"},
        {"limit": "0"},
        {"cursor": "zz"},
    ):
        resp = await client.get(path, params=bad, headers=headers)
        assert resp.status == 422, bad
        assert resp.content_type == "application/problem+json"


async def test_cursor_of_another_list_is_refused(client, pool, factory) -> None:
    from notifier.api.pagination import encode_cursor

    headers = await bearer(pool, "messages", "accounts")
    await factory.account(external_id="ann")
    resp = await client.get(
        "/v1/accounts/ann/messages", params={"cursor": encode_cursor("audit", 5)}, headers=headers
    )
    assert resp.status == 422


async def test_unread_counts_per_category(client, headers, factory, pool) -> None:
    ann = await factory.account(external_id="ann")
    now = await pool.fetchval("SELECT now()")
    for category, read_at, archived_at in [
        ("news", None, None),
        ("news", None, None),
        ("news", now, None),
        ("blog", None, None),
        ("blog", None, now),
    ]:
        await factory.message(ann, category=category, read_at=read_at, archived_at=archived_at)
    resp = await client.get("/v1/accounts/ann/messages/unread-counts", headers=headers)
    assert resp.status == 200
    assert await resp.json() == {"total": 3, "categories": {"blog": 1, "news": 2}}


async def test_mark_read_unread_and_archive(client, headers, factory, pool) -> None:
    ann = await factory.account(external_id="ann")
    message = await factory.message(ann)
    path = f"/v1/accounts/ann/messages/{message['id']}"
    first = await (await client.post(f"{path}/read", headers=headers)).json()
    assert first["read_at"] is not None
    again = await (await client.post(f"{path}/read", headers=headers)).json()
    assert again["read_at"] == first["read_at"]  # the first read time is kept
    assert (await (await client.post(f"{path}/unread", headers=headers)).json())["read_at"] is None
    archived = await client.post(f"{path}/archive", headers=headers)
    assert archived.status == 200 and (await archived.json())["archived_at"] is not None
    page = await (await client.get("/v1/accounts/ann/messages", headers=headers)).json()
    assert page["items"] == []
    resp = await client.get(path, headers=headers)
    assert resp.status == 200 and (await resp.json())["id"] == message["id"]


async def test_one_message_of_another_inbox_is_404(client, headers, factory) -> None:
    ann = await factory.account(external_id="ann")
    await factory.account(external_id="bob")
    message = await factory.message(ann)
    for method, suffix in (("GET", ""), ("POST", "/read"), ("POST", "/unread"), ("POST", "/archive")):
        resp = await client.request(
            method, f"/v1/accounts/bob/messages/{message['id']}{suffix}", headers=headers
        )
        assert resp.status == 404, suffix
        assert "bob" in (await resp.json())["detail"]
        for who in ("nobody", "a%00b"):
            resp = await client.request(
                method, f"/v1/accounts/{who}/messages/{message['id']}{suffix}", headers=headers
            )
            assert resp.status == 404
        resp = await client.request(
            method, f"/v1/accounts/ann/messages/99999999999999999999{suffix}", headers=headers
        )
        assert resp.status == 404
    assert (
        await client.post(f"/v1/accounts/ann/messages/{message['id']}/read", headers=headers)
    ).status == 200


async def test_mark_all_read(client, headers, factory, pool) -> None:
    ann = await factory.account(external_id="ann")
    bob = await factory.account(external_id="bob")
    news = [await factory.message(ann, category="news") for _ in range(3)]
    blog = await factory.message(ann, category="blog")
    await factory.message(bob)
    resp = await client.post(
        "/v1/accounts/ann/messages/read-all",
        params={"category": "news", "up_to": str(news[1]["id"])},
        headers=headers,
    )
    assert resp.status == 200 and await resp.json() == {"marked_read": 2}
    resp = await client.post("/v1/accounts/ann/messages/read-all", headers=headers)
    assert await resp.json() == {"marked_read": 2}
    unread = await pool.fetch("SELECT id FROM messages WHERE read_at IS NULL")
    assert [r["id"] for r in unread] == [
        (await pool.fetchval("SELECT id FROM messages WHERE account_id = $1", bob["id"]))
    ]
    assert await pool.fetchval("SELECT read_at FROM messages WHERE id = $1", blog["id"]) is not None
    resp = await client.post("/v1/accounts/ann/messages/read-all", params={"up_to": "x"}, headers=headers)
    assert resp.status == 422
    assert (await client.post("/v1/accounts/nobody/messages/read-all", headers=headers)).status == 404


async def test_inbox_routes_need_the_messages_scope(client, pool, factory) -> None:
    ann = await factory.account(external_id="ann")
    message = await factory.message(ann)
    accounts_only = await bearer(pool, "accounts", name="registry")
    routes = [
        ("GET", "/v1/accounts/ann/messages"),
        ("GET", "/v1/accounts/ann/messages/unread-counts"),
        ("GET", f"/v1/accounts/ann/messages/{message['id']}"),
        ("POST", f"/v1/accounts/ann/messages/{message['id']}/read"),
        ("POST", f"/v1/accounts/ann/messages/{message['id']}/unread"),
        ("POST", f"/v1/accounts/ann/messages/{message['id']}/archive"),
        ("POST", "/v1/accounts/ann/messages/read-all"),
    ]
    for method, path in routes:
        assert (await client.request(method, path)).status == 401, path
        assert (await client.request(method, path, headers=accounts_only)).status == 403, path
    assert await pool.fetchval("SELECT read_at FROM messages") is None


async def test_retention_purge_deletes_only_old_messages(factory, pool, monkeypatch) -> None:
    from datetime import UTC, datetime, timedelta

    from notifier import inbox

    ann = await factory.account(external_id="ann")
    now = datetime(2026, 6, 1, tzinfo=UTC)
    old = [await factory.message(ann, created_at=now - timedelta(days=400 + i)) for i in range(5)]
    young = await factory.message(ann, created_at=now - timedelta(days=10))
    monkeypatch.setattr(inbox, "PURGE_SLICE", 2)  # several slices
    assert (await inbox.purge_messages_before(pool, now - timedelta(days=365))).rows == len(old)
    assert [r["id"] for r in await pool.fetch("SELECT id FROM messages")] == [young["id"]]
    assert (await inbox.purge_messages_before(pool, now - timedelta(days=365))).rows == 0


async def test_retention_job_uses_the_setting(factory, pool, settings) -> None:
    from datetime import UTC, datetime, timedelta

    ann = await factory.account(external_id="ann")
    await factory.message(ann, created_at=datetime.now(UTC) - timedelta(days=settings.retention_days + 1))
    kept = await factory.message(
        ann, created_at=datetime.now(UTC) - timedelta(days=settings.retention_days - 1)
    )
    assert await jobs.inbox_retention({"settings": settings, "pool": pool}) == 1
    assert [r["id"] for r in await pool.fetch("SELECT id FROM messages")] == [kept["id"]]
