"""Newsletters: the API, the sandbox, the frozen audience, delivery through the outbox, the status
machine, scheduling, cancelling, double opt-in and exactly-once under concurrency."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from arq import ArqRedis

from notifier import newsletter, queues, suppression
from notifier.api import auth
from notifier.mail.newsletter_render import Draft, PreparedCache, TemplateProblem, check
from notifier.mail.newsletter_source import markdown_to_html
from notifier.settings import Settings
from tests.api_helpers import bearer, create_newsletter, send_newsletter
from tests.conftest import BurstWorker, MailSink
from tests.factory import Factory

BODY = "# Hello {{ first_name }}\n\nNews for **{{ name }}**: [read more](https://example.org/news?a=1&b=2)."


@pytest.fixture
async def headers(pool: asyncpg.Pool) -> dict[str, str]:
    return await bearer(pool, "newsletters", name="marketing")


async def create(client: TestClient[Any, Any], headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    """A draft through the API: a templated subject and `BODY` unless `fields` say otherwise."""
    defaults = {"subject": "News for {{ first_name }}", "preheader": "This month", "body": BODY}
    return await create_newsletter(client, headers, **{**defaults, **fields})


async def test_scope_is_required(client: TestClient[Any, Any], pool: asyncpg.Pool) -> None:
    _, key = await auth.create_key(pool, "other", ["messages"])
    resp = await client.post(
        "/v1/newsletters", json={"subject": "x", "body": "y"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert resp.status == 403
    assert (await client.get("/v1/newsletters")).status == 401


async def test_create_edit_list_and_get(client: TestClient[Any, Any], headers: dict[str, str]) -> None:
    first = await create(client, headers)
    assert first["status"] == "draft" and first["body_format"] == "markdown"
    assert first["created_by"] == "api_key:marketing"
    second = await create(client, headers, body="<p>Hi {{ name }}</p>", body_format="html")

    resp = await client.patch(f"/v1/newsletters/{first['id']}", json={"subject": "Changed"}, headers=headers)
    assert resp.status == 200
    assert (await resp.json())["subject"] == "Changed"

    resp = await client.get("/v1/newsletters?limit=1", headers=headers)
    page = await resp.json()
    assert [n["id"] for n in page["items"]] == [second["id"]]
    resp = await client.get(f"/v1/newsletters?limit=1&cursor={page['next_cursor']}", headers=headers)
    assert [n["id"] for n in (await resp.json())["items"]] == [first["id"]]

    resp = await client.get(f"/v1/newsletters/{first['id']}", headers=headers)
    got = await resp.json()
    assert got["subject"] == "Changed"
    assert got["figures"] == {
        "recipients": 0, "sent": 0, "failed": 0, "suppressed": 0, "pending": 0, "cancelled": 0,
        "waiting": 0, "bounced": 0, "complained": 0, "unsubscribed": 0, "resubscribed": 0,
    }  # fmt: skip
    assert (await client.get("/v1/newsletters/999999", headers=headers)).status == 404
    assert (await client.get("/v1/newsletters/abc", headers=headers)).status == 404
    assert (await client.get("/v1/newsletters/²", headers=headers)).status == 404
    assert (await client.get("/v1/newsletters?status=bogus", headers=headers)).status == 422


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"subject": "", "body": "x"}, "subject"),
        ({"subject": "a\r\nBcc: x@example.org", "body": "x"}, "subject"),
        ({"subject": "ok", "body": "x", "body_format": "pdf"}, "body_format"),
        ({"subject": "ok", "body": "{% if %}"}, "body"),
        ({"subject": "Hi {{ nickname }}", "body": "x"}, "subject"),
        ({"subject": "ok", "body": "Hi {{ nickname }}"}, "body"),
        ({"subject": "{{ ''.__class__.__mro__ }}", "body": "x"}, "subject"),
        ({"subject": "ok", "body": "x", "extra": 1}, "extra"),
    ],
)
async def test_invalid_drafts_are_422_naming_the_field(
    client: TestClient[Any, Any], headers: dict[str, str], body: dict[str, Any], field: str
) -> None:
    resp = await client.post("/v1/newsletters", json=body, headers=headers)
    assert resp.status == 422, await resp.text()
    problem = await resp.json()
    assert resp.content_type == "application/problem+json"
    assert [e["field"] for e in problem["errors"]] == [field], problem


async def test_every_field_that_does_not_render_is_named(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    body = {"subject": "Hi {{ nickname }}", "body": "Dear {{ first_name"}
    resp = await client.post("/v1/newsletters", json=body, headers=headers)
    assert resp.status == 422
    assert [e["field"] for e in (await resp.json())["errors"]] == ["subject", "body"]


def test_sandbox_refuses_unsafe_attribute_access(settings: Settings) -> None:
    draft = Draft(1, "x", "", "{{ name.__class__.__mro__[1].__subclasses__() }}", "markdown")
    with pytest.raises(TemplateProblem):
        check(settings, draft)


def test_markdown_keeps_jinja_tags_intact() -> None:
    html = markdown_to_html('{% if name %}Dear "{{ name|default("you") }}"{% endif %}')
    assert '{{ name|default("you") }}' in html
    assert "{% if name %}" in html


def test_shared_parts_are_prepared_once_per_version(settings: Settings) -> None:
    cache = PreparedCache()
    draft = Draft(7, "Hi {{ name }}", "pre", BODY, "markdown", datetime(2026, 1, 1, tzinfo=UTC))
    personal = {
        "name": "<Ann>", "first_name": "Ann", "email": "a@example.org",
        "unsubscribe_url": "https://x/u/T?e=1", "preferences_url": "https://x/preferences/P",
    }  # fmt: skip
    outs = [cache.get(settings, draft).render(personal) for _ in range(50)]
    assert cache.misses == 1
    html = outs[0].html
    assert "&lt;Ann&gt;" in html and "<Ann>" not in html  # autoescaped in HTML
    assert "style=" in html  # CSS inlined
    assert 'href="https://x/u/T?e=1"' in html and "1 Example Street" in html
    assert outs[0].subject == "Hi <Ann>"
    assert "https://x/u/T?e=1" in outs[0].text and "<Ann>" in outs[0].text
    edited = Draft(7, "Hi {{ name }}", "pre", "changed", "markdown", datetime(2026, 1, 2, tzinfo=UTC))
    assert "changed" in cache.get(settings, edited).render(personal).html
    assert cache.misses == 2


async def test_preview_for_an_account(
    client: TestClient[Any, Any], headers: dict[str, str], factory: Factory, pool: asyncpg.Pool
) -> None:
    await factory.account(external_id="ann", name="Ann Lee", newsletter=True)
    created = await create(client, headers)
    # A member's name and address are account data: the key must also read accounts.
    headers = await bearer(pool, "newsletters", "accounts", name="marketing-and-accounts")
    resp = await client.get(f"/v1/newsletters/{created['id']}/preview?account=ann", headers=headers)
    assert resp.status == 200
    preview = await resp.json()
    assert preview["subject"] == "News for Ann"
    assert "Hello Ann" in preview["html"] and "<strong>Ann Lee</strong>" in preview["html"]
    assert "https://notifier.test/u/" in preview["html"] and "/preferences/" in preview["html"]
    assert "1 Example Street, Exampletown" in preview["text"]
    resp = await client.get(f"/v1/newsletters/{created['id']}/preview?format=html", headers=headers)
    assert resp.content_type == "text/html" and "Ada" in await resp.text()
    resp = await client.get(f"/v1/newsletters/{created['id']}/preview?account=nobody", headers=headers)
    assert resp.status == 404


async def test_test_send_goes_to_the_given_addresses(
    client: TestClient[Any, Any], headers: dict[str, str], run_worker: BurstWorker, smtp: MailSink
) -> None:
    created = await create(client, headers)
    resp = await client.post(
        f"/v1/newsletters/{created['id']}/test",
        json={"to": ["proof@example.org", "boss@example.org"]},
        headers=headers,
    )
    assert resp.status == 202
    await run_worker(queues.SERVICE)
    assert sorted(r.recipients[0] for r in smtp.received) == ["boss@example.org", "proof@example.org"]
    message = smtp.received[0].message
    assert str(message["Subject"]).startswith("[TEST] News for")
    assert message["From"] == "Example News <news@example.org>"
    resp = await client.post(f"/v1/newsletters/{created['id']}/test", json={"to": ["nope"]}, headers=headers)
    assert resp.status == 422
    resp = await client.get(f"/v1/newsletters/{created['id']}", headers=headers)
    assert (await resp.json())["status"] == "draft"


async def test_audience_is_frozen_and_each_member_gets_one_message(
    client: TestClient[Any, Any],
    headers: dict[str, str],
    factory: Factory,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    fans = [await factory.account(newsletter=True) for _ in range(5)]
    await factory.account(newsletter=False)
    bounced = await factory.account(newsletter=True, email="Gone@Example.com")
    await suppression.add(pool, "gone@example.com", "hard_bounce", "all")
    left = await factory.account(newsletter=True)
    await suppression.add(pool, left["email"], "unsubscribed", "newsletter")
    created = await create(client, headers)

    got = await send_newsletter(client, headers, run_worker, pool, redis, settings, created["id"])

    assert got["status"] == "sent" and got["recipients"] == 5
    assert got["figures"]["sent"] == 5 and got["figures"]["pending"] == 0
    received = sorted(r.recipients[0] for r in smtp.received)
    assert received == sorted(a["email"] for a in fans)
    assert bounced["email"] not in received
    # The audience was frozen: a member joining later is not added, sending again is refused.
    await factory.account(newsletter=True)
    resp = await client.post(f"/v1/newsletters/{created['id']}/send", headers=headers)
    assert resp.status == 409
    assert await newsletter.start(pool, settings, created["id"]) is None
    assert await pool.fetchval("SELECT count(*) FROM emails WHERE newsletter_id = $1", created["id"]) == 5
    resp = await client.patch(f"/v1/newsletters/{created['id']}", json={"subject": "late"}, headers=headers)
    assert resp.status == 409


async def test_parallel_starts_fan_out_once(
    client: TestClient[Any, Any],
    headers: dict[str, str],
    factory: Factory,
    pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    for _ in range(30):
        await factory.account(newsletter=True)
    created = await create(client, headers)
    results = await asyncio.gather(*(newsletter.start(pool, settings, created["id"]) for _ in range(4)))
    assert sorted(results, key=lambda r: r or 0) == [None, None, None, 30]
    assert await pool.fetchval("SELECT count(*) FROM emails WHERE newsletter_id = $1", created["id"]) == 30


async def test_resumes_after_a_crash_and_sends_each_once(
    client: TestClient[Any, Any],
    headers: dict[str, str],
    factory: Factory,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    for _ in range(6):
        await factory.account(newsletter=True)
    created = await create(client, headers)
    await newsletter.start(pool, settings, created["id"])
    # A worker claimed two rows and died (its lease ran out); two others were already sent.
    await pool.execute(
        """UPDATE emails SET status = 'sending', locked_until = now() - interval '1 minute', attempts = 1
           WHERE id IN (SELECT id FROM emails WHERE newsletter_id = $1 ORDER BY id LIMIT 2)""",
        created["id"],
    )
    await pool.execute(
        """UPDATE emails SET status = 'sent', sent_at = now()
           WHERE id IN (SELECT id FROM emails WHERE newsletter_id = $1 AND status = 'queued' ORDER BY id LIMIT 2)""",
        created["id"],
    )
    assert await newsletter.finish_done(pool) == []  # rows still queued or sending: not sent
    await redis.flushdb()  # the doorbells are lost too
    await newsletter.tick(pool, redis, settings)
    from notifier.mail import outbox

    await outbox.sweep(pool, redis)
    await run_worker(queues.BULK)
    assert len(smtp.received) == 4  # the two crashed ones and the two never claimed
    assert len({r.recipients[0] for r in smtp.received}) == 4
    await newsletter.tick(pool, redis, settings)
    assert await pool.fetchval("SELECT status FROM newsletters WHERE id = $1", created["id"]) == "sent"


async def test_schedule_then_the_tick_starts_it(
    client: TestClient[Any, Any],
    headers: dict[str, str],
    factory: Factory,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
) -> None:
    await factory.account(newsletter=True)
    created = await create(client, headers)
    at = datetime.now(UTC) + timedelta(hours=2)
    resp = await client.post(
        f"/v1/newsletters/{created['id']}/send", json={"at": at.isoformat()}, headers=headers
    )
    assert resp.status == 200
    assert (await resp.json())["status"] == "scheduled"
    assert (await newsletter.tick(pool, redis, settings, now=at - timedelta(minutes=1)))["started"] == []
    assert (await newsletter.tick(pool, redis, settings, now=at + timedelta(seconds=1)))["started"] == [
        created["id"]
    ]
    row = await pool.fetchrow("SELECT status, recipients FROM newsletters WHERE id = $1", created["id"])
    assert (row["status"], row["recipients"]) == ("sending", 1)
    resp = await client.post(
        f"/v1/newsletters/{created['id']}/send", json={"at": "2026-01-01T10:00:00"}, headers=headers
    )
    assert resp.status == 422  # no time zone


async def test_unschedule_and_cancel(
    client: TestClient[Any, Any],
    headers: dict[str, str],
    factory: Factory,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    for _ in range(3):
        await factory.account(newsletter=True)
    created = await create(client, headers)
    at = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    await client.post(f"/v1/newsletters/{created['id']}/send", json={"at": at}, headers=headers)
    resp = await client.post(f"/v1/newsletters/{created['id']}/unschedule", headers=headers)
    assert (await resp.json())["status"] == "draft"
    await newsletter.start(pool, settings, created["id"])
    resp = await client.post(f"/v1/newsletters/{created['id']}/cancel", headers=headers)
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "cancelled" and body["figures"]["cancelled"] == 3
    await run_worker(queues.BULK)
    assert smtp.received == []
    assert (await client.post(f"/v1/newsletters/{created['id']}/cancel", headers=headers)).status == 409


async def test_double_opt_in_only_confirmed_members_receive(
    client: TestClient[Any, Any],
    headers: dict[str, str],
    factory: Factory,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    from notifier import lists
    from notifier.audit import MEMBER
    from notifier.preferences import apply_preferences

    settings.newsletter_double_opt_in = True
    await lists.follow_setting(pool, True)  # as a process started with the setting does
    ann = await factory.account()
    bob = await factory.account()
    async with pool.acquire() as conn:
        for member in (ann, bob):
            await apply_preferences(conn, member["id"], {"newsletter": True}, MEMBER, "api")
    ticked = await newsletter.tick(pool, redis, settings)
    assert ticked["confirmations"] == 2
    assert (await newsletter.tick(pool, redis, settings))["confirmations"] == 0  # asked once
    await run_worker(queues.SERVICE)
    links = {r.recipients[0]: r.message.get_body(("plain",)).get_content() for r in smtp.received}  # type: ignore[union-attr]
    confirm_url = next(line for line in links[ann["email"]].splitlines() if "/confirm/" in line).strip()
    path = confirm_url[confirm_url.index("/confirm/") :]
    page = await client.get(path)
    assert page.status == 200
    assert await pool.fetchval("SELECT confirmed_at FROM consents WHERE account_id = $1", ann["id"]) is None
    nonce = (await page.text()).split('name="nonce" value="')[1].split('"')[0]
    resp = await client.post(path, data={"nonce": nonce})
    assert resp.status == 200 and "Thank you" in await resp.text()
    audit_row = await pool.fetchrow("SELECT * FROM audit_log WHERE action = 'consent.confirm'")
    assert (audit_row["account_id"], audit_row["actor_type"]) == (ann["id"], "member")
    smtp.clear()
    created = await create(client, headers)
    got = await send_newsletter(client, headers, run_worker, pool, redis, settings, created["id"])
    assert got["recipients"] == 1
    assert [r.recipients[0] for r in smtp.received] == [ann["email"]]


async def test_cli_send_shows_progress_until_sent(
    client: TestClient[Any, Any],
    headers: dict[str, str],
    factory: Factory,
    settings: Settings,
    run_worker: BurstWorker,
    smtp: MailSink,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for _ in range(4):
        await factory.account(newsletter=True)
    created = await create(client, headers)
    assert await newsletter.cli_send(settings, created["id"], wait=False) == 0
    out = capsys.readouterr().out
    assert "sending to 4 recipients" in out and "0/4 sending" in out
    await run_worker(queues.BULK)
    assert await newsletter.cli_send(settings, created["id"], poll=0.01) == 0
    out = capsys.readouterr().out
    assert "[##############################] 100% 4/4 sent: sent 4, failed 0" in out
    assert len(smtp.received) == 4
    assert await newsletter.cli_send(settings, 999999) == 1


def test_progress_line() -> None:
    figures = dict.fromkeys(
        ("recipients", "sent", "failed", "suppressed", "cancelled", "unsubscribed"), 0
    ) | {"recipients": 10, "sent": 4, "failed": 1}
    assert newsletter.progress_line("sending", figures, width=10) == (
        "[#####.....]  50% 5/10 sending: sent 4, failed 1, suppressed 0, unsubscribed 0"
    )


def test_html_body_gets_a_readable_text_part(settings: Settings) -> None:
    body = '<h1>Hi {{ name }}</h1><p>Read <a href="https://example.org/x">the report</a> &amp; more.</p>'
    prepared = PreparedCache().get(settings, Draft(3, "S", "", body, "html"))
    out = prepared.render(
        {"name": "Ann & Bob", "first_name": "Ann", "email": "a@example.org",
         "unsubscribe_url": "https://x/u/T", "preferences_url": "https://x/preferences/P"}
    )  # fmt: skip
    assert "Hi Ann &amp; Bob" in out.html
    assert out.text.startswith("Hi Ann & Bob\nRead the report (https://example.org/x) & more.\n")
    assert "Unsubscribe: https://x/u/T" in out.text


async def test_html_preview_is_an_inert_document(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    created = await create(client, headers, body="<p>x</p><script>alert(1)</script>", body_format="html")
    resp = await client.get(f"/v1/newsletters/{created['id']}/preview?format=html", headers=headers)
    assert resp.status == 200
    assert resp.headers["Content-Security-Policy"].startswith("sandbox; default-src 'none'")


async def test_two_workers_send_each_recipient_once_and_bounces_are_counted(
    client: TestClient[Any, Any],
    headers: dict[str, str],
    factory: Factory,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    from notifier.mail import outbox

    members = [await factory.account(newsletter=True) for _ in range(60)]
    smtp.rcpt_replies[members[0]["email"]] = "550 5.1.1 no such user"
    created = await create(client, headers)
    assert await newsletter.start(pool, settings, created["id"]) == 60
    await outbox.ring(redis, queues.BULK, 400)  # several doorbells, taken by two workers at once
    await asyncio.gather(run_worker(queues.BULK), run_worker(queues.BULK))
    received = [r.recipients[0] for r in smtp.received]
    assert len(received) == len(set(received)) == 59
    await newsletter.tick(pool, redis, settings)
    figures = await newsletter.figures(pool, created["id"])
    assert (figures["sent"], figures["failed"], figures["bounced"], figures["pending"]) == (59, 1, 1, 0)
    assert await pool.fetchval("SELECT status FROM newsletters WHERE id = $1", created["id"]) == "sent"


async def test_answers_match_the_openapi_document(
    client: TestClient[Any, Any], headers: dict[str, str], factory: Factory
) -> None:
    from tests.test_openapi import Checker

    spec = await (await client.get("/openapi.json")).json()
    check_answer = Checker(spec)
    await factory.account(external_id="ann", newsletter=True)
    resp = await client.post(
        "/v1/newsletters", json={"subject": "S", "body": "Hi {{ name }}"}, headers=headers
    )
    created = await check_answer(resp, "POST", "/v1/newsletters")
    nid = created["id"]
    await check_answer(
        await client.get(f"/v1/newsletters/{nid}", headers=headers), "GET", f"/v1/newsletters/{nid}"
    )
    await check_answer(await client.get("/v1/newsletters", headers=headers), "GET", "/v1/newsletters")
    path = f"/v1/newsletters/{nid}/preview?account=ann"
    await check_answer(await client.get(path, headers=headers), "GET", path)
    resp = await client.post("/v1/newsletters", json={"subject": "{{ x }}", "body": "b"}, headers=headers)
    await check_answer(resp, "POST", "/v1/newsletters")
    resp = await client.post(f"/v1/newsletters/{nid}/send", headers=headers)
    await check_answer(resp, "POST", f"/v1/newsletters/{nid}/send")
    resp = await client.patch(f"/v1/newsletters/{nid}", json={"subject": "x"}, headers=headers)
    await check_answer(resp, "PATCH", f"/v1/newsletters/{nid}")
    resp = await client.post(f"/v1/newsletters/{nid}/cancel", headers=headers)
    await check_answer(resp, "POST", f"/v1/newsletters/{nid}/cancel")


async def test_test_send_renders_the_preview_sample_member(
    client: TestClient[Any, Any], headers: dict[str, str], run_worker: BurstWorker, smtp: MailSink
) -> None:
    created = await create(client, headers)
    preview = await (await client.get(f"/v1/newsletters/{created['id']}/preview", headers=headers)).json()
    resp = await client.post(
        f"/v1/newsletters/{created['id']}/test", json={"to": ["proof@example.org"]}, headers=headers
    )
    assert resp.status == 202
    await run_worker(queues.SERVICE)
    [got] = smtp.received
    assert got.message["Subject"] == f"[TEST] {preview['subject']}" == "[TEST] News for Ada"
    text_part, html_part = (got.message.get_body(preferencelist=(kind,)) for kind in ("plain", "html"))
    assert text_part is not None and html_part is not None
    text, html = text_part.get_content(), html_part.get_content()
    assert "Hello Ada" in text and "News for **Ada Lovelace**" in text
    assert "Hello Ada" in html and "<strong>Ada Lovelace</strong>" in html


async def test_erasing_recipients_changes_no_figure(
    client: TestClient[Any, Any],
    headers: dict[str, str],
    factory: Factory,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    from notifier.db import Q
    from notifier.mail import outbox

    async def figures(newsletter_id: int) -> dict[str, int]:
        resp = await client.get(f"/v1/newsletters/{newsletter_id}", headers=headers)
        got: dict[str, int] = (await resp.json())["figures"]
        return got

    async def listed(newsletter_id: int) -> tuple[int, int, int, int]:
        row = next(r for r in await pool.fetch(Q.console_newsletters, 10) if r["id"] == newsletter_id)
        return row["sent"], row["failed"], row["pending"], row["unsubscribed"]

    accounts_key = await bearer(pool, "accounts", name="registry")
    members = [await factory.account(newsletter=True, external_id=f"reader-{n}") for n in range(4)]
    first = await create(client, headers)
    await send_newsletter(client, headers, run_worker, pool, redis, settings, first["id"])
    # One reader leaves through the newsletter's one-click link.
    leaving = next(r.message for r in smtp.received if r.recipients[0] == members[0]["email"])
    link = str(leaving["List-Unsubscribe"]).split(">")[0].removeprefix("<")
    resp = await client.post(link.removeprefix(settings.public_url), data={"List-Unsubscribe": "One-Click"})
    assert resp.status == 200
    before = await figures(first["id"])
    assert (before["recipients"], before["sent"], before["unsubscribed"]) == (4, 4, 1)
    listed_before = await listed(first["id"])
    # A second newsletter freezes its audience (the three still subscribed); one of them is erased
    # before their e-mail goes, as is the reader who left.
    second = await create(client, headers, subject="Second")
    assert await newsletter.start(pool, settings, second["id"]) == 3
    for member in members[:2]:
        resp = await client.delete(f"/v1/accounts/{member['external_id']}", headers=accounts_key)
        assert resp.status == 200, await resp.text()

    assert await figures(first["id"]) == before
    assert await listed(first["id"]) == listed_before
    await outbox.ring(redis, queues.BULK, 3)
    await run_worker(queues.BULK)
    await newsletter.tick(pool, redis, settings)
    got = await figures(second["id"])
    assert got["recipients"] == 3 and (got["sent"], got["failed"], got["pending"]) == (2, 0, 0)
    assert (
        got["recipients"]
        == got["sent"] + got["failed"] + got["suppressed"] + got["pending"] + got["cancelled"]
    )
    assert await pool.fetchval("SELECT status FROM newsletters WHERE id = $1", second["id"]) == "sent"
    # Nothing personal is kept for the figures: numbers by newsletter.
    kept = await pool.fetch("SELECT * FROM newsletter_erased_figures ORDER BY newsletter_id, figure")
    assert {tuple(r.keys()) for r in kept} == {("newsletter_id", "figure", "count")}
