"""Declared categories: the admin API, intake declaring unknown ones, per-category frequency in
the preferences document and in the digest pass (issue 14)."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from arq import ArqRedis

from notifier.audit import MEMBER
from notifier.categories import Category, effective_frequency
from notifier.digest import messages_arrived, run_pass
from notifier.preferences import InvalidPreferences, apply_preferences
from notifier.settings import Settings
from tests.api_helpers import bearer, new_account
from tests.factory import Factory

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)  # a Monday, 08:00 UTC
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


async def declare(pool: asyncpg.Pool, key: str, **fields: Any) -> None:
    await pool.execute(
        "INSERT INTO categories (key, default_frequency, required) VALUES ($1, $2, $3)",
        key,
        fields.get("default_frequency"),
        fields.get("required", False),
    )


async def test_put_and_list_categories(client: TestClient[Any, Any], pool: asyncpg.Pool) -> None:
    admin = await bearer(pool, "admin")
    body = {
        "labels": {"en": "Certificates", "de": "Zertifikate"},
        "descriptions": {"en": "Expiry of your certificates"},
        "default_frequency": "immediate",
        "required": True,
    }
    resp = await client.put("/v1/categories/registry", json=body, headers=admin)
    assert resp.status == 201, await resp.text()
    got = await resp.json()
    assert {k: got[k] for k in body} == body and got["key"] == "registry"
    resp = await client.put("/v1/categories/registry", json={**body, "required": False}, headers=admin)
    assert resp.status == 200 and (await resp.json())["required"] is False
    await client.put("/v1/categories/community", json={"default_frequency": "weekly"}, headers=admin)

    resp = await client.get("/v1/categories?limit=1", headers=admin)
    page = await resp.json()
    assert [c["key"] for c in page["items"]] == ["community"] and page["next_cursor"]
    resp = await client.get(f"/v1/categories?limit=1&cursor={page['next_cursor']}", headers=admin)
    page = await resp.json()
    assert [c["key"] for c in page["items"]] == ["registry"] and page["next_cursor"] is None

    # Audited, each change once.
    rows = await pool.fetch(
        "SELECT action, changes FROM audit_log WHERE action = 'category.declare' ORDER BY id"
    )
    assert len(rows) == 3 and rows[1]["changes"]["required"] == {"before": True, "after": False}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/categories/Bad Key", {}, "key"),
        ("/v1/categories/ok", {"default_frequency": "monthly"}, "default_frequency"),
        ("/v1/categories/ok", {"required": True, "default_frequency": "off"}, "body"),
        ("/v1/categories/ok", {"labels": {"en": "a\nb"}}, "labels.en"),
        ("/v1/categories/ok", {"colour": "red"}, "colour"),
        ("/v1/categories/ok", [], "body"),
    ],
)
async def test_put_category_refuses_bad_input(
    client: TestClient[Any, Any], pool: asyncpg.Pool, path: str, body: Any, field: str
) -> None:
    admin = await bearer(pool, "admin")
    resp = await client.put(path, json=body, headers=admin)
    assert resp.status == 422, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert field in [e["field"] for e in (await resp.json())["errors"]]
    assert await pool.fetchval("SELECT count(*) FROM categories") == 0


async def test_categories_need_the_admin_scope(client: TestClient[Any, Any], pool: asyncpg.Pool) -> None:
    other = await bearer(pool, "accounts", "messages")
    assert (await client.get("/v1/categories", headers=other)).status == 403
    assert (await client.put("/v1/categories/x", json={}, headers=other)).status == 403


async def test_intake_declares_unknown_categories_with_defaults(
    client: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    headers = await bearer(pool, "accounts", "messages", "admin")
    assert (await client.post("/v1/accounts", json=new_account(1), headers=headers)).status == 201
    msg = {"category": "events", "subject": "s", "body": "b"}
    assert (await client.post("/v1/accounts/m-1/messages", json=msg, headers=headers)).status == 201
    batch = {"messages": [{**msg, "account": "m-1", "category": c} for c in ("events", "forum", "forum")]}
    assert (await client.post("/v1/messages", json=batch, headers=headers)).status == 201
    rows = await pool.fetch("SELECT key, default_frequency, required, labels FROM categories ORDER BY key")
    assert [(r["key"], r["default_frequency"], r["required"], r["labels"]) for r in rows] == [
        ("events", None, False, {}),
        ("forum", None, False, {}),
    ]
    # An unknown account declares nothing.
    resp = await client.post(
        "/v1/accounts/nobody/messages", json={**msg, "category": "ghost"}, headers=headers
    )
    assert resp.status == 404
    assert await pool.fetchval("SELECT count(*) FROM categories WHERE key = 'ghost'") == 0


def test_effective_frequency_rule() -> None:
    registry = Category("registry", "immediate", True)
    community = Category("community", "weekly", False)
    events = Category("events", None, False)
    assert effective_frequency("events", {}, "daily", events) == "daily"
    assert effective_frequency("community", {}, "daily", community) == "weekly"
    assert (
        effective_frequency("community", {"community": {"frequency": "hourly"}}, "daily", community)
        == "hourly"
    )
    # Digests off: nothing but required categories, and what the member chose explicitly.
    assert effective_frequency("community", {}, "off", community) == "off"
    assert effective_frequency("registry", {}, "off", registry) == "immediate"
    assert effective_frequency("events", {"events": {"frequency": "weekly"}}, "off", events) == "weekly"
    # A required category is never off, even if chosen before it became required.
    assert (
        effective_frequency("registry", {"registry": {"frequency": "off"}}, "daily", registry) == "immediate"
    )
    assert (
        effective_frequency("x", {"x": {"frequency": "off"}}, "daily", Category("x", None, True)) == "daily"
    )


async def test_preferences_document_takes_categories(
    client: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    headers = await bearer(pool, "accounts", "admin")
    await client.post("/v1/accounts", json=new_account(1), headers=headers)
    await client.put("/v1/categories/registry", json={"required": True}, headers=headers)
    await client.put("/v1/categories/community", json={}, headers=headers)
    url = "/v1/accounts/m-1/preferences"
    resp = await client.put(url, json={"categories": {"community": {"frequency": "weekly"}}}, headers=headers)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["categories"] == {"community": {"frequency": "weekly"}}
    resp = await client.put(
        url, json={"categories": {"registry": {"frequency": "immediate"}}}, headers=headers
    )
    assert (await resp.json())["categories"] == {
        "community": {"frequency": "weekly"},
        "registry": {"frequency": "immediate"},
    }
    resp = await client.put(url, json={"categories": {"community": None}}, headers=headers)
    assert (await (await client.get(url, headers=headers)).json())["categories"] == {
        "registry": {"frequency": "immediate"}
    }
    # Off for a required category, an undeclared one, a bad frequency: 422 naming the field.
    for change, field in (
        ({"registry": {"frequency": "off"}}, "categories.registry.frequency"),
        ({"nosuch": {"frequency": "daily"}}, "categories.nosuch"),
        ({"community": {"frequency": "monthly"}}, "categories.community.frequency"),
        ({"community": {"frequency": "daily", "x": 1}}, "categories.community.x"),
        ("weekly", "categories"),
    ):
        resp = await client.put(url, json={"categories": change}, headers=headers)
        assert resp.status == 422, change
        assert [e["field"] for e in (await resp.json())["errors"]] == [field]
    assert (await (await client.get(url, headers=headers)).json())["categories"] == {
        "registry": {"frequency": "immediate"}
    }
    audited = await pool.fetch(
        "SELECT changes FROM audit_log WHERE action = 'preferences.update' ORDER BY id"
    )
    assert [sorted(r["changes"]) for r in audited] == [["categories", "source"]] * 3


async def test_each_category_goes_on_its_own_schedule_and_shares_e_mails(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory
) -> None:
    await declare(pool, "registry", default_frequency="immediate", required=True)
    await declare(pool, "community", default_frequency="weekly")
    await declare(pool, "events")
    await declare(pool, "forum")
    acc = await factory.account(digest_frequency="daily", digest_window_start=T0, next_digest_at=T0 + DAY)
    async with pool.acquire() as conn:
        await apply_preferences(
            conn,
            acc["id"],
            {"categories": {"events": {"frequency": "off"}, "forum": {"frequency": "hourly"}}},
            MEMBER,
            "api",
            now=T0 + timedelta(minutes=1),
        )
        with pytest.raises(InvalidPreferences):
            await apply_preferences(
                conn, acc["id"], {"categories": {"registry": {"frequency": "off"}}}, MEMBER, "api"
            )
    sent: dict[int, datetime] = {}

    async def run(at: datetime) -> None:
        await run_pass(pool, redis, settings, at)
        for r in await pool.fetch(
            "SELECT m.id, d.window_end FROM messages m JOIN message_digests md ON md.message_id = m.id JOIN digests d ON d.id = md.digest_id"
        ):
            assert sent.setdefault(r["id"], r["window_end"]) == r["window_end"]

    async def message(category: str, at: datetime) -> int:
        row = await factory.message(acc, category=category, created_at=at)
        return int(row["id"])

    forum = await message("forum", T0 + timedelta(minutes=10))
    community = await message("community", T0 + timedelta(minutes=20))
    events = await message("events", T0 + timedelta(minutes=30))
    await run(T0 + HOUR)
    assert sent == {forum: T0 + HOUR}
    news = await message("news", T0 + 2 * HOUR)  # undeclared at the time: the member's default
    t = T0 + 2 * HOUR
    while t <= T0 + 8 * DAY:
        await run(t)
        t += HOUR
    assert sent[news] == T0 + DAY
    assert sent[community] == T0 + 7 * DAY  # the next Monday, 08:00
    assert events not in sent
    # The daily, hourly and weekly due at the same moment went in one e-mail.
    per_end = await pool.fetch(
        "SELECT window_end, frequencies FROM digests WHERE window_end IN ($1, $2) ORDER BY window_end",
        T0 + DAY,
        T0 + 7 * DAY,
    )
    assert [r["window_end"] for r in per_end] == [T0 + DAY, T0 + 7 * DAY]
    assert sorted(per_end[1]["frequencies"]) == ["daily", "hourly", "weekly"]
    assert await pool.fetchval("SELECT count(*) FROM emails WHERE kind = 'digest'") == await pool.fetchval(
        "SELECT count(*) FROM digests"
    )


async def test_an_e_mail_names_categories_by_their_label_and_says_how_often_it_comes(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory, smtp: Any, run_worker: Any
) -> None:
    from notifier import queues

    await declare(pool, "registry", default_frequency="immediate", required=True)
    await pool.execute(
        """UPDATE categories SET labels = '{"en": "Certificates", "de": "Zertifikate"}' WHERE key = 'registry'"""
    )
    acc = await factory.account(
        digest_frequency="daily", locale="de-DE", digest_window_start=T0, next_digest_at=T0 + DAY
    )
    await factory.message(acc, category="registry", subject="Ihr Zertifikat", created_at=T0 + HOUR)
    async with pool.acquire() as conn:
        await messages_arrived(conn, [acc["id"]], settings, at=T0 + HOUR)
    await run_pass(pool, redis, settings, T0 + HOUR + timedelta(seconds=settings.immediate_coalesce_seconds))
    await run_worker(queues.DIGEST)
    [got] = smtp.received
    text = got.message.get_body(("plain",)).get_content()
    assert "Zertifikat" in str(got.message["Subject"]) and "registry" not in str(got.message["Subject"])
    assert "== ZERTIFIKATE (1) ==" in text
    # Only the immediate category was due: the e-mail says it comes for every new message, not daily.
    assert "zu jeder neuen Nachricht" in text and "tägliche" not in text


async def test_cli_preview_shows_the_rules_and_changes_nothing(
    pool: asyncpg.Pool, settings: Settings, factory: Factory
) -> None:
    await declare(pool, "registry", default_frequency="immediate", required=True)
    await declare(pool, "community", default_frequency="weekly")
    await declare(pool, "events")
    acc = await factory.account(
        external_id="prev-1",
        digest_frequency="daily",
        digest_categories={"events": {"frequency": "off"}},
        quiet_hours={"start": "22:00", "end": "07:00", "weekends": False},
        digest_window_start=T0,
        next_digest_at=T0 + DAY,
    )
    for category in ("registry", "community", "events", "news"):
        await factory.message(acc, category=category, subject=f"About {category}", created_at=T0 + HOUR)
    before = await pool.fetchrow("SELECT * FROM accounts WHERE id = $1", acc["id"])
    env = {**os.environ, **settings.to_env()}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notifier.cli", "digests", "preview", "prev-1", "--at", (T0 + 2 * HOUR).isoformat(),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert f"Next e-mail due: {(T0 + DAY).isoformat()}" in text
    assert "  immediate: registry (at once)" in text
    assert "  weekly: community (next window ends" in text
    assert "  off: events (never e-mailed)" in text
    assert "Quiet hours: 22:00 to 07:00" in text
    assert "Categories in it: news, registry" in text
    assert "About registry" in text and "About news" in text
    assert "About community" not in text and "About events" not in text
    assert await pool.fetchval("SELECT count(*) FROM digests") == 0
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM messages WHERE id IN (SELECT message_id FROM message_digests)"
        )
        == 0
    )
    assert dict(await pool.fetchrow("SELECT * FROM accounts WHERE id = $1", acc["id"])) == dict(before)


async def test_unsubscribing_from_digests_drops_the_choices_per_category(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory
) -> None:
    from notifier.pages import EmailRef
    from notifier.pages.unsubscribe import unsubscribe

    await declare(pool, "registry", default_frequency="immediate", required=True)
    await declare(pool, "community")
    acc = await factory.account(digest_frequency="daily", digest_window_start=T0, next_digest_at=T0 + DAY)
    async with pool.acquire() as conn:
        await apply_preferences(
            conn, acc["id"], {"categories": {"community": {"frequency": "hourly"}}}, MEMBER, "api", now=T0
        )
        assert await unsubscribe(conn, acc["id"], "digest", EmailRef(), "one-click")
    row = await pool.fetchrow(
        "SELECT digest_frequency, digest_categories FROM accounts WHERE id = $1", acc["id"]
    )
    assert (row["digest_frequency"], row["digest_categories"]) == ("off", {})
    await factory.message(acc, category="community", created_at=T0 + HOUR)
    registry = await factory.message(acc, category="registry", created_at=T0 + HOUR)
    async with pool.acquire() as conn:
        await messages_arrived(conn, [acc["id"]], settings, at=T0 + HOUR)
    t = T0 + HOUR
    while t < T0 + 2 * DAY:
        await run_pass(pool, redis, settings, t)
        t += HOUR
    # Only the required category still reaches the member.
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM messages WHERE id IN (SELECT message_id FROM message_digests)"
        )
        == 1
    )
    assert (
        await pool.fetchval("SELECT digest_id FROM message_digests WHERE message_id = $1", registry["id"])
        is not None
    )


async def test_an_immediate_category_does_not_move_the_members_daily_window(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory
) -> None:
    # The usual case: the member's one daily window (kept in the account's columns) and a
    # required category sent at once. The immediate e-mail must not take the daily window along.
    await declare(pool, "registry", default_frequency="immediate", required=True)
    acc = await factory.account(digest_frequency="daily", digest_window_start=T0, next_digest_at=T0 + DAY)
    news = await factory.message(acc, category="news", created_at=T0 + HOUR)
    registry = await factory.message(acc, category="registry", created_at=T0 + 2 * HOUR)
    async with pool.acquire() as conn:
        await messages_arrived(conn, [acc["id"]], settings, at=T0 + 2 * HOUR)
    t = T0 + 2 * HOUR
    while t <= T0 + DAY + HOUR:
        await run_pass(pool, redis, settings, t)
        t += timedelta(minutes=15)
    sent = {
        r["id"]: r["window_end"]
        for r in await pool.fetch(
            "SELECT m.id, d.window_end FROM messages m JOIN message_digests md ON md.message_id = m.id JOIN digests d ON d.id = md.digest_id"
        )
    }
    assert sent == {
        registry["id"]: T0 + 2 * HOUR + timedelta(seconds=settings.immediate_coalesce_seconds),
        news["id"]: T0 + DAY,
    }
