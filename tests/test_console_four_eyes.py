"""Four-eyes sending (NOTIFIER_FOUR_EYES_RECIPIENTS): a newsletter to more than N recipients
needs a second person's approval before it can start; the author cannot approve their own; the
approval (who, when) is shown and audited; and a send to many needs a fresh sign-in."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from arq import ArqRedis

from notifier import audience, newsletter
from notifier.api import auth
from notifier.app import create_app
from notifier.newsletter_local_time import LocalSend
from notifier.settings import Settings
from tests.console_people import Client, csrf_of, session_cookie
from tests.factory import Factory


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"public_url": "http://127.0.0.1", "four_eyes_recipients": 2})


async def _post(client: Client, headers: dict[str, str], path: str, **data: str) -> Any:
    csrf = csrf_of(await (await client.get("/console/sessions", headers=headers)).text())
    return await client.post(path, data={"csrf": csrf, **data}, headers=headers, allow_redirects=False)


async def test_a_large_newsletter_needs_a_second_persons_approval(
    client: Client, pool: asyncpg.Pool, factory: Factory, settings: Settings
) -> None:
    await factory.members(3, newsletter=True)
    author = await factory.console_user("marketing", email="ann@example.org")
    second = await factory.console_user("marketing", email="bob@example.org", name="Bob Second")
    ann, bob = await session_cookie(pool, settings, author), await session_cookie(pool, settings, second)
    created = await _post(
        client,
        ann,
        "/console/newsletters/new",
        subject="Big news",
        body="Hello",
        body_format="markdown",
        action="save",
    )
    newsletter_id = int(created.headers["Location"].split("/")[-1].split("?")[0])
    path = f"/console/newsletters/{newsletter_id}"
    page = await (await client.get(path, headers=ann)).text()
    assert "needs a second person's approval" in page and "someone else must approve it" in page

    refused = await _post(client, ann, f"{path}/send", when="now")
    assert refused.status == 409 and "approval before it is sent" in await refused.text()
    own = await _post(client, ann, f"{path}/approve")
    assert own.status == 403 and "cannot approve" in await own.text()
    assert (await pool.fetchrow("SELECT status, approved_at FROM newsletters"))["approved_at"] is None

    approved = await _post(client, bob, f"{path}/approve")
    assert approved.status == 303
    row = await pool.fetchrow("SELECT approved_by, approved_at FROM newsletters")
    assert row["approved_by"] == "console:bob@example.org (marketing)" and row["approved_at"] is not None
    audit_row = await pool.fetchrow(
        "SELECT actor, action, changes, console_user_id FROM audit_log WHERE action = 'newsletter.approved'"
    )
    assert (audit_row["action"], audit_row["console_user_id"]) == ("newsletter.approved", second["id"])
    shown = await (await client.get(path, headers=ann)).text()
    assert "Approved by console:bob@example.org (marketing)" in shown
    # The newsletter's history names each person: who wrote it, who approved it.
    assert "Bob Second (bob@example.org (marketing))" in shown
    assert f"{author['name']} (ann@example.org (marketing))" in shown

    sent = await _post(client, ann, f"{path}/send", when="now")
    assert sent.status == 303
    assert await newsletter.start(pool, settings, newsletter_id) == 3


async def test_an_edit_after_approval_needs_a_new_approval(
    client: Client, pool: asyncpg.Pool, factory: Factory, settings: Settings
) -> None:
    await factory.members(3, newsletter=True)
    author = await factory.console_user("marketing")
    row = await factory.newsletter(created_by=f"console:{author['email']} (marketing)")
    await pool.execute(
        "UPDATE newsletters SET approved_by = 'console:x@example.org (admin)', approved_at = now()"
    )
    ann = await session_cookie(pool, settings, author)
    await _post(
        client,
        ann,
        f"/console/newsletters/{row['id']}",
        subject="Changed",
        body="Hi",
        body_format="markdown",
        action="save",
    )
    assert await pool.fetchval("SELECT approved_at FROM newsletters") is None


async def test_the_start_itself_refuses_an_unapproved_large_newsletter(
    pool: asyncpg.Pool, factory: Factory, settings: Settings
) -> None:
    """Whatever schedules it (API, CLI, a scheduled time), an unapproved newsletter above the limit
    does not start: it goes back to draft and nobody gets it."""
    await factory.members(3, newsletter=True)
    row = await factory.newsletter()
    await newsletter.schedule(pool, row["id"], row["created_at"], "api_key:producer")
    assert await newsletter.start(pool, settings, row["id"]) is None
    assert await pool.fetchval("SELECT status FROM newsletters") == "draft"
    assert await pool.fetchval("SELECT count(*) FROM emails") == 0
    # At or under the limit no approval is needed.
    small = settings.model_copy(update={"four_eyes_recipients": 3})
    assert await newsletter.start(pool, small, row["id"]) == 3


async def test_a_held_local_time_send_with_clicks_leaves_nothing_behind(
    pool: asyncpg.Pool, factory: Factory, settings: Settings
) -> None:
    """Held back to draft, a send at each member's local time that counts clicks leaves no waiting
    row, no numbered link and no local time; approved, it starts with every row waiting."""
    await factory.members(3, newsletter=True)
    row = await factory.newsletter(body="Read [more](https://example.org/more)", track_clicks=True)
    local = LocalSend(time(9, 0), (datetime.now(UTC) + timedelta(days=2)).date())
    await newsletter.schedule(pool, row["id"], row["created_at"], "api_key:producer", local)
    assert await newsletter.start(pool, settings, row["id"]) is None
    held = await newsletter.get(pool, row["id"])
    assert held is not None and (held["status"], held["local_time"], held["local_date"]) == (
        "draft",
        None,
        None,
    )
    assert await pool.fetchval("SELECT count(*) FROM emails") == 0
    assert await pool.fetchval("SELECT count(*) FROM newsletter_links") == 0
    assert await audience.count_of(pool, held) == 3
    await pool.execute("UPDATE newsletters SET approved_at = now(), approved_by = 'console:second'")
    await newsletter.schedule(pool, row["id"], row["created_at"], "api_key:producer", local)
    assert await newsletter.start(pool, settings, row["id"]) == 3
    assert await pool.fetchval("SELECT count(*) FROM emails WHERE status = 'waiting'") == 3
    assert await pool.fetchval("SELECT count(*) FROM newsletter_links") == 1


async def test_the_api_refuses_to_send_an_unapproved_large_newsletter(
    settings: Settings, pool: asyncpg.Pool, factory: Factory, redis: ArqRedis
) -> None:
    await factory.members(3, newsletter=True)
    row = await factory.newsletter()
    _, key = await auth.create_key(pool, "producer", ["newsletters"])
    async with TestClient(TestServer(create_app(settings))) as client:
        resp = await client.post(
            f"/v1/newsletters/{row['id']}/send", headers={"Authorization": f"Bearer {key}"}
        )
        assert resp.status == 409 and "approval" in (await resp.json())["detail"]
    assert await pool.fetchval("SELECT status FROM newsletters") == "draft"


async def test_sending_to_many_needs_a_fresh_sign_in(
    client: Client, pool: asyncpg.Pool, factory: Factory, settings: Settings
) -> None:
    await factory.members(3, newsletter=True)
    plain = settings.model_copy(update={"four_eyes_recipients": None, "console_fresh_recipients": 2})
    author = await factory.console_user("marketing")
    row = await factory.newsletter()
    async with TestClient(TestServer(create_app(plain))) as client:
        headers = await session_cookie(pool, plain, author)
        await pool.execute("UPDATE console_sessions SET signed_in_at = now() - interval '1 hour'")
        stale = await _post(client, headers, f"/console/newsletters/{row['id']}/send", when="now")
        assert stale.status == 403 and "Sign in again" in await stale.text()
        assert await pool.fetchval("SELECT status FROM newsletters") == "draft"
        fresh = await session_cookie(pool, plain, author)
        assert (
            await _post(client, fresh, f"/console/newsletters/{row['id']}/send", when="now")
        ).status == 303
