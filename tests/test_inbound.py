"""The deliverability loop, incoming: real e-mail goes out with a signed VERP return path; real-shaped
reports come back through the inbound SMTP port and `POST /v1/inbound/mime`; suppressions,
events and the next newsletter's audience follow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiosmtplib
import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from arq import ArqRedis

from notifier import bounces, inbound, suppression, verp
from notifier.embedded import free_port
from notifier.settings import Settings
from tests import report_samples as samples
from tests.api_helpers import bearer, create_newsletter, send_newsletter
from tests.conftest import BurstWorker, MailSink, Received
from tests.factory import Factory

BOUNCE_DOMAIN = "bounces.example.org"
MAILTO = "unsubscribe@example.org"


@pytest.fixture(autouse=True)
def _loop_settings(settings: Settings) -> None:
    settings.bounce_domain = BOUNCE_DOMAIN
    settings.unsubscribe_mailto = MAILTO


@pytest.fixture
async def inbound_port(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[int]:
    """`notifier inbound`'s server, started in-test on a free port."""
    port = free_port()
    server = await inbound.serve(settings, pool, "127.0.0.1", port)
    yield port
    server.close()
    await server.wait_closed()


async def smtp_in(port: int, rcpt: str, raw: bytes, sender: str = "") -> None:
    """Deliver `raw` as an MTA hands over a report: null sender (`MAIL FROM:<>`), one recipient."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=5, start_tls=False)
    await client.connect()
    try:
        await client.mail(sender)
        await client.rcpt(rcpt)
        await client.data(raw)
    finally:
        await client.quit()


async def mime_in(client: TestClient[Any, Any], headers: dict[str, str], raw: bytes, **query: str) -> Any:
    resp = await client.post(
        "/v1/inbound/mime",
        data=raw,
        params=query,
        headers={**headers, "Content-Type": "message/rfc822"},
    )
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def events(pool: asyncpg.Pool, account_id: int) -> list[tuple[str, dict[str, Any]]]:
    rows = await pool.fetch(
        "SELECT kind, detail FROM events WHERE account_id = $1 AND kind NOT IN ('sent') ORDER BY id",
        account_id,
    )
    return [(r["kind"], r["detail"]) for r in rows]


def test_verp_addresses_are_signed_and_verified_on_the_keyring() -> None:
    old, new = b"old-key", b"new-key"
    address = verp.return_path(old, 42, BOUNCE_DOMAIN)
    assert address.startswith("bounces+42-") and address.endswith("@" + BOUNCE_DOMAIN)
    assert verp.email_id([new, old], address, BOUNCE_DOMAIN) == 42
    assert verp.email_id([new, old], address.upper(), BOUNCE_DOMAIN) == 42  # local parts folded
    assert verp.email_id([new], address, BOUNCE_DOMAIN) is None
    assert verp.email_id([old], address.replace("+42-", "+43-"), BOUNCE_DOMAIN) is None
    assert verp.email_id([old], address, "other.example") is None
    assert verp.email_id([old], "bounces+42-@" + BOUNCE_DOMAIN, BOUNCE_DOMAIN) is None


def test_classification_by_enhanced_status() -> None:
    assert bounces.classify("5.1.1") == "hard"
    assert bounces.classify("5.1.10") == "hard"
    assert bounces.classify("5.2.2", "550 5.2.2 mailbox full") == "soft"
    assert bounces.classify("5.7.26", "550 5.7.26 unauthenticated ... Gmail users") == "policy"
    assert bounces.classify("4.4.1") == "soft"
    assert bounces.classify(None, "550 user unknown") == "hard"
    assert bounces.classify(None, "552 message too big") == "soft"
    assert bounces.scrub("550 <bob@example.com>: no") == "550 <[address]>: no"


async def test_reports_through_smtp_and_mime_suppress_the_right_members(
    client: TestClient[Any, Any],
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    run_worker: BurstWorker,
    smtp: MailSink,
    factory: Factory,
    inbound_port: int,
) -> None:
    names = [
        "postfix",
        "exchange",
        "gmail",
        "policy",
        "delayed",
        "qmail",
        "yahoo",
        "ooo",
        "forged",
        "mailto",
        "calm",
    ]
    members = {n: await factory.account(email=f"{n}@example.com", newsletter=True) for n in names}
    headers = await bearer(pool, "newsletters", name="marketing")
    admin = await bearer(pool, "admin", name="mta")
    draft = await create_newsletter(client, headers, subject="November news", body="Hello {{ first_name }}")
    await send_newsletter(client, headers, run_worker, pool, redis, settings, draft["id"])
    sent = {r.recipients[0]: r for r in smtp.received}
    assert len(sent) == len(names)
    got = {n: sent[f"{n}@example.com"] for n in names}
    # Each e-mail's envelope sender is its own signed return path.
    for received in got.values():
        email_id = verp.email_id(settings.keyring, received.sender, BOUNCE_DOMAIN)
        row = await pool.fetchrow("SELECT to_address FROM emails WHERE id = $1", email_id)
        assert row["to_address"] == received.recipients[0]

    # Through the inbound SMTP port, as the MX hands them over.
    await smtp_in(inbound_port, got["postfix"].sender, samples.postfix_dsn(got["postfix"]))
    await smtp_in(inbound_port, got["exchange"].sender, samples.exchange_dsn(got["exchange"]))
    await smtp_in(inbound_port, got["ooo"].sender, samples.out_of_office(got["ooo"]))
    await smtp_in(inbound_port, "fbl@" + BOUNCE_DOMAIN, samples.yahoo_arf(got["yahoo"]))
    mailto, token = samples.list_unsubscribe_mailto(got["mailto"])
    assert mailto == MAILTO
    reply = samples.unsubscribe_mail(mailto, token, in_reply_to=got["mailto"].message["Message-ID"])
    await smtp_in(inbound_port, mailto, reply)
    # A report to a made-up return path: the policy member's id with the postfix member's signature.
    postfix_id = verp.email_id(settings.keyring, got["postfix"].sender, BOUNCE_DOMAIN)
    policy_id = verp.email_id(settings.keyring, got["policy"].sender, BOUNCE_DOMAIN)
    signature = got["postfix"].sender.split("-")[1].split("@")[0]
    forged = f"bounces+{verp.email_id(settings.keyring, got['forged'].sender, BOUNCE_DOMAIN)}-{signature}@{BOUNCE_DOMAIN}"
    await smtp_in(inbound_port, forged, samples.postfix_dsn(got["forged"], to=forged))
    # Anyone else is refused: the server is no relay.
    with pytest.raises(aiosmtplib.SMTPRecipientRefused):
        await smtp_in(inbound_port, "someone@example.org", b"Subject: hi\r\n\r\nhello\r\n")

    # Through the MTA pipe.
    gmail = await mime_in(client, admin, samples.gmail_dsn(got["gmail"]), recipient=got["gmail"].sender)
    assert gmail["action"] == "bounced" and gmail["suppressed"] == ["all"]
    again = await mime_in(client, admin, samples.gmail_dsn(got["gmail"]), recipient=got["gmail"].sender)
    assert again["recorded"] is False  # the same report twice is recorded once
    unauthenticated = samples.gmail_dsn(
        got["policy"],
        status="5.7.26",
        text="This mail is unauthenticated, which poses a security risk. Gmail users",
    )
    policy = await mime_in(client, admin, unauthenticated)
    assert (policy["action"], policy["email_id"], policy["suppressed"]) == ("bounced", policy_id, [])
    delayed = samples.gmail_dsn(got["delayed"], action="delayed", status="4.2.2", text="mailbox over quota")
    assert (await mime_in(client, admin, delayed))["action"] == "deferred"
    qmail = await mime_in(client, admin, samples.qmail_bounce(got["qmail"]))
    assert (qmail["action"], qmail["suppressed"]) == ("bounced", ["all"])
    ooo = await mime_in(client, admin, samples.out_of_office(got["ooo"]))
    assert ooo["action"] == "ignored" and "automatic reply" in ooo["why"]
    forged_answer = await mime_in(client, admin, samples.postfix_dsn(got["forged"], to=forged))
    assert forged_answer["action"] == "ignored"

    # Suppressions: hard bounces on `all`, the complaint on newsletters and digests only.
    def addr(n: str) -> str:
        return f"{n}@example.com"

    for n in ("postfix", "exchange", "gmail", "qmail"):
        assert await suppression.check(pool, addr(n), ["all"]) == "hard_bounce", n
    assert await suppression.check(pool, addr("yahoo"), ["newsletter"]) == "complaint"
    assert await suppression.check(pool, addr("yahoo"), ["digest"]) == "complaint"
    assert await suppression.check(pool, addr("yahoo"), ["all"]) is None  # service mail still goes
    for n in ("policy", "delayed", "ooo", "forged", "calm", "mailto"):
        assert await suppression.check(pool, addr(n), ["all", "newsletter", "digest"]) is None, n
    assert not await pool.fetchval("SELECT newsletter FROM accounts WHERE id = $1", members["mailto"]["id"])

    # Events: tied to the member and the e-mail, no address in them.
    assert [k for k, _ in await events(pool, members["postfix"]["id"])] == ["bounced"]
    (_, detail) = (await events(pool, members["exchange"]["id"]))[0]
    assert detail["type"] == "hard" and detail["status"] == "5.1.10"
    assert [k for k, _ in await events(pool, members["gmail"]["id"])] == ["bounced"]
    assert [(k, d["type"]) for k, d in await events(pool, members["policy"]["id"])] == [("bounced", "policy")]
    assert [k for k, _ in await events(pool, members["delayed"]["id"])] == ["deferred"]
    assert [(k, d["source"]) for k, d in await events(pool, members["yahoo"]["id"])] == [
        ("complained", "arf")
    ]
    assert [k for k, _ in await events(pool, members["mailto"]["id"])] == ["unsubscribed"]
    for n in ("ooo", "forged", "calm"):
        assert await events(pool, members[n]["id"]) == [], n
    details = await pool.fetchval("SELECT string_agg(detail::text, ' ') FROM events")
    assert "@example.com" not in details
    notes = await pool.fetchval("SELECT string_agg(coalesce(detail, ''), ' ') FROM suppressions")
    assert "@" not in notes
    assert postfix_id is not None

    # The first newsletter's figures count them (distinct members): four hard bounces and the
    # policy failure, one complaint, one unsubscribe.
    resp = await client.get(f"/v1/newsletters/{draft['id']}", headers=headers)
    first = (await resp.json())["figures"]
    assert (first["bounced"], first["complained"], first["unsubscribed"]) == (5, 1, 1)

    # The next newsletter skips exactly the bounced, the complainer and the unsubscribed.
    smtp.clear()
    second = await create_newsletter(client, headers, subject="December news", body="Hi {{ first_name }}")
    figures = await send_newsletter(client, headers, run_worker, pool, redis, settings, second["id"])
    reached = sorted(r.recipients[0].split("@")[0] for r in smtp.received)
    assert reached == sorted(["policy", "delayed", "ooo", "forged", "calm"])
    assert figures["figures"]["sent"] == 5


async def test_soft_bounces_suppress_after_the_limit(
    client: TestClient[Any, Any], pool: asyncpg.Pool, settings: Settings, factory: Factory
) -> None:
    settings.soft_bounce_limit = 2
    admin = await bearer(pool, "admin", name="mta")
    member = await factory.account(email="full@example.com", newsletter=True)
    for n in range(3):
        email = await factory.email(member, status="sent", kind="newsletter", queue="notifier:bulk")
        sender = verp.return_path(settings.secret, email["id"], BOUNCE_DOMAIN)
        received = Received(
            sender, ["full@example.com"], f"Message-ID: <x{n}@example.org>\r\n\r\nhi\r\n".encode()
        )
        answer = await mime_in(client, admin, samples.postfix_dsn(received, status="5.2.2"))
        assert answer["action"] == "bounced"
        assert answer["suppressed"] == ([] if n == 0 else ["all"] if n == 1 else [])
    assert await suppression.check(pool, "full@example.com") == "soft_bounce"
    count = await pool.fetchval(
        "SELECT count(*) FROM events WHERE kind = 'bounced' AND detail->>'type' = 'soft'"
    )
    assert count == 3


async def test_mime_route_refuses_what_is_not_a_message(
    client: TestClient[Any, Any], pool: asyncpg.Pool, settings: Settings
) -> None:
    settings.inbound_max_bytes = 4096
    admin = await bearer(pool, "admin", name="mta")
    weak = await bearer(pool, "newsletters")
    raw = b"Subject: hi\r\n\r\nhello\r\n"
    resp = await client.post("/v1/inbound/mime", data=raw, headers={"Content-Type": "message/rfc822"})
    assert resp.status == 401
    resp = await client.post("/v1/inbound/mime", data=raw, headers={**weak, "Content-Type": "message/rfc822"})
    assert resp.status == 403
    resp = await client.post("/v1/inbound/mime", json={"a": 1}, headers=admin)
    assert resp.status == 415 and resp.content_type == "application/problem+json"
    big = b"Subject: x\r\n\r\n" + b"a" * (settings.inbound_max_bytes + 10)
    resp = await client.post(
        "/v1/inbound/mime", data=big, headers={**admin, "Content-Type": "message/rfc822"}
    )
    assert resp.status == 413 and resp.content_type == "application/problem+json"
    resp = await client.post(
        "/v1/inbound/mime", data=b"  ", headers={**admin, "Content-Type": "message/rfc822"}
    )
    assert resp.status == 400
    settings.inbound_max_bytes = 1024 * 1024
    nested = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(2000)
    )
    assert (await mime_in(client, admin, b"Subject: deep\r\n" + nested))["action"] == "ignored"
    nonsense = b"\xff\xfe\x00garbage\r\n\r\n\x00\x01"
    answer = await mime_in(client, admin, nonsense)
    assert answer["action"] == "ignored"
    assert await pool.fetchval("SELECT count(*) FROM events") == 0


async def test_inbound_smtp_refuses_a_message_over_the_limit(
    settings: Settings, pool: asyncpg.Pool, inbound_port: int
) -> None:
    big = b"Subject: x\r\n\r\n" + (b"a" * 70 + b"\r\n") * (settings.inbound_max_bytes // 70 + 10)
    with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
        await smtp_in(inbound_port, f"bounces+1-aaaaaaaaaaaaa@{BOUNCE_DOMAIN}", big)
    assert refused.value.code == 552
    assert await pool.fetchval("SELECT count(*) FROM events") == 0


def test_cli_inbound_needs_something_to_accept(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from notifier import cli

    monkeypatch.setenv("NOTIFIER_DATABASE_URL", settings.database_url or "")
    monkeypatch.setenv("NOTIFIER_REDIS_URL", settings.redis_url or "")
    monkeypatch.setenv("NOTIFIER_SECRET_KEY", "a-secret-for-this-test")
    assert cli.main(["inbound"]) == 2
    assert "NOTIFIER_BOUNCE_DOMAIN" in capsys.readouterr().err
    monkeypatch.setenv("NOTIFIER_BOUNCE_DOMAIN", "not a domain")
    assert cli.main(["inbound"]) == 2
    assert "NOTIFIER_BOUNCE_DOMAIN: not a domain" in capsys.readouterr().err
