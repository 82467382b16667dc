"""Double opt-in: the default list's follows NOTIFIER_NEWSLETTER_DOUBLE_OPT_IN through its own
`double_opt_in` (set when a process starts), so the default list and every other list take one
path: the lists API shows it, the confirmation pass asks both within one limit, and a confirmed
opt-in of either joins the audience."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier import audience, consent, lists
from notifier.app import create_app
from notifier.audit import MEMBER
from notifier.preferences import apply_preferences
from notifier.settings import Settings
from tests.api_helpers import bearer
from tests.factory import Factory


@pytest.fixture
async def headers(pool: asyncpg.Pool) -> dict[str, str]:
    return await bearer(pool, "newsletters", "accounts", name="marketing")


async def test_the_default_list_shows_the_setting_and_refuses_another_value(
    settings: Settings, pool: asyncpg.Pool, headers: dict[str, str]
) -> None:
    settings.newsletter_double_opt_in = True
    async with TestClient(TestServer(create_app(settings))) as client:
        body = await (await client.get("/v1/lists/newsletter", headers=headers)).json()
        assert body["default"] is True and body["double_opt_in"] is True
        resp = await client.patch("/v1/lists/newsletter", json={"double_opt_in": False}, headers=headers)
        assert resp.status == 422
        assert [e["field"] for e in (await resp.json())["errors"]] == ["double_opt_in"]
        same = {"double_opt_in": True, "name": "News"}
        assert (await client.patch("/v1/lists/newsletter", json=same, headers=headers)).status == 200
    settings.newsletter_double_opt_in = False
    async with TestClient(TestServer(create_app(settings))) as client:
        body = await (await client.get("/v1/lists/newsletter", headers=headers)).json()
        assert body["double_opt_in"] is False and body["name"] == "News"


async def test_one_pass_queues_at_most_its_limit_across_the_default_and_other_lists(
    settings: Settings, pool: asyncpg.Pool, factory: Factory
) -> None:
    await lists.follow_setting(pool, True)
    offers = await lists.create(pool, lists.ListIn(key="offers", name="Offers", double_opt_in=True))
    ann, bob = await factory.account(), await factory.account()
    async with pool.acquire() as conn:
        await apply_preferences(conn, ann["id"], {"newsletter": True}, MEMBER, "api")
        await apply_preferences(conn, bob["id"], {"lists": {"offers": True}}, MEMBER, "api")
    assert await consent.send_confirmations(pool, settings, limit=1) == 1
    assert await pool.fetchval("SELECT count(*) FROM emails WHERE kind = 'confirmation'") == 1
    assert await consent.send_confirmations(pool, settings, limit=1) == 1
    assert await consent.send_confirmations(pool, settings, limit=1) == 0
    default_id = await pool.fetchval("SELECT id FROM lists WHERE is_default")
    assert await audience.count(pool, [default_id, offers["id"]], None) == 0
    async with pool.acquire() as conn:
        assert await consent.confirm(conn, ann["id"]) is True  # the default list's token names no list
        assert await consent.confirm(conn, bob["id"], offers["id"]) is True
        assert await consent.confirm(conn, bob["id"], offers["id"]) is False
    assert await audience.count(pool, [default_id], None) == 1
    assert await audience.count(pool, [default_id, offers["id"]], None) == 2


async def test_with_the_setting_off_the_default_list_asks_nobody(
    settings: Settings, pool: asyncpg.Pool, factory: Factory, client: TestClient[Any, Any]
) -> None:
    ann = await factory.account()
    async with pool.acquire() as conn:
        await apply_preferences(conn, ann["id"], {"newsletter": True}, MEMBER, "api")
    assert await consent.send_confirmations(pool, settings) == 0
    default_id = await pool.fetchval("SELECT id FROM lists WHERE is_default")
    assert await audience.count(pool, [default_id], None) == 1
