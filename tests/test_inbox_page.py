"""The hosted inbox page (`/inbox/{signed-link}`), the digest's link to it, and reading in the inbox
leaving messages out of the next digest (end to end: intake, member API and page, digest pass)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from arq import ArqRedis

from notifier import tokens
from notifier.digest import run_pass
from notifier.settings import Settings
from tests.api_helpers import bearer
from tests.factory import Factory

NONCE = re.compile(r'name="nonce" value="([^"]+)"')


def link(settings: Settings, account_id: int) -> str:
    return "/inbox/" + tokens.sign(settings.secret, "inbox", account_id)


async def test_page_shows_the_members_inbox_in_their_time_zone(
    client: TestClient[Any, Any], factory: Factory, settings: Settings
) -> None:
    ann = await factory.account(timezone="Asia/Tokyo", name="Ann")
    bob = await factory.account()
    when = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)  # 08:30 on 2 March in Tokyo
    await factory.message(ann, subject="Tokyo <b>time</b>", url="https://example.org/t", created_at=when)
    await factory.message(ann, subject="Events one", category="events")
    await factory.message(bob, subject="Bob's secret")
    resp = await client.get(link(settings, ann["id"]))
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    assert "script-src" not in resp.headers["Content-Security-Policy"]  # no script runs here
    html = await resp.text()
    assert "2 Mar 2026, 08:30" in html and "Asia/Tokyo" in html
    assert "Tokyo &lt;b&gt;time&lt;/b&gt;" in html and "<b>time" not in html
    assert 'href="https://example.org/t"' in html
    assert "Bob" not in html
    assert "<script" not in html
    assert "2 unread messages" in html
    events = await (await client.get(link(settings, ann["id"]), params={"category": "events"})).text()
    assert "Events one" in events and "Tokyo &lt;b&gt;" not in events

    for bad in ("nonsense", link(settings, ann["id"]).split("/")[-1][:-2] + "AA"):
        resp = await client.get(f"/inbox/{bad}")
        assert resp.status == 404
    preferences_token = tokens.sign(settings.secret, "preferences", ann["id"])
    assert (await client.get(f"/inbox/{preferences_token}")).status == 404


async def test_page_forms_read_archive_and_read_all(
    client: TestClient[Any, Any], pool: asyncpg.Pool, factory: Factory, settings: Settings
) -> None:
    ann = await factory.account()
    bob = await factory.account()
    one = await factory.message(ann, subject="One")
    two = await factory.message(ann, subject="Two")
    three = await factory.message(ann, subject="Three")
    theirs = await factory.message(bob, subject="Theirs")
    url = link(settings, ann["id"])
    html = await (await client.get(url)).text()
    nonce = NONCE.search(html)
    assert nonce
    form = {"nonce": nonce.group(1), "back": "?view=unread"}

    resp = await client.post(
        url, data={**form, "action": "read", "id": str(one["id"])}, allow_redirects=False
    )
    assert resp.status == 303 and resp.headers["Location"].startswith(url + "?view=unread")
    assert await pool.fetchval("SELECT read_at IS NOT NULL FROM messages WHERE id = $1", one["id"])
    resp = await client.post(url, data={**form, "action": "archive", "id": str(two["id"])})
    assert resp.status == 200 and "Archived." in await resp.text()
    assert await pool.fetchval("SELECT archived_at IS NOT NULL FROM messages WHERE id = $1", two["id"])
    # Another member's message, a stale nonce, another site's form, an unknown action: nothing changes.
    resp = await client.post(url, data={**form, "action": "read", "id": str(theirs["id"])})
    assert resp.status == 404
    resp = await client.post(url, data={**form, "nonce": "1.abc", "action": "read", "id": str(three["id"])})
    assert resp.status == 403
    resp = await client.post(
        url,
        data={**form, "action": "read", "id": str(three["id"])},
        headers={"Origin": "https://evil.example"},
    )
    assert resp.status == 403
    resp = await client.post(url, data={**form, "action": "delete", "id": str(three["id"])})
    assert resp.status == 422
    resp = await client.post(url, json={"action": "read", "id": three["id"]})
    assert resp.status == 415
    assert await pool.fetchval("SELECT read_at FROM messages WHERE id = $1", three["id"]) is None
    assert await pool.fetchval("SELECT read_at FROM messages WHERE id = $1", theirs["id"]) is None
    # A crafted `back` cannot send the member elsewhere.
    resp = await client.post(
        url,
        data={**form, "back": "//evil.example", "action": "unread", "id": str(one["id"])},
        allow_redirects=False,
    )
    assert resp.headers["Location"].startswith(url + "?view=unread")
    resp = await client.post(url, data={**form, "action": "read-all"})
    assert resp.status == 200 and "Everything is marked as read." in await resp.text()
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM messages WHERE account_id = $1 AND read_at IS NULL AND archived_at IS NULL",
            ann["id"],
        )
        == 0
    )
    archived = await (await client.get(url, params={"view": "archived"})).text()
    assert "Two" in archived and "Move to inbox" in archived


async def test_digest_links_to_the_hosted_page_or_the_organisations(
    client: TestClient[Any, Any], pool: asyncpg.Pool, redis: ArqRedis, factory: Factory, settings: Settings
) -> None:
    start = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
    ann = await factory.account(
        digest_frequency="daily", digest_window_start=start, next_digest_at=start + timedelta(days=1)
    )
    await factory.message(ann, created_at=start + timedelta(hours=1))
    await run_pass(pool, None, settings, start + timedelta(days=1, minutes=1))
    context = await pool.fetchval("SELECT context FROM emails WHERE kind = 'digest'")
    inbox_url = context["inbox_url"]
    assert inbox_url.startswith("https://notifier.test/inbox/")
    resp = await client.get(inbox_url.removeprefix("https://notifier.test"))
    assert resp.status == 200  # the link never 404s
    own = settings.model_copy(update={"inbox_url": "https://www.example.org/account/inbox"})
    assert tokens.inbox_link(own, ann["id"]) == "https://www.example.org/account/inbox"


async def test_reading_in_the_inbox_leaves_messages_out_of_the_digest(
    client: TestClient[Any, Any], pool: asyncpg.Pool, redis: ArqRedis, factory: Factory, settings: Settings
) -> None:
    """End to end: messages posted through the API, one read with a member token (as the component
    does), one read and one archived on the hosted page; the digest holds only the fourth."""
    now = datetime.now(UTC)
    ann = await factory.account(
        external_id="ann",
        digest_frequency="daily",
        digest_window_start=now - timedelta(hours=1),
        next_digest_at=now + timedelta(hours=1),
    )
    producer = await bearer(pool, "messages", "accounts")
    ids = []
    for subject in ("Read in the component", "Read on the page", "Archived on the page", "Still unread"):
        resp = await client.post(
            "/v1/accounts/ann/messages",
            json={"category": "news", "subject": subject, "body": "b"},
            headers=producer,
        )
        ids.append((await resp.json())["id"])
    token = (await (await client.post("/v1/accounts/ann/inbox-token", headers=producer)).json())["token"]
    resp = await client.post(
        f"/member/v1/messages/{ids[0]}/read", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status == 200
    url = link(settings, ann["id"])
    nonce = NONCE.search(await (await client.get(url)).text())
    assert nonce
    for action, message_id in (("read", ids[1]), ("archive", ids[2])):
        resp = await client.post(url, data={"nonce": nonce.group(1), "action": action, "id": str(message_id)})
        assert resp.status == 200

    await run_pass(pool, None, settings, now + timedelta(hours=1, minutes=1))
    context = await pool.fetchval("SELECT context FROM emails WHERE kind = 'digest'")
    subjects = [m["subject"] for c in context["categories"] for m in c["messages"]]
    assert subjects == ["Still unread"] and context["total"] == 1


def test_inbox_links_are_not_logged() -> None:
    """The signed link is a bearer secret: the access log masks it (and never logs a ?token=)."""
    from notifier.api.problems import redact_path

    assert redact_path("/inbox/AbC_123-x?view=all") == "/inbox/[token]"
    assert redact_path("/member/v1/stream?token=v1.secret") == "/member/v1/stream"
