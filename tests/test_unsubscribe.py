"""One-click unsubscribe end to end: a newsletter through a real SMTP server, every message parsed,
its List-Unsubscribe URL posted as a mailbox provider would; GET changes nothing; forged tokens
are refused; digests, resubscribe and the mailto (inbound webhook) path."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient
from arq import ArqRedis

from notifier import consent, newsletter, queues, tokens
from notifier.api import auth
from notifier.audit import MEMBER
from notifier.mail import outbox
from notifier.preferences import apply_preferences
from notifier.settings import Settings
from tests.api_helpers import bearer, create_newsletter, send_newsletter
from tests.conftest import BurstWorker, MailSink
from tests.factory import Factory

PUBLIC = "https://notifier.test"


@pytest.fixture
async def headers(pool: asyncpg.Pool) -> dict[str, str]:
    return await bearer(pool, "newsletters", name="marketing")


async def draft(client: TestClient[Any, Any], headers: dict[str, str], subject: str) -> int:
    """A newsletter draft with `subject` and a short body, through the API; its id."""
    created = await create_newsletter(client, headers, subject=subject, body="Hello {{ name }}!\n\nOur news.")
    newsletter_id: int = created["id"]
    return newsletter_id


def one_click_path(header: str) -> str:
    """The https URL of a List-Unsubscribe header, as a path on the test server."""
    urls: list[str] = re.findall(r"<([^>]+)>", header)
    https = [u for u in urls if u.startswith(PUBLIC + "/u/")]
    assert len(https) == 1, header
    return https[0].removeprefix(PUBLIC)


def alter(token: str) -> str:
    """The token with one character changed."""
    i = len(token) // 2
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]


async def test_end_to_end_one_click_unsubscribe(
    client: TestClient[Any, Any],
    headers: dict[str, str],
    factory: Factory,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    ann = await factory.account(name="Ann Lee")
    bob = await factory.account(name="Bob Ray")
    cat = await factory.account(name="Cat Poe")  # never consented
    async with pool.acquire() as conn:
        for member in (ann, bob):  # opt in as the preference centre does: consent with its wording
            await apply_preferences(
                conn, member["id"], {"newsletter": True}, MEMBER, "preference-centre",
                wording=consent.WORDING, wording_version=consent.WORDING_VERSION,
            )  # fmt: skip
    assert await pool.fetchval("SELECT count(*) FROM consents WHERE granted AND wording IS NOT NULL") == 2

    first = await draft(client, headers, "Issue one")
    await send_newsletter(client, headers, run_worker, pool, redis, settings, first)

    assert sorted(r.recipients[0] for r in smtp.received) == sorted([ann["email"], bob["email"]])
    by_address = {}
    for received in smtp.received:
        message = received.message
        assert message["Subject"] == "Issue one"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["List-Id"]
        html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
        text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert "1 Example Street, Exampletown" in html and "1 Example Street, Exampletown" in text
        assert ">Unsubscribe</a>" in html and "/preferences/" in html
        assert "Hello" in text and "Unsubscribe: https://notifier.test/u/" in text
        by_address[received.recipients[0]] = message
    assert "Hello Ann Lee!" in by_address[ann["email"]].get_body(("plain",)).get_content()  # type: ignore[union-attr]

    # A mailbox provider posts to Ann's URL: form body, no cookie, no redirect followed.
    ann_url = one_click_path(str(by_address[ann["email"]]["List-Unsubscribe"]))
    resp = await client.post(ann_url, data={"List-Unsubscribe": "One-Click"}, allow_redirects=False)
    assert resp.status == 200
    assert "Set-Cookie" not in resp.headers
    assert "You are unsubscribed" in await resp.text()
    assert await pool.fetchval("SELECT newsletter FROM accounts WHERE id = $1", ann["id"]) is False
    withdrawal = await pool.fetchrow(
        "SELECT granted, source FROM consents WHERE account_id = $1 ORDER BY id DESC LIMIT 1", ann["id"]
    )
    assert (withdrawal["granted"], withdrawal["source"]) == (False, "one-click")
    event = await pool.fetchrow(
        "SELECT * FROM events WHERE kind = 'unsubscribed' AND account_id = $1", ann["id"]
    )
    assert event["method"] == "one-click" and event["detail"]["list"] == "newsletter"
    audit_row = await pool.fetchrow("SELECT actor_type FROM audit_log WHERE account_id = $1", ann["id"])
    assert audit_row["actor_type"] == "member"
    # Posting again (providers retry) changes nothing more and still answers 200.
    resp = await client.post(ann_url, data={"List-Unsubscribe": "One-Click"})
    assert resp.status == 200
    assert await pool.fetchval("SELECT count(*) FROM events WHERE kind = 'unsubscribed'") == 1

    # GET on Bob's URL (a link scanner) shows a page and changes nothing.
    bob_url = one_click_path(str(by_address[bob["email"]]["List-Unsubscribe"]))
    page = await client.get(bob_url)
    assert page.status == 200 and "Unsubscribe" in await page.text()
    assert await pool.fetchval("SELECT newsletter FROM accounts WHERE id = $1", bob["id"]) is True

    # Forged or altered tokens are refused with a page, never a 500.
    token = bob_url.removeprefix("/u/").split("?")[0]
    for bad in (alter(token), token[:-1], token + "A", "x" * 200, "%00", "not-a-token"):
        for method in ("GET", "POST"):
            resp = await client.request(method, f"/u/{bad}", data={"List-Unsubscribe": "One-Click"})
            assert resp.status in (400, 404), (bad, method, resp.status)
            assert resp.content_type == "text/html"
    preferences_token = tokens.sign(settings.secret, "preferences", bob["id"], "newsletter")
    resp = await client.post(f"/u/{preferences_token}", data={"List-Unsubscribe": "One-Click"})
    assert resp.status == 404  # a token made for another purpose
    assert await pool.fetchval("SELECT newsletter FROM accounts WHERE id = $1", bob["id"]) is True

    # The next newsletter skips Ann (and Cat, who never opted in).
    smtp.clear()
    second = await draft(client, headers, "Issue two")
    await send_newsletter(client, headers, run_worker, pool, redis, settings, second)
    assert [r.recipients[0] for r in smtp.received] == [bob["email"]]
    assert cat["email"] not in [r.recipients[0] for r in smtp.received]
    # The header's URL names the e-mail (`?e=`), so the event and the figures count it for Issue one.
    assert "?e=" in ann_url
    assert event["newsletter_id"] == first
    assert (await newsletter.figures(pool, first))["unsubscribed"] == 1
    assert (await newsletter.figures(pool, second))["recipients"] == 1


async def test_footer_link_names_the_email_and_counts_for_the_newsletter(
    client: TestClient[Any, Any],
    headers: dict[str, str],
    factory: Factory,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    ann = await factory.account(newsletter=True)
    first = await draft(client, headers, "Issue")
    await send_newsletter(client, headers, run_worker, pool, redis, settings, first)
    html = smtp.received[0].message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    link = re.search(r'href="https://notifier\.test(/u/[^"]+)"', html)
    assert link is not None
    path = link[1].replace("&amp;", "&")
    email_id = await pool.fetchval("SELECT id FROM emails WHERE newsletter_id = $1", first)
    assert path.endswith(f"?e={email_id}")
    # The page's own button (multipart this time) posts the same field.
    form = FormData({"List-Unsubscribe": "One-Click", "via": "page"}, default_to_multipart=True)
    resp = await client.post(path, data=form)
    assert resp.status == 200
    event = await pool.fetchrow("SELECT * FROM events WHERE kind = 'unsubscribed'")
    assert (event["email_id"], event["newsletter_id"], event["method"]) == (
        email_id,
        first,
        "unsubscribe-page",
    )
    figures = await newsletter.figures(pool, first)
    assert figures["unsubscribed"] == 1 and figures["sent"] == 1

    # Resubscribe from the confirmation page (nonce checked), counted as an event too.
    nonce = (await resp.text()).split('name="nonce" value="')[1].split('"')[0]
    resp = await client.post(path, data={"action": "resubscribe", "nonce": nonce})
    assert resp.status == 200 and "subscribed again" in await resp.text()
    assert await pool.fetchval("SELECT newsletter FROM accounts WHERE id = $1", ann["id"]) is True
    granted = await pool.fetchrow(
        "SELECT * FROM consents WHERE account_id = $1 ORDER BY id DESC LIMIT 1", ann["id"]
    )
    assert granted["granted"] and granted["wording"] and granted["wording_version"]
    assert (await newsletter.figures(pool, first))["resubscribed"] == 1
    resp = await client.post(path, data={"action": "resubscribe", "nonce": "1.forged"})
    assert resp.status == 403


async def test_an_e_parameter_of_another_member_is_ignored(
    client: TestClient[Any, Any], factory: Factory, pool: asyncpg.Pool, settings: Settings
) -> None:
    ann = await factory.account(newsletter=True)
    bob = await factory.account(newsletter=True)
    bobs_email = await pool.fetchval(
        "INSERT INTO emails (kind, queue, account_id, to_address) VALUES ('service', 'q', $1, $2) RETURNING id",
        bob["id"],
        bob["email"],
    )
    token = tokens.sign(settings.secret, "unsubscribe", ann["id"], "newsletter")
    for e in (str(bobs_email), "abc", "9" * 40, "²", "١٢"):
        resp = await client.post(f"/u/{token}?e={e}", data={"List-Unsubscribe": "One-Click"})
        assert resp.status == 200
    event = await pool.fetchrow("SELECT email_id FROM events WHERE kind = 'unsubscribed'")
    assert event["email_id"] is None


async def test_digest_unsubscribe_turns_digests_off_and_resubscribe_restores(
    client: TestClient[Any, Any], factory: Factory, pool: asyncpg.Pool, settings: Settings
) -> None:
    ann = await factory.account(digest_frequency="weekly", newsletter=True)
    token = tokens.sign(settings.secret, "unsubscribe", ann["id"], "digest")
    page = await client.get(f"/u/{token}")
    assert "inbox summary" in await page.text()
    resp = await client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert resp.status == 200
    row = await pool.fetchrow("SELECT digest_frequency, newsletter FROM accounts WHERE id = $1", ann["id"])
    assert (row["digest_frequency"], row["newsletter"]) == ("off", True)
    nonce = (await resp.text()).split('name="nonce" value="')[1].split('"')[0]
    await client.post(f"/u/{token}", data={"action": "resubscribe", "nonce": nonce})
    assert await pool.fetchval("SELECT digest_frequency FROM accounts WHERE id = $1", ann["id"]) == "weekly"


async def test_bad_requests_get_clear_pages(
    client: TestClient[Any, Any], factory: Factory, pool: asyncpg.Pool, settings: Settings
) -> None:
    ann = await factory.account(newsletter=True)
    token = tokens.sign(settings.secret, "unsubscribe", ann["id"], "newsletter")
    resp = await client.post(f"/u/{token}", json={"List-Unsubscribe": "One-Click"})
    assert resp.status == 415
    resp = await client.post(f"/u/{token}", data={"List-Unsubscribe": "Yes"})
    assert resp.status == 400
    assert "the form lacks" in await resp.text()
    assert await pool.fetchval("SELECT newsletter FROM accounts WHERE id = $1", ann["id"]) is True
    await pool.execute("DELETE FROM accounts WHERE id = $1", ann["id"])
    assert (await client.get(f"/u/{token}")).status == 404
    assert (await client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})).status == 404


async def test_mailto_unsubscribe_through_the_inbound_webhook(
    client: TestClient[Any, Any], factory: Factory, pool: asyncpg.Pool, settings: Settings
) -> None:
    _, key = await auth.create_key(pool, "mail-provider", ["admin"])
    admin = {"Authorization": f"Bearer {key}"}
    ann = await factory.account(newsletter=True)
    bob = await factory.account(digest_frequency="daily")
    ann_token = tokens.sign(settings.secret, "unsubscribe", ann["id"], "newsletter")
    resp = await client.post(
        "/v1/inbound/unsubscribe",
        json={"recipient": "unsubscribe@example.org", "subject": f"Re: unsubscribe-{ann_token}"},
        headers=admin,
    )
    assert resp.status == 200 and (await resp.json())["changed"] is True
    bob_token = tokens.sign(settings.secret, "unsubscribe", bob["id"], "digest")
    resp = await client.post(
        "/v1/inbound/unsubscribe", json={"recipient": f"unsubscribe+{bob_token}@example.org"}, headers=admin
    )
    assert resp.status == 200
    assert await pool.fetchval("SELECT newsletter FROM accounts WHERE id = $1", ann["id"]) is False
    assert await pool.fetchval("SELECT digest_frequency FROM accounts WHERE id = $1", bob["id"]) == "off"
    methods = await pool.fetch("SELECT method FROM events WHERE kind = 'unsubscribed'")
    assert [m["method"] for m in methods] == ["mailto", "mailto"]
    resp = await client.post(
        "/v1/inbound/unsubscribe",
        json={"recipient": "x@example.org", "subject": "unsubscribe-" + alter(ann_token)},
        headers=admin,
    )
    assert resp.status == 422
    _, weak = await auth.create_key(pool, "news", ["newsletters"])
    resp = await client.post(
        "/v1/inbound/unsubscribe",
        json={"recipient": "x@example.org"},
        headers={"Authorization": f"Bearer {weak}"},
    )
    assert resp.status == 403


async def test_opting_out_while_a_newsletter_sends_cancels_the_queued_row(
    client: TestClient[Any, Any],
    headers: dict[str, str],
    factory: Factory,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    ann = await factory.account(newsletter=True)
    bob = await factory.account(newsletter=True)
    newsletter_id = (await create_newsletter(client, headers, subject="S", body="B"))["id"]
    assert await newsletter.start(pool, settings, newsletter_id) == 2
    token = tokens.sign(settings.secret, "unsubscribe", ann["id"], "newsletter")
    await client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    await outbox.ring(redis, queues.BULK)
    await run_worker(queues.BULK)
    assert [r.recipients[0] for r in smtp.received] == [bob["email"]]
    figures = await newsletter.figures(pool, newsletter_id)
    assert (figures["sent"], figures["cancelled"], figures["pending"]) == (1, 1, 0)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"List-Unsubscribe=One-Click"),  # no boundary
        ("multipart/form-data; boundary=xx", b"garbage"),
        ("application/x-www-form-urlencoded", b"\xff\xfe=%%%"),
    ],
)
async def test_unreadable_forms_get_a_4xx_page_never_a_500(
    client: TestClient[Any, Any], factory: Factory, settings: Settings, content_type: str, body: bytes
) -> None:
    ann = await factory.account(newsletter=True)
    paths = [
        f"/u/{tokens.sign(settings.secret, 'unsubscribe', ann['id'], 'newsletter')}",
        f"/preferences/{tokens.sign(settings.secret, 'preferences', ann['id'], 'all')}",
        f"/confirm/{tokens.sign(settings.secret, 'confirm', ann['id'], 'newsletter')}",
    ]
    for path in paths:
        resp = await client.post(path, data=body, headers={"Content-Type": content_type})
        assert 400 <= resp.status < 500, (path, resp.status)
        assert resp.content_type == "text/html"


async def test_confirmation_links_refuse_forgeries_and_cross_site_posts(
    client: TestClient[Any, Any], factory: Factory, pool: asyncpg.Pool, settings: Settings
) -> None:
    ann = await factory.account()
    await pool.execute(
        """INSERT INTO consents (account_id, granted, source, list_id)
           VALUES ($1, true, 'api', (SELECT id FROM lists WHERE is_default))""",  # as every writer names the list
        ann["id"],
    )
    token = tokens.sign(settings.secret, "confirm", ann["id"], "newsletter")
    assert (await client.get(f"/confirm/{alter(token)}")).status == 404
    unsubscribe_token = tokens.sign(settings.secret, "unsubscribe", ann["id"], "newsletter")
    assert (await client.get(f"/confirm/{unsubscribe_token}")).status == 404
    page = await client.get(f"/confirm/{token}")
    nonce = (await page.text()).split('name="nonce" value="')[1].split('"')[0]
    resp = await client.post(
        f"/confirm/{token}", data={"nonce": nonce}, headers={"Origin": "https://evil.example"}
    )
    assert resp.status == 403
    assert (await client.post(f"/confirm/{token}", data={"nonce": "1.x"})).status == 403
    assert await pool.fetchval("SELECT confirmed_at FROM consents WHERE account_id = $1", ann["id"]) is None
    assert (await client.post(f"/confirm/{token}", data={"nonce": nonce})).status == 200
    assert (
        await pool.fetchval("SELECT confirmed_at FROM consents WHERE account_id = $1", ann["id"]) is not None
    )
    again = await client.post(f"/confirm/{token}", data={"nonce": nonce})
    assert "nothing to confirm" in await again.text()
